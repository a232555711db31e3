"""A lossless clean-up applied to every ONNX the same way (the fp32 reference included),
so that sizes compare weights and graphs rather than how verbosely an exporter names things.

The TorchScript exporter stores int8 weights, scales and zero points as Constant nodes
with long names; on a small model that metadata outweighs the weights. Constants become
initializers, constant-only Identity / ConstantOfShape / Cast chains are folded, Casts to
the type their input already has are dropped and exporter-generated tensor names get short
ones. DequantizeLinear is never folded: weights keep their storage type,
and constants are never shared between nodes; the compacted file replaces the original only
if it computes the same outputs and onnxruntime runs the same kernels on it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def compact_verified(path: Path, sample: np.ndarray) -> str | None:
    """Compact ``path`` in place if the result computes exactly the same outputs on
    ``sample`` and onnxruntime runs the same kernels on it; otherwise keep the original.
    Returns None, or why the file was left as exported."""
    import onnxruntime as ort

    from unified.measure.onnx_inspect import optimized_op_counts

    def run(file: Path) -> np.ndarray:
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        batch = first.shape[0] if isinstance(first.shape[0], int) else len(sample)
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        return np.asarray(session.run(None, {first.name: sample[:batch].astype(dtype)})[0])

    backup = path.with_suffix(".uncompacted.onnx")
    shutil.copy(path, backup)
    reason = None
    try:
        before, kernels = run(backup), optimized_op_counts(backup)
        compact_onnx(path)
        onnx.checker.check_model(str(path))
        if not np.array_equal(before, run(path)):
            reason = "ONNX left as exported (compaction changed its outputs)"
        elif optimized_op_counts(path) != kernels:
            reason = "ONNX left as exported (compaction changed the fused kernels)"
        else:
            backup.unlink()
            return None
    except Exception as exc:  # an exotic graph: measure it as the toolkit wrote it
        reason = f"ONNX left as exported (lossless compaction failed: {type(exc).__name__})"
    shutil.copy(backup, path)
    backup.unlink()
    return reason


def compact_onnx(path: Path) -> int:
    """Compact ``path`` in place (see the module docstring); returns how many nodes went."""
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
    _rename_generated(model, {k: v for k, v in consts.items() if k in used})
    onnx.save(model, str(path))
    return before - len(graph.node)


_FOLDABLE = {"Constant", "Identity", "ConstantOfShape", "Cast"}


GENERATED = ("/", "onnx::")  # the TorchScript exporter's names for its own tensors
# tf2onnx's names for its own tensors end in a process-wide counter (make_name) whose value,
# e.g. for folded constants, varies from one process to the next: numbered names too
NUMBERED = re.compile(r"__\d+(:\d+)?$")


def _rename_generated(model: onnx.ModelProto, consts: dict[str, np.ndarray]) -> None:
    """Constants become initializers; exporter-generated tensor names get short ones;
    meaningful names are kept. Constants are never shared between nodes: onnxruntime's
    fusion and its quantizer (which refuses a weight used by two nodes) look at that."""
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    rename: dict[str, str] = {}

    def short(name: str) -> str:
        if name in keep or not (name.startswith(GENERATED) or NUMBERED.search(name)):
            return name
        return rename.setdefault(name, f"t{len(rename)}")

    # in order of first use: an exporter's own order of constants may vary between runs
    first_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            first_use.setdefault(name, index)
    ordered = sorted(consts.items(), key=lambda item: first_use.get(item[0], len(graph.node)))
    initializers = [numpy_helper.from_array(value, short(name)) for name, value in ordered]
    for node in graph.node:
        node.input[:] = [short(n) if n else n for n in node.input]
        node.output[:] = [short(n) if n else n for n in node.output]
        node.doc_string = ""  # node names stay: they map ops back to torch modules
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


