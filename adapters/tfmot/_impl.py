"""TF-MOT on the torch reference: torch → tf_keras (nobuco) → TF-MOT → TFLite → ONNX (tf2onnx).

Pruning (``_impl_prune``), clustering (``_impl_cluster``) and QAT (``_impl_qat``) run on the
Keras model; post-training quantization (static int8, dynamic range, float16) is the TFLite
converter's. The ONNX is converted from the TFLite file so the harness measures what TFLite
ships (int8 kept as QDQ).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adapters.base import Artifacts
from adapters.tfmot._impl_bridge import Bridged, BridgeError, keras, torch_to_keras
from adapters.tfmot._impl_cluster import cluster, fold_batchnorm
from adapters.tfmot._impl_common import (
    State,
    kernel_sparsity,
    sparsity_api,
    train,
    train_lr,
)
from adapters.tfmot._impl_prune import prune
from adapters.tfmot._impl_qat import qat
from adapters.tfmot._impl_tflite import (
    nhwc,
    onnx_distinct,
    onnx_predict,
    tflite_predict,
    tflite_to_onnx,
    to_tflite,
)
from unified.measure.native import NativeFiles
from unified.spec.steps import (
    ClusterStep,
    FinetuneStep,
    PruneStep,
    QuantizeStep,
    QuantMethod,
    Step,
    prune_run,
)

if TYPE_CHECKING:
    from adapters.base import Plan
    from unified.context import JobContext

__all__ = ["BridgeError", "compress"]

BRIDGE_ATOL = 1e-3


def _counted(layers: list[str]) -> str:
    """'tf.nn.silu (TFOpLambda) ×3, ...' for 'tf.nn.silu (TFOpLambda)', 'tf.nn.silu_1 ...':
    Keras numbers each instance of an op; the note counts them."""
    kinds = Counter(re.sub(r"_\d+ \(", " (", layer) for layer in layers)
    return ", ".join(kind if n == 1 else f"{kind} ×{n}" for kind, n in kinds.items())


def _keras_model(ctx: JobContext, steps: list[Step], details: dict[str, Any]) -> keras.Model:
    """The reference bridged to Keras (checked against torch), BatchNorm folded when the
    recipe clusters without QAT; what the bridge and the folding did goes in ``details``."""
    torch_model = ctx.reference_model()
    check_x = ctx.data.test_x[:64]
    bridged: Bridged = torch_to_keras(torch_model, ctx.input_shape, check_x, atol=BRIDGE_ATOL)
    details["bridge_max_abs_diff"] = bridged.max_abs_diff
    if bridged.shape_traced:
        ctx.note("torch→Keras bridge: the model's shapes depend on the batch size (e.g. a "
                 "token expanded to it), so nobuco traced the shape arithmetic into the Keras "
                 "graph (trace_shape)")
    if bridged.nonstandard:
        details["bridge_nonstandard_layers"] = bridged.nonstandard
        ctx.note(f"torch→Keras bridge left non-standard layers: "
                 f"{_counted(bridged.nonstandard)}")
    model = bridged.model
    qat_follows = any(isinstance(s, QuantizeStep) and s.method is QuantMethod.qat for s in steps)
    if any(isinstance(s, ClusterStep) for s in steps) and qat_follows:
        # quantize_apply cannot wrap the Identity left by folding: QAT folds BN itself
        ctx.note("BatchNorm kept for cluster-preserving QAT (QAT folds it): the int8 kernels "
                 "share values per output channel, not per tensor")
    elif any(isinstance(s, ClusterStep) for s in steps):
        model, folded = fold_batchnorm(model)
        if folded:
            with torch.no_grad():
                expected = torch_model(torch.from_numpy(check_x)).numpy()
            diff = float(np.abs(model(nhwc(check_x), training=False).numpy() - expected).max())
            if diff > BRIDGE_ATOL:
                raise BridgeError(f"BatchNorm folding changed the outputs by {diff:.3g}")
            details["bn_fold_max_abs_diff"] = diff
            ctx.note("BatchNorm folded into the preceding conv/dense before clustering, so the "
                     "shared values survive TFLite's BN folding")
    return model


def _finetune(state: State, index: int, step: FinetuneStep, ctx: JobContext) -> None:
    epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
    lr = train_lr(state, ctx)
    callbacks = [sparsity_api.UpdatePruningStep()] if state.prune_wrapped else []
    names = state.pruned

    def log(epoch: int, names: list[str] = names) -> None:
        if names:
            ctx.log_epoch(index, "finetune", epoch, sparsity=kernel_sparsity(state.model, names))

    train(state.model, ctx, epochs, lr, callbacks=callbacks, on_epoch_end=log)


def _run_steps(ctx: JobContext, state: State, steps: list[Step]) -> None:
    done: set[int] = set()
    for i, step in enumerate(steps):
        later = steps[i + 1:]
        if i in done:
            continue
        if isinstance(step, PruneStep):
            # i is the run's first step
            group = [(j, s) for j in prune_run(steps, i) if isinstance(s := steps[j], PruneStep)]
            done.update(j for j, _ in group)
            prune(state, group, ctx)
        elif isinstance(step, ClusterStep):
            follows = bool(later) and isinstance(later[0], FinetuneStep)
            cluster(state, step, ctx, follows)
        elif isinstance(step, QuantizeStep):
            if step.method is QuantMethod.qat:
                qat(state, step, ctx)
            else:
                state.strip()
                state.ptq = step
        elif isinstance(step, FinetuneStep):
            _finetune(state, i, step, ctx)
        else:  # the plan rejects these before compress is called
            raise BridgeError(f"the tfmot backend has no {step.kind} step")
    state.strip()


def _kernel_spread(ctx: JobContext, native: Path, lite: np.ndarray, onnx_agreement: float,
                   details: dict[str, Any]) -> None:
    """How much TFLite's own kernels disagree on this quantized model (XNNPACK, which the
    interpreter runs, against TFLite's builtin kernels): the int8 rounding noise the ONNX's
    disagreement is to be read against."""
    builtin = tflite_predict(native, nhwc(ctx.data.test_x), builtin_kernels=True)
    agreement = float(np.mean(builtin.argmax(1) == lite.argmax(1)))
    details["tflite_kernels_agreement"] = agreement
    details["tflite_kernels_max_abs_diff"] = float(np.abs(builtin - lite).max())
    ctx.note(f"TFLite's builtin kernels agree with its XNNPACK kernels on the top-1 class of "
             f"{agreement:.1%} of the test inputs on this quantized model (the ONNX: "
             f"{onnx_agreement:.1%}): "
             + ("the ONNX's disagreement is within TFLite's own int8 rounding spread"
                if onnx_agreement >= agreement else
                "the ONNX disagrees more than TFLite's kernels do among themselves"))


def _export(ctx: JobContext, state: State, details: dict[str, Any]) -> Artifacts:
    """Write model.tflite and the ONNX converted from it; check that the two agree."""
    native = ctx.workdir / "model.tflite"
    native.write_bytes(to_tflite(state.model, state.ptq, state.qat, ctx.data.calib_x))
    onnx_path = ctx.workdir / "model.onnx"
    details.update(tflite_to_onnx(native, onnx_path))

    if state.clustered:
        details["onnx_clustered_distinct"] = onnx_distinct(onnx_path, state.clustered)

    # Faithfulness: the ONNX must say what the TFLite file says.
    test_x = ctx.data.test_x
    lite = tflite_predict(native, nhwc(test_x))
    onnx_logits = onnx_predict(onnx_path, test_x)
    parity = ctx.check_parity("TFLite interpreter", lite, onnx_logits)
    details["tflite_onnx_agreement"] = parity.agreement
    details["tflite_onnx_max_abs_diff"] = parity.max_abs
    if not parity.faithful and (state.qat or state.ptq is not None):
        _kernel_spread(ctx, native, lite, parity.agreement, details)
    return Artifacts(onnx_path=onnx_path, native_path=native, details=details)


def compress(ctx: JobContext, plan: Plan) -> Artifacts:
    """Run the recipe with TF-MOT; write model.tflite and model.onnx in ctx.workdir."""
    steps: list[Step] = list(ctx.recipe.steps)
    details: dict[str, Any] = {}
    model = _keras_model(ctx, steps, details)
    state = State(model, bn_folded="bn_fold_max_abs_diff" in details)
    # the fp32 baseline of the native latency: the same Keras model, uncompressed
    reference_lite: Path | None = ctx.workdir / "native_reference.tflite"
    try:
        fp32 = to_tflite(model, None, False, ctx.data.calib_x)
        (ctx.workdir / "native_reference.tflite").write_bytes(fp32)
    except Exception as exc:  # the native latency is a side figure: never fail the row on it
        ctx.note(f"native latency not measured: fp32 TFLite conversion failed ({exc})")
        reference_lite = None
    _run_steps(ctx, state, steps)
    if state.pruned_sparsity is not None:
        details["pruned_kernel_sparsity"] = state.pruned_sparsity
    if state.clustered_distinct is not None:
        details["clustered_layers"] = state.clustered
        details["clustered_max_distinct"] = state.clustered_distinct
    artifacts = _export(ctx, state, details)
    if artifacts.native_path is not None and reference_lite is not None:
        artifacts.native_timing = NativeFiles("tflite", artifacts.native_path, reference_lite)
    return artifacts
