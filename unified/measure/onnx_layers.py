"""Which layers a compressed ONNX really changed, against the fp32 reference ONNX.

Exporters rename and reorder: the TorchScript exporter names weights after torch modules,
tf2onnx after TFLite tensors, a Core ML read-back after nothing in particular. So layers are
matched by what survives every exporter: graph order, op kind and weight shape (in the compute
op's own layout, OIHW for a conv, out × in for a linear). A layer whose channels were removed
matches a reference layer with at least as many channels. Then each matched pair is
compared: fewer channels (``thinned``), more exact zeros (``pruned``), a narrower stored type
or values on an integer grid (``quantized``), few distinct values (``shared values``).
Fine-tuning alone changes values without any of these and does not count as compressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from unified.measure.onnx_weights import _PASSTHROUGH, _attr, _expand_zero_point, _Graph

# compute op -> (weight input, scale input, zero-point input) (None: float weights)
_LAYER_OPS: dict[str, tuple[int, int | None, int | None]] = {
    "Conv": (1, None, None),
    "FusedConv": (1, None, None),
    "Gemm": (1, None, None),
    "MatMul": (1, None, None),
    "FusedMatMul": (1, None, None),
    "QLinearConv": (3, 4, 5),
    "QLinearMatMul": (3, 4, 5),
    "ConvInteger": (1, None, 3),
    "MatMulInteger": (1, None, 3),
    "DynamicQuantizeMatMul": (1, 2, 3),
    "MatMulIntegerToFloat": (1, 3, 5),
}
_FLOAT_STORAGE = frozenset({"float32", "float64"})
Signature = tuple[str, tuple[int, ...]]  # (conv | linear, weight shape, out-major)
GRID_TOLERANCE = 1e-3  # of one grid step
MAX_GRID_LEVELS = 256


@dataclass(frozen=True)
class OnnxLayer:
    """One conv / linear layer of an ONNX graph, its weight as the compute op sees it."""

    node: str
    kind: str  # conv | linear
    weight: np.ndarray  # effective values (dequantized), OIHW or (out, in)
    stored_dtype: str  # dtype of the tensor stored in the file

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.weight.shape)

    @property
    def signature(self) -> Signature:
        return self.kind, self.shape


class _Values(_Graph):
    """Constant evaluation that also dequantizes (DequantizeLinear of a constant)."""

    def effective(self, name: str) -> np.ndarray | None:
        node = self.producers.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            q = self.value(node.input[0])
            scale = self._optional(node, 1, 0)
            if q is None or scale is None:
                return None
            zp = self._optional(node, 2, 0)
            axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
            s = _expand_zero_point(scale.astype(np.float64), q.shape, axis, block)
            z = 0 if zp is None else _expand_zero_point(zp.astype(np.float64), q.shape, axis,
                                                        block)
            return (q.astype(np.float64) - z) * s
        if node is not None and node.op_type in _PASSTHROUGH:
            inner = self.effective(node.input[0])
            if inner is not None:
                try:
                    return self._apply(node, inner, 0)
                except (ValueError, IndexError, TypeError):
                    return None
        value = self.value(name)
        return None if value is None else np.asarray(value, dtype=np.float64)


def _canonical(node: onnx.NodeProto, weight: np.ndarray) -> tuple[str, np.ndarray] | None:
    """(kind, weight in the compute op's out-major layout), or None for an unknown form."""
    if weight.ndim >= 3:
        return "conv", weight
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        return "linear", weight
    return "linear", weight.T  # MatMul-like: x @ W with W (in, out)


def onnx_layers(model: onnx.ModelProto) -> list[OnnxLayer]:
    """The conv / linear layers of ``model`` with a constant weight, in graph order."""
    g = _Values(model.graph)
    out = []
    for node in model.graph.node:
        slots = _LAYER_OPS.get(node.op_type)
        if slots is None or len(node.input) <= slots[0]:
            continue
        w, scale_in, zp_in = slots
        name = node.input[w]
        stored = g.stored(name)
        if stored is None:
            continue
        if scale_in is None and zp_in is None:
            weight = g.effective(name)
        else:
            weight = _integer_weight(g, node, w, scale_in, zp_in)
        if weight is None:
            continue
        canonical = _canonical(node, weight)
        if canonical is not None:
            out.append(OnnxLayer(node.name, canonical[0], canonical[1], stored[2]))
    return out


def _integer_weight(g: _Values, node: onnx.NodeProto, w: int, scale_in: int | None,
                    zp_in: int | None) -> np.ndarray | None:
    """The dequantized weight of an integer op (scale 1 when the op does not hold it)."""
    q = g.value(node.input[w])
    if q is None:
        return None
    q = q.astype(np.float64)
    axis = 0 if q.ndim > 2 else -1
    zp = g._optional(node, zp_in, 0) if zp_in is not None else None
    scale = g._optional(node, scale_in, 0) if scale_in is not None else None
    z = 0.0 if zp is None else _expand_zero_point(zp.astype(np.float64), q.shape, axis)
    s = 1.0 if scale is None else _expand_zero_point(scale.astype(np.float64), q.shape, axis)
    return np.asarray((q - z) * s)


def load_layers(path: str | Path) -> list[OnnxLayer]:
    """The layers of the ONNX file at ``path``."""
    return onnx_layers(onnx.load(str(path)))


# --- matching ----------------------------------------------------------------------------


def _fits(ref: Signature, cand: Signature) -> int:
    """2: same kind and shape; 1: same kind and kernel, no more channels (thinned); 0: no."""
    (kind, shape), (cand_kind, cand_shape) = ref, cand
    if kind != cand_kind or len(shape) != len(cand_shape):
        return 0
    if shape == cand_shape:
        return 2
    if shape[2:] != cand_shape[2:]:
        return 0
    if kind == "conv" and (shape[1] == 1) != (cand_shape[1] == 1):
        return 0  # depthwise stays depthwise
    return 1 if cand_shape[0] <= shape[0] and cand_shape[1] <= shape[1] else 0


def match_layers(ref: list[Signature], cand: list[Signature]) -> list[int | None]:
    """For each reference layer, the index of its candidate layer (None: not found): the
    order-preserving pairing with the most exact-shape matches (an alignment of both lists)."""
    n, m = len(ref), len(cand)
    score = np.zeros((n + 1, m + 1), dtype=np.int64)
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            best = max(score[i + 1, j], score[i, j + 1])
            fit = _fits(ref[i], cand[j])
            if fit:
                best = max(best, fit + score[i + 1, j + 1])
            score[i, j] = best
    out: list[int | None] = [None] * n
    i = j = 0
    while i < n and j < m:
        fit = _fits(ref[i], cand[j])
        if fit and score[i, j] == fit + score[i + 1, j + 1]:
            out[i] = j
            i, j = i + 1, j + 1
        elif score[i, j] == score[i + 1, j]:
            i += 1
        else:
            j += 1
    return out


# --- what changed ------------------------------------------------------------------------


def on_grid(values: np.ndarray) -> bool:
    """Are these values k * step + offset for integers k, at most 256 levels (one output
    channel of a quantized weight, stored as float)?"""
    unique = np.unique(values)
    if unique.size < 2:
        return True
    if unique.size > MAX_GRID_LEVELS:
        return False
    step = float(np.min(np.diff(unique)))
    if step <= 0:
        return False
    k = (unique - unique[0]) / step
    return bool(k.max() < 2 * MAX_GRID_LEVELS
                and np.max(np.abs(k - np.rint(k))) <= GRID_TOLERANCE)


def how_changed(ref: OnnxLayer, cand: OnnxLayer) -> list[str]:
    """How ``cand`` is a compressed form of ``ref``: thinned, pruned (and all zero when no
    weight is left), quantized, float16, shared values; empty when it is not (unchanged, or
    only retrained)."""
    out = []
    if cand.shape != ref.shape:
        out.append("thinned")
    quantized = cand.stored_dtype not in _FLOAT_STORAGE
    # rounding to a grid zeroes small weights too: only many more zeros count as pruning then
    margin = 0.1 if quantized else 0.5 / max(cand.weight.size, 1)
    if float(np.mean(cand.weight == 0)) > float(np.mean(ref.weight == 0)) + margin:
        out.append("pruned")
        if not np.any(cand.weight):
            out.append("all zero")  # the whole layer pruned away
    if cand.stored_dtype == "float16":
        out.append("float16")
    elif cand.stored_dtype not in _FLOAT_STORAGE:
        out.append("quantized")
    elif cand.weight.size > 1 and not np.array_equal(cand.weight, ref.weight):
        rows = cand.weight.reshape(cand.weight.shape[0], -1)
        ref_rows = ref.weight.reshape(ref.weight.shape[0], -1)
        distinct = int(np.unique(cand.weight).size)
        if distinct <= MAX_GRID_LEVELS and distinct < int(np.unique(ref.weight).size):
            out.append("shared values")
        elif all(on_grid(row) for row in rows) and not all(on_grid(row) for row in ref_rows):
            out.append("quantized")
    return out


@dataclass(frozen=True)
class LayerComparison:
    """The candidate's layers against the reference's, by reference layer index."""

    changed: dict[int, list[str]]  # reference index -> how (non-empty)
    unchanged: list[int]  # matched, not compressed
    unmatched: list[int]  # reference layers with no counterpart in the candidate
    extra: int  # candidate layers matching no reference layer


def compare_layers(ref: list[OnnxLayer], cand: list[OnnxLayer]) -> LayerComparison:
    """Match ``cand`` to ``ref`` and say how each matched layer changed."""
    pairs = match_layers([r.signature for r in ref], [c.signature for c in cand])
    changed: dict[int, list[str]] = {}
    unchanged: list[int] = []
    unmatched: list[int] = []
    for i, j in enumerate(pairs):
        if j is None:
            unmatched.append(i)
            continue
        how = how_changed(ref[i], cand[j])
        if how:
            changed[i] = how
        else:
            unchanged.append(i)
    extra = len(cand) - sum(j is not None for j in pairs)
    return LayerComparison(changed, unchanged, unmatched, extra)

