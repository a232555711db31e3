"""Which torch modules a step's ``targets`` select: one definition for every torch backend."""

from __future__ import annotations

import fnmatch
import re

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


def name_matches(name: str, pattern: str) -> bool:
    """fnmatch glob, or ``re:<regex>`` (full match) against a torch module name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def targeted(name: str, module: nn.Module, targets: Targets) -> bool:
    """Does ``targets`` select the module called ``name``?"""
    kind = op_type(module)
    if kind is None or kind not in targets.op_types:
        return False
    if targets.include and not any(name_matches(name, p) for p in targets.include):
        return False
    return not any(name_matches(name, p) for p in targets.exclude)


def select_modules(model: nn.Module, targets: Targets) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs ``targets`` selects, in module order."""
    return [(name, module) for name, module in model.named_modules()
            if targeted(name, module, targets)]
