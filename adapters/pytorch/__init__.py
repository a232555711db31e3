"""PyTorch-native backend: torch.ao.quantization (FX graph mode) and torch.nn.utils.prune.

This module is data plus cross-step rules; the toolkit code lives in ``_impl.py`` and
``_impl_prune.py`` and is imported only when a job runs.
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
    Support,
    Verdict,
    approximated,
    unsupported,
)
from adapters.pytorch import model_rules
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import (
    DistillStep,
    Granularity,
    OpType,
    PruneCriterion,
    PruneScope,
    PruneStep,
    PruneStructure,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Step,
)

if TYPE_CHECKING:
    from unified.context import JobContext

INT8_ONLY = "torch.ao eager/FX quantization is int8 only (fbgemm/x86 kernels)"

CHANNEL_NOTE = (
    "channel: torch.nn.utils.prune.ln_structured (dim=0) zeroes whole output filters; the "
    "architecture keeps its size (torch pruning only zeroes, no channel removal)"
)

INPUT_CHANNEL_NOTE = (
    "input_channel: torch.nn.utils.prune.ln_structured (dim=1) zeroes whole input channels; "
    "the architecture keeps its size (torch pruning only zeroes, no channel removal)"
)

CAPABILITIES = Capabilities(
    backend="pytorch",
    toolkit="PyTorch (torch.ao.quantization, torch.nn.utils.prune)",
    input_framework="pytorch",
    packages=("torch", "torchvision"),
    modules=("torch",),
    preload=("torch._dynamo",),
    install_hint="pip install 'squeezelab[pytorch]'",
    artifact=".pt",
    steps={
        "quantize": StepCapability(
            options={
                "method": {
                    QuantMethod.dynamic: NATIVE,  # its ONNX: adapters/pytorch/_impl_dynamic.py
                    QuantMethod.static: NATIVE,
                    QuantMethod.qat: NATIVE,
                },
                "weights": {
                    8: NATIVE,
                    16: Verdict(Support.native, "float16: model.half()"),
                    4: unsupported(INT8_ONLY),
                    2: unsupported(INT8_ONLY),
                    1: unsupported(INT8_ONLY + "; for 1-bit see binarize"),
                },
                "activations": {
                    8: NATIVE,
                    None: NATIVE,  # dynamic (and float16); static/qat checked in check_recipe
                    16: NATIVE,  # float16 only; checked in check_recipe
                    4: unsupported(INT8_ONLY),
                    2: unsupported(INT8_ONLY),
                },
                "granularity": {
                    "per_tensor": NATIVE,
                    "per_channel": NATIVE,
                    "per_block": unsupported(
                        "torch.ao observers are per-tensor or per-channel only"
                    ),
                },
                "dtype": {QuantDType.int: NATIVE, QuantDType.float16: NATIVE},
                "algorithm": {
                    "plain": NATIVE,
                    "lsq": unsupported(
                        "torch.ao QAT uses observer-based fake quantization only (no public "
                        "LSQ); NNI's LsqQuantizer does LSQ (nni backend)"
                    ),
                    "dorefa": unsupported(
                        "torch.ao has no DoReFa quantizer; NNI's DoReFaQuantizer does "
                        "(nni backend)"
                    ),
                    "pact": unsupported("torch.ao has no PACT (learned activation clipping)"),
                },
            },
        ),
        "prune": StepCapability(
            options={
                "structure": {
                    PruneStructure.unstructured: NATIVE,
                    PruneStructure.channel: approximated(CHANNEL_NOTE),
                    PruneStructure.input_channel: approximated(INPUT_CHANNEL_NOTE),
                    PruneStructure.n_m: unsupported(
                        "torch.nn.utils.prune has no n:m method; coremltools "
                        "OpMagnitudePrunerConfig(n_m_ratio) does it (coreml backend)"
                    ),
                    PruneStructure.block: unsupported(
                        "torch.nn.utils.prune has no block method (only element, one dim "
                        "slices or a custom mask)"
                    ),
                },
                "scope": {PruneScope.local: NATIVE, PruneScope.global_: NATIVE},
                "criterion": {
                    PruneCriterion.l1: NATIVE,
                    PruneCriterion.l2: Verdict(
                        Support.native,
                        "unstructured: l1_unstructured (|w| ranks single weights the same); "
                        "channel: ln_structured n=2",
                    ),
                    PruneCriterion.level: Verdict(
                        Support.native, "level (magnitude) = l1_unstructured / L1Unstructured"
                    ),
                    PruneCriterion.random: NATIVE,
                    PruneCriterion.fpgm: unsupported(
                        "torch.nn.utils.prune has no geometric-median (FPGM) criterion; "
                        "NNI's FPGMPruner does it (nni backend)"
                    ),
                    PruneCriterion.taylor: unsupported(
                        "torch.nn.utils.prune has no gradient-based (Taylor) criterion; "
                        "NNI's TaylorPruner does it (nni backend)"
                    ),
                },
            },
        ),
        "cluster": StepCapability(
            verdict=unsupported(
                "PyTorch has no weight-clustering API; use coremltools optimize.torch "
                "palettization (coreml backend), TF-MOT cluster_weights (tfmot backend)"
            ),
        ),
        "binarize": StepCapability(
            verdict=unsupported(
                "torch.ao quantization has no 1-bit weights; use NNI's BNNQuantizer / "
                "DoReFaQuantizer (nni backend) or coremltools 1-bit palettization (coreml)"
            ),
        ),
        "distill": StepCapability(),
        "finetune": StepCapability(),
    },
    # torch fbgemm int8 and onnxruntime int8 round differently by up to a few quanta
)


def _quantize_rules(step: QuantizeStep) -> list[Verdict]:
    out: list[Verdict] = []
    if step.dtype is QuantDType.float16:
        if step.method is not QuantMethod.static:
            out.append(unsupported(
                f"dtype float16 with method {step.method}: torch casts the model with "
                "model.half(); use method static (the default) for float16"
            ))
        elif step.activations in (8, None):
            out.append(approximated(
                f"activations={step.activations}: model.half() also computes activations "
                "in float16"
            ))
        return out
    if step.activations == 16:
        out.append(unsupported("activations 16 means float16: say dtype: float16, weights: 16"))
    if step.method is not QuantMethod.dynamic and step.activations is None:
        out.append(unsupported(
            f"method {step.method} with activations null: torch.ao's weight-only int8 for "
            "conv/linear is dynamic quantization (method: dynamic)"
        ))
    if (step.method is not QuantMethod.dynamic and not step.symmetric
            and step.granularity is Granularity.per_channel):
        out.append(unsupported(
            "per-channel affine (symmetric: false) int8 weights: torch quantizes them, but "
            "its ONNX export with non-zero per-channel weight zero points computes wrong "
            "results in onnxruntime (measured 6% agreement); use per_tensor or symmetric"
        ))
    if step.method is QuantMethod.dynamic and OpType.linear not in step.targets.op_types:
        out.append(unsupported(
            "torch dynamic quantization covers only Linear/LSTM/RNN layers: targets.op_types "
            "must include linear"
        ))
    return out


def _prune_rules(step: PruneStep) -> list[Verdict]:
    out: list[Verdict] = []
    if step.structure in (PruneStructure.channel, PruneStructure.input_channel):
        if step.scope is PruneScope.global_:
            out.append(unsupported(
                f"global {step.structure} pruning: torch.nn.utils.prune.global_unstructured is "
                "unstructured only (use scope local)"
            ))
        if step.criterion is PruneCriterion.level:
            out.append(unsupported(
                "criterion level ranks single weights; for channel pruning use l1 or l2"
            ))
    return out


class PyTorchAdapter(Adapter):
    capabilities = CAPABILITIES

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        """Quantization is last; steps before a distill are lost; option combinations."""
        out: list[tuple[int, Verdict]] = []
        quantize_at = next((i for i, s in enumerate(steps) if isinstance(s, QuantizeStep)), None)
        distill_at = max((i for i, s in enumerate(steps) if isinstance(s, DistillStep)),
                         default=None)
        for index, step in enumerate(steps):
            if quantize_at is not None and index > quantize_at:
                out.append((index, unsupported(
                    f"it follows the quantize step (step {quantize_at + 1}): torch.ao "
                    "quantization converts to an int8 model that cannot be pruned, trained "
                    "or quantized again, so quantize must be the last step"
                )))
            if distill_at is not None and index < distill_at:
                out.append((index, unsupported(
                    f"its result is discarded: the distill step (step {distill_at + 1}) "
                    "replaces the model with a fresh student trained from the reference "
                    "teacher"
                )))
            if isinstance(step, QuantizeStep):
                out += [(index, v) for v in _quantize_rules(step)]
                pruned_before = any(isinstance(s, PruneStep) for s in steps[:index])
                if pruned_before and step.method is QuantMethod.qat:
                    out.append((index, approximated(
                        "torch.ao QAT does not know pruning masks: the masks of the earlier "
                        "prune are re-applied to the QAT weights after every optimizer step"
                    )))
            elif isinstance(step, PruneStep):
                out += [(index, v) for v in _prune_rules(step)]
        return out

    def check_model(self, steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
        """What the toolkit documents it cannot do with this model (model_rules.py)."""
        return model_rules.check_model(steps, model)

    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        from adapters.pytorch._impl import compress

        return compress(ctx)


ADAPTER = PyTorchAdapter()
