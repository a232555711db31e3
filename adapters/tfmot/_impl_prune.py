"""TF-MOT pruning: prune_low_magnitude with a ConstantSparsity or PolynomialDecay schedule
that reproduces Distiller's pruning epochs (epochs -> training steps), consecutive prune
steps wrapped together and trained in one loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.tfmot._impl_common import (
    NEVER,
    State,
    keras,
    kernel_sparsity,
    rewrap,
    select_layers,
    sparsity_api,
    train,
)
from unified.spec.schedules import sparsity_at_epoch
from unified.spec.steps import PruneStep, PruneStructure, ScheduleCurve

# isort: split
# after _impl_common, which imports torch (and triton) before TensorFlow
from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper

if TYPE_CHECKING:
    from unified.context import JobContext


def _schedule(step: PruneStep, ctx: JobContext) -> tuple[Any, int, str]:
    """TF-MOT pruning schedule, the epochs the prune step trains, and a description.

    Distiller prunes at the *start* of epochs start, start+freq, ... up to start+span with
    ``span = ((end - start - 1) // freq) * freq``. TF-MOT updates masks in the training step
    that brings ``pruning_step`` to begin + k*frequency (steps count from 1), so begin_step
    = start*spe + 1 puts each update on the first batch of its epoch and PolynomialDecay's
    ``(step - begin) / (end - begin)`` equals Distiller's ``(epoch - start) / span``.
    """
    spe = ctx.steps_per_epoch
    sched = step.schedule
    if sched is None:  # one-shot: masks computed once (below), kept while fine-tuning
        return sparsity_api.ConstantSparsity(step.sparsity, begin_step=1, frequency=NEVER), 0, \
            f"one-shot magnitude pruning to {step.sparsity:g}"
    span = ((sched.end_epoch - sched.start_epoch - 1) // sched.frequency) * sched.frequency
    begin = sched.start_epoch * spe + 1
    if sched.curve is ScheduleCurve.constant or span == 0:
        schedule = sparsity_api.ConstantSparsity(step.sparsity, begin_step=begin, frequency=NEVER)
        desc = f"ConstantSparsity({step.sparsity:g}) from step {begin}"
    else:
        power = 3 if sched.curve is ScheduleCurve.agp else 1
        end = (sched.start_epoch + span) * spe + 1
        schedule = sparsity_api.PolynomialDecay(
            initial_sparsity=sched.initial_sparsity, final_sparsity=step.sparsity,
            begin_step=begin, end_step=end, power=power, frequency=sched.frequency * spe)
        desc = (f"PolynomialDecay(power={power}, {sched.initial_sparsity:g}→{step.sparsity:g}, "
                f"steps {begin}..{end}, every {sched.frequency * spe} steps; "
                f"{spe} steps/epoch)")
    return schedule, sched.end_epoch, desc


def _step_wrapping(state: State, step: PruneStep, ctx: JobContext
                   ) -> tuple[list[str], dict[str, Any], dict[str, Any], int, str]:
    """The layers a prune step wraps, prune_low_magnitude's arguments (and the Dense-only
    block argument), the epochs its schedule trains, and a description."""
    layers = select_layers(state.model, ctx.layers_for(step))
    depthwise = [ly.name for ly in layers if type(ly).__name__ == "DepthwiseConv2D"]
    if depthwise:
        ctx.deviate(f"TF-MOT has no pruning for DepthwiseConv2D: kernels of {', '.join(depthwise)} "
                 "left dense")
    names = [ly.name for ly in layers if ly.name not in depthwise]
    if not names:
        raise ValueError("the prune step's targets select no Conv2D / Dense layer")
    schedule, epochs, desc = _schedule(step, ctx)
    kwargs: dict[str, Any] = {"pruning_schedule": schedule}
    if step.structure is PruneStructure.n_m:
        assert step.n is not None and step.m is not None
        # TF-MOT's (m, n) means m zeros in every n consecutive input-channel values
        kwargs["sparsity_m_by_n"] = (step.m - step.n, step.m)
        desc = f"{step.n}:{step.m} structured pruning (sparsity_m_by_n={kwargs['sparsity_m_by_n']})"
    block: dict[str, Any] = {}
    if step.structure is PruneStructure.block:
        assert step.block is not None
        # TF-MOT's block sparsity accepts 2-D kernels only: Dense gets blocks
        block = {"block_size": tuple(step.block)}
        conv = [n for n in names if type(state.model.get_layer(n)).__name__ != "Dense"]
        if conv:
            ctx.note(f"block sparsity on Dense layers only; {', '.join(conv)} pruned "
                     "unstructured (TF-MOT blocks need 2-D kernels)")
    return names, kwargs, block, epochs, desc


def prune(state: State, steps: list[tuple[int, PruneStep]], ctx: JobContext) -> None:
    """Consecutive prune steps together, as Distiller runs its pruning policies: every layer
    is wrapped once with its own step's schedule, and one training loop of max(end_epoch)
    epochs updates each layer's mask at its own steps."""
    state.strip()
    wrapping: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    owner: dict[str, int] = {}
    names_of: dict[int, list[str]] = {}
    epochs = 0
    for index, step in steps:
        names, kwargs, block, step_epochs, desc = _step_wrapping(state, step, ctx)
        epochs = max(epochs, step_epochs)
        for name in names:
            if name in owner:
                ctx.note(f"layer {name} is targeted by steps {owner[name] + 1} and {index + 1}: "
                         f"TF-MOT wraps a layer once, step {index + 1}'s schedule applies")
                names_of[owner[name]].remove(name)
            wrapping[name], owner[name] = (kwargs, block), index
        names_of[index] = names
        ctx.note(f"step {index + 1} (prune): TF-MOT prune_low_magnitude on {len(names)} layers "
                 f"({desc}); each layer pruned to the target on its own (TF-MOT has no global "
                 "ranking)")

    def wrap(layer: keras.layers.Layer) -> keras.layers.Layer:
        kwargs, block = wrapping[layer.name]
        extra = block if type(layer).__name__ == "Dense" else {}
        return sparsity_api.prune_low_magnitude(layer, **kwargs, **extra)

    state.model = rewrap(state.model, wrap, set(wrapping))
    state.prune_wrapped = True
    state.pruned = list(wrapping)
    for index, names in names_of.items():
        ctx.report_changed(index, names)
    if epochs == 0:
        # One-shot: let TF-MOT compute the masks now (its own magnitude / m-by-n rules), at
        # step 1 where the schedule says "prune"; fine-tuning later keeps them fixed.
        for layer in state.model.layers:
            if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
                layer.pruning_step.assign(1)
                layer.pruning_obj.conditional_mask_update()
                layer.pruning_obj.weight_mask_op()
        for index, _ in steps:
            ctx.log_epoch(index, "prune", None,
                          sparsity=kernel_sparsity(state.model, names_of[index]))
        return
    lr = ctx.budget.effective_finetune_lr

    def log(epoch: int) -> None:
        for index, step in steps:
            target = (sparsity_at_epoch(step.schedule, step.sparsity, epoch)
                      if step.schedule is not None else None)
            ctx.log_epoch(index, "prune", epoch,
                          sparsity=kernel_sparsity(state.model, names_of[index]), target=target)

    together = (f"steps {', '.join(str(i + 1) for i, _ in steps)} ran concurrently in one "
                "training loop (Distiller semantics), " if len(steps) > 1 else "")
    ctx.note(f"{together}pruning schedule trains {epochs} epochs at lr {lr:g}")
    rates = ctx.learning_rates(lr, epochs)
    train(state.model, ctx, epochs, lr, callbacks=[sparsity_api.UpdatePruningStep()],
          on_epoch_end=log, learning_rates=rates)


