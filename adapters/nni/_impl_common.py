"""What every NNI step shares: the state carried through the steps, target selection, the NNI
evaluator around the shared training loop, and masks.

Importing it applies the concrete-tracer patches ``ModelSpeedup`` needs on torch >= 2.2 (see
``_impl_patches``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# isort: off
# torch._dynamo (first used by torch.optim) loads triton; nni imports tensorflow in
# nni/common/version.py, and triton loaded AFTER tensorflow segfaults in this environment.
import torch._dynamo
import nni
# isort: on
import numpy as np
import torch
import torch.nn.functional as F
from nni.compression.utils import TorchEvaluator
from torch import nn

from adapters.nni import _impl_patches
from unified.context import JobContext
from unified.spec.scenario import Optimizer
from unified.spec.steps import Targets
from unified.torchkit import training
from unified.torchkit.targets import op_type, select_modules

_impl_patches.apply()
# NNI logs every replaced module at INFO; the notes say what matters
logging.getLogger("nni").setLevel(logging.WARNING)

Masks = dict[str, dict[str, torch.Tensor]]
PARITY_SAMPLES = 256  # test inputs the native model and its ONNX are compared on


@dataclass
class State:
    """The model as it goes through the steps, plus what the record should say."""

    model: nn.Module
    masks: Masks | None = None  # unstructured masks the following training must keep
    onnx_written: bool = False
    details: dict[str, Any] = field(default_factory=dict)


# --- targets ---------------------------------------------------------------------------------


def target_modules(model: nn.Module, targets: Targets) -> dict[str, nn.Module]:
    """Modules selected by op type and include/exclude name patterns, in model order."""
    return dict(select_modules(model, targets))


def output_layer(model: nn.Module) -> str:
    """Name of the last conv/linear module: the one producing the logits in a classifier."""
    names = [n for n, m in model.named_modules() if op_type(m) is not None]
    return names[-1]


# --- NNI evaluator around the shared training loop ------------------------------------------


def traced_optimizer_class(ctx: JobContext) -> type[torch.optim.Optimizer]:
    """The budget's optimizer class wrapped by ``nni.trace`` (NNI re-creates optimizers)."""
    cls = torch.optim.Adam if ctx.budget.optimizer is Optimizer.adam else torch.optim.SGD
    return nni.trace(cls)  # type: ignore[no-any-return]


def cross_entropy_step(batch: tuple[torch.Tensor, torch.Tensor], model: nn.Module) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def make_evaluator(
    ctx: JobContext,
    model: nn.Module,
    *,
    lr: float,
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    on_step: Callable[[], None] | None = None,
    learning_rates: Sequence[float] | None = None,
    evaluating_func: Callable[[nn.Module], float] | None = None,
) -> TorchEvaluator:
    """A TorchEvaluator whose training function is the shared loop: same batches (seeded by
    epoch), same budget optimizer (nni.trace'd), NNI's possibly patched ``training_step``."""
    x, y = ctx.data.train_x, ctx.data.train_y
    budget, seed = ctx.budget, ctx.seed

    def training_func(
        model: nn.Module,
        optimizers: torch.optim.Optimizer,
        training_step: Callable[..., torch.Tensor],
        lr_schedulers: Any = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        labels = ctx.data.labels
        if max_epochs is None:
            max_epochs = math.ceil((max_steps or 0) / ctx.steps_per_epoch) or 1
        done = 0
        training.set_seed(seed)
        for epoch in range(max_epochs):
            training.set_learning_rate(optimizers, learning_rates, epoch)
            if on_epoch_start is not None:
                on_epoch_start(epoch)
            model.train()
            for xb, yb in training.batches(x, labels, budget.batch_size, seed, epoch):
                optimizers.zero_grad()
                loss = training_step((xb, yb), model)
                loss.backward()
                optimizers.step()
                done += 1
                if on_step is not None:
                    on_step()
                if max_steps is not None and done >= max_steps:
                    break
            if on_epoch_end is not None:
                on_epoch_end(epoch)
            if max_steps is not None and done >= max_steps:
                return

    del y
    optimizer = training.make_optimizer(model.parameters(), budget, lr,
                                        optimizer_class=traced_optimizer_class(ctx))
    return TorchEvaluator(training_func, optimizer, cross_entropy_step,
                          dummy_input=torch.zeros(1, *ctx.input_shape),
                          evaluating_func=evaluating_func)


# --- prune -----------------------------------------------------------------------------------


def mask_sparsity(masks: Masks) -> float:
    zeros = total = 0
    for targets in masks.values():
        mask = targets.get("weight")
        if mask is not None:
            zeros += int((mask == 0).sum())
            total += mask.numel()
    return zeros / total if total else 0.0


def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Multiply the masks into the (unwrapped) parameters."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, targets in masks.items():
            for target, mask in targets.items():
                param = getattr(modules[name], target, None)
                if isinstance(param, torch.Tensor):
                    param.mul_(mask.to(param.dtype))



# --- native vs ONNX ------------------------------------------------------------------------


def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The torch model's logits on ``x`` (eval mode, no gradients)."""
    model.eval()
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(x)).float().numpy())


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """onnxruntime's logits of the ONNX file on ``x`` (one thread, the CPU provider)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0])
