"""onnxruntime.quantization calls behind the onnxruntime adapter (imported lazily)."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from adapters.base import Artifacts
from unified.measure.onnx_names import module_name
from unified.spec.names import matches_any
from unified.spec.steps import OpType, QuantDType, QuantizeStep, QuantMethod, Targets

if TYPE_CHECKING:
    from unified.context import JobContext

# ONNX ops that carry a conv/linear layer's weights (what Targets.op_types select)
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
CALIBRATION_BATCH = 32  # MinMax ranges do not depend on the batch size; this bounds memory


# --- which nodes a step's targets select ----------------------------------------------------


@dataclass(frozen=True)
class Layer:
    node: str  # ONNX node name
    op_type: str  # Conv | Gemm | MatMul
    kind: OpType  # conv | depthwise | linear
    module: str  # torch module name ("" when unknown)


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _layer_kind(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> OpType | None:
    if node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = inits.get(node.input[1])
        # depthwise: one input channel per group and as many groups as input channels
        if weight is not None and group > 1 and weight.dims[1] == 1:
            return OpType.depthwise
        return OpType.conv
    # a MatMul of two activations (attention) has no weights: not a linear layer
    if node.op_type in ("Gemm", "MatMul") and any(name in inits for name in node.input[:2]):
        return OpType.linear
    return None


def layers(model: onnx.ModelProto) -> list[Layer]:
    """The conv / depthwise / linear layers of a float ONNX graph, in graph order."""
    inits = _initializers(model)
    out = []
    for node in model.graph.node:
        kind = _layer_kind(node, inits)
        if kind is not None:
            out.append(Layer(node.name, node.op_type, kind, module_name(node.name)))
    return out


@dataclass(frozen=True)
class Chosen:
    """The layers a step targets, resolved once for every backend: the reference ONNX nodes
    that compute them and their torch module names (both, since preprocessing may rename)."""

    nodes: frozenset[str]
    modules: frozenset[str]
    exclude: tuple[str, ...]  # the step's exclude patterns (they also keep other ops float)
    patterns: Targets | None = None  # no resolved layers at hand: the step's own patterns

    def selects(self, layer: Layer) -> bool:
        if self.patterns is not None:
            return self.patterns.selects(layer.kind, layer.module)
        return layer.node in self.nodes or (bool(layer.module) and layer.module in self.modules)


def chosen_layers(ctx: JobContext, step: QuantizeStep) -> Chosen:
    """The resolved targets of ``step`` as ONNX nodes (from the reference's layer inventory)."""
    if not ctx.targets_resolved:
        return Chosen(frozenset(), frozenset(), step.targets.exclude, step.targets)
    names = set(ctx.layers_for(step))
    inventory = ctx.reference.layer_inventory() if ctx.reference.layers.is_file() else []
    nodes = {layer.onnx_node for layer in inventory if layer.name in names and layer.onnx_node}
    return Chosen(frozenset(nodes), frozenset(names), step.targets.exclude)


def nodes_to_exclude(model: onnx.ModelProto, chosen: Chosen) -> list[str]:
    """ONNX nodes onnxruntime must leave in float.

    Layers the targets do not select; nodes whose module an exclude pattern names; and
    other ops (Relu, MaxPool, Add ...) unless all their inputs come from quantized nodes.
    The last rule matters: ORT quantizes such ops by default, and a float layer between
    quantized tensors (DequantizeLinear in, QuantizeLinear out) gets its weights quantized
    by ORT's session optimizer anyway, so the exclusion would not hold.
    """
    inits = set(_initializers(model))
    found = {layer.node: layer for layer in layers(model)}
    quantized: set[str] = set()  # tensors produced by quantized nodes
    out = []
    for node in model.graph.node:  # graph order is topological
        layer = found.get(node.name)
        if layer is not None:
            keep = chosen.selects(layer)
        elif chosen.exclude and matches_any(module_name(node.name), chosen.exclude):
            keep = False
        else:
            data = [name for name in node.input if name and name not in inits]
            keep = not data or all(name in quantized for name in data)
        if keep:
            quantized.update(node.output)
        else:
            out.append(node.name)
    return out


def runtime_check(ctx: JobContext, path: Path, chosen: list[Layer]) -> dict[str, int]:
    """Compare the layers meant to be quantized with what ORT's session optimizer runs."""
    from unified.measure.onnx_inspect import compute_op_summary, optimized_op_counts

    counts = optimized_op_counts(path)
    quantized, floating = compute_op_summary(counts)
    if quantized > len(chosen):
        ctx.note(f"onnxruntime's session optimizer runs {quantized} quantized compute ops for "
                 f"{len(chosen)} targeted layers: it quantizes float weights of a layer fed "
                 "by DequantizeLinear and followed by QuantizeLinear")
    elif quantized < len(chosen):
        ctx.deviate(f"onnxruntime's session optimizer fused only {quantized} of the "
                    f"{len(chosen)} targeted layers into integer ops; {floating} compute ops "
                    "run in float")
    return {"runtime_quantized_ops": quantized, "runtime_float_ops": floating}


# --- calibration -----------------------------------------------------------------------------


def _input_name_and_batch(model: onnx.ModelProto) -> tuple[str, int | None]:
    """The single graph input and its fixed batch size (None when the batch is dynamic)."""
    inits = set(_initializers(model))
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"expected one model input, found {[i.name for i in inputs]}")
    dim = inputs[0].type.tensor_type.shape.dim[0]
    return inputs[0].name, (dim.dim_value if dim.HasField("dim_value") else None)


class ArrayReader(CalibrationDataReader):
    """Feeds ``x`` (NCHW float32) to onnxruntime's calibrator in batches."""

    def __init__(self, input_name: str, x: np.ndarray, batch: int, fixed: bool) -> None:
        self.input_name = input_name
        # a fixed batch dimension takes full batches only; a dynamic one also takes the tail
        stop = len(x) - batch + 1 if fixed else len(x)
        self.batches = [x[i:i + batch] for i in range(0, max(stop, 0), batch)]
        if not self.batches:
            raise ValueError(f"{len(x)} calibration samples, fewer than the model's fixed "
                             f"batch size {batch}")
        self._it: Iterator[np.ndarray] = iter(self.batches)

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(batch)}

    def rewind(self) -> None:
        self._it = iter(self.batches)


# --- the three conversions -------------------------------------------------------------------


def preprocess(source: Path, out: Path, ctx: JobContext) -> Path:
    """quant_pre_process: symbolic shape inference + ORT basic graph optimization (what
    onnxruntime recommends before quantizing); without the optimization if that fails."""
    try:
        quant_pre_process(str(source), str(out), skip_optimization=False)
        ctx.note("quant_pre_process: shape inference + graph optimization before quantizing")
    except Exception as exc:  # a toolkit failure: retry the documented way
        quant_pre_process(str(source), str(out), skip_optimization=True)
        ctx.note(f"quant_pre_process: graph optimization failed ({type(exc).__name__}: "
                 f"{exc}); shape inference only")
    return out


def _weight_type(bits: int) -> QuantType:
    return {8: QuantType.QInt8, 4: QuantType.QInt4}[bits]


def quantize_static_qdq(ctx: JobContext, step: QuantizeStep, chosen: Chosen, pre: Path,
                        out: Path) -> None:
    """QDQ static quantization: activations QUInt8 (or QUInt16), weights QInt8 (or QInt4)."""
    model = onnx.load(str(pre))
    input_name, fixed_batch = _input_name_and_batch(model)
    batch = fixed_batch or min(CALIBRATION_BATCH, len(ctx.data.calib_x))
    reader = ArrayReader(input_name, ctx.data.calib_x, batch, fixed=fixed_batch is not None)
    excluded = nodes_to_exclude(model, chosen)
    activation_type = QuantType.QUInt16 if step.activations == 16 else QuantType.QUInt8
    weight_type = _weight_type(step.weights)
    per_channel = step.granularity.value == "per_channel"
    quantize_static(
        str(pre), str(out), reader,
        quant_format=QuantFormat.QDQ,
        activation_type=activation_type,
        weight_type=weight_type,
        per_channel=per_channel,
        reduce_range=False,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=excluded,
        # `symmetric` applies to weights. Activations keep a calibrated zero point, as in
        # torch.ao and TFLite int8: symmetric uint8 activations (zero point 128) waste half
        # the range after ReLU, and ORT then cannot drop the ReLUs: on convnet-tiny 7 Relu
        # and 8 Q/DQ pairs stayed unfused (latency 1.3x, file 1.2x of the asymmetric one).
        extra_options={"WeightSymmetric": step.symmetric, "ActivationSymmetric": False},
    )
    ctx.note(
        f"quantize_static QDQ: activations {activation_type.name} asymmetric (calibrated zero "
        f"point), weights {weight_type.name} {step.granularity.value} "
        f"{'symmetric' if step.symmetric else 'asymmetric'}, MinMax calibration on "
        f"{reader.samples} samples (batch {batch})"
    )
    if activation_type is QuantType.QUInt16:
        ctx.note("16-bit activations: onnxruntime upgrades the graph to opset 21; its CPU "
                 "kernels have no int16 convolution, so DequantizeLinear feeds float "
                 "Conv/Gemm (compute stays float)")
    if weight_type is QuantType.QInt4:
        ctx.note("4-bit weights: stored packed as int4 in DequantizeLinear (com.microsoft "
                 "domain at opset < 21); onnxruntime's CPU has no int4 QLinearConv, so those "
                 "layers compute in float after dequantization")
    _note_excluded(ctx, model, excluded)


def quantize_dynamic_int(ctx: JobContext, step: QuantizeStep, chosen: Chosen, pre: Path,
                         out: Path) -> None:
    """Dynamic quantization: weights QUInt8 offline, activations quantized at run time."""
    model = onnx.load(str(pre))
    excluded = nodes_to_exclude(model, chosen)
    op_types: list[str] = []
    if OpType.conv in step.targets.op_types or OpType.depthwise in step.targets.op_types:
        op_types.append("Conv")
    if OpType.linear in step.targets.op_types:
        op_types += ["MatMul", "Gemm"]
    per_channel = step.granularity.value == "per_channel"
    quantize_dynamic(
        str(pre), str(out),
        weight_type=QuantType.QUInt8,
        op_types_to_quantize=op_types,
        per_channel=per_channel,
        reduce_range=False,
        nodes_to_exclude=excluded,
        extra_options={"WeightSymmetric": step.symmetric},
    )
    ctx.note(
        f"quantize_dynamic: weights QUInt8 {step.granularity.value} "
        f"{'symmetric' if step.symmetric else 'asymmetric'}, activations uint8 computed at "
        f"run time (DynamicQuantizeLinear); op types {', '.join(op_types)}. QUInt8 weights "
        "because onnxruntime's uint8×uint8 ConvInteger kernel ran ~4.5x faster than int8 "
        "weights on this CPU (MatMulInteger: equal)"
    )
    if "Conv" in op_types and any(layer.op_type == "Conv" for layer in layers(model)):
        ctx.note("dynamic Conv becomes ConvInteger + DynamicQuantizeLinear + float rescale: "
                 "onnxruntime's ConvInteger is known to be slower than float Conv on CPU")
    _note_excluded(ctx, model, excluded)


def convert_float16(ctx: JobContext, step: QuantizeStep, chosen: Chosen, source: Path,
                    out: Path) -> None:
    """Whole-graph float16 (weights and compute) with float32 inputs/outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(source))
    excluded = [layer.node for layer in layers(model) if not chosen.selects(layer)]
    excluded += [
        node.name for node in model.graph.node
        if step.targets.exclude and node.name not in excluded
        and node.op_type not in COMPUTE_OPS
        and matches_any(module_name(node.name), step.targets.exclude)
    ]
    converted = convert_float_to_float16(
        model, keep_io_types=True, node_block_list=excluded or None
    )
    # the converter appends its input/output Casts at the end of the node list
    wrapped = OnnxModel(converted)
    wrapped.topological_sort()
    onnx.save(wrapped.model, str(out))
    ctx.note("onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True): "
             "weights and activations float16, float32 input/output through Cast; onnxruntime's "
             "CPU provider lacks most float16 kernels and computes them in float32 (it "
             "inserts Casts and folds them into the weights at load time)")
    _note_excluded(ctx, model, excluded)


def _note_excluded(ctx: JobContext, model: onnx.ModelProto, excluded: list[str]) -> None:
    if not excluded:
        return
    modules = {layer.node: layer.module for layer in layers(model)}
    shown = [f"{n} ({modules[n] or '?'})" if n in modules else n for n in excluded]
    ctx.note(f"left in float by the targets: {', '.join(shown)}")


# --- what the result contains ----------------------------------------------------------------


def summarize(path: Path, selected_layers: list[Layer]) -> dict[str, Any]:
    """Op counts of the written ONNX and which selected layers stayed float."""
    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = _initializers(model)
    float_layers = []
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        producer = producers.get(weight)
        if producer is not None and producer.op_type == "DequantizeLinear":
            continue
        if weight in inits and inits[weight].data_type == onnx.TensorProto.FLOAT16:
            continue
        if weight in inits or producer is not None:
            float_layers.append(node.name)
    wanted = {layer.node for layer in selected_layers}
    return {
        "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "float_layers": float_layers,
        "selected_left_float": sorted(wanted & set(float_layers)),
    }


def _torch_names(ctx: JobContext, done: list[Layer]) -> list[str]:
    """The torch module names of ONNX layers (through the reference's layer inventory)."""
    inventory = ctx.reference.layer_inventory() if ctx.reference.layers.is_file() else []
    by_node = {layer.onnx_node: layer.name for layer in inventory if layer.onnx_node}
    return [by_node.get(layer.node, layer.module) for layer in done]


def compress(ctx: JobContext) -> Artifacts:
    """Run the recipe (empty or one quantize step; the plan guaranteed it)."""
    out = ctx.workdir / "model.onnx"
    steps = ctx.recipe.steps
    if not steps:
        shutil.copyfile(ctx.reference.onnx, out)
        ctx.note("fp32: the reference ONNX, copied unchanged")
        return Artifacts(onnx_path=out, native_path=out)
    (step,) = steps
    if not isinstance(step, QuantizeStep):
        raise TypeError(f"onnxruntime adapter got a {step.kind} step: the plan rejects it")
    reference = onnx.load(str(ctx.reference.onnx))
    targets = chosen_layers(ctx, step)
    chosen = [layer for layer in layers(reference) if targets.selects(layer)]
    if not chosen:
        raise ValueError(f"the targets {step.targets.model_dump(mode='json')} select no "
                         "conv/linear layer of the ONNX graph")
    if step.dtype is QuantDType.float16:
        convert_float16(ctx, step, targets, ctx.reference.onnx, out)
    else:
        pre = preprocess(ctx.reference.onnx, ctx.workdir / "preprocessed.onnx", ctx)
        if step.method is QuantMethod.static:
            quantize_static_qdq(ctx, step, targets, pre, out)
        else:
            quantize_dynamic_int(ctx, step, targets, pre, out)
    details = summarize(out, chosen)
    details["layers"] = {layer.node: layer.module for layer in chosen}
    if step.dtype is QuantDType.int and step.weights == 8 and step.activations == 8:
        # 16-bit activations / 4-bit weights have no integer kernels: float by design
        details |= runtime_check(ctx, out, chosen)
    ops = details["op_counts"]
    ctx.note("result ops: " + ", ".join(f"{op}×{n}" for op, n in ops.items()))
    left = set(details["selected_left_float"])
    if left:
        ctx.deviate("onnxruntime left these targeted layers in float: " + ", ".join(sorted(left)))
    ctx.report_changed(step, _torch_names(ctx, [layer for layer in chosen
                                                 if layer.node not in left]))
    return Artifacts(onnx_path=out, native_path=out, details=details)
