"""Model sources: builtin:<name>, torchvision:<name> (no weights), python:<module>:<factory>."""

from __future__ import annotations

import importlib
import inspect
import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unified.spec.errors import SqueezelabError, did_you_mean, summarize
from unified.torchkit.nets import BUILTIN
from unified.torchkit.pooling import exportable_adaptive_pooling

Factory = Callable[[int, tuple[int, int, int]], nn.Module]


class BuildError(SqueezelabError):
    """A model source that resolves but cannot be built for this input shape / class count."""


def build_model(source: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """A freshly initialised model for ``source`` with ``num_classes`` outputs, its adaptive
    pooling made exportable at ``input_shape`` (unified.torchkit.pooling)."""
    factory = model_factory(source)
    try:
        model = factory(num_classes, input_shape)
    except SqueezelabError:
        raise
    except Exception as exc:  # the constructor refused this input shape or class count
        raise BuildError(f"{source} cannot be built for input_shape {list(input_shape)}, "
                         f"num_classes {num_classes}: {summarize(exc)}") from None
    if not isinstance(model, nn.Module):
        raise BuildError(f"{source} returned {type(model).__name__}, not a torch.nn.Module")
    exportable_adaptive_pooling(model, input_shape)
    return model


def model_factory(source: str) -> Factory:
    """``(num_classes, input_shape) → model`` for ``source``; raises
    :class:`SqueezelabError` naming what does not exist (with a "did you mean")."""
    kind, _, rest = source.partition(":")
    if kind == "builtin":
        if rest not in BUILTIN:
            raise SqueezelabError(
                f"unknown builtin model {rest!r} (allowed: {', '.join(sorted(BUILTIN))})"
                f"{did_you_mean(rest, BUILTIN)}"
            )
        return BUILTIN[rest]
    if kind == "torchvision":
        names = torchvision_names()
        if rest not in names:
            raise SqueezelabError(f"torchvision has no classification model {rest!r} "
                                  "(torchvision.models.list_models() names them)"
                                  f"{did_you_mean(rest, names)}")
        return lambda num_classes, input_shape: _torchvision(rest, num_classes, input_shape)
    if kind == "python":
        return _python_factory(rest)
    raise SqueezelabError(f"unknown model source {source!r}")


def torchvision_names() -> list[str]:
    """The classification architectures ``torchvision.models`` builds (no detection etc.)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _torchvision(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision

    model: nn.Module = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **_torchvision_arguments(name, input_shape))
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


def _python_factory(spec: str) -> Factory:
    module_name, _, attr = spec.rpartition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name + ".").startswith(exc.name + "."):
            raise SqueezelabError(f"cannot import model module {module_name!r}: no module "
                                  f"named {exc.name!r} on the path") from None
        raise SqueezelabError(f"importing model module {module_name!r} failed: "
                              f"{summarize(exc)}") from None
    except (Exception, SystemExit) as exc:  # the user's module raised while importing
        raise SqueezelabError(f"importing model module {module_name!r} failed: "
                              f"{summarize(exc)}") from None
    factory = getattr(module, attr, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_")]
        raise SqueezelabError(f"model module {module_name!r} has no {attr!r}"
                              f"{did_you_mean(attr, public)}")
    if not callable(factory):
        raise SqueezelabError(f"{module_name}:{attr} is not callable (it is a "
                              f"{type(factory).__name__}); name a function that returns a model")
    try:
        params = set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: call it bare
        params = set()

    def build(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
        kwargs: dict[str, object] = {}
        if "num_classes" in params:
            kwargs["num_classes"] = num_classes
        if "input_shape" in params:
            kwargs["input_shape"] = input_shape
        try:
            model = factory(**kwargs)
        except (Exception, SystemExit) as exc:  # the user's factory raised
            raise BuildError(f"calling {module_name}:{attr}() failed: {summarize(exc)}") from None
        if not isinstance(model, nn.Module):
            raise BuildError(f"python:{spec} returned {type(model).__name__}, not a "
                             "torch.nn.Module")
        return model  # type: ignore[no-any-return]

    return build


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


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
    with path.open("rb") as f:
        head = f.read(len(LFS_POINTER))
    if head == LFS_POINTER:
        raise SqueezelabError(f"{path} is a Git LFS pointer, not the weights themselves "
                              "(fetch them with `git lfs pull`)")
    with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's
        warnings.simplefilter("ignore")
        if path.suffix == ".safetensors":
            return _load_safetensors(path)
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:  # a pickle with code in it fails here, on purpose
            raise SqueezelabError(f"{path}: {_weights_only_reason(exc)}") from None
        except Exception as exc:
            raise SqueezelabError(f"{path} is not a torch weights file (torch.load: "
                                  f"{summarize(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict holding non-tensors"
        raise SqueezelabError(f"{path}: expected a state_dict (parameter name → tensor), "
                              f"got {got}")
    return state


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise SqueezelabError(f"{path} is not a safetensors file ({summarize(exc)})") from None


def _weights_only_reason(exc: Exception) -> str:
    """torch's many-line refusal in one line: what the file holds that a state_dict must not."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (f"refused by torch.load(weights_only=True): the file holds the Python object "
                f"{found.group(1)}, not only tensors (a pickled model or code); save "
                "model.state_dict() instead")
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return (f"refused by torch.load(weights_only=True): a pickle with an instruction a "
                f"weights file never needs (opcode {found.group(1)}), not a plain state_dict")
    return f"refused by torch.load(weights_only=True): {summarize(exc)}"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
