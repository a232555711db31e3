"""onnxruntime backend: onnxruntime's own post-training quantizer applied to the fp32 ONNX.

It starts from the reference ONNX (``ctx.reference.onnx``), not from torch: static QDQ
quantization (U8S8), dynamic quantization, float16 conversion. Post-training only: it has
no pruning, clustering, binarization or training of any kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.base import (
    NATIVE,
    Adapter,
    Artifacts,
    Capabilities,
    Plan,
    StepCapability,
    Verdict,
    approximated,
    unsupported,
)
from unified.spec.steps import QuantDType, QuantizeStep, QuantMethod, Step

if TYPE_CHECKING:
    from unified.context import JobContext

_POST_TRAINING_ONLY = (
    "onnxruntime's quantizer works post-training on a fixed ONNX graph: it has no "
    "training loop"
)

CAPABILITIES = Capabilities(
    backend="onnxruntime",
    toolkit="onnxruntime.quantization",
    input_framework="onnx",
    packages=("onnxruntime", "onnx"),
    modules=("onnxruntime",),
    install_hint="pip install onnxruntime",
    artifact=".onnx",
    steps={
        "quantize": StepCapability(
            options={
                "method": {
                    QuantMethod.static.value: NATIVE,
                    QuantMethod.dynamic.value: NATIVE,
                    QuantMethod.qat.value: unsupported(
                        f"quantization-aware training needs training; {_POST_TRAINING_ONLY}"
                    ),
                },
                "weights": {
                    16: NATIVE,  # dtype float16 (the spec forbids int16 weights)
                    8: NATIVE,
                    # int4 weights in QDQ (static only; check_recipe rejects dynamic)
                    4: NATIVE,
                    2: unsupported("onnxruntime's quantizer has no 2-bit type (smallest: int4)"),
                    1: unsupported("onnxruntime's quantizer has no 1-bit type (smallest: int4)"),
                },
                "activations": {
                    8: NATIVE,
                    16: NATIVE,  # static QDQ QUInt16 (check_recipe rejects dynamic)
                    None: NATIVE,  # float16 / check_recipe rejects it for static and dynamic
                    4: unsupported("onnxruntime quantizes activations to 8 or 16 bits only"),
                    2: unsupported("onnxruntime quantizes activations to 8 or 16 bits only"),
                },
                "granularity": {
                    "per_channel": NATIVE,
                    "per_tensor": NATIVE,
                    "per_block": unsupported(
                        "onnxruntime's block-wise quantization is MatMulNBits (4-bit MatMul "
                        "weights only); quantize_static/quantize_dynamic offer per-tensor "
                        "and per-channel"
                    ),
                },
                "dtype": {QuantDType.int.value: NATIVE, QuantDType.float16.value: NATIVE},
                "algorithm": {"plain": NATIVE},
            }
        ),
        "prune": StepCapability(
            unsupported(
                "onnxruntime has no pruning: its quantizer only changes number formats, "
                "never removes or zeroes weights"
            )
        ),
        "cluster": StepCapability(
            unsupported(
                "onnxruntime has no weight clustering / palettization (no lookup-table "
                "weights in its quantizer)"
            )
        ),
        "binarize": StepCapability(
            unsupported(
                "onnxruntime has no 1-bit weights (smallest type int4) and binarization "
                f"needs training; {_POST_TRAINING_ONLY}"
            )
        ),
        "distill": StepCapability(
            unsupported(f"distillation trains a student; {_POST_TRAINING_ONLY}")
        ),
        "finetune": StepCapability(
            unsupported(f"fine-tuning is training; {_POST_TRAINING_ONLY}")
        ),
    },
)


def _check_quantize(step: QuantizeStep) -> Verdict | None:
    """Combinations of quantize options onnxruntime cannot run (the table checks each alone)."""
    if step.dtype is QuantDType.float16:
        if step.activations not in (None, 16):
            return approximated(
                f"activations: {step.activations} ignored: a float16 graph computes its "
                "activations in float16")
        return None
    problems = []
    if step.method is QuantMethod.dynamic:
        if step.weights == 4:
            problems.append(
                "dynamic 4-bit weights: quantize_dynamic emits MatMulInteger/ConvInteger, "
                "which take 8-bit weights; onnxruntime's 4-bit weight-only path "
                "(MatMulNBits) covers MatMul only, not Conv or Gemm"
            )
        if step.activations is None:
            problems.append(
                "dynamic with activations: null: quantize_dynamic always quantizes "
                "activations at run time (DynamicQuantizeLinear); there is no 8-bit "
                "weight-only mode"
            )
    elif step.method is QuantMethod.static and step.activations is None:
        problems.append(
            "static with activations: null: quantize_static always quantizes "
            "activations; for weights only use method: dynamic"
        )
    return unsupported("; ".join(problems)) if problems else None


class OnnxRuntimeAdapter(Adapter):
    """onnxruntime.quantization on the reference fp32 ONNX."""

    capabilities = CAPABILITIES

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        """One quantize step at most, and nothing after it: onnxruntime quantizes a float
        graph once (a quantized graph cannot be quantized again or trained)."""
        out: list[tuple[int, Verdict]] = []
        first_quantize: int | None = None
        for index, step in enumerate(steps):
            if first_quantize is not None:
                out.append((index, unsupported(
                    f"step {first_quantize + 1} already quantized the graph with "
                    "onnxruntime; nothing can follow it (no requantization or training of "
                    "a quantized ONNX)"
                )))
                continue
            if isinstance(step, QuantizeStep):
                first_quantize = index
                verdict = _check_quantize(step)
                if verdict is not None:
                    out.append((index, verdict))
        return out

    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        from adapters.onnxruntime import _impl

        return _impl.compress(ctx)


ADAPTER = OnnxRuntimeAdapter()
