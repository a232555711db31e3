"""NNI 3.0 pipeline: runs a recipe's steps on the reference model with NNI's compressors.
Shared here: the state, the evaluator around the shared training loop, masks, fine-tuning
and distillation; pruning is in ``_impl_prune``, quantization and binarization in
``_impl_quant``.

Imported lazily by ``adapters.nni.NniAdapter._compress``; importing it applies the
concrete-tracer patches ``ModelSpeedup`` needs on torch >= 2.2 (see ``_impl_patches``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# isort: off
# torch._dynamo (first used by torch.optim) loads triton; nni imports tensorflow in
# nni/common/version.py, and triton loaded AFTER tensorflow segfaults in this environment.
import torch._dynamo
import nni
# isort: on
import torch
import torch.nn.functional as F
from nni.compression.distillation import DynamicLayerwiseDistiller
from nni.compression.utils import TorchEvaluator
from torch import nn

from adapters.base import Artifacts
from adapters.nni import _impl_patches
from unified.context import JobContext
from unified.spec.scenario import Optimizer
from unified.spec.steps import (
    DistillStep,
    FinetuneStep,
    PruneStep,
    Step,
    Targets,
)
from unified.torchkit import training
from unified.torchkit.export import export_onnx
from unified.torchkit.models import count_parameters
from unified.torchkit.targets import op_type, select_modules

_impl_patches.apply()
# NNI logs every replaced module at INFO; the notes say what matters
logging.getLogger("nni").setLevel(logging.WARNING)

Masks = dict[str, dict[str, torch.Tensor]]


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


def steps_per_epoch(ctx: JobContext) -> int:
    return math.ceil(len(ctx.data.train_x) / ctx.budget.batch_size)


def train_labels(ctx: JobContext) -> Any:
    if ctx.data.train_y is None:
        raise ValueError("this NNI step trains the model and needs labelled data "
                         f"(data source {ctx.scenario.data.source!r} has none)")
    return ctx.data.train_y


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
        labels = train_labels(ctx)
        if max_epochs is None:
            max_epochs = math.ceil((max_steps or 0) / steps_per_epoch(ctx)) or 1
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


# --- training steps --------------------------------------------------------------------------


def finetune(ctx: JobContext, state: State, step: FinetuneStep) -> None:
    """The shared training loop; unstructured masks are re-applied after every step."""
    epochs = step.epochs or ctx.budget.finetune_epochs
    masks = state.masks
    model = state.model

    def keep_masks() -> None:
        if masks is not None:
            apply_masks(model, masks)

    def log_epoch(epoch: int) -> None:
        if masks is not None:
            # numbered after the epochs already logged (a scheduled prune logs its own)
            previous = max((int(e["epoch"]) for e in ctx.epoch_log), default=-1)
            ctx.epoch_log.append({"epoch": previous + 1, "sparsity": round(
                _weight_sparsity(model, masks), 4), "phase": "finetune"})

    training.train(model, ctx.data.train_x, train_labels(ctx), ctx.budget, epochs=epochs,
                   lr=ctx.budget.effective_finetune_lr, seed=ctx.seed,
                   on_step=keep_masks if masks is not None else None, on_epoch_end=log_epoch)
    if masks is not None:
        ctx.note("fine-tuning re-applied NNI's masks after every optimizer step")


def _weight_sparsity(model: nn.Module, masks: Masks) -> float:
    modules = dict(model.named_modules())
    zeros = total = 0
    for name in masks:
        weight = modules[name].weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


class _TemperatureDistiller(DynamicLayerwiseDistiller):
    """NNI's DynamicLayerwiseDistiller with the KL temperature of the step: NNI hard-codes
    T = 2 in its 'kl' loss; everything else (hooks, teacher forward, loss patching) is NNI's."""

    temperature: float = 2.0

    def compute_distill_loss(self) -> torch.Tensor:
        t = self.temperature
        loss: Any = 0
        for _, ts in self._target_spaces.items():
            for target_name, target_space in ts.items():
                student = target_space.hidden_state
                for link in target_space.link:
                    teacher = self._teacher_target_spaces[link][target_name].hidden_state
                    if student is not None and teacher is not None:
                        kl = F.kl_div((student / t).log_softmax(dim=-1),
                                      (teacher / t).softmax(dim=-1), reduction="batchmean")
                        loss = loss + target_space.lambda_ * kl * t**2
        for spaces in (self._target_spaces, self._teacher_target_spaces):
            for _, ts in spaces.items():
                for _, target_space in ts.items():
                    target_space.clean()
        return loss  # type: ignore[no-any-return]


def distill(ctx: JobContext, state: State, step: DistillStep) -> None:
    """KD on the logits: loss = (1 - alpha) * CE + alpha * T² * KL(student_T || teacher_T)."""
    student = ctx.build_model(step.student)
    teacher = ctx.build_model(step.teacher) if step.teacher else ctx.reference_model()
    if step.teacher:
        raise ValueError("a teacher other than the reference model has no trained weights here")
    teacher.eval()
    s_head, t_head = output_layer(student), output_layer(teacher)
    config_list = [{"op_names": [s_head], "target_names": ["_output_"], "lambda": step.alpha,
                    "link": t_head, "apply_method": "kl"}]
    lr = ctx.budget.lr  # the student starts from scratch: the full training lr
    evaluator = make_evaluator(ctx, student, lr=lr)
    distiller = _TemperatureDistiller(student, config_list, evaluator, teacher_model=teacher,
                                      teacher_predict=lambda batch, model: model(batch[0]),
                                      origin_loss_lambda=1.0 - step.alpha)
    distiller.temperature = step.temperature
    distiller.compress(max_steps=None, max_epochs=step.epochs)
    distiller.unwrap_model()
    distiller.unwrap_teacher_model()
    state.model = student.eval()
    state.masks = None
    state.details.update(student_parameters=count_parameters(student),
                         teacher_parameters=count_parameters(teacher))
    ctx.note(f"NNI DynamicLayerwiseDistiller on the logits ({s_head} ← teacher {t_head}), "
             f"{step.epochs} epochs at lr {lr}: loss = {1 - step.alpha:.2f}·CE + "
             f"{step.alpha:.2f}·T²·KL at T={step.temperature} (NNI's KL term with the step's "
             "temperature instead of its built-in T=2)")


# --- the pipeline ----------------------------------------------------------------------------


def _training_follows(steps: list[Step], index: int) -> bool:
    return any(s.kind in ("finetune", "distill") for s in steps[index + 1:index + 2])


def run(ctx: JobContext) -> Artifacts:
    """Run every step; write model.onnx and the native .pt (state_dict) in ctx.workdir."""
    from adapters.nni import _impl_prune, _impl_quant
    from adapters.nni._impl_layers import register_layer_subclasses

    steps = ctx.recipe.steps
    training.set_seed(ctx.seed)
    state = State(model=ctx.reference_model())
    state.details["parameters_fp32"] = count_parameters(state.model)
    registered = register_layer_subclasses(state.model)
    if registered:
        ctx.note(f"NNI settings registered for layer subclasses ({', '.join(registered)}): "
                 "NNI looks settings up by class name")
    onnx_path = ctx.workdir / "model.onnx"
    several = sum(isinstance(s, PruneStep) for s in steps) > 1
    done: set[int] = set()
    for index, step in enumerate(steps):
        if index in done:
            continue
        if isinstance(step, PruneStep) and several:  # consecutive (check_recipe)
            group = [(i, s) for i, s in enumerate(steps) if isinstance(s, PruneStep)]
            done.update(i for i, _ in group)
            _impl_prune.prune_several(ctx, state, group, _training_follows(steps, group[-1][0]))  # type: ignore[arg-type]
        elif isinstance(step, PruneStep):
            _impl_prune.prune(ctx, state, step, _training_follows(steps, index))
        elif isinstance(step, FinetuneStep):
            finetune(ctx, state, step)
        elif isinstance(step, DistillStep):
            distill(ctx, state, step)
        elif step.kind in ("quantize", "binarize"):
            _impl_quant.quantize_or_binarize(ctx, state, step, onnx_path)  # type: ignore[arg-type]
        else:  # the plan rejects these before any toolkit runs
            raise ValueError(f"NNI adapter cannot run step {step.kind}")
    model = state.model.eval()
    if not state.onnx_written:
        export_onnx(model, onnx_path, ctx.input_shape)
    state.details["parameters"] = count_parameters(model)
    native = ctx.workdir / "model.pt"
    torch.save(model.state_dict(), native)
    ctx.note("native artifact: state_dict of the compressed torch model (.pt)")
    return Artifacts(onnx_path=onnx_path, native_path=native, details=state.details)
