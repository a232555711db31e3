"""A model source checked before any run: it exists, it builds for the scenario's input shape
and class count, it takes one input of that shape and returns ``num_classes`` logits, and a
weights file is a plain state_dict with the model's keys and shapes.

A model for a small input is built and run on the CPU, as the run will (a forward pass of one
input costs little next to the run's own). A large input goes to torch's ``meta`` device
instead (shapes only: no memory, no compute, whatever the size; its first use imports
torch's symbolic-shape machinery, seconds, which a small input never pays). Where meta
cannot run a model (code that branches on values), nothing is reported: only a real run
could tell.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unified.spec.errors import SqueezelabError, summarize

# Inputs up to this many values run on the CPU; larger ones on the meta device.
_CPU_VALUES = 3 * 512 * 512


@dataclass(frozen=True)
class ModelProblem:
    """What is wrong, and the model field to point at (source, input_shape, num_classes,
    weights)."""

    field: str
    message: str


def model_problem(source: str, num_classes: int, input_shape: tuple[int, int, int],
                  weights: Path | None = None) -> ModelProblem | None:
    """The first problem of this model, or None when a run can build and load it."""
    from unified.torchkit.models import model_factory

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model_factory(source)
    except SqueezelabError as exc:
        return ModelProblem("source", exc.message)
    values = input_shape[0] * input_shape[1] * input_shape[2]
    device = "cpu" if values <= _CPU_VALUES else "meta"
    model, problem = _try_model(source, num_classes, input_shape, device)
    if problem is not None and device == "meta" and _meta_cannot_tell(problem):
        problem = None
    if problem is not None or model is None or weights is None:
        return problem
    return _weights_problem(model, source, weights)


def _try_model(source: str, num_classes: int, input_shape: tuple[int, int, int],
               device: str) -> tuple[Any, ModelProblem | None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one input: a second thread only waits (20x slower on 2 cores)
    try:
        return _build_and_run(source, num_classes, input_shape, device)
    finally:
        torch.set_num_threads(threads)


def _build_and_run(source: str, num_classes: int, input_shape: tuple[int, int, int],
                   device: str) -> tuple[Any, ModelProblem | None]:
    import torch

    from unified.torchkit.models import BuildError, build_model

    python = source.startswith("python:")
    shape = [1, *input_shape]
    with warnings.catch_warnings(), torch.device(device):
        warnings.simplefilter("ignore")  # torchvision's init notices are not the user's
        try:
            model = build_model(source, num_classes, input_shape)
        except BuildError as exc:
            return None, ModelProblem("source" if python else "input_shape", exc.message)
        except SqueezelabError as exc:
            return None, ModelProblem("source", exc.message)
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(shape))
        except Exception as exc:  # any error of the forward pass: the input does not fit
            return model, ModelProblem("input_shape", f"{source} does not accept an input of "
                                       f"shape {shape}: {summarize(exc)}")
    if not isinstance(out, torch.Tensor):
        return model, ModelProblem("source", f"{source} returns a {type(out).__name__}, not a "
                                   "tensor of logits")
    if tuple(out.shape) != (1, num_classes):
        return model, ModelProblem("num_classes", f"{source} returns logits of shape "
                                   f"{list(out.shape)} for one input, not [1, {num_classes}] "
                                   f"(num_classes {num_classes})")
    return model, None


def _meta_cannot_tell(problem: ModelProblem) -> bool:
    """The meta device refused an operation it has no kernel or no values for."""
    text = problem.message.lower()
    return "meta" in text or "notimplementederror" in text or "data-dependent" in text


def _weights_problem(model: Any, source: str, weights: Path) -> ModelProblem | None:
    from unified.torchkit.models import load_state_dict

    try:
        state = load_state_dict(weights)
    except SqueezelabError as exc:
        return ModelProblem("weights", exc.message)
    mismatch = state_dict_mismatch(
        {k: tuple(v.shape) for k, v in model.state_dict().items()},
        {k: tuple(v.shape) for k, v in state.items()})
    if mismatch is None:
        return None
    return ModelProblem("weights", f"{weights} does not fit {source}: {mismatch}")


def state_dict_mismatch(model: dict[str, tuple[int, ...]],
                        file: dict[str, tuple[int, ...]]) -> str | None:
    """The first key (in the model's order) whose presence or shape differs, in words."""
    missing = [k for k in model if k not in file]
    extra = [k for k in file if k not in model]
    if missing or extra:
        prefix = ""
        if extra and all(k.startswith("module.") for k in file):
            prefix = " (every key starts with 'module.': saved from DataParallel; save " \
                     "model.module.state_dict())"
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            return f"key {missing[0]!r} is missing from the file{more}{prefix}"
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        return f"key {extra[0]!r} is in the file but not in the model{more}"
    for key, shape in model.items():
        if file[key] != shape:
            return (f"key {key!r} has shape {list(file[key])} in the file, {list(shape)} in "
                    "the model")
    return None
