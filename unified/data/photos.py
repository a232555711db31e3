"""``photos``: natural photographs that ship inside scikit-image (``skimage.data``) and
scikit-learn (``load_sample_images``), cut into random crops.

Nothing is downloaded: only the images inside the wheels are used (scikit-image fetches a
few others on demand; those are left out). The crops are deterministic from the seed and the
two packages' versions (which key the cache). They carry no labels for any model's classes:
they are for calibration and for agreement with the fp32 model of a pretrained network.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from unified.spec.errors import SqueezelabError

# colour photographs, then greyscale ones (used as grey RGB); all ship inside the wheel
SKIMAGE_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field")
SKIMAGE_GREY = ("camera", "coins", "clock", "moon")
PACKAGES = ("scikit-image", "scikit-learn")
INSTALL_HINT = "pip install 'squeezelab[pytorch]' (scikit-image and scikit-learn)"
# a crop's side as a share of the photo's shorter side: from a detail to the whole scene
CROP_SHARE = (0.35, 1.0)


@cache
def photographs() -> tuple[np.ndarray, ...]:
    """The photographs as uint8 HxWx3 arrays, in a fixed order."""
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise SqueezelabError(f"data source 'photos' needs {exc.name}: {INSTALL_HINT}") from None
    images = [getattr(skimage.data, name)() for name in SKIMAGE_COLOUR]
    left, right, _ = skimage.data.stereo_motorcycle()
    images += [left, right]
    images += [np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2)
               for name in SKIMAGE_GREY]
    images += list(load_sample_images().images)  # china, flower
    return tuple(np.ascontiguousarray(im[..., :3], dtype=np.uint8) for im in images)


def photo_crops(count: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """``count`` random crops (float32 NCHW RGB in [0, 1]) resized to ``size`` (H, W): a
    random photograph, a crop of the target's aspect whose side is 35–100 % of the photo's
    shorter side at a random place, mirrored half of the time."""
    from PIL import Image

    photos = photographs()
    rng = np.random.default_rng(seed)
    height, width = size
    out = np.empty((count, 3, height, width), dtype=np.float32)
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        rows, cols = photo.shape[:2]
        share = rng.uniform(*CROP_SHARE)
        crop_h = max(1, round(share * min(rows, cols * height / width)))
        crop_w = max(1, min(cols, round(crop_h * width / height)))
        top = int(rng.integers(rows - crop_h + 1))
        left = int(rng.integers(cols - crop_w + 1))
        img = Image.fromarray(photo[top:top + crop_h, left:left + crop_w])
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = img.resize((width, height), Image.Resampling.BILINEAR)
        out[i] = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out
