"""NNI pruning: one pruner per prune step (LevelPruner, L1/L2 norm, FPGM, Taylor), AGP and
linear schedules (AGPPruner / LinearPruner on the shared training loop), and ModelSpeedup for
structured masks (real channel removal, Distiller's thinning). Several concurrent prune steps
are in ``_impl_prune_several``."""

from __future__ import annotations

import logging
from typing import Any

import torch
from nni.compression.pruning import (
    AGPPruner,
    FPGMPruner,
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    LinearPruner,
    TaylorPruner,
)
from nni.compression.speedup import ModelSpeedup
from nni.compression.utils import TorchEvaluator
from torch import nn

from adapters.nni._impl_common import (
    Masks,
    State,
    apply_masks,
    make_evaluator,
    mask_sparsity,
)
from unified.context import JobContext
from unified.spec.steps import (
    PruneCriterion,
    PruneScope,
    PruneStep,
    PruneStructure,
    ScheduleCurve,
)
from unified.torchkit import training
from unified.torchkit.models import count_parameters
from unified.torchkit.targets import layer_inventory


def _prune_config(ctx: JobContext, model: nn.Module, step: PruneStep) -> list[dict[str, Any]]:
    selected = {name: model.get_submodule(name) for name in ctx.layers_for(step)}
    layers = [layer.name for layer in layer_inventory(model, ctx.input_shape)]
    if step.structure is PruneStructure.channel:
        head = layers[-1]
        if head in selected:  # named in include: the resolved targets keep it
            del selected[head]
            ctx.deviate(f"NNI channel pruning leaves out the output layer {head!r}: "
                        "ModelSpeedup cannot remove the model's outputs (the classes)")
    if step.structure is PruneStructure.input_channel:
        _input_channel_targets(ctx, layers[0], selected)
    if not selected:
        raise ValueError("the prune step's targets select no conv/linear module")
    config: dict[str, Any] = {"op_names": list(selected), "sparse_ratio": step.sparsity}
    if step.structure is PruneStructure.input_channel:
        config["granularity"] = "in_channel"  # one L1/L2 norm per weight[:, c]
    if step.structure is PruneStructure.unstructured:
        config["target_names"] = ["weight"]
    if step.scope is PruneScope.global_:
        config["global_group_id"] = "all"  # one ranking over every target layer
    return [config]


def _input_channel_targets(ctx: JobContext, first: str,
                           selected: dict[str, nn.Module]) -> None:
    """Input-channel pruning cannot take the input layer (its channels are the image's:
    speedup would change the model's input); the resolved targets keep it only when the
    recipe names it."""
    if first in selected:
        del selected[first]
        ctx.deviate(f"NNI input-channel pruning leaves out the input layer {first!r}: "
                    "ModelSpeedup would change the model's input (the image's channels)")


def pruned_names(masks: Masks) -> list[str]:
    """The modules whose weight mask has zeros."""
    return [name for name, targets in masks.items()
            if "weight" in targets and bool((targets["weight"] == 0).any())]


def _basic_pruner(ctx: JobContext, model: nn.Module, step: PruneStep,
                  config_list: list[dict[str, Any]], evaluator: TorchEvaluator | None) -> Any:
    if step.structure is PruneStructure.unstructured:
        return LevelPruner(model, config_list)
    criterion = step.criterion
    if criterion is PruneCriterion.l1:
        return L1NormPruner(model, config_list)
    if criterion is PruneCriterion.l2:
        return L2NormPruner(model, config_list)
    if criterion is PruneCriterion.fpgm:
        return FPGMPruner(model, config_list)
    if criterion is PruneCriterion.taylor:
        assert evaluator is not None
        taylor_steps = min(ctx.steps_per_epoch, 20)
        ctx.note(f"NNI TaylorPruner collected first-order importance over {taylor_steps} training "
                 "steps (the optimizer updates the weights during them)")
        return TaylorPruner(model, config_list, evaluator, training_steps=taylor_steps)
    raise ValueError(f"criterion {criterion.value} has no NNI pruner")


def prune(ctx: JobContext, state: State, index: int, step: PruneStep) -> None:
    """Prune with NNI; for channel structure run ModelSpeedup. The smaller model is trained
    only when the recipe asks (a finetune step): nothing the recipe did not ask for."""
    model = state.model
    config_list = _prune_config(ctx, model, step)
    lr = ctx.budget.effective_finetune_lr
    names = ", ".join(config_list[0]["op_names"])
    scope = "global (one global_group_id)" if step.scope is PruneScope.global_ else "per layer"
    if step.schedule is None:
        evaluator = make_evaluator(ctx, model, lr=lr) \
            if step.criterion is PruneCriterion.taylor else None
        pruner = _basic_pruner(ctx, model, step, config_list, evaluator)
        _, masks = pruner.compress()
        pruner.unwrap_model()
        ctx.note(f"NNI {type(pruner).__name__} pruned {step.sparsity:.0%} {scope} of {names}")
    else:
        masks = _scheduled_prune(ctx, model, index, step, config_list, lr)
    apply_masks(model, masks)
    ctx.report_changed(index, pruned_names(masks))
    state.details["mask_sparsity"] = round(mask_sparsity(masks), 4)
    if step.structure is PruneStructure.unstructured:
        state.masks = masks
        return
    _speedup(ctx, state, masks)  # channel: remove the pruned channels for real


def _speedup(ctx: JobContext, state: State, masks: Masks) -> None:
    """NNI ModelSpeedup: physically remove the channels the masks zero."""
    model = state.model
    before = count_parameters(model)
    model.eval()
    quiet = logging.getLogger("squeezelab.nni.speedup")  # NNI logs every module at INFO
    quiet.setLevel(logging.WARNING)
    ModelSpeedup(model, torch.zeros(2, *ctx.input_shape), masks, logger=quiet).speedup_model()
    after = count_parameters(model)
    state.details.update(parameters_before=before, parameters_after=after,
                         parameters_ratio=round(after / before, 4))
    ctx.note(f"NNI ModelSpeedup shrank the model from {before} to {after} parameters "
             f"({after / before:.0%}); layers tied by a depthwise conv or a residual add "
             "keep the union of their masks")


def _schedule_pruner(ctx: JobContext, step: PruneStep, basic: Any, interval: int,
                     total_times: int, evaluator: TorchEvaluator) -> Any:
    """NNI's AGPPruner (initial ratio set to Distiller's) or LinearPruner around ``basic``."""
    schedule = step.schedule
    assert schedule is not None
    if schedule.curve is ScheduleCurve.agp:
        pruner: Any = AGPPruner(basic, interval, total_times, evaluator)
        # NNI's AGP: sparse = final * (1 - (1 - r0) * (1 - t/T)^3); r0 = initial / final gives
        # Distiller's final + (initial - final) * (1 - t/T)^3
        pruner._initial_ratio = schedule.initial_sparsity / step.sparsity
    else:
        pruner = LinearPruner(basic, interval, total_times, evaluator)
        if schedule.initial_sparsity > 0:
            ctx.deviate("NNI LinearPruner ramps from 0, not from initial_sparsity "
                     f"{schedule.initial_sparsity} (its formula with an initial ratio does not "
                     "reach the final sparsity)")
    return pruner


def _scheduled_prune(ctx: JobContext, model: nn.Module, index: int, step: PruneStep,
                     config_list: list[dict[str, Any]], lr: float) -> Masks:
    from unified.spec.schedules import agp_span, sparsity_at_epoch

    schedule = step.schedule
    assert schedule is not None
    labels = ctx.data.labels
    start, end, freq = schedule.start_epoch, schedule.end_epoch, schedule.frequency
    rates = ctx.learning_rates(lr, end)
    if start > 0:  # Distiller trains without a mask before start_epoch; NNI starts at once
        training.train(model, ctx.data.train_x, labels, ctx.budget, epochs=start, lr=lr,
                       seed=ctx.seed, learning_rates=rates)
        for epoch in range(start):
            ctx.log_epoch(index, "prune", epoch, sparsity=0.0, target=0.0)
    span = agp_span(start=start, end=end, frequency=freq)
    total_times = span // freq
    interval = ctx.steps_per_epoch * freq
    holder: dict[str, Any] = {}

    def epoch_start(epoch: int) -> None:
        if epoch == 0 and holder["initial_mask"]:
            # NNI's first mask comes at the end of the first interval; Distiller masks to
            # initial_sparsity from the first epoch on. The goals already hold that ratio.
            basic.update_masks(basic.generate_masks())
        holder["during"] = mask_sparsity(holder["pruner"].get_masks())

    def epoch_end(epoch: int) -> None:
        # the mask this epoch trained with (NNI's end-of-interval update is for the next one)
        absolute = start + epoch
        ctx.log_epoch(index, "prune", absolute, sparsity=holder["during"],
                      target=sparsity_at_epoch(schedule, step.sparsity, absolute))

    evaluator = make_evaluator(ctx, model, lr=lr, on_epoch_start=epoch_start,
                               on_epoch_end=epoch_end,
                               learning_rates=rates[start:] if rates else None)
    basic = _basic_pruner(ctx, model, step, config_list, evaluator)
    pruner = _schedule_pruner(ctx, step, basic, interval, total_times, evaluator)
    holder["pruner"] = pruner
    # Taylor needs gradients from training steps before it can rank anything
    holder["initial_mask"] = pruner._initial_ratio > 0 and not isinstance(basic, TaylorPruner)
    if pruner._initial_ratio > 0 and not holder["initial_mask"]:
        ctx.note(f"NNI TaylorPruner cannot rank before training: epoch {start} trains unmasked "
                 f"where Distiller masks {schedule.initial_sparsity:.0%}")
    epochs = end - start
    pruner.compress(max_steps=epochs * ctx.steps_per_epoch, max_epochs=epochs)
    masks = pruner.get_masks()
    pruner.unwrap_model()
    if holder["initial_mask"]:
        ctx.note(f"NNI's {type(pruner).__name__} updates the masks at the end of each interval; "
                 f"the first mask ({schedule.initial_sparsity:.0%}) was generated by "
                 f"{type(basic).__name__} before epoch {start}, as Distiller does")
    ctx.note(f"NNI {type(pruner).__name__}({type(basic).__name__}) pruned to {step.sparsity:.0%} "
             f"over epochs {start}..{end - 1}, mask update every {freq} epoch(s), "
             f"{total_times} updates; {epochs} training epochs at lr {lr}")
    return masks
