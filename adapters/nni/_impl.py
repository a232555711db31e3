"""NNI 3.0 pipeline: runs a recipe's steps on the reference model with NNI's compressors.
The shared state and helpers are in ``_impl_common``; pruning is in ``_impl_prune``,
quantization and binarization in ``_impl_quant``, fine-tuning and distillation in
``_impl_train``.

Imported lazily by ``adapters.nni.NniAdapter._compress``.
"""

from __future__ import annotations

# isort: off
# _impl_common first: it loads triton (torch._dynamo) before nni loads TensorFlow
from adapters.nni._impl_common import PARITY_SAMPLES, State, onnx_logits, torch_logits
# isort: on
import torch

from adapters.base import Artifacts
from adapters.nni import _impl_prune, _impl_quant
from adapters.nni._impl_layers import register_layer_subclasses
from adapters.nni._impl_prune_several import prune_several
from adapters.nni._impl_train import distill, finetune
from unified.context import JobContext
from unified.spec.steps import DistillStep, FinetuneStep, PruneStep
from unified.torchkit import training
from unified.torchkit.export import export_onnx
from unified.torchkit.models import count_parameters


def run(ctx: JobContext) -> Artifacts:
    """Run every step; write model.onnx, the native model.pt (state_dict) and its TorchScript
    (native.ts, for native latency) in ctx.workdir."""
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
            prune_several(ctx, state, group)  # type: ignore[arg-type]
        elif isinstance(step, PruneStep):
            _impl_prune.prune(ctx, state, index, step)
        elif isinstance(step, FinetuneStep):
            finetune(ctx, state, index, step)
        elif isinstance(step, DistillStep):
            distill(ctx, state, step)
        elif step.kind in ("quantize", "binarize"):
            _impl_quant.quantize_or_binarize(ctx, state, step, onnx_path)  # type: ignore[arg-type]
        else:  # the plan rejects these before any toolkit runs
            raise ValueError(f"NNI adapter cannot run step {step.kind}")
    model = state.model.eval()
    if not state.onnx_written:
        export_onnx(model, onnx_path, ctx.input_shape)
    if ctx.parity is None:  # a quantize step compared the ONNX with NNI's simulation itself
        x = ctx.data.test_x[:PARITY_SAMPLES]
        ctx.check_parity("torch", torch_logits(model, x), onnx_logits(onnx_path, x))
    state.details["parameters"] = count_parameters(model)
    native = ctx.workdir / "model.pt"
    torch.save(model.state_dict(), native)
    timing = ctx.torchscript_timing(model)
    ctx.note(_native_note(state, timing is not None))
    return Artifacts(onnx_path=onnx_path, native_path=native, details=state.details,
                     native_timing=timing)


def _native_note(state: State, traced: bool) -> str:
    """What the native files are: NNI has no quantized torch model of its own, so after a
    quantize step they hold NNI's fake-quantized weights with float activations."""
    what = "the compressed torch model"
    if state.onnx_written and "quantized_layers" in state.details:
        what = ("the torch model with NNI's fake-quantized weights written back (activations "
                "float: NNI quantizes them only inside its simulation wrapper)")
    text = f"native artifact: model.pt, state_dict of {what}"
    if traced:
        text += "; native.ts, its TorchScript, is what native_latency_ms times"
    return text

