"""Where NNI must quantize activations so that onnxruntime can run every quantized layer as an
integer op, read from the float ONNX export of the model NNI quantizes.

onnxruntime fuses ``DequantizeLinear → Conv → QuantizeLinear`` into QLinearConv: a layer's
output must be quantized. NNI's quantizers quantize a layer's input (``_input_``) and, when
asked, its output (``_output_``). A layer's output needs no scale of its own when, through ops
that a per-tensor quantization passes through exactly (ReLU, max pooling, reshapes, zero
padding), it only feeds the next quantized layer: that layer's input quantization is moved up
to it (exactly).
A ``Clip`` (ReLU6, Hardtanh) on that path is no reason either: NNI quantizes the next layer's
input after the clip, and quantizing the layer's output before it as well would put a second,
coarser grid (spread over the unclipped range) on the same values; onnxruntime removes the
Clip itself when the next quantization's range lies inside it. Otherwise (a residual add, a
branch, the model's output of a conv) NNI is asked to quantize the output; a ReLU module
right after the layer is fused into it first (NNI's ``fuse_names``), so the output is
quantized after the ReLU, as torch.ao and TFLite do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from unified.measure.onnx_names import module_name

# ops through which a per-tensor uniform quantization passes exactly: Q(f(x)) == f(Q(x))
# (monotone and elementwise, or moving values only), for a grid that holds 0 (ReLU)
EXACT_OPS = frozenset({"Relu", "MaxPool", "Flatten", "Reshape", "Transpose", "Identity",
                       "Squeeze", "Unsqueeze"})
# ops the output plan also looks through (the next layer's input is quantized after them)
CLIP_OPS = frozenset({"Clip"})


@dataclass
class Topology:
    """Producers and consumers of the tensors of one graph."""

    model: onnx.ModelProto
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    inits: dict[str, onnx.TensorProto] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph = self.model.graph
        self.inits = {i.name: i for i in graph.initializer}
        self.outputs = {o.name for o in graph.output}
        for node in graph.node:
            for out in node.output:
                self.producers[out] = node
            for name in node.input:
                if name and name not in self.inits:
                    self.consumers.setdefault(name, []).append(node)

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        found = self.consumers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a Constant node's output; None otherwise."""
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def is_exact(self, node: onnx.NodeProto) -> bool:
        """Whether a per-tensor quantization passes through ``node`` exactly: an op of
        EXACT_OPS, or a constant zero Pad (a conv's 'same' padding; 0 is on every grid)."""
        if node.op_type in EXACT_OPS:
            return True
        if node.op_type != "Pad":
            return False
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"constant")
        if mode != b"constant":
            return False
        if len(node.input) < 3 or not node.input[2]:
            return True
        value = self.constant(node.input[2])
        return value is not None and not np.any(value)

    def exact_chain_end(self, tensor: str, through: frozenset[str] = frozenset()) -> str:
        """Follow ``tensor`` forward through single-consumer exact ops (and ops of
        ``through``); the last tensor."""
        for _ in range(64):
            node = self.only_consumer(tensor)
            if node is None or node.input[0] != tensor or \
                    not (self.is_exact(node) or node.op_type in through):
                return tensor
            tensor = node.output[0]
        return tensor


def weight_module(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str | None:
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


def layer_nodes(topology: Topology, names: list[str]) -> dict[str, onnx.NodeProto]:
    """The Conv / Gemm node of each named module (those found)."""
    wanted = set(names)
    out = {}
    for node in topology.model.graph.node:
        module = weight_module(node, topology.inits)
        if module in wanted and module not in out:
            out[module] = node
    return out


def output_plan(model: onnx.ModelProto, names: list[str],
                relu_modules: set[str]) -> dict[str, str | None]:
    """The layers whose output NNI must quantize: module -> the ReLU module to fuse into it
    first (None: the output is quantized as the layer computes it)."""
    topology = Topology(model)
    nodes = layer_nodes(topology, names)
    quantized_inputs = {node.input[0]: node for node in nodes.values()}
    out: dict[str, str | None] = {}
    for module, node in nodes.items():
        end = topology.exact_chain_end(node.output[0], through=CLIP_OPS)
        follower = topology.only_consumer(end)
        if follower is not None and quantized_inputs.get(end) is follower:
            continue  # the next layer's input quantization moves up to this output
        if node.op_type == "Gemm" and end in topology.outputs:
            continue  # onnxruntime's QGemm gives a float output itself
        relu = topology.only_consumer(node.output[0])
        fused = None
        if relu is not None and relu.op_type == "Relu":
            candidate = module_name(relu.name)
            fused = candidate if candidate in relu_modules else None
        out[module] = fused
    return out
