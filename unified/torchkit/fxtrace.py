"""torch.fx helpers for models as users write them.

- :class:`LayerTracer`: torch.fx's default tracer treats only modules defined in ``torch.nn``
  as leaves: a subclass such as EfficientNet's ``Conv2dStaticSamePadding`` (an ``nn.Conv2d``
  whose forward pads, then calls ``F.conv2d``) is traced through, and the conv → BatchNorm
  pairs a backend folds are no longer visible as ``call_module`` nodes. This tracer keeps them.
- :func:`static_shapes`: shape reads (``x.size(0)``) turned into the constants they take on one
  input shape, for converters that take one fixed shape.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class LayerTracer(fx.Tracer):
    """torch.fx's tracer with every conv / linear module (subclasses too) a leaf."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LAYER_TYPES) or super().is_leaf_module(m, module_qualified_name)


def trace_layers(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model`` with conv / linear layers as ``call_module`` nodes."""
    return LayerTracer().trace(model)


def _shape_value(node: fx.Node) -> tuple[bool, Any]:
    """(True, value) for ``x.size()`` / ``x.size(d)`` / ``x.shape`` of a shape-propagated
    tensor node, else (False, None)."""
    if node.op == "call_method" and node.target == "size":
        source = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    elif node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        source, dim = node.args[0], None
    else:
        return False, None
    meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
    if meta is None or not (dim is None or isinstance(dim, int)):
        return False, None
    shape = tuple(int(s) for s in meta.shape)
    return True, (shape if dim is None else shape[int(dim)])


def _substitute(node: fx.Node, value: Any) -> None:
    """Every use of ``node`` becomes the constant ``value``."""

    def swap(arg: fx.Node) -> Any:
        return value if arg is node else arg

    for user in list(node.users):
        user.args = fx.node.map_arg(user.args, swap)
        user.kwargs = fx.node.map_arg(user.kwargs, swap)


def static_shapes(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose ``x.size()`` / ``x.shape`` reads are the constants they take
    on ``example`` (an fx GraphModule), for converters that take one fixed input shape and
    stumble on shape arithmetic in a trace (coremltools' ``aten::Int`` of a traced size).
    ``model`` itself when it cannot be traced or reads no shape."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = fx.GraphModule(model, fx.Tracer().trace(model))  # through subclasses too
        ShapeProp(traced).propagate(example)
    except Exception:  # untraceable (data-dependent control flow): convert as it is
        return model
    changed = False
    for node in list(traced.graph.nodes):
        known, value = _shape_value(node)
        if not known:
            continue
        _substitute(node, value)
        traced.graph.erase_node(node)
        changed = True
    if not changed:
        return model
    traced.graph.eliminate_dead_code()
    traced.recompile()
    return traced.eval()
