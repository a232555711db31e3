"""TFLite side of the TF-MOT backend: the converter (PTQ), the interpreter, tf2onnx.

The ONNX is converted from the TFLite file, so the harness measures what TFLite ships.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from adapters.tfmot._impl_bridge import keras, tf
from unified.spec.steps import Granularity, QuantDType, QuantizeStep, QuantMethod


def nhwc(x: np.ndarray) -> np.ndarray:
    """NCHW (torch, the harness) → NHWC (Keras, TFLite)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_tflite(model: keras.Model, ptq: QuantizeStep | None, qat_done: bool,
              calib_x: np.ndarray) -> bytes:
    """TFLite flatbuffer of ``model``: float, QAT int8, or the converter's own PTQ."""
    converter = _converter(model)
    if qat_done:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif (ptq is not None and ptq.method is QuantMethod.static and ptq.activations is not None
          and ptq.dtype is QuantDType.int):
        calib = nhwc(calib_x)

        def representative() -> Iterator[list[np.ndarray]]:
            for i in range(len(calib)):
                yield [calib[i:i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        # full-integer ops; input/output stay float32 (Quantize/Dequantize at the edges)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if ptq.granularity is Granularity.per_tensor:
            converter._experimental_disable_per_channel = True
    elif ptq is not None and ptq.dtype is QuantDType.float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif ptq is not None:  # dynamic range (also static without activations: weights only)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with _quiet():
        return bytes(converter.convert())


def _converter(model: keras.Model) -> Any:
    """A converter of the model's inference function, frozen as it is. (from_keras_model
    first writes the model out as a SavedModel and reads it back: nine tenths of the time
    of converting a small model, for the same graph.)"""
    first = model.inputs[0]
    spec = tf.TensorSpec([None, *first.shape[1:]], first.dtype)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    converter.experimental_lower_to_saved_model = False
    return converter


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def tflite_predict(path: Path, x_nhwc: np.ndarray, builtin_kernels: bool = False
                   ) -> np.ndarray:
    """Logits of the TFLite model, one sample at a time (TFLite models are batch 1): with the
    interpreter's default XNNPACK delegate, or with TFLite's builtin kernels only."""
    resolver = tf.lite.experimental.OpResolverType
    interpreter = tf.lite.Interpreter(
        model_path=str(path), num_threads=1,
        experimental_op_resolver_type=(resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
                                       if builtin_kernels else resolver.AUTO))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for i in range(len(x_nhwc)):
        interpreter.set_tensor(inp["index"], x_nhwc[i:i + 1].astype(inp["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(rows).astype(np.float32)


def _rename(model: Any, old: str, new: str) -> None:
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*model.graph.input, *model.graph.output):
        if value.name == old:
            value.name = new


def _decompose_gelu(model: Any) -> None:
    """TFLite fuses GELU into one GELU op (TF 2.21); tf2onnx 1.17 has no handler for it and
    leaves a 'TFL_GELU' node that no ONNX runtime knows. Rewrite it as the ONNX ops of its
    definition, x/2 · (1 + erf(x/√2)), or the tanh form when it was the approximate GELU."""
    from onnx import helper, numpy_helper

    nodes, consts = [], {}
    for node in model.graph.node:
        if node.op_type != "TFL_GELU":
            nodes.append(node)
            continue
        approximate = any(a.name == "approximate" and helper.get_attribute_value(a)
                          for a in node.attribute)
        x, y, tag = node.input[0], node.output[0], f"{node.output[0]}__gelu"
        consts.update({"gelu_half": 0.5, "gelu_one": 1.0, "gelu_rsqrt2": 2 ** -0.5,
                       "gelu_c": (2 / np.pi) ** 0.5, "gelu_k": 0.044715})
        if approximate:  # 0.5 x (1 + tanh(c (x + k x³)))
            inner = [helper.make_node("Mul", [x, x], [f"{tag}_x2"]),
                     helper.make_node("Mul", [f"{tag}_x2", x], [f"{tag}_x3"]),
                     helper.make_node("Mul", [f"{tag}_x3", "gelu_k"], [f"{tag}_kx3"]),
                     helper.make_node("Add", [x, f"{tag}_kx3"], [f"{tag}_s"]),
                     helper.make_node("Mul", [f"{tag}_s", "gelu_c"], [f"{tag}_cs"]),
                     helper.make_node("Tanh", [f"{tag}_cs"], [f"{tag}_t"])]
        else:
            inner = [helper.make_node("Mul", [x, "gelu_rsqrt2"], [f"{tag}_s"]),
                     helper.make_node("Erf", [f"{tag}_s"], [f"{tag}_t"])]
        nodes += [*inner,
                  helper.make_node("Add", [f"{tag}_t", "gelu_one"], [f"{tag}_a"]),
                  helper.make_node("Mul", [x, f"{tag}_a"], [f"{tag}_m"]),
                  helper.make_node("Mul", [f"{tag}_m", "gelu_half"], [y], name=node.name)]
    if not consts:
        return
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), k)
                                   for k, v in consts.items())


def tflite_to_onnx(tflite_path: Path, onnx_path: Path) -> dict[str, int]:
    """tf2onnx from the TFLite file, NCHW float input named ``input``, output ``logits``, its
    QDQ pairs tidied so that onnxruntime fuses what TFLite quantized (``_impl_qdq``); returns
    what the tidying did."""
    import onnx
    import tf2onnx

    from adapters.tfmot._impl_qdq import tidy

    interpreter = tf.lite.Interpreter(model_path=str(tflite_path))
    in_name = interpreter.get_input_details()[0]["name"]
    with _quiet():
        proto, _ = tf2onnx.convert.from_tflite(str(tflite_path), inputs_as_nchw=[in_name],
                                               opset=17)
    _rename(proto, proto.graph.input[0].name, "input")
    _rename(proto, proto.graph.output[0].name, "logits")
    _decompose_gelu(proto)
    done = tidy(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))
    return done


def onnx_distinct(path: Path, layers: list[str]) -> dict[str, int]:
    """Distinct values of each named layer's weight in the exported ONNX (tf2onnx names
    compute nodes after the Keras layers; the last MatMul is named after the output)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        init = weights.get(node.input[1])
        for layer in layers:
            if init is not None and f"/{layer}/" in node.name:
                out[layer] = int(np.unique(numpy_helper.to_array(init)).size)
    return out


def onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batch = session.get_inputs()[0].shape[0]
    if isinstance(batch, int):
        rows = [session.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(rows)
    return np.asarray(session.run(None, {"input": x})[0])
