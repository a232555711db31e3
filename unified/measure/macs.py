"""Multiply-accumulates (MACs) of an ONNX graph as stored: the theoretical cost of one
inference at batch 1, the ceiling a measured speedup can be read against.

Only what the graph really computes is counted: a conv's MACs follow its weight's shape, so
a thinned conv (fewer filters or channels) counts its new size, while zeros inside a dense
weight (unstructured sparsity) count like any other value. Integer ops count like their
float ops (QLinearConv and ConvInteger like Conv; QLinearMatMul, MatMulInteger and QGemm like
MatMul and Gemm): quantization changes what one MAC costs, not how many there are.
Elementwise ops, pooling, normalization and activations are not counted (the convention of
MAC counts: they are a few percent of a CNN's work).

Shapes come from onnx shape inference; a graph with ops it does not know (onnxruntime's
com.microsoft contrib ops) gets onnxruntime's symbolic shape inference, imported only then.
A symbolic batch dimension counts as 1. When a counted op's shapes stay unknown the count is
None, never a guess.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import onnx
from onnx import helper

__all__ = ["COUNTED_OPS", "count_macs", "graph_macs"]

Shape = tuple[int, ...]
Shapes = dict[str, Shape | None]


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _conv(weight: int) -> Callable[[onnx.NodeProto, Shapes], int | None]:
    """Conv-like: every output element is a dot product over weight.shape[1:] (C/group × k)."""

    def macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
        out, w = shapes.get(node.output[0]), shapes.get(node.input[weight])
        if out is None or w is None:
            return None
        return math.prod(out) * math.prod(w[1:])

    return macs


def _conv_transpose(node: onnx.NodeProto, shapes: Shapes) -> int | None:
    """Every input element is scattered through weight.shape[1:] (M/group × k)."""
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None:
        return None
    return math.prod(x) * math.prod(w[1:])


def _matmul(a_index: int, b_index: int,
            trans: tuple[str, str] | None = None) -> Callable[[onnx.NodeProto, Shapes], int | None]:
    """MatMul / Gemm-like: output elements × the shared dimension K."""

    def macs(node: onnx.NodeProto, shapes: Shapes) -> int | None:
        a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
        if a is None or b is None or not a or not b:
            return None
        trans_a = bool(_attr(node, trans[0], 0)) if trans else False
        trans_b = bool(_attr(node, trans[1], 0)) if trans else False
        a2 = (1, *a) if len(a) == 1 else a
        b2 = (*b, 1) if len(b) == 1 else b
        m, k = (a2[-1], a2[-2]) if trans_a else (a2[-2], a2[-1])
        n = b2[-2] if trans_b else b2[-1]
        batch = _broadcast(a2[:-2], b2[:-2])
        return None if batch is None else batch * m * k * n

    return macs


def _broadcast(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Elements of the broadcast of two batch shapes (numpy rules)."""
    size = 1
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and 1 not in (da, db):
            return None
        size *= max(da, db)
    return size


# op type → how its MACs follow from the shapes; inputs as onnx / onnxruntime define them
COUNTED_OPS: dict[str, Callable[[onnx.NodeProto, Shapes], int | None]] = {
    "Conv": _conv(1),
    "ConvInteger": _conv(1),
    "QLinearConv": _conv(3),  # x, x_scale, x_zero_point, w, ...
    "FusedConv": _conv(1),
    "ConvTranspose": _conv_transpose,
    "MatMul": _matmul(0, 1),
    "MatMulInteger": _matmul(0, 1),
    "MatMulIntegerToFloat": _matmul(0, 1),
    "DynamicQuantizeMatMul": _matmul(0, 1),
    "QLinearMatMul": _matmul(0, 3),  # a, a_scale, a_zero_point, b, ...
    "FusedMatMul": _matmul(0, 1, ("transA", "transB")),
    "Gemm": _matmul(0, 1, ("transA", "transB")),
    "FusedGemm": _matmul(0, 1, ("transA", "transB")),
    "QGemm": _matmul(0, 3, ("transA", "transB")),  # A, a_scale, a_zp, B, ...
}


def _dims(value: onnx.TypeProto) -> Shape | None:
    """Concrete dims of a tensor type; a symbolic leading (batch) dim counts as 1."""
    if not value.HasField("tensor_type") or not value.tensor_type.HasField("shape"):
        return None
    out = []
    for i, dim in enumerate(value.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            out.append(dim.dim_value)
        elif i == 0:
            out.append(1)  # the batch
        else:
            return None
    return tuple(out)


def _shapes(model: onnx.ModelProto) -> Shapes:
    graph = model.graph
    shapes: Shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.name not in shapes or shapes[value.name] is None:
            shapes[value.name] = _dims(value.type)
    for node in graph.node:  # Constant nodes carry their tensor's shape
        if node.op_type == "Constant":
            value = _attr(node, "value", None)
            if isinstance(value, onnx.TensorProto):
                shapes[node.output[0]] = tuple(value.dims)
    return shapes


def _count(model: onnx.ModelProto) -> int | None:
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        counter = COUNTED_OPS.get(node.op_type)
        if counter is None:
            continue
        macs = counter(node, shapes)
        if macs is None:
            return None
        total += macs
    return total


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference, which knows its contrib ops. Its driver loop
    is run here rather than through ``infer_shapes``, which saves an incompletely inferred
    model as ``sym_shape_infer_temp.onnx`` (with external data) into the working folder and
    raises: a partial result is enough, as the count checks every shape it needs. Its
    warnings ("Unable to determine if … treat as equal") are silenced: they would reach the
    console of a run, and the count does not depend on them."""
    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        inferred: onnx.ModelProto = inference.out_mp_
    except Exception:
        return None
    finally:
        log.setLevel(level)
    return inferred


def graph_macs(model: onnx.ModelProto) -> int | None:
    """MACs of one inference at batch 1 of an in-memory model; None when a counted op's
    shapes cannot be inferred."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    macs = _count(inferred)
    if macs is None:
        symbolic = _symbolic(model)
        macs = _count(symbolic) if symbolic is not None else None
    return macs


def count_macs(path: str | Path) -> int | None:
    """MACs of one inference at batch 1 of the ONNX file at ``path`` (see the module
    docstring for what counts)."""
    return graph_macs(onnx.load(str(path)))
