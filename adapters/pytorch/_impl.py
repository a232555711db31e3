"""PyTorch-native compression: torch.ao.quantization (FX graph mode) and torch.nn.utils.prune.

``compress(ctx)`` runs the recipe's steps on a copy of the reference model, then writes the
native artifact (the final model's state_dict, .pt) and model.onnx.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from adapters.base import Artifacts
from adapters.pytorch import _impl_prune as P
from adapters.pytorch._impl_fx import quantizable_copy
from unified.context import JobContext
from unified.spec.errors import SqueezelabError
from unified.spec.steps import (
    DistillStep,
    FinetuneStep,
    Granularity,
    OpType,
    PruneStep,
    PruneStructure,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Step,
    Targets,
    prune_run,
)
from unified.torchkit import training
from unified.torchkit.export import export_onnx
from unified.torchkit.models import count_parameters
from unified.torchkit.targets import op_type, select_modules

log = logging.getLogger(__name__)

# torch.ao prints a deprecation banner on every prepare/convert call
warnings.filterwarnings("ignore", module=r"torch\.ao\..*")


@dataclass
class State:
    """The model as the steps leave it."""

    model: nn.Module
    # set by a quantize step: the model is converted and nothing may follow (check_recipe)
    onnx_written: bool = False
    pruned: bool = False
    details: dict[str, Any] = field(default_factory=dict)


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
    return Artifacts(onnx_path=onnx_path, native_path=native_path, details=state.details)


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
        _train(ctx, state, index, "finetune", epochs, ctx.budget.effective_finetune_lr)
    elif isinstance(step, DistillStep):
        _distill(ctx, state, index, step)
    elif isinstance(step, QuantizeStep):
        _quantize(ctx, state, index, step, onnx_path)
    else:  # plan() rejects cluster/binarize before compress runs
        raise SqueezelabError(f"the pytorch backend has no {step.kind} step")


# --- training ------------------------------------------------------------------------------


def _labels(ctx: JobContext) -> np.ndarray:
    if ctx.data.train_y is None:
        raise SqueezelabError("training needs labelled data (the data source has none)")
    return ctx.data.train_y


def _train(ctx: JobContext, state: State, index: int, kind: str, epochs: int, lr: float,
           loss_fn: training.LossFn = training.cross_entropy,
           masks: dict[str, torch.Tensor] | None = None,
           learning_rates: list[float] | None = None) -> None:
    """torchkit training; pruning hooks stay attached, so pruned weights stay zero."""
    if epochs == 0:
        ctx.note(f"step {index + 1} ({kind}): 0 epochs in the budget, no training")
        return
    model = state.model
    targets = select_modules(model, Targets()) if state.pruned else []

    def log_epoch(epoch: int) -> None:
        entry: dict[str, Any] = {"step": index + 1, "kind": kind, "epoch": epoch}
        if targets:
            entry["sparsity"] = round(P.sparsity(targets), 6)
        ctx.epoch_log.append(entry)

    on_step = None
    if masks:
        modules = {name: model.get_submodule(name) for name in masks}

        @torch.no_grad()
        def reapply() -> None:  # QAT modules do not know pruning masks: re-zero after a step
            for name, module in modules.items():
                P.tensor(module).mul_(~masks[name])

        on_step = reapply
        reapply()
    training.train(model, ctx.data.train_x, _labels(ctx), ctx.budget, epochs=epochs, lr=lr,
                   seed=ctx.seed, loss_fn=loss_fn, on_epoch_end=log_epoch, on_step=on_step,
                   learning_rates=learning_rates)
    model.eval()
    ctx.note(f"step {index + 1} ({kind}): {epochs} epoch(s) at lr {lr:g} "
             f"({ctx.budget.optimizer}, batch {ctx.budget.batch_size})")


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
    _train(ctx, state, index, "distill", step.epochs, ctx.budget.lr, loss_fn=loss)
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
    ctx.note(f"step {index + 1} (prune): {P.describe(step)} to {step.sparsity:g} on {names}")


def _prune_targets(ctx: JobContext, state: State, index: int, step: PruneStep) -> P.Named:
    """The modules a prune step targets (error when none), with notes on what is skipped."""
    modules = select_modules(state.model, step.targets)
    if not modules:
        raise SqueezelabError(
            f"step {index + 1} (prune): no module matches the targets {step.targets}"
        )
    grouped = P.skipped_grouped(state.model)
    if grouped:
        ctx.note(f"grouped (non-depthwise) convs not targeted: {', '.join(grouped)}")
    state.pruned = True
    layers = [n for n, m in state.model.named_modules() if op_type(m) is not None]
    if step.structure is PruneStructure.channel and layers and layers[-1] in dict(modules):
        ctx.note(f"channel pruning targets the output layer {layers[-1]}: zeroing its rows "
                 "silences whole classes (exclude it in targets to keep them)")
    if step.structure is PruneStructure.input_channel:
        # a depthwise kernel has one input channel: pruning it would drop the whole filter
        depthwise = [n for n, m in modules if op_type(m) is OpType.depthwise]
        if depthwise:
            ctx.note(f"input-channel pruning skips depthwise convs {', '.join(depthwise)} "
                     "(one input channel per filter)")
            modules = [(n, m) for n, m in modules if n not in depthwise]
        if layers and layers[0] in dict(modules):
            ctx.note(f"input-channel pruning targets the input layer {layers[0]}: its input "
                     "channels are the image's (exclude it in targets to keep them)")
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
            ctx.epoch_log.append({"step": index + 1, "kind": "prune", "epoch": epoch,
                                  "target": round(run.target(epoch), 6),
                                  "sparsity": round(P.sparsity(run.modules), 6)})

    epochs = max(run.step.schedule.end_epoch for _, run in runs)  # type: ignore[union-attr]
    lr = ctx.budget.effective_finetune_lr
    rates = ctx.learning_rates(lr, epochs)
    training.train(state.model, ctx.data.train_x, _labels(ctx), ctx.budget,
                   epochs=epochs, lr=lr, seed=ctx.seed, learning_rates=rates,
                   on_epoch_start=on_epoch_start, on_epoch_end=log_epoch)
    state.model.eval()
    for index, run in runs:
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


# --- quantization --------------------------------------------------------------------------


def _quantize(ctx: JobContext, state: State, index: int, step: QuantizeStep,
              onnx_path: Path) -> None:
    masks: dict[str, torch.Tensor] = {}
    if P.make_permanent(state.model):
        ctx.note("pruning masks made permanent (prune.remove) before quantization")
        masks = P.zero_masks(state.model)
    state.model.eval()
    # converted modules hold packed int8 weights, not parameters: count before
    state.details["torch_parameters"] = count_parameters(state.model)
    if step.dtype is QuantDType.float16:
        _float16(ctx, state, onnx_path)
    elif step.method is QuantMethod.dynamic:
        _dynamic(ctx, state, step, onnx_path)
    else:
        _fx_quantize(ctx, state, index, step, onnx_path, masks)
    state.onnx_written = True


def _float16(ctx: JobContext, state: State, onnx_path: Path) -> None:
    half = state.model.half()
    export_onnx(_Float32IO(half), onnx_path, ctx.input_shape)
    ctx.note("float16: model.half() (weights and compute in float16); Cast float32 -> "
             "float16 at the input and back at the output, because the harness feeds float32")


class _Float32IO(nn.Module):
    """float32 in and out around a float16 model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _quantized_linears(model: nn.Module, step: QuantizeStep) -> list[str]:
    return [name for name, module in select_modules(model, step.targets)
            if isinstance(module, nn.Linear)]


def _dynamic(ctx: JobContext, state: State, step: QuantizeStep, onnx_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from torch.ao.quantization import QConfig, default_dynamic_quant_observer
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

    model = state.model
    names = _quantized_linears(model, step)
    if not names:  # what torch's quantize_dynamic does too: nothing to quantize
        export_onnx(model, onnx_path, ctx.input_shape)
        ctx.note("no targeted nn.Linear: torch dynamic quantization (Linear/LSTM/RNN only) "
                 "leaves this model unchanged; the ONNX is the float model")
        return
    qconfig = QConfig(activation=default_dynamic_quant_observer,
                      weight=_weight_observer(step, qat=False))
    fp32_path = ctx.workdir / "model.fp32.onnx"
    export_onnx(model, fp32_path, ctx.input_shape)
    state.model = torch_quantize_dynamic(copy.deepcopy(model), {n: qconfig for n in names},
                                         dtype=torch.qint8)
    all_linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    nodes = None if names == all_linears else _onnx_nodes_of(fp32_path, names)
    quantize_dynamic(
        str(fp32_path), str(onnx_path), op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_quantize=nodes, per_channel=step.granularity is Granularity.per_channel,
        weight_type=QuantType.QInt8, extra_options={"WeightSymmetric": step.symmetric},
    )
    fp32_path.unlink()
    convs = [n for n, m in select_modules(model, step.targets)
             if not isinstance(m, nn.Linear)]
    ctx.note(f"torch quantize_dynamic(qint8, {step.granularity}) on Linear: {', '.join(names)}")
    if convs:
        ctx.note(f"convs stay float: dynamic quantization only covers Linear/LSTM/RNN "
                 f"({len(convs)} targeted conv layer(s) left in float32)")


def _onnx_nodes_of(path: Path, linears: list[str]) -> list[str]:
    """ONNX Gemm/MatMul nodes of the given torch Linear modules (matched by weight name)."""
    graph = onnx.load(str(path)).graph
    wanted = {f"{n}.weight": n for n in linears}
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            for name in node.input:
                if name in wanted:
                    found[wanted[name]] = node.name
    missing = [n for n in linears if n not in found]
    if missing:
        raise SqueezelabError(f"cannot find the ONNX nodes of Linear layers {missing} to "
                              "quantize only the targeted ones")
    return [found[n] for n in linears]


def _weight_observer(step: QuantizeStep, qat: bool) -> Any:
    from torch.ao.quantization import (
        FusedMovingAvgObsFakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )

    per_channel = step.granularity is Granularity.per_channel
    if per_channel:
        qscheme = torch.per_channel_symmetric if step.symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if step.symmetric else torch.per_tensor_affine
    args = {"dtype": torch.qint8, "qscheme": qscheme, "quant_min": -128, "quant_max": 127}
    if qat:
        observer = (MovingAveragePerChannelMinMaxObserver if per_channel
                    else MovingAverageMinMaxObserver)
        return FusedMovingAvgObsFakeQuantize.with_args(observer=observer, **args)
    return (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(**args)


def _qconfig_mapping(model: nn.Module, step: QuantizeStep, qat: bool) -> Any:
    from torch.ao.quantization import (
        FusedMovingAvgObsFakeQuantize,
        HistogramObserver,
        MovingAverageMinMaxObserver,
        QConfig,
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )

    # full 8-bit activations (reduce_range=False): x86's default of 7 bits only protects
    # CPUs without VNNI from int16 overflow in fbgemm; onnxruntime does not need it
    act_args = {"dtype": torch.quint8, "quant_min": 0, "quant_max": 255, "reduce_range": False}
    if qat:
        activation = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, **act_args)
        mapping = get_default_qat_qconfig_mapping("x86")
    else:
        activation = HistogramObserver.with_args(**act_args)
        mapping = get_default_qconfig_mapping("x86")
    mapping.set_global(QConfig(activation=activation, weight=_weight_observer(step, qat)))
    selected = {name for name, _ in select_modules(model, step.targets)}
    for name, module in model.named_modules():
        if op_type(module) is not None and name not in selected:
            mapping.set_module_name(name, None)
    return mapping


def _fx_quantize(ctx: JobContext, state: State, index: int, step: QuantizeStep,
                 onnx_path: Path, masks: dict[str, torch.Tensor]) -> None:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    torch.backends.quantized.engine = engine
    qat = step.method is QuantMethod.qat
    model = state.model
    mapping = _qconfig_mapping(model, step, qat)
    example = (torch.from_numpy(ctx.data.calib_x[:1]),)
    chosen = {name for name, _ in select_modules(model, step.targets)}
    base, notes = quantizable_copy(model, example[0], mapping, chosen)
    for note in notes:
        ctx.note(note)
    try:
        if qat:
            prepared = prepare_qat_fx(copy.deepcopy(base).train(), mapping, example)
        else:
            prepared = prepare_fx(copy.deepcopy(base).eval(), mapping, example)
    except Exception as exc:  # FX symbolic tracing: data-dependent control flow etc.
        raise SqueezelabError(
            f"torch.ao FX graph mode could not trace the model ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); eager mode "
            "would need QuantStub/DeQuantStub and FloatFunctional edits of the model code"
        ) from exc
    if qat:
        epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
        state.model = prepared
        kept = _masks_for(prepared, masks)
        lr = ctx.budget.effective_finetune_lr
        rates = ctx.learning_rates(lr, epochs, "QAT")
        _train(ctx, state, index, "qat", epochs, lr, masks=kept, learning_rates=rates)
        if masks:
            ctx.note(f"pruning masks re-applied after every QAT optimizer step on "
                     f"{len(kept)} layer(s)")
    else:
        calib = ctx.data.calib_x
        with torch.no_grad():
            prepared.eval()
            for start in range(0, len(calib), ctx.budget.batch_size):
                prepared(torch.from_numpy(calib[start:start + ctx.budget.batch_size]))
    prepared.eval()
    quantized = convert_fx(prepared)
    state.model = quantized
    # the exporter traces a quantized model itself, with check_trace on, which fails on a
    # false positive for some models (float modules such as nn.MultiheadAttention get other
    # mangled names in the second trace); _parity compares the ONNX with the model instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(torch.jit.trace(quantized, example, check_trace=False), onnx_path,
                    ctx.input_shape)
    weights = (f"qint8 {step.granularity} {'symmetric' if step.symmetric else 'affine'}")
    selected = select_modules(model, step.targets)
    all_layers = [n for n, m in model.named_modules() if op_type(m) is not None]
    left = [n for n in all_layers if n not in {s for s, _ in selected}]
    how = ("prepare_qat_fx / convert_fx" if qat
           else f"prepare_fx / convert_fx, calibrated on {len(ctx.data.calib_x)} samples")
    observer = "moving-average min-max fake-quant" if qat else "HistogramObserver"
    ctx.note(f"torch.ao FX {how}, {engine} backend: weights {weights}, activations quint8 "
             f"affine ({observer}, reduce_range=False); exported with the TorchScript "
             "exporter to QDQ ONNX")
    if left:
        ctx.note(f"not targeted, left float: {', '.join(left)}")


def _masks_for(prepared: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pruning masks whose module (same name, same weight shape) survives FX fusion."""
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        try:
            module = prepared.get_submodule(name)
        except AttributeError:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape == mask.shape:
            out[name] = mask
    if len(out) != len(masks):
        lost = sorted(set(masks) - set(out))
        raise SqueezelabError(f"cannot find the QAT modules of pruned layers {lost}")
    return out


# --- ONNX ----------------------------------------------------------------------------------


def _parity(ctx: JobContext, state: State, onnx_path: Path) -> None:
    """Max |torch - onnxruntime| logits on a few test samples: how faithful the ONNX is to
    the native model (for dynamic quantization, to torch's own dynamic model)."""
    x = ctx.data.test_x[:64]
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
    state.details["torch_vs_onnx_max_abs"] = float(np.abs(out - native).max())
    state.details["torch_vs_onnx_agreement"] = float((out.argmax(1) == native.argmax(1)).mean())
