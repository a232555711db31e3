"""Conv / linear weights of an ONNX graph, traced back to the tensors that store them.

Weights reach their compute op through DequantizeLinear, Transpose, Reshape, Cast and the
like; distinct values and zeros are counted on the STORED tensor (int8 values for quantized
weights, against their zero point). Used by :mod:`unified.measure.onnx_inspect`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class WeightInfo:
    """One conv/linear weight tensor, described as it is stored in the file."""

    name: str  # initializer (or Constant output) name
    node: str  # consuming compute node's name
    op_type: str  # Conv | Gemm | MatMul | QLinearConv | ConvInteger | MatMulInteger | ...
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name of the stored tensor
    size: int  # element count
    zeros: int  # stored value == 0 (quantized: stored value == its zero point)
    distinct: int  # number of distinct stored values


# op_type -> (weight input, weight zero-point input or None, bias inputs, zero-point axis).
# The zero-point axis is the weight axis a 1-D (per-channel) zero point runs along.
_WEIGHT_SLOTS: dict[str, tuple[int, int | None, tuple[int, ...], int]] = {
    "Conv": (1, None, (2,), 0),
    "ConvTranspose": (1, None, (2,), 0),
    "Gemm": (1, None, (2,), 0),
    "MatMul": (1, None, (), 0),
    "FusedConv": (1, None, (2,), 0),
    "FusedGemm": (1, None, (2,), 0),
    "FusedMatMul": (1, None, (), 0),
    "QLinearConv": (3, 5, (8,), 0),
    "QLinearMatMul": (3, 5, (), -1),
    "QGemm": (3, 5, (6,), -1),
    "ConvInteger": (1, 3, (), 0),
    "MatMulInteger": (1, 3, (), -1),
    "MatMulIntegerToFloat": (1, 5, (6,), -1),
    "DynamicQuantizeMatMul": (1, 3, (4,), -1),
    "MatMulNBits": (1, 3, (5,), 0),  # packed; handled by _nbits_weight
}

# Ops that only move, reshape or re-type a constant on its way to the compute op.
_PASSTHROUGH = frozenset(
    {"Identity", "Transpose", "Reshape", "Cast", "Unsqueeze", "Squeeze", "Flatten"}
)

_PLAIN_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        *(np.bool_, np.int8, np.int16, np.int32, np.int64),
        *(np.uint8, np.uint16, np.uint32, np.uint64, np.float16, np.float32, np.float64),
    )
)

# ---------------------------------------------------------------- constant evaluation


def _countable(values: np.ndarray) -> np.ndarray:
    """Returns values in a plain numpy dtype that compares and sorts exactly."""
    if values.dtype in _PLAIN_DTYPES:
        return values
    # ml_dtypes types (int4, uint4, float8, bfloat16 ...) convert exactly to wider types.
    if "uint" in values.dtype.name:
        return values.astype(np.uint8)
    if "int" in values.dtype.name:
        return values.astype(np.int8)
    return values.astype(np.float32)


def _constant_attr(node: onnx.NodeProto) -> tuple[onnx.TensorProto | None, np.ndarray | None]:
    """Returns (TensorProto, value) of a Constant node; the proto is None for scalar forms."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t, numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return None, np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return None, np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return None, np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return None, np.array(list(attr.ints), dtype=np.int64)
    return None, None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """Returns the value of a node attribute, or default."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _expand_zero_point(
    zp: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int = 0
) -> np.ndarray:
    """Returns the zero point broadcastable to `shape`: per-tensor, per-axis or blocked."""
    if zp.size == 1 or not shape:
        return zp.reshape(())
    axis %= len(shape)
    if block_size > 0 and zp.ndim == len(shape):
        return np.repeat(zp, block_size, axis=axis).take(np.arange(shape[axis]), axis=axis)
    if zp.ndim == 1 and zp.shape[0] == shape[axis]:
        new_shape = [1] * len(shape)
        new_shape[axis] = zp.shape[0]
        return zp.reshape(new_shape)
    return np.broadcast_to(zp, shape)


class _Graph:
    """Name lookups over one graph and a small evaluator for constant sub-expressions."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.initializers = {t.name: t for t in graph.initializer}
        self.producers = {out: node for node in graph.node for out in node.output if out}

    def stored(self, name: str) -> tuple[str, tuple[int, ...], str] | None:
        """Returns (name, shape, dtype) of the stored tensor `name` traces back to, if any."""
        for _ in range(64):  # bounded walk; chains of layout ops are short
            if name in self.initializers:
                t = self.initializers[name]
                return name, tuple(t.dims), _dtype_name(t.data_type)
            node = self.producers.get(name)
            if node is None:
                return None
            if node.op_type == "Constant":
                proto, value = _constant_attr(node)
                if proto is not None:
                    return name, tuple(proto.dims), _dtype_name(proto.data_type)
                if value is None:
                    return None
                return name, tuple(value.shape), value.dtype.name
            if node.op_type not in _PASSTHROUGH | {"DequantizeLinear", "QuantizeLinear"}:
                return None
            name = node.input[0]
        return None

    def value(self, name: str, depth: int = 0) -> np.ndarray | None:
        """Returns the value of tensor `name` if simple ops compute it from constants."""
        if not name or depth > 64:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is None:
            return None
        op = node.op_type
        if op == "Constant":
            return _constant_attr(node)[1]
        if op not in _PASSTHROUGH and op != "QuantizeLinear":
            return None
        x = self.value(node.input[0], depth + 1)
        if x is None:
            return None
        try:
            return self._apply(node, x, depth)
        except (ValueError, IndexError, TypeError):
            return None  # an op form we do not model: the tensor is simply not constant to us

    def _optional(self, node: onnx.NodeProto, index: int, depth: int) -> np.ndarray | None:
        """Returns the value of optional input `index`, None if absent or not constant."""
        if len(node.input) > index and node.input[index]:
            return self.value(node.input[index], depth + 1)
        return None

    def _apply(self, node: onnx.NodeProto, x: np.ndarray, depth: int) -> np.ndarray | None:
        """Returns the result of one layout/cast/quantize op applied to constant x."""
        op = node.op_type
        if op == "Identity":
            return x
        if op == "Transpose":
            perm = _attr(node, "perm")
            return np.transpose(x, perm if perm else None)
        if op == "Cast":
            return x.astype(helper.tensor_dtype_to_np_dtype(_attr(node, "to")))
        if op == "Flatten":
            axis = _attr(node, "axis", 1) % max(x.ndim, 1)
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        if op == "Reshape":
            shape = self._optional(node, 1, depth)
            if shape is None:
                return None
            dims = [int(d) for d in shape]
            if not _attr(node, "allowzero", 0):  # 0 means "copy this dim from the input"
                dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
            return x.reshape(dims)
        if op in ("Unsqueeze", "Squeeze"):
            axes = _attr(node, "axes")
            if axes is None:
                given = self._optional(node, 1, depth)
                axes = None if given is None else [int(a) for a in given]
            if op == "Squeeze":
                return np.squeeze(x, axis=tuple(axes) if axes else None)
            if axes is None:
                return None
            return np.expand_dims(x, axis=tuple(axes))
        if op == "QuantizeLinear":
            return self._quantize(node, x, depth)
        return None

    def _quantize(self, node: onnx.NodeProto, x: np.ndarray, depth: int) -> np.ndarray | None:
        """Returns QuantizeLinear(x) as the integer tensor the next DequantizeLinear reads."""
        scale = self._optional(node, 1, depth)
        if scale is None:
            return None
        zp = self._optional(node, 2, depth)
        axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
        if zp is not None:
            out_dtype = _countable(zp).dtype
        else:
            to = _attr(node, "output_dtype", 0)
            out_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(to)) if to else np.dtype(np.uint8)
            zp = np.zeros((), dtype=out_dtype)
            out_dtype = _countable(zp).dtype
        if out_dtype.kind not in "iu":
            return None  # float8 outputs: not modelled
        info = np.iinfo(out_dtype)
        s = _expand_zero_point(scale.astype(np.float32), x.shape, axis, block)
        z = _expand_zero_point(_countable(zp).astype(np.int64), x.shape, axis, block)
        q = np.rint(x.astype(np.float32) / s) + z  # rint rounds half to even, as ONNX does
        return np.clip(q, info.min, info.max).astype(out_dtype)


def _dtype_name(data_type: int) -> str:
    """Returns the numpy dtype name for an ONNX TensorProto data type."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(data_type).lower()


# ---------------------------------------------------------------- weights


@dataclass(frozen=True)
class _Found:
    """A conv/linear weight: the stored tensor, the values compared, and their zero point."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    values: np.ndarray
    zero_point: np.ndarray | int


def _trace_float_weight(g: _Graph, name: str) -> _Found | None:
    """Returns the weight feeding a float compute op input, through DequantizeLinear if any."""
    stored = g.stored(name)
    if stored is None:
        return None
    # Find a DequantizeLinear on the way: then the stored values are its integer input.
    cursor = name
    for _ in range(64):
        node = g.producers.get(cursor)
        if node is None or node.op_type not in _PASSTHROUGH | {"DequantizeLinear"}:
            break
        if node.op_type == "DequantizeLinear":
            values = g.value(node.input[0])
            if values is None:
                return None
            values = _countable(values)
            zp_raw = g._optional(node, 2, 0)
            zp: np.ndarray | int = 0
            if zp_raw is not None:
                axis, block = _attr(node, "axis", 1), _attr(node, "block_size", 0)
                zp = _expand_zero_point(_countable(zp_raw), values.shape, axis, block)
            return _Found(*stored, values=values, zero_point=zp)
        cursor = node.input[0]
    values = g.value(name)
    if values is None:
        return None
    return _Found(*stored, values=_countable(values), zero_point=0)


def _trace_int_weight(
    g: _Graph, node: onnx.NodeProto, w: int, zp_in: int, axis: int
) -> _Found | None:
    """Returns the stored integer weight of QLinearConv/ConvInteger/MatMulInteger-like ops."""
    if len(node.input) <= w or not node.input[w]:
        return None
    stored = g.stored(node.input[w])
    values = g.value(node.input[w])
    if stored is None or values is None:
        return None
    values = _countable(values)
    zp_raw = g._optional(node, zp_in, 0)
    if node.op_type == "QGemm" and _attr(node, "transB", 0):
        axis = 0  # B is stored [N, K]; the per-column zero point runs along N
    zp: np.ndarray | int = 0
    if zp_raw is not None:
        zp = _expand_zero_point(_countable(zp_raw), values.shape, axis)
    return _Found(*stored, values=values, zero_point=zp)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """Returns the `bits`-wide unsigned values packed little-end first in each byte."""
    per_byte = 8 // bits
    shifts = (np.arange(per_byte, dtype=np.uint8) * bits).astype(np.uint8)
    mask = np.uint8((1 << bits) - 1)
    return ((packed[..., None] >> shifts) & mask).reshape(*packed.shape[:-1], -1)


def _nbits_weight(g: _Graph, node: onnx.NodeProto) -> _Found | None:
    """Returns a MatMulNBits weight unpacked to its (N, K) stored low-bit values."""
    stored = g.stored(node.input[1])
    packed = g.value(node.input[1])
    bits, n, k = _attr(node, "bits", 4), _attr(node, "N"), _attr(node, "K")
    block = _attr(node, "block_size")
    if stored is None or packed is None or bits not in (2, 4, 8) or not (n and k and block):
        return None
    values = _unpack(packed.astype(np.uint8).reshape(n, -1), bits)[:, :k]
    zp_raw = g._optional(node, 3, 0)
    zp: np.ndarray | int = 1 << (bits - 1)  # the op's documented default zero point
    if zp_raw is not None:
        blocks = -(-k // block)
        if zp_raw.dtype == np.uint8:
            zp_raw = _unpack(zp_raw.reshape(n, -1), bits)
        zp_blocks = zp_raw.reshape(n, -1)[:, :blocks]
        zp = np.repeat(zp_blocks, block, axis=1)[:, :k]
    # Shape and size are the logical (N, K) values; dtype is the packed storage (uint8).
    return _Found(stored[0], (n, k), stored[2], values=values, zero_point=zp)


def collect_weights(
    model: onnx.ModelProto,
) -> tuple[list[WeightInfo], int]:
    """Returns the conv/linear weights (one per stored tensor) and the parameter count."""
    g = _Graph(model.graph)
    weights: list[WeightInfo] = []
    counted: set[str] = set()
    parameters = 0
    for node in model.graph.node:
        slots = _WEIGHT_SLOTS.get(node.op_type)
        if slots is None:
            continue
        w, zp_in, biases, axis = slots
        found: _Found | None
        if node.op_type == "MatMulNBits":
            found = _nbits_weight(g, node)
        elif zp_in is not None:
            found = _trace_int_weight(g, node, w, zp_in, axis)
        else:
            found = _trace_float_weight(g, node.input[w]) if len(node.input) > w else None
            if found is None and node.op_type in ("MatMul", "FusedMatMul"):
                # x @ W is the usual form, but W @ x appears too (e.g. transposed exports).
                found = _trace_float_weight(g, node.input[0])
        if found is None or found.name in counted:
            continue  # activation x activation, or a weight shared with an earlier node
        counted.add(found.name)
        size = int(found.values.size)
        zeros = int(np.count_nonzero(found.values == found.zero_point))
        distinct = int(np.unique(found.values).size)
        weights.append(
            WeightInfo(
                name=found.name,
                node=node.name,
                op_type=node.op_type,
                shape=found.shape,
                dtype=found.dtype,
                size=size,
                zeros=zeros,
                distinct=distinct,
            )
        )
        parameters += size
        for b in biases:
            stored = g.stored(node.input[b]) if len(node.input) > b and node.input[b] else None
            if stored is not None and stored[0] not in counted:
                counted.add(stored[0])
                parameters += int(np.prod(stored[1], dtype=np.int64))
    return weights, parameters
