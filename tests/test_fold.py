"""Conv + BatchNorm folding (unified.torchkit.fold), shared by the NNI and Core ML backends:
the folded model computes what the original did, with no BatchNorm where one could go."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch
import torch.fx
from torch import nn

from unified.torchkit.fold import batchnorm_count, conv_bn_pairs, fold_batchnorm


class Branchy(nn.Module):
    """conv→bn (foldable), a conv whose output also skips past its BN (not foldable), a 1-d
    conv→bn (foldable) and a linear→bn1d (not a conv: left alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv_c, self.bn_c = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)
        self.fc, self.bn_fc = nn.Linear(4, 5), nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.conv_a(x)))
        y = self.conv_b(x)
        x = self.bn_b(y) + y  # conv_b feeds two consumers: its BN cannot absorb it
        x = self.bn_c(self.conv_c(x.flatten(2)))
        return self.bn_fc(self.fc(x.mean(2)))


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():  # non-trivial running statistics and affine parameters
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def test_folding_keeps_the_outputs_and_removes_foldable_batchnorms() -> None:
    model = _randomised(Branchy())
    x = torch.randn(6, 3, 5, 5)
    with torch.no_grad():
        before = model(x)
    pairs = fold_batchnorm(model)
    assert pairs == [("conv_a", "bn_a"), ("conv_c", "bn_c")]
    assert isinstance(model.bn_a, nn.Identity) and isinstance(model.bn_c, nn.Identity)
    assert isinstance(model.bn_b, nn.BatchNorm2d) and isinstance(model.bn_fc, nn.BatchNorm1d)
    assert batchnorm_count(model) == 2
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)


def test_an_untraceable_model_raises_before_anything_changes() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # control flow on a value: torch.fx cannot trace it
                return self.bn(self.conv(x))
            return x

    model = DataDependent()
    with pytest.raises(torch.fx.proxy.TraceError):
        conv_bn_pairs(model)
    with pytest.raises(torch.fx.proxy.TraceError):
        fold_batchnorm(model)
    assert batchnorm_count(model) == 1
