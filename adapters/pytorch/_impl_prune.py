"""torch.nn.utils.prune for the unified prune step: targets, one-shot and AGP schedules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from unified.spec.schedules import pruning_epochs, sparsity_at_epoch, target_sparsity
from unified.spec.steps import (
    PruneCriterion,
    PruneScope,
    PruneStep,
    PruneStructure,
)
from unified.torchkit.targets import op_type

Named = list[tuple[str, nn.Module]]


# --- sparsity ------------------------------------------------------------------------------


def tensor(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """A tensor attribute of a module (typed: nn.Module attributes are Tensor | Module)."""
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def weight_of(module: nn.Module) -> torch.Tensor:
    """The effective weight (masked while a pruning hook is attached)."""
    if prune.is_pruned(module) and hasattr(module, "weight_mask"):
        return tensor(module, "weight_orig").detach() * tensor(module, "weight_mask")
    return tensor(module).detach()


def sparsity(modules: Named) -> float:
    zeros = sum(int((weight_of(m) == 0).sum()) for _, m in modules)
    total = sum(weight_of(m).numel() for _, m in modules)
    return zeros / total if total else 0.0


def masked(modules: Named) -> list[str]:
    """The modules whose weight really has zeros now (pruned), in the given order."""
    return [name for name, module in modules if bool((weight_of(module) == 0).any())]


def _masked(module: nn.Module) -> int:
    mask = getattr(module, "weight_mask", None)
    return 0 if mask is None else int((mask == 0).sum())


# the weight dimension a structured prune removes: output channels (filters) or input channels
CHANNEL_DIM = {PruneStructure.channel: 0, PruneStructure.input_channel: 1}


def _masked_channels(module: nn.Module, dim: int) -> int:
    mask = getattr(module, "weight_mask", None)
    if mask is None:
        return 0
    return int((mask.transpose(0, dim).flatten(1).sum(1) == 0).sum())


def apply_sparsity(modules: Named, step: PruneStep, target: float) -> None:
    """Bring the targeted weights to ``target`` sparsity (never un-prunes).

    torch's PruningContainer applies an integer amount to the still-unpruned entries, so
    the amount passed is (wanted zeros - zeros already masked): the result is exact.
    """
    if step.structure in CHANNEL_DIM:
        dim = CHANNEL_DIM[step.structure]
        n = 2 if step.criterion is PruneCriterion.l2 else 1
        for _, module in modules:
            channels = tensor(module).shape[dim]
            amount = max(round(target * channels) - _masked_channels(module, dim), 0)
            if step.criterion is PruneCriterion.random:
                prune.random_structured(module, "weight", amount=amount, dim=dim)
            else:
                prune.ln_structured(module, "weight", amount=amount, n=n, dim=dim)
        return
    method: type[prune.BasePruningMethod] = (
        prune.RandomUnstructured if step.criterion is PruneCriterion.random
        else prune.L1Unstructured  # l1 = l2 = level for single weights: |w|
    )
    if step.scope is PruneScope.global_:
        total = sum(tensor(m).numel() for _, m in modules)
        already = sum(_masked(m) for _, m in modules)
        amount = max(round(target * total) - already, 0)
        prune.global_unstructured([(m, "weight") for _, m in modules],
                                  pruning_method=method, amount=amount)
        return
    for _, module in modules:
        amount = max(round(target * tensor(module).numel()) - _masked(module), 0)
        method.apply(module, "weight", amount=amount)


def describe(step: PruneStep) -> str:
    if step.structure in CHANNEL_DIM:
        fn = ("random_structured" if step.criterion is PruneCriterion.random
              else f"ln_structured(n={2 if step.criterion is PruneCriterion.l2 else 1})")
        return f"{fn}(dim={CHANNEL_DIM[step.structure]}) per layer"
    method = "RandomUnstructured" if step.criterion is PruneCriterion.random else "L1Unstructured"
    if step.scope is PruneScope.global_:
        return f"global_unstructured({method})"
    fn = "random_unstructured" if step.criterion is PruneCriterion.random else "l1_unstructured"
    return f"{fn} per layer"


def make_permanent(model: nn.Module) -> int:
    """prune.remove on every pruned module, so the zeros live in ``weight``; returns count."""
    count = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                count += 1
    return count


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where each conv/linear weight is exactly zero (after make_permanent), by module name."""
    return {
        name: tensor(module).detach() == 0
        for name, module in model.named_modules()
        if op_type(module) is not None and bool((tensor(module) == 0).any())
    }


# --- schedules (Distiller semantics, unified.spec.schedules) ------------------------------------


@dataclass
class ScheduleRun:
    """An AGP/linear/constant run: prunes at the schedule's epochs, logs the target."""

    modules: Named
    step: PruneStep

    def on_epoch_start(self, epoch: int) -> None:
        schedule = self.step.schedule
        assert schedule is not None
        if epoch in pruning_epochs(schedule):
            apply_sparsity(self.modules, self.step,
                           target_sparsity(schedule, self.step.sparsity, epoch))

    def target(self, epoch: int) -> float:
        """The sparsity the mask should have during ``epoch``."""
        assert self.step.schedule is not None
        return sparsity_at_epoch(self.step.schedule, self.step.sparsity, epoch)
