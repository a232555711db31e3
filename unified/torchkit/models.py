"""Model sources: builtin:<name>, torchvision:<name> (no weights), python:<module>:<factory>."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unified.spec.errors import SqueezelabError
from unified.torchkit.nets import BUILTIN


def build_model(source: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised model for ``source`` with ``num_classes`` outputs."""
    kind, _, rest = source.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise SqueezelabError(
                f"unknown builtin model {rest!r}; allowed: {', '.join(sorted(BUILTIN))}"
            )
        return BUILTIN[rest](num_classes, input_shape)
    if kind == "torchvision":
        return _torchvision(rest, num_classes, input_shape)
    if kind == "python":
        return _python_factory(rest, num_classes, input_shape)
    raise SqueezelabError(f"unknown model source {source!r}")


def _torchvision(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision

    factory = getattr(torchvision.models, name, None)
    if factory is None or not callable(factory) or name.startswith("_"):
        raise SqueezelabError(f"torchvision has no model {name!r}")
    model: nn.Module = factory(weights=None, num_classes=num_classes,
                               **_torchvision_arguments(name, input_shape))
    if input_shape[0] != 3:
        _adapt_input_channels(model, input_shape[0])
    return model


def _torchvision_arguments(name: str, input_shape: tuple[int, int, int]) -> dict[str, object]:
    """Arguments some torchvision builders need beyond num_classes: a ViT's image size (it
    checks the input against it); GoogLeNet / Inception without their auxiliary heads, which
    make the training-mode output a tuple (torchvision turns them on when weights=None)."""
    if name.startswith("vit_"):
        return {"image_size": input_shape[1]}
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    return {}


def _adapt_input_channels(model: nn.Module, channels: int) -> None:
    """Replace the first conv so the model takes ``channels`` input channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                replacement = nn.Conv2d(
                    channels, child.out_channels, kernel_size=1, groups=child.groups,
                    bias=child.bias is not None,
                )
                # same geometry as the original (tuples straight from the module)
                replacement.kernel_size = child.kernel_size
                replacement.stride = child.stride
                replacement.padding = child.padding
                replacement.dilation = child.dilation
                replacement.weight = nn.Parameter(torch.empty(
                    child.out_channels, channels // child.groups, *child.kernel_size))
                nn.init.kaiming_normal_(replacement.weight, mode="fan_out")
                setattr(parent, child_name, replacement)
                return


def _python_factory(spec: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    module_name, _, attr = spec.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SqueezelabError(f"cannot import model module {module_name!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SqueezelabError(f"{module_name} has no callable {attr!r}")
    params = inspect.signature(factory).parameters
    kwargs: dict[str, object] = {}
    if "num_classes" in params:
        kwargs["num_classes"] = num_classes
    if "input_shape" in params:
        kwargs["input_shape"] = input_shape
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise SqueezelabError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def initial_weights(model: nn.Module, source: str, weights: str) -> None:
    """Give a freshly built model the weights its spec names when they come with the source
    (``weights: pretrained``); ``train`` and files are handled by the caller."""
    if weights != "pretrained":
        return
    kind = source.partition(":")[0]
    if kind == "builtin":
        from unified.torchkit.zoo import load_pretrained

        load_pretrained(model, source)
    # python: factories return their own weights; torchvision is refused by the loader


def recalibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int) -> int:
    """Re-estimate the running mean and variance of every BatchNorm of ``model`` as the plain
    average over ``x`` (train-mode forward passes, no gradient, weights unchanged); return how
    many BatchNorm layers were re-estimated. The model is left in train mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum  # for whoever trains this model next
    return len(norms)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load weights safely: safetensors, or torch.load(weights_only=True)."""
    if not path.is_file():
        raise SqueezelabError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # a pickle with code in it fails here, on purpose
        raise SqueezelabError(f"{path}: not a plain state_dict ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SqueezelabError(f"{path}: expected a state_dict, got {type(state).__name__}")
    return state


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
