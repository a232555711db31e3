"""NNI int8 on a MobileNet/EfficientNet-like block: the QDQ ONNX squeezelab builds from NNI's
scales computes what NNI's own simulation computes (real NNI PtqQuantizer, real onnxruntime).

The tiny model has what EfficientNet-Lite0 has: a Conv2d subclass with explicit zero padding,
ReLU6 between convs, a depthwise conv with a dead channel (zero weights, large bias: NNI gives
it the weight scale 1.2e-7), and inputs on an 8-bit grid mapped to [-1, 1] (every input is a
rounding tie of NNI's input grid, whose zero point is odd: NNI rounds zp + x / s, ONNX's
QuantizeLinear round(x / s) + zp)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

pytest.importorskip("nni")
import torch
import torch.nn.functional as F
from torch import nn


class SamePadConv(nn.Conv2d):
    """A Conv2d subclass that pads in its own forward (as EfficientNet's
    Conv2dStaticSamePadding)."""

    def __init__(self, cin: int, cout: int, groups: int = 1) -> None:
        super().__init__(cin, cout, 3, groups=groups)
        self.pad = nn.ZeroPad2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = SamePadConv(3, 8)
        self.act = nn.ReLU6()
        self.dw = SamePadConv(8, 8, groups=8)
        self.act2 = nn.ReLU6()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.dw(self.act(self.stem(x))))
        return cast(torch.Tensor, self.fc(x.mean((2, 3))))


STEP = 2.0 ** -7  # the input grid NNI calibrates below: exact in float32


def _pixels(n: int, seed: int) -> np.ndarray:
    """Inputs half-way between the steps of NNI's input grid (scale 2^-7, zero point 127: the
    calibration set spans [-127, 128] steps): every one a rounding tie, as 8-bit pixels
    scaled to [-1, 1] are for a 2/255 grid."""
    rng = np.random.default_rng(seed)
    x = ((rng.integers(-127, 127, (n, 3, 12, 12)) + 0.5) * STEP).astype(np.float32)
    x[0, 0, 0, :2] = (-127 * STEP, 128 * STEP)
    return x


def _quantize(model: nn.Module, calib: np.ndarray, tmp: Path) -> tuple[Any, dict[str, Any]]:
    """NNI's PtqQuantizer with the adapter's config; returns (quantizer, output plan)."""
    import nni
    import onnx
    from nni.compression.quantization import PtqQuantizer
    from nni.compression.utils import TorchEvaluator

    from adapters.nni._impl_common import cross_entropy_step
    from adapters.nni._impl_qdq_graph import output_plan
    from adapters.nni._impl_quant import _quant_config
    from unified.spec.steps import QuantizeStep, Recipe
    from unified.torchkit.export import export_onnx

    step = cast(QuantizeStep, Recipe.model_validate([{"quantize": {"method": "static", "weights": 8,
                                                "activations": 8,
                                                "granularity": "per_channel"}}]).steps[0])
    names = ["stem", "dw", "fc"]
    export_onnx(model, tmp / "plan.onnx", (3, 12, 12))
    outputs = output_plan(onnx.load(str(tmp / "plan.onnx")), names, set())

    def calibrate(m: nn.Module) -> float:
        with torch.no_grad():
            m(torch.from_numpy(calib))
        return 0.0

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    evaluator = TorchEvaluator(lambda *a, **k: None, optimizer, cross_entropy_step,
                               dummy_input=torch.zeros(1, 3, 12, 12), evaluating_func=calibrate)
    quantizer = PtqQuantizer(model, _quant_config(step, names, outputs), evaluator)
    quantizer.compress(max_steps=None, max_epochs=0)
    return quantizer, {"step": step, "names": names, "outputs": outputs}


def test_qdq_onnx_computes_what_nni_simulates(tmp_path: Path) -> None:
    import onnxruntime as ort

    from adapters.nni._impl_layers import register_layer_subclasses
    from adapters.nni._impl_qdq import build_qdq_onnx
    from adapters.nni._impl_quant import _effective_weights, _layer_quant, _round_biases
    from unified.torchkit.export import export_onnx

    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():  # a dead channel, as a BatchNorm fold leaves them
        model.dw.weight[3].zero_()
        cast(torch.Tensor, model.dw.bias)[3] = 50.0
    register_layer_subclasses(model)
    quantizer, how = _quantize(model, _pixels(64, 0), tmp_path)
    # the conv before ReLU6 needs no output scale: the depthwise conv's input is
    # quantized after the clip (a second, coarser grid before it cost most of the accuracy)
    assert "stem" not in how["outputs"]
    test = _pixels(32, 1)[1:]
    calibration = quantizer.get_calibration_config()
    layers = {n: _layer_quant(how["step"], calibration, n, how["outputs"])
              for n in how["names"]}
    assert _round_biases(model, layers) == 3  # NNI's simulation with the ONNX's int32 biases
    with torch.no_grad():
        simulated = model(torch.from_numpy(test)).numpy()
    stem_input = calibration["stem"]["_input_0"]
    assert float(stem_input["scale"].flatten()[0]) == STEP
    assert float(stem_input["zero_point"].flatten()[0]) == 127  # odd: ties round differently
    effective = _effective_weights(quantizer)
    quantizer.unwrap_model()
    with torch.no_grad():
        for name, weight in effective.items():
            cast(torch.Tensor, model.get_submodule(name).weight).copy_(weight)
    export_onnx(model, tmp_path / "float.onnx", (3, 12, 12))
    done = build_qdq_onnx(tmp_path / "float.onnx", tmp_path / "qdq.onnx", layers)
    assert done["weight_scales_raised_for_int32_bias"] == 1  # the dead channel's bias fits
    session = ort.InferenceSession(str(tmp_path / "qdq.onnx"),
                                   providers=["CPUExecutionProvider"])
    exported = session.run(None, {session.get_inputs()[0].name: test})[0]
    assert np.isfinite(exported).all()
    assert (exported.argmax(1) == simulated.argmax(1)).all()
    error = np.linalg.norm(exported - simulated) / np.linalg.norm(simulated)
    # float biases: 1.3e-5; input ties rounded as QuantizeLinear rounds them: 5e-4
    assert error < 5e-6, error


@pytest.mark.slow
def test_native_note_names_the_files_written(run_recipe) -> None:
    record = run_recipe("nni", [{"quantize": {"method": "static",
                                              "granularity": "per_channel"}}])
    note = next(n for n in record["notes"] if n.startswith("native artifact"))
    assert "fake-quantized weights" in note
    assert ("native.ts" in note) == (record["native_files"] is not None)
    assert record["status"] == "ok", record["reason"]
