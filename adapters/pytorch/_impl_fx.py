"""FX graph rewrites that let torch.ao quantize models written the way users write them.

``x * 2 - 1`` in a forward becomes ``quantized::mul(q, 2)`` (and ``x + c`` ``quantized::add``)
after ``convert_fx``: torch.ao's x86 backend config quantizes add/mul with one scalar operand,
but the TorchScript ONNX exporter has no symbolic for their scalar form ("quantized_mul()
missing 2 required positional arguments: 'op_scale' and 'op_zero_point"). Such an op is moved
into a small float module (``ScalarArithmetic``) the qconfig mapping leaves in float: the ONNX
then dequantizes around it (``DequantizeLinear → Mul → QuantizeLinear``), which onnxruntime runs
as it runs any float op between quantized ones.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from unified.spec.names import first_few

# the scalar-operand patterns of torch.ao's x86 / fbgemm backend config (binary op configs)
QUANTIZED_SCALAR_OPS: dict[Any, str] = {
    operator.mul: "mul", torch.mul: "mul", operator.add: "add", torch.add: "add",
}
_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {"mul": torch.mul, "add": torch.add}


class ScalarArithmetic(nn.Module):
    """``x * c`` / ``x + c`` (or ``c * x``, ``c + x``) in float, a leaf the quantizer skips."""

    def __init__(self, op: str, constant: float) -> None:
        super().__init__()
        self.op = op
        self.constant = constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONS[self.op](x, self.constant)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"x {'*' if self.op == 'mul' else '+'} {self.constant:g}"


class FloatPermute(nn.Module):
    """``x.permute(dims)`` as a leaf the quantizer leaves in float: its input is dequantized
    first. A permute of a quantized tensor shares its qparams (torch.ao runs it on the int8
    tensor even when its own qconfig is None) and the TorchScript ONNX exporter cannot export
    it (the quantized value reaches onnx::Transpose as a tuple: ViT's patch embedding)."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(self.dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


def _permutes_as_modules(traced: fx.GraphModule) -> int:
    """``x.permute(*dims)`` / ``torch.permute(x, dims)`` with constant dims → FloatPermute."""
    count = 0
    for node in list(traced.graph.nodes):
        if not ((node.op == "call_method" and node.target == "permute") or
                (node.op == "call_function" and node.target is torch.permute)):
            continue
        if node.kwargs or len(node.args) < 2 or not isinstance(node.args[0], fx.Node):
            continue
        dims = node.args[1] if len(node.args) == 2 and isinstance(
            node.args[1], list | tuple) else node.args[1:]
        if not all(isinstance(d, int) for d in dims):
            continue
        name = f"float_permute_{count}"
        traced.add_submodule(name, FloatPermute(tuple(dims)))
        with traced.graph.inserting_before(node):
            replacement = traced.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(replacement)
        traced.graph.erase_node(node)
        count += 1
    return count


def _scalar_operand(node: fx.Node) -> tuple[fx.Node, float] | None:
    """(tensor operand, constant) of a float tensor ⊗ Python number node, else None."""
    if node.op != "call_function" or node.target not in QUANTIZED_SCALAR_OPS:
        return None
    if len(node.args) != 2 or node.kwargs:
        return None
    a, b = node.args
    tensor, constant = (a, b) if isinstance(a, fx.Node) else (b, a)
    if not isinstance(tensor, fx.Node) or isinstance(constant, bool) or \
            not isinstance(constant, int | float):
        return None
    meta = tensor.meta.get("tensor_meta")
    if meta is None or not getattr(meta, "dtype", torch.int64).is_floating_point:
        return None  # arithmetic on sizes or integers: nothing the quantizer touches
    return tensor, float(constant)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, tuple | list) else (value,) * n


def _conv_call_matches(node: fx.Node, module: nn.Module) -> bool:
    """F.conv2d(x, m.weight, m.bias, stride, padding, dilation, groups) with m's own
    geometry (what nn.Conv2d.forward computes), or F.linear(x, m.weight, m.bias)."""
    if isinstance(module, nn.Linear):
        return node.target is F.linear
    if node.target is not F.conv2d or not isinstance(module, nn.Conv2d) or \
            module.padding_mode != "zeros":
        return False
    names = ("stride", "padding", "dilation", "groups")
    given = dict(zip(names, node.args[3:], strict=False)) | {
        k: v for k, v in node.kwargs.items() if k in names}
    defaults = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    for key in names:
        value = given.get(key, defaults[key])
        own = getattr(module, key)
        if key == "groups":
            if value != own:
                return False
        elif isinstance(value, str) or isinstance(own, str) or \
                _tuple(value, 2) != _tuple(own, 2):
            return False
    return True


def _layer_of_call(source: nn.Module, node: fx.Node) -> str | None:
    """Module path of the conv/linear subclass whose own weight (and bias) ``node`` computes
    with, when the call is the layer's plain conv/linear."""
    if node.op != "call_function" or node.target not in (F.conv2d, F.linear):
        return None
    weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
    if not isinstance(weight, fx.Node) or weight.op != "get_attr" or \
            not str(weight.target).endswith(".weight"):
        return None
    path = str(weight.target)[: -len(".weight")]
    module = source.get_submodule(path)
    if type(module) in (nn.Conv2d, nn.Linear) or not isinstance(module, nn.Conv2d | nn.Linear):
        return None
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    own_bias = (bias is None and module.bias is None) or (
        isinstance(bias, fx.Node) and bias.op == "get_attr" and bias.target == f"{path}.bias")
    return path if own_bias and _conv_call_matches(node, module) else None


def _base_layer(module: nn.Module) -> nn.Module:
    """The nn.Conv2d / nn.Linear of a subclass instance, sharing its parameters."""
    base: nn.Module
    if isinstance(module, nn.Linear):
        base = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        assert isinstance(module, nn.Conv2d)
        geometry: Any = {"kernel_size": module.kernel_size, "stride": module.stride,
                         "padding": module.padding, "dilation": module.dilation}
        base = nn.Conv2d(module.in_channels, module.out_channels, groups=module.groups,
                         bias=module.bias is not None, padding_mode=module.padding_mode,
                         **geometry)
    base.weight = module.weight
    base.bias = module.bias
    return base.train(module.training)


def layers_as_base_modules(source: nn.Module, traced: fx.GraphModule) -> list[str]:
    """Make each nn.Conv2d / nn.Linear subclass (e.g. EfficientNet's Conv2dStaticSamePadding)
    that FX traced through into a call of a plain nn.Conv2d / nn.Linear at the same module
    path, so torch.ao fuses it with its BatchNorm and quantizes it as a module; what its
    forward did around the conv (a padding submodule) stays in the graph, moved next to it.
    Returns the paths rewritten (in place; recompile afterwards)."""
    graph = traced.graph
    calls = {path: node for node in graph.nodes if (path := _layer_of_call(source, node))}
    # a layer used more than once, or whose other attributes the graph reads, stays as it is
    for path in list(calls):
        prefix = f"{path}."
        others = [n for n in graph.nodes if n.op == "get_attr" and
                  str(n.target).startswith(prefix) and
                  str(n.target) not in (f"{path}.weight", f"{path}.bias")]
        uses = [n for n in graph.nodes if n.op == "get_attr" and
                n.target == f"{path}.weight"]
        if others or len(uses) != 1 or len(uses[0].users) != 1:
            del calls[path]
    for path, node in calls.items():
        holder = traced.get_submodule(path)  # GraphModule keeps only what the graph uses
        for child_name, child in list(holder.named_children()):
            flat = f"{path.replace('.', '_')}_{child_name}"
            traced.add_submodule(flat, child)
            for user in graph.nodes:
                if user.op == "call_module" and str(user.target).startswith(
                        f"{path}.{child_name}"):
                    user.target = flat + str(user.target)[len(f"{path}.{child_name}"):]
        traced.add_submodule(path, _base_layer(source.get_submodule(path)))
        attrs = [a for a in node.args[1:3] if isinstance(a, fx.Node)]
        with graph.inserting_before(node):
            replacement = graph.call_module(path, (node.args[0],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
        for attr in attrs:
            if not attr.users:
                graph.erase_node(attr)
    return list(calls)


def _relu6_as_hardtanh(graph: fx.Graph) -> int:
    """F.relu6(x) → F.hardtanh(x, 0, 6), the same function: the ONNX exporter exports
    hardtanh of a quantized tensor (as nn.ReLU6 computes it) but not relu6."""
    count = 0
    for node in graph.nodes:
        if node.op == "call_function" and node.target is F.relu6 and node.args:
            node.target = F.hardtanh
            node.args, node.kwargs = (node.args[0], 0.0, 6.0), {}
            count += 1
    return count


def _spatial_dims(node: fx.Node) -> bool | None:
    """keepdim of a ``x.mean(dims)`` / ``torch.mean(x, dims)`` over the two spatial dims of
    a 4-d tensor, else None."""
    if not ((node.op == "call_method" and node.target == "mean") or
            (node.op == "call_function" and node.target is torch.mean)):
        return None
    names = ("input", "dim", "keepdim")
    given = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
    tensor, dims, keepdim = given.get("input"), given.get("dim"), given.get("keepdim", False)
    meta = tensor.meta.get("tensor_meta") if isinstance(tensor, fx.Node) else None
    if meta is None or len(meta.shape) != 4 or not isinstance(dims, list | tuple) or \
            given.get("dtype") is not None or not isinstance(keepdim, bool):
        return None
    return keepdim if sorted(d % 4 for d in dims if isinstance(d, int)) == [2, 3] else None


def _spatial_mean_as_pool(graph: fx.Graph) -> int:
    """``x.mean([2, 3])`` of a 4-d tensor → ``F.adaptive_avg_pool2d(x, 1)`` (then flattened
    when keepdim is false), the same function: torch's quantized mean over a 1×1
    channels-last map (a conv's int8 output at the end of ShuffleNetV2 / MNASNet on small
    inputs) raises 'required rank 4 tensor to use channels_last format'."""
    count = 0
    for node in list(graph.nodes):
        keepdim = _spatial_dims(node)
        if keepdim is None:
            continue
        source = node.args[0] if node.args else node.kwargs["input"]
        with graph.inserting_before(node):
            pooled = graph.call_function(F.adaptive_avg_pool2d, (source, 1))
            out = pooled if keepdim else graph.call_function(torch.flatten, (pooled, 1))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        count += 1
    return count


def _scalar_ops_as_modules(traced: fx.GraphModule) -> list[str]:
    """Tensor-scalar add/mul nodes → ``ScalarArithmetic`` leaves; returns 'x * 2' etc."""
    moved: list[str] = []
    for node in list(traced.graph.nodes):
        found = _scalar_operand(node)
        if found is None:
            continue
        tensor, constant = found
        op = QUANTIZED_SCALAR_OPS[node.target]
        name = f"float_scalar_{len(moved)}"
        traced.add_submodule(name, ScalarArithmetic(op, constant))
        with traced.graph.inserting_before(node):
            replacement = traced.graph.call_module(name, (tensor,))
        node.replace_all_uses_with(replacement)
        traced.graph.erase_node(node)
        moved.append(f"x {'*' if op == 'mul' else '+'} {constant:g}")
    return moved


def float_leaves() -> Any:
    """A PrepareCustomConfig that keeps this module's float leaves (FloatPermute) as module
    calls when prepare_fx traces the copy again (its tracer would trace through them)."""
    from torch.ao.quantization.fx.custom_config import PrepareCustomConfig

    return PrepareCustomConfig().set_non_traceable_module_classes([FloatPermute])


def _float_for_export(mapping: Any) -> None:
    """Ops the TorchScript ONNX exporter cannot export quantized stay float: matmul of two
    activations (no quantized::matmul), a BatchNorm that no conv absorbs (DenseNet's
    pre-activation BN → ReLU: no quantized::batch_norm2d(_relu); see :func:`_kept_float`),
    permute and a functional layer_norm after it (a quantized transpose feeding a quantized
    op: 'expected the output of onnx::Transpose to be a quantized tensor', ConvNeXt's
    LayerNorm2d)."""
    for kind in (ScalarArithmetic, FloatBatchNorm, FloatPermute, torch.matmul, torch.permute,
                 "permute", F.layer_norm):
        mapping.set_object_type(kind, None)


class FloatBatchNorm(nn.Module):
    """An eval-mode BatchNorm2d torch.ao leaves in float (its qconfig is None): same buffers,
    same names, ``F.batch_norm``."""

    running_mean: torch.Tensor  # buffers, registered in __init__
    running_var: torch.Tensor

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = bn.weight, bn.bias, bn.eps
        self.register_buffer("running_mean", bn.running_mean)
        self.register_buffer("running_var", bn.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)


def _kept_float(source: nn.Module, traced: fx.GraphModule, rewrite: bool = False) -> list[str]:
    """What is kept float for the exporter in this model, for the note; with ``rewrite``, each
    BatchNorm no conv absorbs becomes a :class:`FloatBatchNorm` in ``traced``."""
    modules = dict(source.named_modules())
    kept = []
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), nn.BatchNorm2d):
            src = node.args[0]
            if not (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(
                    modules.get(str(src.target)), nn.Conv2d)):
                kept.append("BatchNorm2d after a non-conv")
                if rewrite:
                    bn = modules[str(node.target)]
                    traced.add_submodule(str(node.target), FloatBatchNorm(bn))  # type: ignore[arg-type]
        elif node.target in (torch.permute, "permute", F.layer_norm) or (
                node.op == "call_module" and isinstance(modules.get(str(node.target)),
                                                        FloatPermute)):
            kept.append("permute / layer_norm")
        elif node.target is torch.matmul:
            kept.append("matmul")
    return list(dict.fromkeys(kept))


def quantizable_copy(model: nn.Module, example: torch.Tensor, mapping: Any,
                     selected: set[str]) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` (an ``fx.GraphModule`` traced as ``prepare_fx`` traces it) that
    torch.ao quantizes and exports: ``nn.MultiheadAttention`` as linear projections
    (``unified.torchkit.attention``), conv/linear subclasses called as plain modules
    (:func:`layers_as_base_modules`), tensor-scalar add/mul as ``ScalarArithmetic`` leaves,
    ``F.relu6`` as the ``F.hardtanh`` it is; ``mapping`` (the QConfigMapping) keeps in float
    what the exporter cannot take quantized (scalar arithmetic, matmul of two activations)
    and the projections of attention whose ``out_proj`` is not in ``selected``.
    Returns (model, notes on what was rewritten); the model itself, unchanged, when there is
    nothing to do or it cannot be traced (``prepare_fx`` then reports why)."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer
    from torch.fx.passes.shape_prop import ShapeProp

    from unified.torchkit.attention import decompose_attention

    _float_for_export(mapping)
    source = copy.deepcopy(model).eval()
    attention = decompose_attention(source)
    try:
        graph = QuantizationTracer([], []).trace(source)
        traced = fx.GraphModule(source, graph)
        ShapeProp(traced).propagate(example)
    except Exception:
        return model, []
    for name in attention:
        if f"{name}.out_proj" not in selected:
            for proj in ("q_proj", "k_proj", "v_proj"):
                mapping.set_module_name(f"{name}.{proj}", None)
    layers = layers_as_base_modules(source, traced)
    moved = _scalar_ops_as_modules(traced)
    relu6 = _relu6_as_hardtanh(traced.graph)
    means = _spatial_mean_as_pool(traced.graph)
    kept = _kept_float(source, traced, rewrite=True)
    _permutes_as_modules(traced)
    if not (moved or layers or relu6 or means or attention or kept):
        return model, []
    traced.graph.lint()
    traced.recompile()
    notes = _notes(source, layers, moved)
    if means:
        notes.append(f"{means} mean over the spatial dims computed as adaptive_avg_pool2d(x, 1)"
                     " (the same function; torch's quantized mean fails on a 1×1 "
                     "channels-last map)")
    if kept:
        notes.append(f"kept float: {', '.join(kept)} (the TorchScript ONNX exporter has no "
                     "quantized form of them: quantized::batch_norm2d, a transpose feeding a "
                     "quantized op)")
    if attention:
        notes.append(f"nn.MultiheadAttention ({', '.join(attention)}) computed with separate "
                     "q/k/v/out nn.Linear projections (the same function), which torch.ao "
                     "quantizes; its two matmuls of activations stay float (the ONNX exporter "
                     "has no quantized matmul)")
    return traced.train(model.training), notes


def _notes(source: nn.Module, layers: list[str], moved: list[str]) -> list[str]:
    notes = []
    if layers:
        kinds = sorted({type(source.get_submodule(p)).__name__ for p in layers})
        notes.append(f"{len(layers)} {'/'.join(kinds)} layer(s) ({first_few(layers)}) "
                     "quantized as the "
                     "nn.Conv2d / nn.Linear they subclass, what their forward does before "
                     "the conv (e.g. padding) kept in front of it")
    if moved:
        notes.append(f"tensor-scalar arithmetic kept in float ({', '.join(dict.fromkeys(moved))})"
                     ": torch.ao would quantize it, but the ONNX exporter has no symbolic for "
                     "quantized add/mul with a scalar operand")
    return notes
