"""NNI training steps: fine-tuning (keeping unstructured masks) and knowledge distillation
with NNI's DynamicLayerwiseDistiller."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from nni.compression.distillation import DynamicLayerwiseDistiller
from torch import nn

from adapters.nni._impl_common import (
    Masks,
    State,
    apply_masks,
    make_evaluator,
    output_layer,
)
from unified.context import JobContext
from unified.spec.steps import DistillStep, FinetuneStep
from unified.torchkit import training
from unified.torchkit.models import count_parameters


def finetune(ctx: JobContext, state: State, index: int, step: FinetuneStep) -> None:
    """The shared training loop; unstructured masks are re-applied after every step."""
    epochs = step.epochs or ctx.budget.finetune_epochs
    masks = state.masks
    model = state.model

    def keep_masks() -> None:
        if masks is not None:
            apply_masks(model, masks)

    def log_epoch(epoch: int) -> None:
        if masks is not None:
            ctx.log_epoch(index, "finetune", epoch, sparsity=_weight_sparsity(model, masks))

    training.train(model, ctx.data.train_x, ctx.data.labels, ctx.budget, epochs=epochs,
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

