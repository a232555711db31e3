"""What a fair comparison derives from a recipe: how many epochs it trains beyond the
reference (its matched fp32 baseline, ``fp32+ft<N>``), whether its result depends on the seed
(trained or calibrated: it is repeated with ``evaluate.repeats`` seeds), and those seeds.

Blalock et al. (MLSys 2020, "What is the state of neural network pruning?") show that a
compressed model fine-tuned for N more epochs must be compared with the dense model
fine-tuned for the same N epochs, and that single runs hide differences smaller than the
spread between seeds; docs/architecture.md ("Fair baselines") says how squeezelab does both.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from unified.spec.steps import (
    BinarizeStep,
    DistillStep,
    FinetuneStep,
    PruneStep,
    QuantizeStep,
    QuantMethod,
    Recipe,
    Step,
    prune_run,
)

if TYPE_CHECKING:
    from unified.spec.scenario import Budget

BASELINE_PREFIX = "fp32+"  # recipe names starting with it are reserved for baselines
MATCHED = re.compile(r"^fp32\+ft(\d+)$")
# the backend whose shared torch training loop fine-tunes the matched baseline: the same loop
# (unified.torchkit.training) that trained the reference
MATCHED_BACKEND = "pytorch"
# the name of the hidden job giving a backend its fp32 native artifact when no recipe is empty
NATIVE_BASELINE = "fp32+native"


def _step_epochs(step: Step, budget: Budget) -> int:
    """Epochs of training a step runs on its own (a prune step's schedule is handled by the
    caller: consecutive scheduled prune steps share one loop)."""
    if isinstance(step, FinetuneStep):
        return step.epochs if step.epochs is not None else budget.finetune_epochs
    if isinstance(step, QuantizeStep) and step.method is QuantMethod.qat:
        return step.epochs if step.epochs is not None else budget.finetune_epochs
    if isinstance(step, BinarizeStep):
        return step.epochs if step.epochs is not None else budget.finetune_epochs
    if isinstance(step, DistillStep):
        return step.epochs
    return 0


def training_epochs(recipe: Recipe, budget: Budget) -> int:
    """Epochs the recipe trains beyond the reference: fine-tuning, QAT, binarization with
    training, distillation, and a scheduled prune's loop (max end_epoch of the consecutive
    scheduled prune steps, which Distiller runs as one loop)."""
    steps = recipe.steps
    total = 0
    seen: set[int] = set()
    for index, step in enumerate(steps):
        if index in seen:
            continue
        if isinstance(step, PruneStep):
            run = prune_run(steps, index)
            seen.update(run)
            ends = [s.schedule.end_epoch for i in run
                    if isinstance(s := steps[i], PruneStep) and s.schedule is not None]
            total += max(ends, default=0)
            continue
        total += _step_epochs(step, budget)
    return total


def calibrates(recipe: Recipe) -> bool:
    """Whether a step reads the calibration sample (static quantization of activations)."""
    return any(isinstance(s, QuantizeStep) and s.method is QuantMethod.static
               and s.activations is not None for s in recipe.steps)


def seed_dependent(recipe: Recipe, budget: Budget) -> bool:
    """Trained or calibrated: the recipes ``evaluate.repeats`` reruns with other seeds."""
    return training_epochs(recipe, budget) > 0 or calibrates(recipe)


def matched_name(epochs: int) -> str:
    """The row name of the reference fine-tuned for ``epochs`` epochs."""
    return f"{BASELINE_PREFIX}ft{epochs}"


def matched_recipe(epochs: int) -> Recipe:
    """The matched baseline's recipe: fine-tune the fp32 reference, nothing else."""
    return Recipe.model_validate([{"finetune": {"epochs": epochs}}])


def matched_baselines(recipes: dict[str, Recipe], budget: Budget) -> dict[str, Recipe]:
    """name → recipe of every matched baseline the recipes need (one per distinct N > 0)."""
    epochs = sorted({training_epochs(r, budget) for r in recipes.values()} - {0})
    return {matched_name(n): matched_recipe(n) for n in epochs}


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` (0: the scenario's own seed); the others derived from it
    deterministically, far apart from each other and from small hand-picked seeds."""
    if repeat == 0:
        return seed
    digest = hashlib.sha256(f"squeezelab-repeat:{seed}:{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31
