"""Conv + BatchNorm folding for the torch backends that need the exported weights to be the
ones they compress (NNI's quantizer scales, Core ML's read-back)."""

from __future__ import annotations

from typing import cast

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from unified.torchkit.fxtrace import trace_layers

FOLDABLE_CONVS = (nn.Conv1d, nn.Conv2d)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm consumes the output of a conv that feeds
    nothing else (torch.fx graph, conv / linear subclasses kept as modules: trace_layers).
    Raises what torch.fx raises on an untraceable model."""
    graph = trace_layers(model)
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target),
                                                      nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0]
        if (isinstance(src, torch.fx.Node) and src.op == "call_module"
                and isinstance(modules.get(src.target), FOLDABLE_CONVS)
                and len(src.users) == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold, in place and in eval mode, every BatchNorm that directly follows a conv into
    that conv (the BatchNorm becomes Identity); returns the folded (conv, bn) pairs."""
    model.eval()
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv = cast(nn.modules.conv._ConvNd, model.get_submodule(conv_name))
        bn = cast(nn.modules.batchnorm._BatchNorm, model.get_submodule(bn_name))
        set_module(model, conv_name, fuse_conv_bn_eval(conv, bn))
        set_module(model, bn_name, nn.Identity())
    return pairs


def batchnorm_count(model: nn.Module) -> int:
    """BatchNorm modules in ``model`` (those folding left, after fold_batchnorm)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
