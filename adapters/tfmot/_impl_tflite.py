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


def tflite_predict(path: Path, x_nhwc: np.ndarray) -> np.ndarray:
    """Logits of the TFLite model, one sample at a time (TFLite models are batch 1)."""
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=1)
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
