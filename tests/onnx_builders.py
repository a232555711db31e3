"""Hand-built ONNX models with known answers, for the inspection and harness tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime >= 1.20 to load


def save(graph: onnx.GraphProto, path: Path, *, external: bool = False) -> Path:
    """Returns `path` after checking the graph and saving it (weights external if asked)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    if external:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def init(name: str, array: np.ndarray | np.generic) -> onnx.TensorProto:
    """Returns an initializer holding `array` under `name`."""
    return numpy_helper.from_array(np.asarray(array), name)


def conv_gemm(
    conv_w: np.ndarray, conv_b: np.ndarray, gemm_w: np.ndarray, gemm_b: np.ndarray, hw: int = 4
) -> onnx.GraphProto:
    """Returns x[N,C,hw,hw] -> Conv(3x3, pad 1) -> Relu -> Flatten -> Gemm(transB) -> logits."""
    out_c, in_c = conv_w.shape[:2]
    assert gemm_w.shape[1] == out_c * hw * hw, "Gemm weight must be [classes, C*hw*hw]"
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["y"], name="fc", transB=1),
    ]
    return helper.make_graph(
        nodes,
        "conv_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", gemm_w.shape[0]])],
        [
            init("conv_w", conv_w.astype(np.float32)),
            init("conv_b", conv_b.astype(np.float32)),
            init("gemm_w", gemm_w.astype(np.float32)),
            init("gemm_b", gemm_b.astype(np.float32)),
        ],
    )


def qdq_conv(
    w: np.ndarray, w_zp: int | np.ndarray, bias: np.ndarray, hw: int = 8
) -> onnx.GraphProto:
    """Returns a QDQ conv: uint8 activations, int8 weight `w` (zero point w_zp), int32 bias.

    x -> Q(u8) -> DQ -> Conv(DQ(w), DQ(bias)) -> Q(u8) -> DQ -> y: the U8S8 form onnxruntime
    fuses into QLinearConv. Scales are 0.05 (bias scale = x_scale * w_scale). An array w_zp
    makes the weight per-output-channel (axis 0, one scale of 0.05 per channel).
    """
    out_c, in_c, k, _ = w.shape
    x_scale, w_scale = 0.05, 0.05
    per_channel = np.ndim(w_zp) > 0
    w_scales = np.full(out_c, w_scale, np.float32) if per_channel else np.float32(w_scale)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", axis=0
        ),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["bd"], name="dq_b"),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["cq"], name="q_y"),
        helper.make_node("DequantizeLinear", ["cq", "y_scale", "y_zp"], ["y"], name="dq_y"),
    ]
    out_hw = hw - k + 1
    return helper.make_graph(
        nodes,
        "qdq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_c, out_hw, out_hw])],
        [
            init("x_scale", np.float32(x_scale)),
            init("x_zp", np.uint8(128)),
            init("w_q", w.astype(np.int8)),
            init("w_scale", w_scales),
            init("w_zp", np.asarray(w_zp, dtype=np.int8)),
            init("b_q", bias.astype(np.int32)),
            init("b_scale", np.float32(x_scale * w_scale)),
            init("b_zp", np.int32(0)),
            init("y_scale", np.float32(0.1)),
            init("y_zp", np.uint8(128)),
        ],
    )


def linear(
    weight: np.ndarray, bias: np.ndarray, batch: int | str = "N", dtype: type = np.float32
) -> onnx.GraphProto:
    """Returns x[batch, F, 1, 1] -> Flatten -> Gemm(weight [K, F], transB) + bias -> y[batch, K].

    `dtype` (float32 or float16) is the type of the input, the weights and the output.
    """
    classes, features = weight.shape
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="fc", transB=1),
    ]
    return helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", elem, [batch, features, 1, 1])],
        [helper.make_tensor_value_info("y", elem, [batch, classes])],
        [init("w", weight.astype(dtype)), init("b", bias.astype(dtype))],
    )


def fake_quant_conv(w: np.ndarray, scale: float) -> onnx.GraphProto:
    """Returns x -> Conv(DQ(Q(w float32))) -> y: a fake-quantized weight still stored as float."""
    out_c, in_c, k, _ = w.shape
    nodes = [
        helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["wq"], name="q_w"),
        helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["wd"], name="dq_w"),
        helper.make_node("Conv", ["x", "wd"], ["y"], name="conv"),
    ]
    return helper.make_graph(
        nodes,
        "fake_quant_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_c, 9 - k, 9 - k])],
        [init("w", w.astype(np.float32)), init("s", np.float32(scale)), init("zp", np.int8(0))],
    )


def transposed_matmul(weight: np.ndarray) -> onnx.GraphProto:
    """Returns x[N, F] -> MatMul(x, Transpose(weight [K, F])) -> y[N, K]: a traced weight."""
    classes, features = weight.shape
    nodes = [
        helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm"),
    ]
    return helper.make_graph(
        nodes,
        "transposed_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [init("w", weight.astype(np.float32))],
    )


def nhwc_identity(hw: int, channels: int) -> onnx.GraphProto:
    """Returns a model whose input is NHWC x[N, hw, hw, channels] (output = input)."""
    shape: list[int | str] = ["N", hw, hw, channels]
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="id")],
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
