"""Which torch modules are layers and which a step's ``targets`` select: one definition for
every torch backend, and the model's layer inventory (unified.spec.layers) in execution order."""

from __future__ import annotations

import torch
from torch import nn

from unified.spec.layers import LayerInfo
from unified.spec.steps import OpType, Targets


def op_type(module: nn.Module) -> OpType | None:
    """conv (groups == 1, or grouped), depthwise (groups == in_channels > 1), linear; else
    None. A grouped conv is a conv: its weights are an ordinary conv kernel per group."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == module.in_channels > 1:
            return OpType.depthwise
        return OpType.conv
    if isinstance(module, nn.Linear):
        return OpType.linear
    return None


def targeted(name: str, module: nn.Module, targets: Targets) -> bool:
    """Does ``targets`` select the module called ``name``?"""
    return targets.selects(op_type(module), name)


def select_modules(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs ``targets`` selects, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if targeted(name, module, targets)]


def named_layers(model: nn.Module,
                 names: tuple[str, ...] | list[str]) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs of ``names`` (a resolved target list), in that order."""
    return [(name, model.get_submodule(name)) for name in names]


def layer_inventory(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """Every conv / linear module the forward pass of one zero sample runs, in the order it
    first runs them (a module never run is not a layer of the exported model)."""
    kinds = {module: (name, kind) for name, module in model.named_modules()
             if (kind := op_type(module)) is not None}
    order: list[nn.Module] = []

    def hook(module: nn.Module, _args: object, _out: object) -> None:
        if module not in order:
            order.append(module)

    handles = [module.register_forward_hook(hook) for module in kinds]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    out = []
    for module in order:
        name, kind = kinds[module]
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        groups = int(getattr(module, "groups", 1))
        out.append(LayerInfo(name, kind, tuple(int(d) for d in weight.shape), groups))
    return out
