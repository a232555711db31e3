"""The QDQ ONNX of an NNI-quantized model, built from NNI's own scales: the float model's
ONNX with QuantizeLinear / DequantizeLinear inserted (NNI 3.0 has no CPU quantized export).

Weights: int8 symmetric with NNI's weight scales (NNI's int8 range [-127, 127]); inputs: a
uint8 QDQ pair with NNI's activation scale / zero point before every quantized conv/linear;
biases: int32 at input_scale × weight_scale (what onnxruntime needs to fuse QLinearConv).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT8_MIN, INT8_MAX = -127, 127  # NNI's symmetric int8 range


@dataclass
class LayerQuant:
    """What the QDQ ONNX needs for one conv/linear: NNI's scales, on the integer grid of the
    weights the float model carries."""

    weight_scale: np.ndarray  # (C,) per output channel, or () per tensor
    input_scale: float | None
    input_zero_point: int | None


def _scale_for_onnx(scale: np.ndarray) -> np.ndarray:
    flat = np.asarray(scale, dtype=np.float32).reshape(-1)
    return flat.reshape(()) if flat.size == 1 else flat


def _weight_module(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str | None:
    """The torch module whose ``<module>.weight`` initializer this Conv / Gemm multiplies."""
    module = None
    if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
        wname = node.input[1]
        if wname.endswith(".weight"):
            module = wname[: -len(".weight")]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if trans_b != 1:
            module = None  # torch Linear exports transB=1: weight rows = output channels
    return module


class _Graph:
    """The nodes and new initializers of the graph being rewritten."""

    def __init__(self, inits: dict[str, onnx.TensorProto]) -> None:
        self.inits = inits
        self.new_inits: list[onnx.TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def dequantize(self, tag: str, what: str, values: np.ndarray, scale: np.ndarray,
                   zero_point: np.ndarray) -> str:
        """Initializers ``<tag>.<what>_*`` and a DequantizeLinear of them (per output
        channel: axis 0); returns its output name."""
        kind = {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32"}[values.dtype]
        names = [f"{tag}.{what}_{kind}", f"{tag}.{what}_scale", f"{tag}.{what}_zero_point"]
        self.new_inits += [numpy_helper.from_array(v, n)
                           for v, n in zip((values, scale, zero_point), names, strict=True)]
        out = f"{tag}.{what}_dq"
        self.nodes.append(helper.make_node("DequantizeLinear", names, [out],
                                           name=f"{tag}.{what}_DequantizeLinear", axis=0))
        return out


def _quantize_weight(g: _Graph, node: onnx.NodeProto, tag: str, w_scale: np.ndarray) -> float:
    """The weight as int8 on NNI's grid behind a DequantizeLinear; returns how far the float
    weights were from that grid (0 when NNI's fake-quant weights were written back)."""
    weight = numpy_helper.to_array(g.inits[node.input[1]]).astype(np.float64)
    bshape = (-1,) + (1,) * (weight.ndim - 1)
    grid = weight / (w_scale.reshape(bshape) if w_scale.ndim else w_scale)
    w_int = np.clip(np.round(grid), INT8_MIN, INT8_MAX).astype(np.int8)
    node.input[1] = g.dequantize(tag, "weight", w_int, w_scale,
                                 np.zeros(w_scale.shape, dtype=np.int8))
    return float(np.abs(grid - np.round(grid)).max())


def _quantize_input_and_bias(g: _Graph, node: onnx.NodeProto, tag: str, lq: LayerQuant,
                             w_scale: np.ndarray) -> None:
    """A uint8 QDQ pair on the input with NNI's activation scale; the bias as int32."""
    x_scale = np.asarray(lq.input_scale, dtype=np.float32)
    x_zp = np.asarray(lq.input_zero_point, dtype=np.uint8)
    g.new_inits += [numpy_helper.from_array(x_scale, f"{tag}.input_scale"),
                    numpy_helper.from_array(x_zp, f"{tag}.input_zero_point")]
    x = node.input[0]
    g.nodes.append(helper.make_node(
        "QuantizeLinear", [x, f"{tag}.input_scale", f"{tag}.input_zero_point"],
        [f"{tag}.input_q"], name=f"{tag}.input_QuantizeLinear"))
    g.nodes.append(helper.make_node(
        "DequantizeLinear", [f"{tag}.input_q", f"{tag}.input_scale",
                             f"{tag}.input_zero_point"],
        [f"{tag}.input_dq"], name=f"{tag}.input_DequantizeLinear"))
    node.input[0] = f"{tag}.input_dq"
    if len(node.input) > 2 and node.input[2] in g.inits:
        bias = numpy_helper.to_array(g.inits[node.input[2]]).astype(np.float64)
        b_scale = (float(x_scale) * w_scale).astype(np.float32)
        b_int = np.round(bias / b_scale.astype(np.float64)).astype(np.int32)
        node.input[2] = g.dequantize(tag, "bias", b_int, b_scale,
                                     np.zeros(b_scale.shape, np.int32))


def build_qdq_onnx(
    float_path: Path, out_path: Path, layers: dict[str, LayerQuant]
) -> dict[str, Any]:
    """Insert QuantizeLinear/DequantizeLinear into the float ONNX for every layer whose weight
    initializer is ``<module>.weight``; returns what was done (for the record)."""
    model = onnx.load(str(float_path))
    graph = model.graph
    g = _Graph({i.name: i for i in graph.initializer})
    quantized: list[str] = []
    max_error = 0.0
    for node in graph.node:
        module = _weight_module(node, g.inits)
        lq = layers.get(module) if module is not None else None
        if lq is None:
            g.nodes.append(node)
            continue
        tag = module.replace(".", "_") if module else node.name
        w_scale = _scale_for_onnx(lq.weight_scale)
        max_error = max(max_error, _quantize_weight(g, node, tag, w_scale))
        if lq.input_scale is not None and lq.input_zero_point is not None:
            _quantize_input_and_bias(g, node, tag, lq, w_scale)
        g.nodes.append(node)
        quantized.append(module or "")
    used = {i for n in g.nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(g.nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + g.new_inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return {"qdq_layers": quantized, "weight_grid_max_error": round(max_error, 6)}
