"""What the PyTorch-native steps share: the state of the model through the recipe and the
training loop every training step runs (pruning hooks stay attached, the epoch log)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adapters.pytorch import _impl_prune as P
from unified.context import JobContext
from unified.spec.steps import Targets
from unified.torchkit import training
from unified.torchkit.targets import select_modules


@dataclass
class State:
    """The model as the steps leave it."""

    model: nn.Module
    # set by a quantize step: the model is converted and nothing may follow (check_recipe)
    onnx_written: bool = False
    pruned: bool = False
    details: dict[str, Any] = field(default_factory=dict)



# --- training ------------------------------------------------------------------------------


def run_training(ctx: JobContext, state: State, index: int, kind: str, epochs: int,
                 lr: float, loss_fn: training.LossFn = training.cross_entropy,
                 masks: dict[str, torch.Tensor] | None = None,
                 learning_rates: list[float] | None = None) -> None:
    """torchkit training; pruning hooks stay attached, so pruned weights stay zero."""
    if epochs == 0:
        ctx.note(f"step {index + 1} ({kind}): 0 epochs in the budget, no training")
        return
    model = state.model
    targets = select_modules(model, Targets()) if state.pruned else []

    def log_epoch(epoch: int) -> None:
        ctx.log_epoch(index, kind, epoch, sparsity=P.sparsity(targets) if targets else None)

    on_step = None
    if masks:
        modules = {name: model.get_submodule(name) for name in masks}

        @torch.no_grad()
        def reapply() -> None:  # QAT modules do not know pruning masks: re-zero after a step
            for name, module in modules.items():
                P.tensor(module).mul_(~masks[name])

        on_step = reapply
        reapply()
    training.train(model, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs, lr=lr,
                   seed=ctx.seed, loss_fn=loss_fn, on_epoch_end=log_epoch, on_step=on_step,
                   learning_rates=learning_rates)
    model.eval()
    ctx.note(f"step {index + 1} ({kind}): {epochs} epoch(s) at lr {lr:g} "
             f"({ctx.budget.optimizer}, batch {ctx.budget.batch_size})")

