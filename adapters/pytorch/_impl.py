"""PyTorch-native compression: torch.ao.quantization (FX graph mode) and torch.nn.utils.prune.

``compress(ctx)`` runs the recipe's steps on a copy of the reference model, then writes the
native artifact (the final model's state_dict, .pt) and model.onnx. Quantization is in
``_impl_quant``, the state and the training loop in ``_impl_common``, pruning mechanics in
``_impl_prune``.
"""

from __future__ import annotations

from itertools import takewhile
from pathlib import Path

import onnxruntime as ort
import torch

from adapters.base import Artifacts
from adapters.pytorch import _impl_prune as P
from adapters.pytorch._impl_common import State, run_training
from adapters.pytorch._impl_quant import quantize
from unified.context import JobContext
from unified.spec.errors import SqueezelabError
from unified.spec.steps import (
    DistillStep,
    FinetuneStep,
    PruneStep,
    PruneStructure,
    QuantizeStep,
    Step,
    prune_run,
)
from unified.torchkit import training
from unified.torchkit.export import export_onnx
from unified.torchkit.models import count_parameters
from unified.torchkit.targets import named_layers, op_type

PARITY_SAMPLES = 256  # test inputs the native model and its ONNX are compared on


def compress(ctx: JobContext) -> Artifacts:
    """Run every step of ``ctx.recipe`` and write ``model.pt`` + ``model.onnx``."""
    onnx_path = ctx.workdir / "model.onnx"
    native_path = ctx.workdir / "model.pt"
    training.set_seed(ctx.seed)
    state = State(model=ctx.reference_model())
    ref_params = count_parameters(state.model)
    steps = ctx.recipe.steps
    index = 0
    while index < len(steps):
        group = _scheduled_prune_run(steps, index)
        if len(group) > 1:  # Distiller runs all its pruning policies in one training loop
            _prune_concurrently(ctx, state, [(i, steps[i]) for i in group])  # type: ignore[misc]
            index = group[-1] + 1
            continue
        _run_step(ctx, state, index, steps[index], onnx_path)
        index += 1
    _thinning_note(ctx)
    if not state.onnx_written:
        if P.make_permanent(state.model):
            ctx.note("pruning masks made permanent (prune.remove) before export: "
                     "the ONNX carries the zeros")
        state.model.eval()
        export_onnx(state.model, onnx_path, ctx.input_shape)
    torch.save(state.model.state_dict(), native_path)
    state.details.setdefault("torch_parameters", count_parameters(state.model))
    state.details["reference_torch_parameters"] = ref_params
    _parity(ctx, state, onnx_path)
    return Artifacts(onnx_path=onnx_path, native_path=native_path, details=state.details,
                     native_timing=ctx.torchscript_timing(state.model))



def _scheduled_prune_run(steps: list[Step], start: int) -> list[int]:
    """Indices of the consecutive scheduled prune steps from ``start`` (empty if none)."""
    run = [i for i in prune_run(steps, start) if i >= start]
    return list(takewhile(lambda i: steps[i].schedule is not None, run))  # type: ignore[union-attr]


def _thinning_note(ctx: JobContext) -> None:
    imported = ctx.scenario.imported.get(ctx.recipe_name)
    if imported is not None and imported.thinning:
        ctx.note(f"Distiller thinning ({', '.join(imported.thinning)} removal) requested: not "
                 "possible with torch.nn.utils.prune, which only zeroes weights; the pruned "
                 "filters/channels stay in the model as zeros (the nni backend removes them "
                 "with ModelSpeedup)")


def _run_step(ctx: JobContext, state: State, index: int, step: Step, onnx_path: Path) -> None:
    if isinstance(step, PruneStep):
        _prune(ctx, state, index, step)
    elif isinstance(step, FinetuneStep):
        epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
        run_training(ctx, state, index, "finetune", epochs, ctx.budget.effective_finetune_lr)
    elif isinstance(step, DistillStep):
        _distill(ctx, state, index, step)
    elif isinstance(step, QuantizeStep):
        quantize(ctx, state, index, step, onnx_path)
    else:  # plan() rejects cluster/binarize before compress runs
        raise SqueezelabError(f"the pytorch backend has no {step.kind} step")


def _distill(ctx: JobContext, state: State, index: int, step: DistillStep) -> None:
    source = ctx.scenario.model.source
    if step.teacher is not None and step.teacher != source:
        raise SqueezelabError(
            f"distill teacher {step.teacher!r}: only the scenario's model ({source}) has "
            "trained weights; omit teacher to use the reference model"
        )
    teacher = ctx.reference_model()
    student = ctx.build_model(step.student)
    state.model = student
    state.pruned = False
    loss = training.kd_loss(teacher, step.temperature, step.alpha)
    run_training(ctx, state, index, "distill", step.epochs, ctx.budget.lr, loss_fn=loss)
    ctx.note(
        f"step {index + 1} (distill): fresh {step.student} ({count_parameters(student)} "
        f"parameters) taught by the reference ({count_parameters(teacher)} parameters), "
        f"kd_loss T={step.temperature:g} alpha={step.alpha:g}, at the full lr"
    )


# --- pruning -------------------------------------------------------------------------------


def _prune(ctx: JobContext, state: State, index: int, step: PruneStep) -> None:
    if step.schedule is not None:
        _prune_concurrently(ctx, state, [(index, step)])
        return
    modules = _prune_targets(ctx, state, index, step)
    names = ", ".join(n for n, _ in modules)
    P.apply_sparsity(modules, step, step.sparsity)
    ctx.report_changed(index, P.masked(modules))
    ctx.note(f"step {index + 1} (prune): {P.describe(step)} to {step.sparsity:g} on {names}")


def _prune_targets(ctx: JobContext, state: State, index: int, step: PruneStep) -> P.Named:
    """The modules a prune step targets, as resolved for every backend (error when none)."""
    modules = named_layers(state.model, ctx.layers_for(index))
    if not modules:
        raise SqueezelabError(
            f"step {index + 1} (prune): no module matches the targets {step.targets}"
        )
    state.pruned = True
    layers = [n for n, m in state.model.named_modules() if op_type(m) is not None]
    if step.structure is PruneStructure.channel and layers and layers[-1] in dict(modules):
        ctx.note(f"channel pruning targets the output layer {layers[-1]} (named in include): "
                 "zeroing its rows silences whole classes")
    if step.structure is PruneStructure.input_channel and layers and layers[0] in dict(modules):
        ctx.note(f"input-channel pruning targets the input layer {layers[0]} (named in "
                 "include): its input channels are the image's")
    return modules


def _prune_concurrently(ctx: JobContext, state: State, group: list[tuple[int, PruneStep]]) -> None:
    """Scheduled prune steps sharing ONE training loop of max(end_epoch) epochs, as
    Distiller runs its pruning policies: each step updates its own masks at the start of
    its own pruning epochs (unified.spec.schedules) and keeps them in between."""
    runs = [(index, P.ScheduleRun(_prune_targets(ctx, state, index, step), step))
            for index, step in group]
    _note_shared_targets(ctx, runs)

    def on_epoch_start(epoch: int) -> None:
        for _, run in runs:  # recipe order: a later step sees an earlier step's new mask
            run.on_epoch_start(epoch)

    def log_epoch(epoch: int) -> None:
        for index, run in runs:
            ctx.log_epoch(index, "prune", epoch, sparsity=P.sparsity(run.modules),
                          target=run.target(epoch))

    epochs = max(run.step.schedule.end_epoch for _, run in runs)  # type: ignore[union-attr]
    lr = ctx.budget.effective_finetune_lr
    rates = ctx.learning_rates(lr, epochs)
    training.train(state.model, ctx.data.train_x, ctx.data.labels, ctx.budget,
                   epochs=epochs, lr=lr, seed=ctx.seed, learning_rates=rates,
                   on_epoch_start=on_epoch_start, on_epoch_end=log_epoch)
    state.model.eval()
    for index, run in runs:
        ctx.report_changed(index, P.masked(run.modules))
        step, schedule = run.step, run.step.schedule
        assert schedule is not None
        names = ", ".join(n for n, _ in run.modules)
        ctx.note(
            f"step {index + 1} (prune): {schedule.curve} schedule {schedule.initial_sparsity:g} "
            f"-> {step.sparsity:g}, pruning ({P.describe(step)}) at the start of epochs "
            f"{schedule.start_epoch}..{schedule.end_epoch - 1} every {schedule.frequency} "
            f"on {names}"
        )
    together = (f"steps {', '.join(str(i + 1) for i, _ in runs)} ran concurrently in one "
                "training loop (Distiller semantics), " if len(runs) > 1 else "")
    ctx.note(f"{together}{epochs} training epoch(s) at lr {lr:g} "
             f"({ctx.budget.optimizer}, batch {ctx.budget.batch_size})")


def _note_shared_targets(ctx: JobContext, runs: list[tuple[int, P.ScheduleRun]]) -> None:
    """Two concurrent steps on one layer: torch stacks their masks (PruningContainer), and
    each step counts the zeros already there towards its own target."""
    owner: dict[str, int] = {}
    for index, run in runs:
        for name, _ in run.modules:
            if name in owner:
                ctx.note(f"steps {owner[name] + 1} and {index + 1} both prune {name}: their "
                         "torch masks are stacked and the later step counts the earlier "
                         "step's zeros towards its own target")
            else:
                owner[name] = index




# --- ONNX ----------------------------------------------------------------------------------


def _parity(ctx: JobContext, state: State, onnx_path: Path) -> None:
    """torch vs onnxruntime logits on test samples: how faithful the ONNX is to the native
    model (for dynamic quantization, to torch's own dynamic model); the job fails the row when
    they disagree."""
    x = ctx.data.test_x[:PARITY_SAMPLES]
    model = state.model
    try:
        with torch.no_grad():
            inputs = torch.from_numpy(x)
            if any(p.dtype == torch.float16 for p in model.parameters()):
                inputs = inputs.half()
            native = model.eval()(inputs).float().numpy()
    except (RuntimeError, NotImplementedError) as exc:  # e.g. a kernel missing on this CPU
        ctx.note(f"torch model could not run for the parity check: {exc}")
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]
    parity = ctx.check_parity("torch", native, out)
    state.details["torch_vs_onnx_max_abs"] = parity.max_abs
    state.details["torch_vs_onnx_agreement"] = parity.agreement
