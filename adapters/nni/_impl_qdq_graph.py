"""Where NNI must quantize activations so that onnxruntime can run every quantized layer as an
integer op, read from the float ONNX export of the model NNI quantizes.

onnxruntime fuses ``DequantizeLinear → Conv → QuantizeLinear`` into QLinearConv: a layer's
output must be quantized. NNI's quantizers quantize a layer's input (``_input_``) and, when
asked, its output (``_output_``). A layer's output needs no scale of its own when, through ops
that a per-tensor quantization passes through exactly (ReLU, max pooling, reshapes), it only
feeds the next quantized layer: that layer's input quantization is moved up to it (exactly).
Otherwise (a residual add, a branch, the model's output of a conv) NNI is asked to quantize
the output; a ReLU module right after the layer is fused into it first (NNI's ``fuse_names``),
so the output is quantized after the ReLU, as torch.ao and TFLite do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from unified.measure.onnx_names import module_name

# ops through which a per-tensor uniform quantization passes exactly: Q(f(x)) == f(Q(x))
# (monotone and elementwise, or moving values only), for a grid that holds 0 (ReLU)
EXACT_OPS = frozenset({"Relu", "MaxPool", "Flatten", "Reshape", "Transpose", "Identity",
                       "Squeeze", "Unsqueeze"})


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

    def exact_chain_end(self, tensor: str) -> str:
        """Follow ``tensor`` forward through single-consumer exact ops; the last tensor."""
        for _ in range(64):
            node = self.only_consumer(tensor)
            if node is None or node.op_type not in EXACT_OPS or node.input[0] != tensor:
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
        end = topology.exact_chain_end(node.output[0])
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
