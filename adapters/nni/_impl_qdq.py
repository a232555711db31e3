"""The QDQ ONNX of an NNI-quantized model, built from NNI's own scales: the float model's
ONNX with QuantizeLinear / DequantizeLinear inserted (NNI 3.0 has no CPU quantized export).

Weights: int8 symmetric with NNI's weight scales (NNI's int8 range [-127, 127]); inputs: a
QDQ pair with NNI's activation scale / zero point before every quantized conv/linear; outputs:
a QDQ pair where NNI quantized the output (``_impl_qdq_graph``); biases: int32 at
input_scale × weight_scale (what onnxruntime needs to fuse QLinearConv).

Every other pair only repeats one of NNI's quantizations where it changes nothing: a layer's
input quantization is moved up through ReLU / max pooling / reshapes to the previous layer's
output, and an output quantization is repeated after the same ops (``Q(f(x)) == f(Q(x))``
for them). So the graph computes what NNI simulated, and onnxruntime sees each layer between
a DequantizeLinear and a QuantizeLinear, which it fuses into an integer op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from adapters.nni._impl_qdq_graph import Topology, layer_nodes

INT8_MIN, INT8_MAX = -127, 127  # NNI's symmetric int8 range
INT32_MAX = 2**31 - 1
INT32_BIAS_MAX = 2**30  # headroom: scales are float32, the accumulator adds to the bias


@dataclass
class LayerQuant:
    """What the QDQ ONNX needs for one conv/linear: NNI's scales, on the integer grid of the
    weights the float model carries."""

    weight_scale: np.ndarray  # (C,) per output channel, or () per tensor
    input_scale: float | None
    input_zero_point: int | None
    output_scale: float | None = None
    output_zero_point: int | None = None
    output_signed: bool = False  # int8 output (LSQ), else uint8
    output_after: str | None = None  # the fused ReLU: the output pair follows it


def _scale_for_onnx(scale: np.ndarray) -> np.ndarray:
    flat = np.asarray(scale, dtype=np.float32).reshape(-1)
    return flat.reshape(()) if flat.size == 1 else flat


@dataclass
class _Rewrite:
    """The graph being rewritten: new initializers, and QDQ pairs to insert."""

    topology: Topology
    new_inits: list[onnx.TensorProto] = field(default_factory=list)
    before: dict[int, list[onnx.NodeProto]] = field(default_factory=dict)  # node id -> nodes
    after: dict[str, tuple[str, str]] = field(default_factory=dict)  # tensor -> (scale, zp)
    pairs: int = 0

    def constant(self, name: str, value: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def dequantize(self, node: onnx.NodeProto, tag: str, what: str, values: np.ndarray,
                   scale: np.ndarray) -> str:
        """Initializers ``<tag>.<what>_*`` and a DequantizeLinear of them (per output
        channel: axis 0) placed before ``node``; returns its output name."""
        kind = {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32"}[values.dtype]
        names = [self.constant(f"{tag}.{what}_{kind}", values),
                 self.constant(f"{tag}.{what}_scale", scale),
                 self.constant(f"{tag}.{what}_zero_point", np.zeros(scale.shape, values.dtype))]
        out = f"{tag}.{what}_dq"
        self.before.setdefault(id(node), []).append(helper.make_node(
            "DequantizeLinear", names, [out], name=f"{tag}.{what}_DequantizeLinear", axis=0))
        return out

    def activation(self, tag: str, scale: float, zero_point: int, signed: bool) -> tuple[str, str]:
        dtype = np.int8 if signed else np.uint8
        return (self.constant(f"{tag}_scale", np.asarray(scale, dtype=np.float32)),
                self.constant(f"{tag}_zero_point", np.asarray(zero_point, dtype=dtype)))

    def pair_after(self, tensor: str, params: tuple[str, str]) -> bool:
        """Quantize ``tensor`` for all its consumers (not a graph output, not twice)."""
        if tensor in self.after or tensor in self.topology.outputs:
            return False
        self.after[tensor] = params
        return True


def _fit_bias(r: _Rewrite, node: onnx.NodeProto, x_scale: float,
              w_scale: np.ndarray) -> tuple[np.ndarray, int]:
    """The weight scales raised where the bias would not fit int32 at x_scale × w_scale, and
    how many channels that changed. NNI gives a channel whose weights are all (nearly) zero,
    as a BatchNorm fold leaves dead channels, the scale 1.2e-7, and its bias divided by
    that overflows int32; the raised scale still holds those weights (they round to zero,
    |w| <= 127 × 1.2e-7 before), so the layer computes what NNI simulated."""
    if len(node.input) < 3 or node.input[2] not in r.topology.inits:
        return w_scale, 0
    bias = np.abs(numpy_helper.to_array(r.topology.inits[node.input[2]]).astype(np.float64))
    needed = (bias / (x_scale * INT32_BIAS_MAX)).astype(np.float32)
    if w_scale.ndim == 0:  # per tensor: one scale for every channel
        needed = needed.max()
    raised = np.maximum(w_scale, needed)
    return raised.astype(np.float32), int(np.count_nonzero(raised > w_scale))


def _quantize_weight(r: _Rewrite, node: onnx.NodeProto, tag: str, w_scale: np.ndarray,
                     nni_scale: np.ndarray) -> float:
    """The weight as int8 at ``w_scale`` (NNI's, or raised by ``_fit_bias``) behind a
    DequantizeLinear; returns how far the float weights were from NNI's grid (0 when NNI's
    fake-quant weights were written back)."""
    weight = numpy_helper.to_array(r.topology.inits[node.input[1]]).astype(np.float64)
    bshape = (-1,) + (1,) * (weight.ndim - 1)

    def grid(scale: np.ndarray) -> np.ndarray:
        return weight / (scale.reshape(bshape) if scale.ndim else scale)

    w_int = np.clip(np.round(grid(w_scale)), INT8_MIN, INT8_MAX).astype(np.int8)
    node.input[1] = r.dequantize(node, tag, "weight", w_int, w_scale)
    on_nni = grid(nni_scale)
    return float(np.abs(on_nni - np.round(on_nni)).max())


def _quantize_bias(r: _Rewrite, node: onnx.NodeProto, tag: str, x_scale: float,
                   w_scale: np.ndarray) -> None:
    if len(node.input) > 2 and node.input[2] in r.topology.inits:
        bias = numpy_helper.to_array(r.topology.inits[node.input[2]]).astype(np.float64)
        b_scale = (x_scale * w_scale).astype(np.float32)
        b_int = np.clip(np.round(bias / b_scale.astype(np.float64)), -INT32_MAX,
                        INT32_MAX).astype(np.int32)
        node.input[2] = r.dequantize(node, tag, "bias", b_int, b_scale)


def _forward(r: _Rewrite, tensor: str, params: tuple[str, str]) -> None:
    """Repeat an output quantization after the exact ops that follow it (values stay on the
    grid, so the repeat changes nothing; onnxruntime then runs those ops on integers)."""
    for node in r.topology.consumers.get(tensor, []):
        if r.topology.is_exact(node) and node.input[0] == tensor and \
                r.pair_after(node.output[0], params):
            _forward(r, node.output[0], params)


def _hoist(r: _Rewrite, tensor: str, params: tuple[str, str]) -> None:
    """Move a layer's input quantization up through the exact ops before it, as long as each
    tensor on the way feeds nothing else."""
    for _ in range(64):
        producer = r.topology.producers.get(tensor)
        if producer is None or not r.topology.is_exact(producer):
            return
        source = producer.input[0]
        if r.topology.only_consumer(source) is not producer or not r.pair_after(source, params):
            return
        tensor = source


def _place_output(r: _Rewrite, node: onnx.NodeProto, tag: str, lq: LayerQuant) -> None:
    if lq.output_scale is None or lq.output_zero_point is None:
        return
    tensor = node.output[0]
    if lq.output_after is not None:
        relu = r.topology.only_consumer(tensor)
        assert relu is not None and relu.op_type == "Relu"
        tensor = relu.output[0]
    params = r.activation(f"{tag}.output", lq.output_scale, lq.output_zero_point,
                          lq.output_signed)
    if r.pair_after(tensor, params):
        _forward(r, tensor, params)


def _place_input(r: _Rewrite, node: onnx.NodeProto, tag: str, lq: LayerQuant) -> None:
    assert lq.input_scale is not None and lq.input_zero_point is not None
    params = r.activation(f"{tag}.input", lq.input_scale, lq.input_zero_point, False)
    x = node.input[0]
    if r.topology.only_consumer(x) is node and r.pair_after(x, params):
        _hoist(r, x, params)
        return
    # shared input, or already quantized upstream: a pair on this layer's edge only
    q, dq = f"{tag}.input_q", f"{tag}.input_dq"
    r.before.setdefault(id(node), []).extend([
        helper.make_node("QuantizeLinear", [x, *params], [q], name=f"{tag}.input_QuantizeLinear"),
        helper.make_node("DequantizeLinear", [q, *params], [dq],
                         name=f"{tag}.input_DequantizeLinear")])
    node.input[0] = dq


def _input_derived(topology: Topology, graph: onnx.GraphProto) -> set[str]:
    """The graph inputs and what exact ops (e.g. a conv's zero padding) make of them: values
    that may sit on the input's own grid, so rounding ties matter (``_input_quantization``)."""
    found = {i.name for i in graph.input}
    for node in graph.node:  # topological order
        if node.input and node.input[0] in found and topology.is_exact(node):
            found.add(node.output[0])
    return found


def _input_quantization(r: _Rewrite, tensor: str) -> list[onnx.NodeProto]:
    """The pair on a graph input, rounded as NNI rounds: ``round(zp + x / s)`` (Div, Add, then
    QuantizeLinear at scale 1). QuantizeLinear alone computes ``round(x / s) + zp``, which
    differs on every tie when zp is odd, and inputs are often all ties: 8-bit pixels mapped
    to [-1, 1] fall exactly half-way between the steps of a 2/255 grid."""
    scale, zp = r.after[tensor]
    zero_point = numpy_helper.to_array(next(i for i in r.new_inits if i.name == zp))
    one = r.constant(f"{tensor}_nni_unit_scale", np.asarray(1.0, dtype=np.float32))
    zero = r.constant(f"{tensor}_nni_unit_zero_point", np.asarray(0, dtype=zero_point.dtype))
    shifted = r.constant(f"{tensor}_nni_zero_point_float",
                         np.asarray(zero_point, dtype=np.float32))
    div, add, q = (f"{tensor}_nni_{what}" for what in ("div", "add", "q"))
    return [helper.make_node("Div", [tensor, scale], [div], name=f"{tensor}_nni_Div"),
            helper.make_node("Add", [div, shifted], [add], name=f"{tensor}_nni_Add"),
            helper.make_node("QuantizeLinear", [add, one, zero], [q],
                             name=f"{tensor}_nni_QuantizeLinear"),
            helper.make_node("DequantizeLinear", [q, scale, zp], [f"{tensor}_nni_dq"],
                             name=f"{tensor}_nni_DequantizeLinear")]


def _emit(r: _Rewrite, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The node list with every pair in place (graph order stays topological)."""
    renamed: dict[str, str] = {}
    out: list[onnx.NodeProto] = []

    def pair(tensor: str) -> None:
        scale, zp = r.after[tensor]
        q, dq = f"{tensor}_nni_q", f"{tensor}_nni_dq"
        out.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [q],
                                    name=f"{tensor}_nni_QuantizeLinear"))
        out.append(helper.make_node("DequantizeLinear", [q, scale, zp], [dq],
                                    name=f"{tensor}_nni_DequantizeLinear"))
        renamed[tensor] = dq
        r.pairs += 1

    from_input = _input_derived(r.topology, graph)

    def place(tensor: str) -> None:
        if tensor in from_input:
            out.extend(_input_quantization(r, tensor))
            renamed[tensor] = f"{tensor}_nni_dq"
            r.pairs += 1
        else:
            pair(tensor)

    for name in (i.name for i in graph.input):
        if name in r.after:
            place(name)
    for node in graph.node:
        for extra in r.before.get(id(node), []):
            extra.input[:] = [renamed.get(i, i) for i in extra.input]
            out.append(extra)
        node.input[:] = [renamed.get(i, i) for i in node.input]
        out.append(node)
        for tensor in node.output:
            if tensor in r.after:
                place(tensor)
    return out


def build_qdq_onnx(
    float_path: Path, out_path: Path, layers: dict[str, LayerQuant]
) -> dict[str, Any]:
    """Insert QuantizeLinear/DequantizeLinear into the float ONNX for every layer whose weight
    initializer is ``<module>.weight``; returns what was done (for the record)."""
    model = onnx.load(str(float_path))
    graph = model.graph
    r = _Rewrite(Topology(model))
    nodes = layer_nodes(r.topology, list(layers))
    max_error, raised = 0.0, 0
    for module, node in nodes.items():  # outputs first: inputs then stop where they begin
        _place_output(r, node, module.replace(".", "_"), layers[module])
    for module, node in nodes.items():
        lq, tag = layers[module], module.replace(".", "_")
        nni_scale = w_scale = _scale_for_onnx(lq.weight_scale)
        if lq.input_scale is not None:
            w_scale, count = _fit_bias(r, node, lq.input_scale, w_scale)
            raised += count
        max_error = max(max_error, _quantize_weight(r, node, tag, w_scale, nni_scale))
        if lq.input_scale is not None and lq.input_zero_point is not None:
            _quantize_bias(r, node, tag, lq.input_scale, w_scale)
            _place_input(r, node, tag, lq)
    emitted = _emit(r, graph)
    used = {i for n in emitted for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(emitted)
    del graph.initializer[:]
    graph.initializer.extend(kept + [i for i in r.new_inits if i.name in used])
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return {"qdq_layers": list(nodes), "weight_grid_max_error": round(max_error, 6),
            "activation_qdq_pairs": r.pairs, "weight_scales_raised_for_int32_bias": raised}
