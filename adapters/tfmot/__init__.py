"""TensorFlow Model Optimization backend: torch → tf_keras (nobuco) → TF-MOT → TFLite → ONNX.

Pruning (``prune_low_magnitude``), weight clustering (``cluster_weights``) and QAT
(``quantize_apply``, with the pruning- / cluster-preserving schemes after those steps) run on
the Keras model; post-training quantization (static int8, dynamic range, float16) is done by
the TFLite converter. The native artifact is the ``.tflite`` file; its ONNX comes from
``tf2onnx`` reading that file (int8 kept as QDQ). Nothing heavy is imported here.
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
from adapters.tfmot import model_rules
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import (
    ClusterStep,
    Granularity,
    OpType,
    PruneStep,
    PruneStructure,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Step,
    Targets,
)

if TYPE_CHECKING:
    from unified.context import JobContext

MAGNITUDE_ONLY = "TF-MOT prune_low_magnitude prunes by weight magnitude only"
EIGHT_BIT = ("TF-MOT / TFLite quantize to 8 bits (int8) or float16; lower bit widths have no "
             "TFLite kernels")
DEPTHWISE_SKIPPED = ("DepthwiseConv2D kernels are left as they are: TF-MOT can neither prune nor "
                     "cluster them")

CAPABILITIES = Capabilities(
    backend="tfmot",
    toolkit="TensorFlow Model Optimization",
    input_framework="keras",  # converted from the pytorch reference with nobuco
    packages=("tensorflow", "tf-keras", "tensorflow-model-optimization", "tf2onnx", "nobuco"),
    modules=("tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "nobuco"),
    environment={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    preload=("torch._dynamo",),
    install_hint="pip install 'squeezelab[tfmot]'",
    artifact=".tflite",
    steps={
        "prune": StepCapability(
            options={
                "structure": {
                    "unstructured": NATIVE,
                    "n:m": NATIVE,  # sparsity_m_by_n
                    "block": approximated(
                        "TF-MOT block sparsity needs 2-D kernels: Dense layers get blocks, "
                        "Conv2D kernels are pruned unstructured"),
                    "channel": unsupported(
                        "TF-MOT has no filter/channel pruning (only unstructured, block and "
                        "m-by-n sparsity)"),
                    "input_channel": unsupported(
                        "TF-MOT has no input-channel pruning (only unstructured, block and "
                        "m-by-n sparsity)"),
                },
                "scope": {
                    "local": NATIVE,
                    "global": approximated(
                        "local: TF-MOT prunes each layer to the target sparsity (no global "
                        "ranking across layers)"),
                },
                "criterion": {
                    "l1": NATIVE,
                    "level": NATIVE,
                    "l2": NATIVE,  # for single weights |w| and w² rank the same
                    "fpgm": unsupported(MAGNITUDE_ONLY),
                    "taylor": unsupported(MAGNITUDE_ONLY),
                    "random": unsupported(MAGNITUDE_ONLY),
                },
            },
        ),
        "quantize": StepCapability(
            options={
                "method": {"static": NATIVE, "dynamic": NATIVE, "qat": NATIVE},
                "weights": {
                    8: NATIVE,
                    16: NATIVE,  # float16
                    4: unsupported(EIGHT_BIT),
                    2: unsupported(EIGHT_BIT),
                    1: unsupported(EIGHT_BIT),
                },
                "activations": {
                    8: NATIVE,
                    None: NATIVE,
                    16: unsupported("TFLite's int16-activation mode (16x8) does not convert "
                                    "to ONNX with tf2onnx"),
                    4: unsupported(EIGHT_BIT),
                    2: unsupported(EIGHT_BIT),
                },
                "granularity": {
                    "per_channel": NATIVE,
                    "per_tensor": NATIVE,  # static only, see check_recipe
                    "per_block": unsupported("TFLite has no per-block int8 quantization"),
                },
                "symmetric": {
                    True: NATIVE,
                    False: approximated("TFLite int8 weights are always symmetric "
                                        "(activations asymmetric)"),
                },
                "algorithm": {
                    "plain": NATIVE,
                    "lsq": unsupported("TF-MOT QAT learns ranges with moving-average "
                                       "observers; no LSQ"),
                    "dorefa": unsupported("TF-MOT has no DoReFa quantizer"),
                    "pact": unsupported("TF-MOT has no PACT quantizer"),
                },
            },
        ),
        "cluster": StepCapability(
            options={
                "init": {"kmeans++": NATIVE, "linear": NATIVE, "density": NATIVE,
                         "random": NATIVE},
                "granularity": {
                    "per_tensor": NATIVE,
                    "per_channel": approximated(
                        "TF-MOT clusters per output channel for Conv2D only; Dense kernels "
                        "are clustered per tensor"),
                    "per_block": unsupported("TF-MOT clusters per tensor or per channel"),
                },
            },
        ),
        "finetune": StepCapability(),
        "binarize": StepCapability(
            verdict=unsupported("TF-MOT has no binarization (1-bit weights); its lowest "
                                "deployable width is int8"),
        ),
        "distill": StepCapability(
            verdict=unsupported("TF-MOT has no knowledge-distillation API"),
        ),
    },
)

CLUSTER_LR = ("BatchNorm is folded into the convs before clustering (else TFLite's BN folding "
              "scales every channel of a clustered kernel); the BN-free model is fine-tuned at a "
              "tenth of the budget's finetune lr")
PTQ_LAST = ("TFLite post-training quantization happens at conversion: it must be the last "
            "step")


def _is_ptq(step: Step) -> bool:
    return isinstance(step, QuantizeStep) and step.method is not QuantMethod.qat


def check_steps(steps: list[Step]) -> list[tuple[int, Verdict]]:
    """Cross-step and method-specific rules the table cannot express."""
    out: list[tuple[int, Verdict]] = []
    ptq_done = qat_done = False
    for i, step in enumerate(steps):
        if ptq_done:
            out.append((i, unsupported(PTQ_LAST)))
            continue
        if isinstance(step, PruneStep | ClusterStep):
            if qat_done:
                out.append((i, unsupported("TF-MOT cannot prune or cluster a QAT model: put "
                                           f"{step.kind} before quantize")))
            if OpType.depthwise in step.targets.op_types:
                out.append((i, approximated(DEPTHWISE_SKIPPED)))
        if isinstance(step, ClusterStep) and not any(
                isinstance(s, QuantizeStep) and s.method is QuantMethod.qat for s in steps):
            out.append((i, approximated(CLUSTER_LR)))
        earlier = [j for j in range(i) if isinstance(steps[j], PruneStep)]
        if isinstance(step, PruneStep) and earlier and not isinstance(steps[i - 1], PruneStep):
            out.append((i, approximated(
                f"TF-MOT strips step {earlier[-1] + 1}'s pruning wrappers before wrapping "
                "again: its zeros are no longer enforced while this step trains (consecutive "
                "prune steps run together instead)")))
        scheduled = isinstance(step, PruneStep) and step.schedule is not None
        if scheduled and step.structure is PruneStructure.n_m:  # type: ignore[union-attr]
            out.append((i, approximated("TF-MOT sets m-by-n masks once, at the first "
                                        "training step: the schedule's ramp is ignored")))
        if not isinstance(step, QuantizeStep):
            continue
        if qat_done:
            out.append((i, unsupported("one quantize step per recipe: the model is already "
                                       "quantization-aware")))
            continue
        if step.method is QuantMethod.qat:
            qat_done = True
            if step.dtype is QuantDType.float16:
                out.append((i, unsupported("TF-MOT QAT is int8 only; float16 is "
                                           "post-training (method static or dynamic)")))
            if step.activations is None:
                out.append((i, unsupported("TF-MOT QAT quantizes weights and activations "
                                           "(activations: 8)")))
            if step.granularity is Granularity.per_tensor:
                out.append((i, unsupported("TF-MOT's default 8-bit QAT scheme is per-channel "
                                           "for Conv2D (per-tensor for Dense)")))
            continue
        ptq_done = True
        if step.targets != Targets():
            out.append((i, unsupported("TFLite post-training quantization covers the whole "
                                       "model: no layer targets")))
        if step.dtype is QuantDType.int and (
                step.method is QuantMethod.dynamic or step.activations is None):
            if step.method is QuantMethod.static:
                out.append((i, approximated("weights only: TFLite dynamic-range quantization "
                                            "(no activation calibration)")))
            if step.granularity is Granularity.per_tensor:
                out.append((i, approximated("TFLite dynamic-range quantization is per-channel "
                                            "for convs")))
    return out


class TfmotAdapter(Adapter):
    capabilities = CAPABILITIES

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        return check_steps(steps)

    def check_model(self, steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
        """What the toolkit documents it cannot do with this model (model_rules.py)."""
        return model_rules.check_model(steps, model)

    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        from adapters.tfmot import _impl

        return _impl.compress(ctx, plan)


ADAPTER = TfmotAdapter()
