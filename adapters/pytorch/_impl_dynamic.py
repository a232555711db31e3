"""The ONNX of torch's dynamic quantization. Neither torch exporter can export
``torch.ao.nn.quantized.dynamic.Linear``, and onnxruntime's own ``quantize_dynamic`` of the
fp32 export is a second, independent quantization (its own weight scales, 8-bit activations;
it also leaves a Gemm that is the graph's output float). So each Linear that torch quantized
is written here as what torch's kernel computes: the input quantized per call to uint8 with
the range torch's engine uses, ``MatMulInteger`` on torch's own int8 weights and zero points,
the product scaled by input scale × torch's weight scales, then the bias."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from unified.spec.errors import SqueezelabError


def activation_levels() -> int:
    """Levels of torch's dynamic input quantization on the current engine: the x86, fbgemm
    and onednn kernels are called with reduce_range=True (7 bits, 0..127); qnnpack ignores
    it (0..255)."""
    return 255 if torch.backends.quantized.engine == "qnnpack" else 127


def quantized_linears(model: nn.Module) -> dict[str, Any]:
    """The modules torch's quantize_dynamic turned into dynamic quantized Linears, by name."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name: module for name, module in model.named_modules()
            if isinstance(module, DynamicLinear)}


def write_dynamic_onnx(float_onnx: Path, out: Path, float_model: nn.Module,
                       quantized: dict[str, Any]) -> None:
    """Rewrite ``float_onnx`` (the export of ``float_model``) into ``out``: the Gemm/MatMul
    of every Linear in ``quantized`` becomes torch's dynamic int8 computation."""
    model = onnx.load(str(float_onnx))
    graph = model.graph
    weights = {n: m.weight.detach().numpy() for n, m in float_model.named_modules()
               if n in quantized}
    nodes = _linear_nodes(graph, weights)
    levels = activation_levels()
    replaced: list[onnx.NodeProto] = []
    float_weights: set[str] = set()
    for node in graph.node:
        name = nodes.get(node.name)
        if name is None:
            replaced.append(node)
            continue
        float_weights.add(node.input[1])
        replaced.extend(_integer_linear(graph, node, name, quantized[name], levels))
    del graph.node[:]
    graph.node.extend(replaced)
    _drop_unused(graph, float_weights)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _linear_nodes(graph: onnx.GraphProto, weights: dict[str, np.ndarray]) -> dict[str, str]:
    """ONNX node name → torch Linear name. A Linear exports as Gemm(transB=1) on its own
    weight (2-D input) or as MatMul on a folded, transposed copy of it (inputs of higher
    rank, e.g. a transformer's tokens); both are matched by the weight's values."""
    initializers = {i.name: i for i in graph.initializer}
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2:
            continue
        init = initializers.get(node.input[1])
        if init is None:
            continue
        value = numpy_helper.to_array(init)
        transposed = node.op_type == "Gemm" and _attribute(node, "transB", 0) == 1
        candidates = [name for name, weight in weights.items()
                      if value.shape == (weight if transposed else weight.T).shape
                      and np.array_equal(value, weight if transposed else weight.T)]
        # equal weights (e.g. zero-initialised heads): its own name first, then an unused one
        named = [n for n in candidates if node.input[1] == f"{n}.weight"]
        unused = [n for n in candidates if n not in found.values()]
        if candidates:
            found[node.name] = (named or unused or candidates)[0]
    missing = sorted(set(weights) - set(found.values()))
    if missing:
        raise SqueezelabError(f"cannot find the ONNX Gemm/MatMul nodes of Linear layers "
                              f"{missing} in the fp32 export")
    return found


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _integer_linear(graph: onnx.GraphProto, node: onnx.NodeProto, name: str, module: Any,
                    levels: int) -> list[onnx.NodeProto]:
    """The nodes replacing ``node``: quantized input, MatMulInteger, scale, bias."""
    if node.op_type == "Gemm" and (_attribute(node, "alpha", 1.0) != 1.0
                                   or _attribute(node, "beta", 1.0) != 1.0
                                   or _attribute(node, "transA", 0) != 0):
        raise SqueezelabError(f"Linear {name} exported as a Gemm with alpha/beta/transA: "
                              "cannot write torch's dynamic int8 product for it")
    prefix = f"{node.name}_dynamic_int8"
    weight = module.weight()
    if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        scale = weight.q_per_channel_scales().numpy().astype(np.float32)
        zero_point = weight.q_per_channel_zero_points().numpy().astype(np.int8)
    else:
        scale = np.array(weight.q_scale(), np.float32)
        zero_point = np.array(weight.q_zero_point(), np.int8)
    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(weight.int_repr().numpy().T),
                                f"{prefix}_weight"),
        numpy_helper.from_array(scale, f"{prefix}_weight_scale"),
        numpy_helper.from_array(zero_point, f"{prefix}_weight_zero_point"),
    ])
    x = node.input[0]
    nodes = _quantize_input(x, prefix, levels)
    nodes += [
        helper.make_node("MatMulInteger", [f"{prefix}_x_q", f"{prefix}_weight",
                                           f"{prefix}_x_zero_point",
                                           f"{prefix}_weight_zero_point"],
                         [f"{prefix}_int32"], name=f"{prefix}_MatMulInteger"),
        helper.make_node("Cast", [f"{prefix}_int32"], [f"{prefix}_float"],
                         to=TensorProto.FLOAT, name=f"{prefix}_Cast"),
        helper.make_node("Mul", [f"{prefix}_x_scale", f"{prefix}_weight_scale"],
                         [f"{prefix}_scale"], name=f"{prefix}_ScaleProduct"),
    ]
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else ""
    scaled = node.output[0] if not bias else f"{prefix}_scaled"
    nodes.append(helper.make_node("Mul", [f"{prefix}_float", f"{prefix}_scale"], [scaled],
                                  name=f"{prefix}_Scale"))
    if bias:
        nodes.append(helper.make_node("Add", [scaled, bias], [node.output[0]],
                                      name=f"{prefix}_Bias"))
    return nodes


def _quantize_input(x: str, prefix: str, levels: int) -> list[onnx.NodeProto]:
    """x → (x_q uint8, x_scale, x_zero_point), per call over the whole tensor, as torch's
    dynamic Linear does: the range [min(x, 0), max(x, 0)] mapped onto 0..levels."""
    if levels == 255:  # onnxruntime's own op computes exactly that
        return [helper.make_node("DynamicQuantizeLinear", [x],
                                 [f"{prefix}_x_q", f"{prefix}_x_scale",
                                  f"{prefix}_x_zero_point"], name=f"{prefix}_QuantizeInput")]
    p = prefix

    def const(name: str, value: float) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [f"{p}_{name}"], name=f"{p}_{name}",
                                value=numpy_helper.from_array(np.array(value, np.float32)))

    return [
        const("zero", 0.0), const("levels", float(levels)), const("unit_scale", 0.1),
        helper.make_node("ReduceMin", [x], [f"{p}_min"], keepdims=0, name=f"{p}_ReduceMin"),
        helper.make_node("ReduceMax", [x], [f"{p}_max"], keepdims=0, name=f"{p}_ReduceMax"),
        helper.make_node("Min", [f"{p}_min", f"{p}_zero"], [f"{p}_low"], name=f"{p}_Low"),
        helper.make_node("Max", [f"{p}_max", f"{p}_zero"], [f"{p}_high"], name=f"{p}_High"),
        helper.make_node("Sub", [f"{p}_high", f"{p}_low"], [f"{p}_range"], name=f"{p}_Range"),
        helper.make_node("Div", [f"{p}_range", f"{p}_levels"], [f"{p}_raw_scale"],
                         name=f"{p}_RawScale"),
        # an all-zero input: torch falls back to scale 0.1, zero point 0
        helper.make_node("Equal", [f"{p}_raw_scale", f"{p}_zero"], [f"{p}_empty"],
                         name=f"{p}_Empty"),
        helper.make_node("Where", [f"{p}_empty", f"{p}_unit_scale", f"{p}_raw_scale"],
                         [f"{p}_x_scale"], name=f"{p}_Scale_x"),
        helper.make_node("Neg", [f"{p}_low"], [f"{p}_neg_low"], name=f"{p}_NegLow"),
        helper.make_node("Div", [f"{p}_neg_low", f"{p}_x_scale"], [f"{p}_zp_float"],
                         name=f"{p}_ZeroPointFloat"),
        helper.make_node("Round", [f"{p}_zp_float"], [f"{p}_zp_rounded"],
                         name=f"{p}_RoundZeroPoint"),
        helper.make_node("Clip", [f"{p}_zp_rounded", f"{p}_zero", f"{p}_levels"],
                         [f"{p}_zp_clipped"], name=f"{p}_ClipZeroPoint"),
        helper.make_node("Cast", [f"{p}_zp_clipped"], [f"{p}_x_zero_point"],
                         to=TensorProto.UINT8, name=f"{p}_ZeroPoint"),
        helper.make_node("QuantizeLinear", [x, f"{p}_x_scale", f"{p}_x_zero_point"],
                         [f"{p}_x_q"], name=f"{p}_QuantizeInput"),
    ]


def _drop_unused(graph: onnx.GraphProto, names: set[str]) -> None:
    """Drop the initializers ``names`` (the float weights replaced) that no node reads."""
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name not in names or i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
