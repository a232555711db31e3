"""torch.ao FX int8 on the shapes real networks have: a ReLU6 after conv + BN (MobileNetV2,
EfficientNet-Lite), zero padding between convs ('SAME' padding), a spatial mean over a 1×1
map (ShuffleNetV2 / MNASNet on small inputs), a permute of a conv's output (ViT's patch
embedding). Real torch.ao and onnxruntime; the models below are also the scenario's
``python:test_pytorch_int8_real:<factory>`` sources (this folder is on pytest's path)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import python_model_scenario
from torch import nn

from unified.spec.scenario import Scenario


class ReLU6Net(nn.Module):
    """conv-BN-ReLU6 (a wide pre-clamp range: BN's gamma is large), depthwise conv-BN-ReLU6,
    asymmetric zero padding, a stride-2 conv-ReLU6, pooling and a classifier."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 16, 16)
                 ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1 = nn.Conv2d(input_shape[0], 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2)
        self.act1, self.act2, self.act3 = nn.ReLU6(), nn.ReLU6(), nn.ReLU6()
        self.fc = nn.Linear(24, num_classes)
        with torch.no_grad():
            for bn in (self.bn1, self.bn2):
                bn.weight.uniform_(20.0, 40.0)  # pre-ReLU6 values over about ±100
                bn.bias.uniform_(-1.0, 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.dw(x)))
        x = self.act3(self.conv3(self.pad(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MeanNet(nn.Module):
    """A conv whose output map is 1×1, then ``x.mean([2, 3])`` (ShuffleNetV2's head)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 16, 16)
                 ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(input_shape[0], 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, input_shape[1:])
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean([2, 3]))


class PatchNet(nn.Module):
    """Patches by a strided conv, flattened and permuted to tokens (ViT's embedding)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (3, 16, 16)
                 ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv2d(input_shape[0], 16, 4, stride=4)
        self.mlp = nn.Linear(16, 16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x).flatten(2).permute(0, 2, 1)
        return self.fc(torch.relu(self.mlp(tokens)).mean(1))


def relu6_net(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return ReLU6Net(num_classes, input_shape).eval()


def mean_net(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return MeanNet(num_classes, input_shape).eval()


def patch_net(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    return PatchNet(num_classes, input_shape).eval()


def _scenario(factory: str) -> Scenario:
    return python_model_scenario(
        f"python:test_pytorch_int8_real:{factory}", f"int8-{factory}", [3, 16, 16],
        {"train": 64, "calibration": 64, "test": 128},
        {"r": [{"quantize": {"method": "static"}}]}, ["pytorch"])


def _run(factory: str, tmp_path: Path, cache_dir: Path) -> dict[str, Any]:
    from unified.run.job import Job, execute
    from unified.run.reference import prepare_reference

    scenario = _scenario(factory)
    reference = prepare_reference(scenario, cache_dir)
    return execute(scenario, Job("r", "pytorch"), tmp_path / "pytorch", reference)


# --- through the adapter: the record ---------------------------------------------------------


def test_relu6_after_conv_is_observed_after_the_clamp(tmp_path: Path, cache_dir: Path) -> None:
    record = _run("relu6_net", tmp_path, cache_dir)
    assert record["status"] == "ok", record["reason"]
    notes = " ".join(record["notes"])
    assert "3 conv/linear output(s) read only by a ReLU6" in notes
    assert "nn.ZeroPad2d sharing its input's qparams" in notes
    assert "symmetric int8 weights in [-127, 127]" in notes
    assert record["ort_ops"].get("QLinearConv", 0) == 3
    assert record["details"]["parity"]["agreement"] >= 0.99
    assert record["agreement"] >= 0.95 and record["rel_l2"] < 0.1, (
        record["agreement"], record["rel_l2"])
    # the latency pass loads the TorchScript on the engine the model was converted under
    from adapters.pytorch._impl_quant import quantized_engine

    assert record["native_files"]["engine"] == quantized_engine()[0]


@pytest.mark.parametrize(("factory", "note"), [
    ("mean_net", "adaptive_avg_pool2d(x, 1)"),
    ("patch_net", "kept float: permute"),
])
def test_spatial_mean_and_permute_quantize_and_export(tmp_path: Path, cache_dir: Path,
                                                     factory: str, note: str) -> None:
    record = _run(factory, tmp_path, cache_dir)
    assert record["status"] == "ok", record["reason"]
    assert note in " ".join(record["notes"])
    assert record["quantized_compute_ops"] >= 2
    assert record["agreement"] >= 0.9


# --- the observer itself, against torch.ao's default placement --------------------------------


def _quantize(model: nn.Module, calib: torch.Tensor, clamp: bool) -> Any:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from adapters.pytorch._impl_fx import float_leaves, quantizable_copy
    from adapters.pytorch._impl_observe import backend_config, observe_after_clamp
    from adapters.pytorch._impl_quant import _qconfig_mapping, quantized_engine
    from unified.spec.steps import QuantizeStep

    engine, quant_max = quantized_engine()
    torch.backends.quantized.engine = engine
    layers = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    mapping = _qconfig_mapping(model, QuantizeStep(), False, layers, quant_max)
    base, _ = quantizable_copy(model, calib[:1], mapping, layers)
    backend = backend_config()
    prepared = prepare_fx(copy.deepcopy(base), mapping, (calib[:1],), float_leaves(),
                          backend_config=backend)
    changed = observe_after_clamp(prepared) if clamp else []
    assert len(changed) == (3 if clamp else 0)
    with torch.no_grad():
        prepared(calib)
    return convert_fx(prepared, backend_config=backend)


def test_engine_runs_depthwise_int8_exactly() -> None:
    """The engine and activation range chosen for this CPU compute a 144-channel depthwise
    conv (EfficientNet / MobileNetV2's shape) to within one level of the exact integer result;
    x86 with full 8-bit activations on a VNNI CPU was off by up to 38 levels."""
    import torch.ao.nn.quantized as nnq
    import torch.nn.functional as F

    from adapters.pytorch._impl_quant import quantized_engine

    engine, quant_max = quantized_engine()
    torch.backends.quantized.engine = engine
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(144, 1, 3, 3, generator=generator)
    weight_q = torch.quantize_per_channel(weight, weight.abs().amax((1, 2, 3)) / 127,
                                          torch.zeros(144, dtype=torch.long), 0, torch.qint8)
    conv = nnq.Conv2d(144, 144, 3, padding=1, groups=144)
    conv.set_weight_bias(weight_q, torch.randn(144, generator=generator))
    x = torch.quantize_per_tensor(torch.rand(4, 144, 16, 16, generator=generator) * 6,
                                  6 / quant_max, 0, torch.quint8)
    exact = F.conv2d(x.dequantize(), weight_q.dequantize(), conv.bias(), padding=1, groups=144)
    scale = float(exact.max() - exact.min()) / 255
    zero_point = round(float(-exact.min()) / scale)
    conv.scale, conv.zero_point = scale, zero_point
    levels = conv(x).int_repr().int()
    expected = torch.quantize_per_tensor(exact, scale, zero_point, torch.quint8).int_repr().int()
    assert int((levels - expected).abs().max()) <= 1


def _output_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(
        lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return captured[0].dequantize() if captured[0].is_quantized else captured[0]


def test_clamped_observer_spans_the_relu6_range_and_cuts_the_error() -> None:
    from adapters.pytorch._impl_quant import quantized_engine

    model = ReLU6Net().eval()
    generator = torch.Generator().manual_seed(1)
    calib = torch.randn(64, 3, 16, 16, generator=generator)
    test = torch.randn(64, 3, 16, 16, generator=generator)
    reference = _output_of(model, "act1", test)
    errors = {}
    for clamp in (False, True):
        quantized = _quantize(model, calib, clamp)
        out = _output_of(quantized, "act1", test)
        errors[clamp] = float((out - reference).norm() / reference.norm())
        scale = float(quantized.conv1.scale)
        # the ReLU6's levels span [0, 6] when observed after the clamp, the ±100 otherwise
        assert (scale <= 6 / quantized_engine()[1] + 1e-6) == clamp, scale
        assert (int(quantized.conv1.zero_point) == 0) == clamp
    # the first ReLU6's output (steps 15 times finer; the input's own int8 rounding, scaled
    # by the large BN gamma, stays in both): measured 0.048 → 0.016
    assert errors[True] < errors[False] / 2, errors


def test_zero_padding_keeps_its_input_quantization() -> None:
    """nn.ZeroPad2d shares the qparams of the ReLU6 before it: torch dequantizes around the
    pad, and quantizing again with the same scale and zero point gives back the same
    integers (one rounding, not two), with the zero point in the border."""
    model = ReLU6Net().eval()
    calib = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    quantized = _quantize(model, calib, clamp=True)
    assert float(quantized.pad_scale_0) == float(quantized.dw.scale)
    assert int(quantized.pad_zero_point_0) == int(quantized.dw.zero_point)
    x = calib[:2]
    before, after = _output_of(quantized, "act2", x), _output_of(quantized, "conv3", x)
    assert after.shape[-1] == 8
    padded = _output_of(quantized, "pad", x)
    assert torch.equal(padded[..., :-1, :-1], before)
    assert np.all(padded[..., -1, :].numpy() == 0.0)


def test_symmetric_weights_keep_each_channel_largest_weight_exact() -> None:
    """Symmetric int8 weights use [-127, 127] with scale max|w| / 127: each channel's
    largest-magnitude weight (BatchNorm folded in) is represented exactly. torch.ao's default
    [-128, 127] (scale max|w| / 127.5) moved it by half a step, the error that dominated
    EfficientNet-Lite0's depthwise convs."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    model = ReLU6Net().eval()
    calib = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    quantized = _quantize(model, calib, clamp=True)
    for conv, c, b in (("conv1", model.conv1, model.bn1), ("dw", model.dw, model.bn2)):
        assert b.running_mean is not None and b.running_var is not None
        folded, _ = fuse_conv_bn_weights(c.weight, c.bias, b.running_mean, b.running_var,
                                         b.eps, b.weight, b.bias)
        weight = quantized.get_submodule(conv).weight()
        assert int(weight.int_repr().min()) >= -127
        largest = folded.detach().abs().amax((1, 2, 3))
        assert torch.allclose(weight.dequantize().abs().amax((1, 2, 3)), largest,
                              rtol=1e-5), conv
