"""A lossless clean-up applied to every ONNX the same way (the fp32 reference included),
so that sizes compare weights and graphs rather than how verbosely an exporter names things.

The TorchScript exporter stores int8 weights, scales and zero points as Constant nodes
with long names; on a small model that metadata outweighs the weights. Constants become
initializers, constant-only Identity / ConstantOfShape / Cast chains are folded, Casts to
the type their input already has are dropped, identical constants are shared and internal
tensors get short names. DequantizeLinear is never folded: weights keep their storage type.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def compact_verified(path: Path, sample: np.ndarray) -> str | None:
    """Compact ``path`` in place if the result computes exactly the same outputs on
    ``sample``; otherwise keep the original. Returns None, or why it was kept."""
    import onnxruntime as ort

    backup = path.with_suffix(".uncompacted.onnx")
    shutil.copy(path, backup)

    def run(file: Path) -> np.ndarray:
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        batch = first.shape[0] if isinstance(first.shape[0], int) else len(sample)
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        return np.asarray(session.run(None, {first.name: sample[:batch].astype(dtype)})[0])

    try:
        before = run(backup)
        compact_onnx(path)
        onnx.checker.check_model(str(path))
        same = np.array_equal(before, run(path))
    except Exception as exc:  # an exotic graph: measure it as the toolkit wrote it
        shutil.copy(backup, path)
        backup.unlink()
        return f"ONNX left as exported (lossless compaction failed: {type(exc).__name__})"
    if not same:
        shutil.copy(backup, path)
        backup.unlink()
        return "ONNX left as exported (compaction changed its outputs)"
    backup.unlink()
    return None


def compact_onnx(path: Path) -> int:
    """Lossless clean-up of the TorchScript exporter's QDQ graph, whose metadata outweighs
    the int8 weights of a small model: its Constant nodes (int8 weights, scales, zero
    points) become initializers, constant-only Identity / ConstantOfShape / Cast chains are
    folded, Casts to the type their input already has are dropped, identical constants are
    shared and internal tensors get short names. DequantizeLinear is never folded, so the
    weights stay int8 and the computation is unchanged. Returns how many nodes went away."""
    model = onnx.load(str(path))
    graph = model.graph
    before = len(graph.node)
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        changed = False
        kept = []
        for node in graph.node:
            value = _fold(node, consts)
            if value is not None and node.output[0] not in outputs:
                consts[node.output[0]] = value
                changed = True
            else:
                kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)
    del graph.initializer[:]  # shape inference needs them to type the Casts' inputs
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    _drop_noop_casts(model)
    used = {name for node in graph.node for name in node.input} | outputs
    _share_and_rename(model, {k: v for k, v in consts.items() if k in used})
    onnx.save(model, str(path))
    return before - len(graph.node)


_FOLDABLE = {"Constant", "Identity", "ConstantOfShape", "Cast"}


def _share_and_rename(model: onnx.ModelProto, consts: dict[str, np.ndarray]) -> None:
    """One initializer per distinct constant; short names for every internal tensor."""
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    rename: dict[str, str] = {}
    by_content: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    initializers = []
    for name, value in consts.items():
        key = (value.dtype.str, value.shape, value.tobytes())
        if key in by_content:
            rename[name] = by_content[key]
            continue
        short = f"c{len(by_content)}"
        by_content[key] = short
        rename[name] = short
        initializers.append(numpy_helper.from_array(value, short))
    for node in graph.node:
        for out in node.output:
            if out and out not in keep and out not in rename:
                rename[out] = f"t{len(rename)}"
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.value_info[:]


def _fold(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> np.ndarray | None:
    if node.op_type not in _FOLDABLE or len(node.output) != 1:
        return None
    if any(name not in consts for name in node.input if name):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Constant":
        if "value" not in attrs:
            return None
        return numpy_helper.to_array(attrs["value"])
    source = consts[node.input[0]]
    if node.op_type == "Identity":
        return source
    if node.op_type == "Cast":
        return source.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    fill = attrs.get("value")
    dtype = np.float32 if fill is None else helper.tensor_dtype_to_np_dtype(fill.data_type)
    scalar = 0 if fill is None else numpy_helper.to_array(fill).reshape(-1)[0]
    return np.full(tuple(int(d) for d in source), scalar, dtype=dtype)


def _drop_noop_casts(model: onnx.ModelProto) -> None:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input)}
    graph = model.graph
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        if node.op_type == "Cast" and node.output[0] not in outputs:
            to = next(a.i for a in node.attribute if a.name == "to")
            if types.get(node.input[0]) == to:
                rename[node.output[0]] = node.input[0]
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


