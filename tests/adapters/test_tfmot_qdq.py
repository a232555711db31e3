"""The TF-MOT backend's QDQ clean-up on a hand-built graph shaped like what tf2onnx writes for
a ViT's class token: an int8 constant, broadcast to the batch, concatenated with quantized
patch embeddings. Real onnxruntime; no TensorFlow needed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from adapters.tfmot._impl_qdq import tidy

SCALE, ZERO_POINT = 0.05, -11  # TFLite gives a Concat's inputs its output's parameters


def _class_token_graph() -> onnx.ModelProto:
    token = np.array([[[-40, 3, 100, -128]]], np.int8)  # (1, 1, 4): a quantized constant
    inits = [
        numpy_helper.from_array(token, "token_q"),
        numpy_helper.from_array(np.array(SCALE, np.float32), "scale"),
        numpy_helper.from_array(np.array(ZERO_POINT, np.int8), "zp"),
        numpy_helper.from_array(np.array([2, 1, 4], np.int64), "batch_shape"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["x_q"]),
        helper.make_node("Expand", ["token_q", "batch_shape"], ["token_b"]),
        helper.make_node("Concat", ["token_b", "x_q"], ["joined_q"], axis=1),
        helper.make_node("DequantizeLinear", ["joined_q", "scale", "zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "class_token",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_an_int8_constant_concatenated_with_uint8_activations_moves_with_them() -> None:
    model = _class_token_graph()
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    expected = _run(model, x)  # int8 all the way: what TFLite computes
    done = tidy(model)
    assert done["activation_qdq_to_uint8"] == 2
    assert done["int8_inputs_shifted_to_uint8"] == 1
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(_run(model, x), expected)  # the same real values
    token = (np.array([-40, 3, 100, -128]) - ZERO_POINT) * SCALE
    np.testing.assert_allclose(expected[:, 0], np.stack([token, token]), rtol=1e-6)


def test_nothing_to_shift_without_mixed_inputs() -> None:
    model = _class_token_graph()
    model.graph.node[2].input[0] = "x_q"  # Concat of the activation with itself
    done = tidy(model)
    assert done["int8_inputs_shifted_to_uint8"] == 0
