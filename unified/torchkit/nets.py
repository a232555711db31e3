"""Built-in architectures: small, but with every layer kind compressors treat differently
(conv + BN + ReLU, depthwise, residual add, pooling, linear)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn2(self.conv2(self.conv1(x))))


class ConvNet(nn.Module):
    """stem conv → depthwise-separable block → residual block → conv → pool → MLP head.

    The head flattens a 3×3 map rather than global-average-pooling it: spatial layout
    matters for digits, and the model then trains to a useful accuracy in a few epochs.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        width: int = 32,
        residual: bool = True,
    ) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn_relu(input_shape[0], w),  # stem
            conv_bn_relu(w, w, groups=w),  # depthwise 3x3
            conv_bn_relu(w, 2 * w, kernel=1),  # pointwise 1x1
            nn.MaxPool2d(2),
            ResidualBlock(2 * w) if residual else conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * w, 4 * w),
        )
        self.pool = nn.MaxPool2d(2)  # 28×28 inputs: 7×7 → 3×3
        with torch.no_grad():
            flat = self.pool(self.features(torch.zeros(1, *input_shape))).numel()
        self.fc = nn.Linear(flat, 4 * w)
        self.fc_relu = nn.ReLU()
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.fc_relu(self.fc(x)))


def convnet(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ConvNet(num_classes, input_shape, width=32)


def convnet_thin(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ConvNet(num_classes, input_shape, width=12, residual=False)


def convnet_tiny(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """For tests: the same layer kinds, a few thousand parameters."""
    return ConvNet(num_classes, input_shape, width=8)


class SimplenetMnist(nn.Module):
    """Distiller's ``simplenet_mnist`` (distiller/models/mnist/simplenet_mnist.py, itself the
    pytorch/examples MNIST net) with the same parameter names (conv1, conv2, fc1, fc2), so
    Distiller schedules written for it bind unchanged.

    Two differences, neither changing the parameters: ReLU and pooling are modules (tracers
    and NNI's ModelSpeedup follow them more easily than ``F.*`` calls), and the output is the
    logits, not Distiller's ``log_softmax`` of them (same argmax; the losses apply their own
    log-softmax, and the ONNX contract's output is logits).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 spatial: tuple[int, int] = (28, 28)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5, 1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        # 28x28 -> conv 24 -> pool 12 -> conv 8 -> pool 4: fc1 is Linear(4*4*50, 500)
        height, width = (((side - 4) // 2 - 4) // 2 for side in spatial)
        if height < 1 or width < 1:
            raise ValueError(f"simplenet-mnist needs inputs of at least 12x12. "
                             f"Got {spatial[0]}x{spatial[1]} instead")
        self.fc1 = nn.Linear(height * width * 50, 500)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(x.flatten(1))))


def simplenet_mnist(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return SimplenetMnist(num_classes, input_shape[0], (input_shape[1], input_shape[2]))


def _efficientnet_lite0(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    from unified.torchkit.zoo import efficientnet_lite0

    return efficientnet_lite0(num_classes, input_shape)


def _vit_tiny(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    from unified.torchkit.zoo import vit_tiny

    return vit_tiny(num_classes, input_shape)


BUILTIN: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "convnet": convnet,
    "convnet-thin": convnet_thin,
    "convnet-tiny": convnet_tiny,
    "simplenet-mnist": simplenet_mnist,
    "efficientnet-lite0": _efficientnet_lite0,
    "vit-tiny": _vit_tiny,
}
