"""MACs of ONNX graphs: hand-built graphs with counts worked out by hand, quantized graphs
that must count like their float ones, and a real exported model against torch's shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_builders as build
import pytest
from onnx import TensorProto, helper

from unified.measure.macs import count_macs, graph_macs

RNG = np.random.default_rng(3)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", build.OPSET)])
    model.ir_version = build.IR_VERSION
    onnx.checker.check_model(model)
    return model


def _conv_gemm(out_c: int, zeros: float = 0.0) -> onnx.ModelProto:
    """Conv 3→out_c 3×3 pad 1 on 4×4, then Gemm to 10 classes."""
    conv_w = RNG.normal(size=(out_c, 3, 3, 3))
    conv_w[RNG.random(conv_w.shape) < zeros] = 0.0
    return _model(build.conv_gemm(conv_w, np.zeros(out_c), RNG.normal(size=(10, out_c * 16)),
                                  np.zeros(10)))


def test_conv_and_gemm() -> None:
    # conv: 4 filters × 4×4 outputs, each a dot product over 3 channels × 3×3 = 27
    # gemm: 10 classes × 64 features
    assert graph_macs(_conv_gemm(4)) == 4 * 16 * 27 + 10 * 64 == 2368


def test_zeros_do_not_reduce_macs_but_a_thinned_conv_does() -> None:
    assert graph_macs(_conv_gemm(4, zeros=0.9)) == 2368  # same shape: same work
    assert graph_macs(_conv_gemm(2)) == 2 * 16 * 27 + 10 * 32 == 1184  # half the filters


def test_grouped_conv_counts_its_group_size() -> None:
    # depthwise 3×3 on 4 channels of 8×8, pad 1: 4 × 64 outputs × 9
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], group=4, pads=[1] * 4)], "dw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [build.init("w", RNG.normal(size=(4, 1, 3, 3)).astype(np.float32))])
    assert graph_macs(_model(graph)) == 4 * 64 * 9 == 2304


def test_conv_transpose_and_batched_matmul() -> None:
    # ConvTranspose: 2 input channels of 4×4, each element through 3 filters of 3×3
    transpose = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"])], "ct",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])],
        [build.init("w", RNG.normal(size=(2, 3, 3, 3)).astype(np.float32))])
    assert graph_macs(_model(transpose)) == 2 * 16 * 3 * 9 == 864
    # MatMul [2, 3, 4, 5] × [5, 6]: 2·3 batches of 4×5 by 5×6
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 6])],
        [build.init("b", RNG.normal(size=(5, 6)).astype(np.float32))])
    assert graph_macs(_model(matmul)) == 2 * 3 * 4 * 5 * 6 == 720


def test_integer_ops_count_like_their_float_ops() -> None:
    w = RNG.integers(-100, 100, size=(10, 4, 5, 5))
    qdq = _model(build.qdq_conv(w, 0, np.arange(10)))
    # 10 filters × 4×4 outputs (8 - 5 + 1) × 4 channels × 5×5
    assert graph_macs(qdq) == 10 * 16 * 100 == 16000
    scalar = [("x_scale", np.float32(0.05)), ("x_zp", np.uint8(128)), ("w_scale",
              np.float32(0.05)), ("w_zp", np.int8(0)), ("y_scale", np.float32(0.1)),
              ("y_zp", np.uint8(128))]
    qlinear = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                          "y_scale", "y_zp"], ["y"])], "qlinear",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 10, 4, 4])],
        [build.init("w", w.astype(np.int8)), *[build.init(n, v) for n, v in scalar]])
    assert graph_macs(_model(qlinear)) == 16000
    integer = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w"], ["c"]),
         helper.make_node("Reshape", ["c", "shape"], ["f"]),
         helper.make_node("MatMulInteger", ["a", "m"], ["y"])], "integer",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 8, 8]),
         helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 10]),
         helper.make_tensor_value_info("f", TensorProto.INT32, [1, 160])],
        [build.init("w", w.astype(np.int8)), build.init("shape", np.array([1, 160])),
         build.init("m", RNG.integers(-9, 9, size=(16, 10)).astype(np.int8))])
    assert graph_macs(_model(integer)) == 16000 + 16 * 10


def test_unknown_spatial_size_is_none_not_a_guess() -> None:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])], "dynamic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "H2", "W2"])],
        [build.init("w", RNG.normal(size=(2, 3, 3, 3)).astype(np.float32))])
    assert graph_macs(_model(graph)) is None


def _onnxruntime_quantized(float_path: Path, tmp_path: Path, mode: str) -> Path:
    """The float model quantized by onnxruntime: dynamic, or static in QOperator format
    (QLinearConv and the com.microsoft QGemm, which onnx's shape inference does not know)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    out = tmp_path / f"{mode}.onnx"
    if mode == "dynamic":
        quantize_dynamic(str(float_path), str(out))
        return out

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{"x": RNG.normal(size=(1, 3, 4, 4)).astype(np.float32)}
                              for _ in range(4)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.rows, None)

    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QOperator)
    return out


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_onnxruntime_quantized_graphs_count_like_the_float_graph(tmp_path: Path,
                                                                 mode: str) -> None:
    float_path = tmp_path / "float.onnx"
    onnx.save(_conv_gemm(4), str(float_path))
    quantized = _onnxruntime_quantized(float_path, tmp_path, mode)
    ops = {n.op_type for n in onnx.load(str(quantized)).graph.node}
    assert ops & {"QLinearConv", "ConvInteger", "MatMulInteger", "QGemm",
                  "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops
    assert count_macs(quantized) == count_macs(float_path) == 2368


def test_an_exported_model_counts_what_torch_computes(tiny_reference: Any) -> None:
    """The tiny reference's ONNX (BatchNorm folded, residual add) against the convs and
    linears of the torch model, counted from the shapes torch gives them."""
    import torch
    from tiny import TINY_SCENARIO

    from unified.torchkit.models import build_model
    from unified.torchkit.training import set_seed

    spec = TINY_SCENARIO["model"]
    set_seed(0)
    model = build_model(spec["source"], spec["num_classes"], tuple(spec["input_shape"])).eval()
    expected = 0

    def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal expected
        weight = module.weight
        expected += output.numel() * int(np.prod(weight.shape[1:]))

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, *spec["input_shape"]))
    assert expected > 0
    assert count_macs(tiny_reference.onnx) == expected
