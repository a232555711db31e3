"""Exact clean-ups of the QDQ graph tf2onnx writes for an int8 TFLite model, so that
onnxruntime fuses every layer TFLite quantized (nothing here changes a value).

tf2onnx keeps TFLite's int8 activations (asymmetric, zero point in [-128, 127]) and puts
layout ops between a QuantizeLinear and its DequantizeLinear (``Q → Reshape → DQ`` at the
input and before a Dense). onnxruntime fuses a layer only between a DequantizeLinear and a
QuantizeLinear, converts int8 activations to uint8 only for adjacent Q → DQ pairs with one
consumer, and leaves the rest in float (measured: 3 of 8 compute ops of the quickstart model).
So:

- ``Q → layout op → DQ`` becomes ``layout op → Q → DQ`` (a per-tensor quantization commutes
  with moving values around);
- int8 activation quantization becomes uint8 with the zero point moved by 128
  (``q_u8 = q_s8 + 128``: the same real values); weights stay int8, as onnxruntime wants.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _per_tensor(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    scale = inits.get(node.input[1])
    return scale is not None and int(np.prod(scale.dims)) == 1


def move_layout_before_quantize(model: onnx.ModelProto) -> int:
    """``Q → layout → DQ`` as ``layout → Q → DQ`` (per-tensor Q only); returns how many."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = _consumers(graph)
    moved = 0
    for node in graph.node:
        if node.op_type not in LAYOUT_OPS:
            continue
        q = producers.get(node.input[0])
        after = consumers.get(node.output[0], [])
        if (q is None or q.op_type != "QuantizeLinear" or not _per_tensor(q, inits)
                or len(consumers.get(q.output[0], [])) != 1 or not after
                or any(c.op_type != "DequantizeLinear" for c in after)):
            continue
        x, q_out, layout_out = q.input[0], q.output[0], node.output[0]
        node.input[0], node.output[0] = x, f"{layout_out}_float"
        q.input[0], q.output[0] = f"{layout_out}_float", q_out
        for dq in after:
            dq.input[0] = q_out
        moved += 1
    if moved:
        _topological_sort(graph)
    return moved


def _topological_sort(graph: onnx.GraphProto) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        for node in pending:
            if node not in rest:
                ordered.append(node)
                ready.update(node.output)
        if len(rest) == len(pending):
            raise ValueError("the graph has a cycle")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def activations_to_uint8(model: onnx.ModelProto) -> int:
    """int8 activation Q / DQ → uint8 with zero point + 128; returns how many nodes."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    converted: dict[str, str] = {}
    count = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            continue  # a weight: int8 is what onnxruntime's kernels take
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != TensorProto.INT8:
            continue
        if zp.name not in converted:
            shifted = numpy_helper.to_array(zp).astype(np.int16) + 128
            name = f"{zp.name}_uint8"
            graph.initializer.append(numpy_helper.from_array(shifted.astype(np.uint8), name))
            converted[zp.name] = name
        node.input[2] = converted[zp.name]
        count += 1
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return count


def tidy(model: onnx.ModelProto) -> dict[str, int]:
    """Both clean-ups, in place; what was done (for the record's details)."""
    return {"layout_ops_moved_before_quantize": move_layout_before_quantize(model),
            "activation_qdq_to_uint8": activations_to_uint8(model)}
