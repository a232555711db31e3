"""The training-time route: coremltools.optimize.torch on the (BN-folded) torch model.

MagnitudePruner (AGP → PolynomialDecayScheduler), DKMPalettizer (cluster + finetune) and
LinearQuantizer (qat) train with the shared torchkit loop and the budget; a finetune step
right after extends that training. The compressed torch model is then either handed to the
post-training stage (conversion + read-back) or, for LinearQuantizer, exported as the
prepared fake-quant model (TorchScript exporter, QDQ ONNX).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from adapters.base import Artifacts
from adapters.coreml import TORCH, TRAIN
from adapters.coreml._impl_common import convert, layers_in_order, weight_file
from unified.context import JobContext
from unified.spec.schedules import sparsity_at_epoch
from unified.spec.steps import (
    ClusterStep,
    FinetuneStep,
    PruneStep,
    QuantizeStep,
    Schedule,
    Step,
    prune_run,
)
from unified.torchkit.export import export_onnx
from unified.torchkit.training import train


@dataclass
class TorchResult:
    model: nn.Module
    onnx_path: Path | None = None  # set when the torch model itself is the ONNX (qat)
    native_path: Path | None = None
    deploy_path: Path | None = None  # the .mlpackage
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def artifacts(self, ctx: JobContext) -> Artifacts:
        assert self.onnx_path is not None
        return Artifacts(onnx_path=self.onnx_path, native_path=self.native_path,
                         deploy_path=self.deploy_path, notes=self.notes, details=self.details)


def _excluded(model: nn.Module, names: tuple[str, ...],
              input_shape: tuple[int, ...]) -> dict[str, None]:
    """module_name_configs entries (None = leave alone) for layers the targets leave out."""
    return {name: None for name, _ in layers_in_order(model, input_shape) if name not in names}


def _finetune_epochs(ctx: JobContext, steps: list[Step], index: int) -> int:
    """Epochs of the finetune step right after ``index`` (0 if none)."""
    if index + 1 < len(steps) and isinstance(steps[index + 1], FinetuneStep):
        epochs = steps[index + 1].epochs  # type: ignore[union-attr]
        return epochs if epochs is not None else ctx.budget.finetune_epochs
    return 0


def agp_update_steps(schedule: Schedule) -> list[int]:
    """Distiller's pruning epochs (start, start+freq, ... start+span) as MagnitudePruner
    step counts: the pruner's step() is called at each epoch start and counts from 1."""
    span = ((schedule.end_epoch - schedule.start_epoch - 1) // schedule.frequency) \
        * schedule.frequency
    epochs = range(schedule.start_epoch, schedule.start_epoch + span + 1, schedule.frequency)
    return [e + 1 for e in epochs]


def _no_mask_before_start(pruner: Any, names: set[str]) -> None:
    """MagnitudePruner.prepare() masks every layer to initial_sparsity at once; Distiller
    trains unmasked until start_epoch. Reset the masks to dense (sparsity level 0); the
    scheduler's first update step then prunes to initial_sparsity, as its spline starts
    there (it reads initial_sparsity from the config, not from the current level)."""
    with torch.no_grad():
        for name, info in pruner._pruner_info.items():  # coremltools keeps no public handle
            if name not in names:
                continue
            info.module.pruning_method.update_mask(info.module, 0.0)
            info.sparsity_level = 0.0


def _sparsity(layers: list[tuple[str, nn.Module]]) -> float:
    zeros = total = 0
    with torch.no_grad():
        for _, module in layers:
            w = cast(torch.Tensor, module.weight)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


def _module_config(step: PruneStep) -> tuple[Any, int, str]:
    """A step's ModuleMagnitudePrunerConfig, the epochs its schedule trains, a description."""
    from coremltools.optimize.torch.pruning import ModuleMagnitudePrunerConfig
    from coremltools.optimize.torch.pruning.pruning_scheduler import (
        ConstantSparsityScheduler,
        PolynomialDecayScheduler,
    )

    schedule = step.schedule
    if schedule is not None and schedule.curve != "constant":
        power = 3 if schedule.curve == "agp" else 1
        scheduler: Any = PolynomialDecayScheduler(update_steps=agp_update_steps(schedule),
                                                  power=power)
        initial = float(schedule.initial_sparsity)
        how = (f"PolynomialDecayScheduler(power={power}) at epochs "
               f"{[s - 1 for s in agp_update_steps(schedule)]}")
    else:
        begin = schedule.start_epoch if schedule is not None else 0
        scheduler = ConstantSparsityScheduler(begin_step=begin + 1)
        initial = 0.0
        how = f"ConstantSparsityScheduler from epoch {begin}"
    kwargs: dict[str, Any] = {}
    if step.structure == "n:m":
        assert step.n is not None and step.m is not None
        kwargs = {"n_m_ratio": (step.m - step.n, step.m)}
    else:
        kwargs = {"target_sparsity": float(step.sparsity)}
    config = ModuleMagnitudePrunerConfig(scheduler=scheduler, initial_sparsity=initial, **kwargs)
    return config, schedule.end_epoch if schedule is not None else 0, how


def prune(ctx: JobContext, model: nn.Module, steps: list[tuple[int, PruneStep]],
          extra_epochs: int) -> TorchResult:
    """Consecutive prune steps as ONE MagnitudePruner, as Distiller runs its pruning
    policies: each step's layers get that step's module config (scheduler, sparsity), and one
    training loop of max(end_epoch) (+ a following finetune's) epochs steps them all."""
    from coremltools.optimize.torch.pruning import MagnitudePruner, MagnitudePrunerConfig

    layer_names = dict(layers_in_order(model, ctx.input_shape))
    configs: dict[str, Any] = {name: None for name in layer_names}  # None: leave alone
    owner: dict[str, int] = {}
    epochs = 0
    for index, step in steps:
        config, step_epochs, how = _module_config(step)
        epochs = max(epochs, step_epochs)
        for name, _module in layer_names.items():
            if name in ctx.layers_for(index):
                if name in owner:
                    ctx.note(f"layer {name} is targeted by steps {owner[name] + 1} and "
                             f"{index + 1}: step {index + 1}'s config applies")
                configs[name], owner[name] = config, index
        ctx.note(f"step {index + 1} (prune): optimize.torch MagnitudePruner ({how}); each layer "
                 "pruned to the target (local)")
    for index, _ in steps:
        ctx.report_changed(index, [name for name, i in owner.items() if i == index])
    epochs += extra_epochs
    pruner = MagnitudePruner(model, MagnitudePrunerConfig(module_name_configs=configs))
    model = pruner.prepare(inplace=True)
    late = {name for name, i in owner.items() if (sched := dict(steps)[i].schedule) is not None
            and sched.start_epoch > 0 and sched.initial_sparsity > 0}
    if late:
        _no_mask_before_start(pruner, late)
        ctx.note("MagnitudePruner.prepare() masks to initial_sparsity at once; the masks of "
                 "steps starting later were reset to dense so that they train unmasked until "
                 "their start_epoch, as in Distiller")
    modules = dict(layers_in_order(model, ctx.input_shape))
    layers = {i: [(n, modules[n]) for n, o in owner.items() if o == i] for i, _ in steps}

    def on_epoch_start(_epoch: int) -> None:
        pruner.step()

    def on_epoch_end(epoch: int) -> None:
        for index, step in steps:
            target = None
            if step.schedule is not None and step.structure != "n:m":
                target = sparsity_at_epoch(step.schedule, step.sparsity, epoch)
            ctx.log_epoch(index, "prune", epoch, sparsity=_sparsity(layers[index]), target=target)

    if epochs == 0:  # prune without training: apply the final sparsity once
        pruner.step()
    else:
        lr = ctx.budget.effective_finetune_lr
        rates = ctx.learning_rates(lr, epochs)
        train(model, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs,
              lr=lr, seed=ctx.seed, learning_rates=rates,
              on_epoch_start=on_epoch_start, on_epoch_end=on_epoch_end)
    pruner.finalize(inplace=True)
    together = (f"steps {', '.join(str(i + 1) for i, _ in steps)} ran concurrently in one "
                "training loop (Distiller semantics), " if len(steps) > 1 else "")
    ctx.note(f"{together}{epochs} training epochs")
    return TorchResult(model.eval())


def palettize(ctx: JobContext, model: nn.Module, step: ClusterStep, epochs: int) -> TorchResult:
    from coremltools.optimize.torch.palettization import (
        DKMPalettizer,
        DKMPalettizerConfig,
        ModuleDKMPalettizerConfig,
    )

    bits = int(np.log2(step.n_clusters))
    gran: dict[str, Any] = {}
    if step.granularity != "per_tensor":
        size = 1 if step.granularity == "per_channel" else (step.group_size or 32)
        gran = {"granularity": "per_grouped_channel", "group_size": size}
    module_config = ModuleDKMPalettizerConfig(n_bits=bits, weight_threshold=0, milestone=0,
                                              **gran)
    config = DKMPalettizerConfig(
        global_config=module_config,
        module_name_configs=_excluded(model, ctx.layers_for(step), ctx.input_shape),  # type: ignore[arg-type]
    )
    palettizer = DKMPalettizer(model, config)
    model = palettizer.prepare(inplace=True)
    train(model, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs,
          lr=ctx.budget.effective_finetune_lr, seed=ctx.seed, on_step=palettizer.step)
    model = palettizer.finalize(inplace=True)
    ctx.note(f"optimize.torch DKMPalettizer {bits}-bit ({2 ** bits} clusters), "
             f"{epochs} training epochs")
    return TorchResult(model.eval())


def quantize_qat(ctx: JobContext, model: nn.Module, step: QuantizeStep,
                 epochs: int) -> TorchResult:
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    module_config = ModuleLinearQuantizerConfig(
        weight_dtype="qint8" if step.weights == 8 else "qint4",
        weight_per_channel=step.granularity == "per_channel",
        activation_dtype=torch.quint8 if step.activations == 8 else torch.float32,
        quantization_scheme="symmetric" if step.symmetric else "affine",
        milestones=None,
    )
    config = LinearQuantizerConfig(
        global_config=module_config,
        module_name_configs=_excluded(model, ctx.layers_for(step), ctx.input_shape),  # type: ignore[arg-type]
    )
    quantizer = LinearQuantizer(model, config)
    example = (torch.zeros(1, *ctx.input_shape),)
    prepared = quantizer.prepare(example_inputs=example, inplace=False)
    lr = ctx.budget.effective_finetune_lr
    rates = ctx.learning_rates(lr, epochs, "QAT")
    train(prepared, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs,
          lr=lr, seed=ctx.seed, on_step=quantizer.step, learning_rates=rates)
    prepared.eval()
    # frozen ranges: an enabled observer would update its min/max (aten::copy) while tracing
    prepared.apply(torch.ao.quantization.disable_observer)
    onnx_path = ctx.workdir / "model.onnx"
    # The prepared fake-quant model exports (dynamo=False) to QDQ that onnxruntime fuses.
    export_onnx(prepared, onnx_path, ctx.input_shape)
    ctx.note(f"optimize.torch LinearQuantizer int{step.weights} weights"
             + (", uint8 activations" if step.activations == 8 else ", float activations")
             + f", {epochs} QAT epochs; ONNX = the prepared fake-quant model")
    result = TorchResult(prepared, onnx_path=onnx_path)
    try:
        import copy

        final = quantizer.finalize(copy.deepcopy(prepared), inplace=True)
        package = ctx.workdir / "model.mlpackage"
        convert(final, ctx.input_shape, fp16=False).save(str(package))
        result.native_path = weight_file(package)
        result.deploy_path = package
        result.notes.append("native_bytes is the weight file of the mlpackage converted from "
                            "the finalized LinearQuantizer model")
    except Exception as exc:  # the ONNX stands; say why there is no mlpackage
        result.notes.append(f"no mlpackage: ct.convert of the finalized LinearQuantizer model "
                            f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    return result


def run(ctx: JobContext, model: nn.Module, steps: list[Step], routes: list[str]) -> TorchResult:
    """Run the training-time step (and plain finetunes) of the recipe on ``model``."""
    result = TorchResult(model)
    done: set[int] = set()
    for i, (step, route) in enumerate(zip(steps, routes, strict=True)):
        if i in done:
            continue
        if route == TORCH:
            extra = _finetune_epochs(ctx, steps, i)
            if isinstance(step, PruneStep):
                # a run shares its route (coreml.routes): i is its first step
                group = [(j, s) for j in prune_run(steps, i)
                         if isinstance(s := steps[j], PruneStep)]
                done.update(j for j, _ in group)
                extra = _finetune_epochs(ctx, steps, group[-1][0])
                result = prune(ctx, result.model, group, extra)
            elif isinstance(step, ClusterStep):
                result = palettize(ctx, result.model, step, extra)
            elif isinstance(step, QuantizeStep):
                epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
                result = quantize_qat(ctx, result.model, step, epochs + extra)
        elif route == TRAIN and (i == 0 or routes[i - 1] != TORCH):
            # a finetune with no compression before it: ordinary training
            assert isinstance(step, FinetuneStep)
            epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
            model = result.model
            train(model, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs,
                  lr=ctx.budget.effective_finetune_lr, seed=ctx.seed)
            result = TorchResult(model.eval())
    return result
