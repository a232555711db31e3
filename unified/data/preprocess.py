"""Image preprocessing: resizing, channel fitting, and a pretrained model's own pipeline
(``data.preprocess``: resize, center crop, channel order, value range, mean / std)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unified.spec.errors import SqueezelabError
from unified.spec.scenario import ChannelOrder, Preprocess


def resize(x: np.ndarray, hw: tuple[int, ...]) -> np.ndarray:
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


def fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Grey images repeated to ``channels``, or colour averaged to one channel."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, channels, axis=1)
    if channels == 1:
        return x.mean(axis=1, keepdims=True)
    raise SqueezelabError(f"cannot turn {x.shape[1]}-channel images into {channels} channels")


def resized_size(hw: tuple[int, int], size: int | tuple[int, int]) -> tuple[int, int]:
    """The (H, W) of an image of ``hw`` after ``resize: size`` (an int sets the shorter side,
    as torchvision's Resize does)."""
    if isinstance(size, tuple):
        return size
    h, w = hw
    if h <= w:
        return size, max(1, int(size * w / h))
    return max(1, int(size * h / w)), size


def center_crop(x: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """The centre ``size`` of CHW (or NCHW) images."""
    ch, cw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        raise SqueezelabError(f"data.preprocess.center_crop {ch}×{cw} is larger than the "
                              f"{h}×{w} image it crops")
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top:top + ch, left:left + cw]


def first_size(pre: Preprocess | None, input_hw: tuple[int, int]) -> tuple[int, int]:
    """The size a generated image (a photo crop, square unless the target is not) is made at:
    what ``resize`` gives a square image, else the crop size, else the model's input size."""
    if pre is not None and pre.resize is not None:
        return resized_size((1, 1), pre.resize)
    if pre is not None and pre.output_size() is not None:
        return pre.output_size() or input_hw
    return input_hw


def apply_preprocess(images: Sequence[np.ndarray] | np.ndarray, pre: Preprocess,
                     input_shape: tuple[int, int, int]) -> np.ndarray:
    """``images`` (CHW floats in [0, 1], RGB or grey, any sizes) through ``pre``: an NCHW
    float32 array shaped like the model's input."""
    target = tuple(input_shape[1:])
    sized = []
    for image in images:
        x = image[None]
        if pre.resize is not None:
            x = resize(x, resized_size(x.shape[2:], pre.resize))
        if pre.center_crop is not None:
            x = center_crop(x, pre.center_crop)
        if pre.resize is None and pre.center_crop is None:
            x = resize(x, target)
        if x.shape[2:] != target:
            raise SqueezelabError(
                f"data.preprocess turns a {image.shape[1]}×{image.shape[2]} image into "
                f"{x.shape[2]}×{x.shape[3]}, not the model's {target[0]}×{target[1]}; add a "
                "center_crop")
        sized.append(x[0])
    x = fit_channels(np.stack(sized).astype(np.float32), input_shape[0])
    if pre.channel_order is ChannelOrder.bgr and x.shape[1] == 3:
        x = x[:, ::-1]
    low, high = pre.range
    x = x * (high - low) + low
    if pre.mean is not None and pre.std is not None:
        x = (x - _per_channel(pre.mean)) / _per_channel(pre.std)
    return np.ascontiguousarray(x, dtype=np.float32)


def _per_channel(values: tuple[float, ...]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(1, -1, 1, 1)
