"""Which torch modules a step's ``targets`` select: one definition for every torch backend."""

from __future__ import annotations

from torch import nn

from unified.spec.steps import OpType, Targets


def op_type(module: nn.Module) -> OpType | None:
    """conv (groups == 1), depthwise (groups == in_channels > 1), linear; else None."""
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups == 1:
            return OpType.conv
        if module.groups == module.in_channels > 1:
            return OpType.depthwise
        return None  # grouped, not depthwise: none of the unified op types
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
