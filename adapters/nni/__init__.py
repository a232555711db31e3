"""Microsoft NNI 3.0 backend: pruners (+ ModelSpeedup), quantizers, distillers.

Capabilities are plain data; NNI and torch are imported only inside ``_compress``
(``adapters/nni/_impl*.py``). What each option really maps to:

- prune: l1 / l2 / fpgm / taylor → L1Norm / L2Norm / FPGM / Taylor pruner on output channels
  (structure channel, then ``ModelSpeedup`` removes them for real); unstructured → LevelPruner
  (element-wise magnitude; l1 and l2 of one element are the same ranking); scope global →
  one ``global_group_id`` for every target; a schedule → AGPPruner / LinearPruner wrapping
  the basic pruner.
- quantize: static → PtqQuantizer (calibration forward passes only), qat → QATQuantizer,
  algorithm lsq → LsqQuantizer (DoReFa is broken in NNI 3.0: unsupported); the QDQ ONNX
  is built from NNI's own scales (int8 symmetric weights in [-127, 127], uint8 affine
  activations).
- binarize: bnn → BNNQuantizer (DoReFa 1-bit is broken in NNI 3.0: unsupported).
- distill: DynamicLayerwiseDistiller on the logits; finetune: the shared torch loop.
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
from adapters.nni import model_rules
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import (
    BinarizeStep,
    PruneStep,
    PruneStructure,
    QuantizeStep,
    QuantMethod,
    Step,
)

if TYPE_CHECKING:
    from unified.context import JobContext

STRUCTURED = (PruneStructure.channel, PruneStructure.input_channel)
_CHANNEL_NOTE = (
    "NNI ModelSpeedup removes the pruned channels (the model really shrinks); layers tied by a "
    "depthwise conv or a residual add keep the union of their masks, so fewer channels than "
    "asked may go"
)

CAPABILITIES = Capabilities(
    backend="nni",
    toolkit="NNI 3.0",
    input_framework="pytorch",
    packages=("nni", "torch"),
    modules=("nni", "torch"),
    preload=("torch._dynamo",),
    install_hint="pip install 'squeezelab[nni]'",
    artifact=".pt",  # state_dict of the compressed model (of the shrunk model after speedup)
    steps={
        "prune": StepCapability(
            options={
                "structure": {
                    "unstructured": NATIVE,
                    "channel": NATIVE,
                    "input_channel": Verdict(
                        Support.native, "L1/L2NormPruner granularity 'in_channel'; "
                        "ModelSpeedup removes the channels and the producer's filters"),
                    "n:m": unsupported("NNI 3.0 pruners have no n:m sparsity pattern"),
                    "block": unsupported(
                        "NNI 3.0 block granularity is not wired in this adapter; "
                        "use unstructured or channel"
                    ),
                },
                "criterion": {
                    "l1": NATIVE,
                    "l2": NATIVE,
                    "level": NATIVE,
                    "fpgm": NATIVE,
                    "taylor": NATIVE,
                    "random": unsupported("NNI 3.0 has no random pruner"),
                },
                "scope": {"local": NATIVE, "global": NATIVE},
            },
        ),
        "quantize": StepCapability(
            options={
                "method": {
                    "static": NATIVE,
                    "qat": NATIVE,
                    "dynamic": unsupported(
                        "NNI 3.0 has no dynamic (run-time activation range) quantizer"
                    ),
                },
                "weights": {
                    8: NATIVE,
                    16: unsupported("NNI 3.0 has no float16 quantization"),
                    4: unsupported(
                        "NNI can simulate int4 but the QDQ ONNX this adapter builds is int8 "
                        "(onnxruntime has no CPU int4 conv kernels)"
                    ),
                    2: unsupported("NNI can simulate int2 but the QDQ ONNX export is int8 only"),
                    1: unsupported("1-bit weights are the binarize step"),
                },
                "activations": {
                    8: NATIVE,
                    None: NATIVE,
                    16: unsupported("the QDQ ONNX export quantizes activations to 8 bits only"),
                    4: unsupported("the QDQ ONNX export quantizes activations to 8 bits only"),
                    2: unsupported("the QDQ ONNX export quantizes activations to 8 bits only"),
                },
                "granularity": {
                    "per_tensor": NATIVE,
                    "per_channel": NATIVE,
                    "per_block": unsupported("NNI 3.0 quantizers have no per-block granularity"),
                },
                "symmetric": {
                    True: NATIVE,
                    False: approximated(
                        "weights stay symmetric int8 (zero point 0, the form onnxruntime's "
                        "per-channel int8 kernels take); activations are affine uint8 either way"
                    ),
                },
                "dtype": {
                    "int": NATIVE,
                    "float16": unsupported("NNI 3.0 has no float16 quantization"),
                },
                "algorithm": {
                    "plain": NATIVE,
                    "lsq": NATIVE,
                    "dorefa": unsupported(
                        "NNI 3.0's DoReFaQuantizer is unusable here: its calibration config "
                        "leaves the activation scale NaN, and weights-only it zeroed every "
                        "weight (measured on convnet-tiny: sparsity 1.0, accuracy 0.07)"
                    ),
                    "pact": unsupported(
                        "NNI 3.0 has no PACT quantizer (it ships QAT, PTQ, LSQ, LSQ+, DoReFa, BNN)"
                    ),
                },
            },
        ),
        "binarize": StepCapability(
            options={
                "style": {
                    "bnn": NATIVE,
                    "dorefa": unsupported(
                        "NNI 3.0's DoReFaQuantizer leaves 1-bit weights as a TODO; with uint1 "
                        "it collapses whole layers to one value (measured on convnet-tiny: 3 of "
                        "8 layers single-valued, accuracy 0.11)"
                    ),
                    "xnor": unsupported(
                        "NNI 3.0 has no XNOR-Net (per-channel scaled sign) quantizer"
                    ),
                },
                "activations": {
                    False: NATIVE,
                    True: unsupported(
                        "binary activations are simulated by NNI but the ONNX export keeps float "
                        "activations; only 1-bit weights are exported"
                    ),
                },
            },
        ),
        "cluster": StepCapability(
            verdict=unsupported("NNI 3.0 has no weight clustering / weight sharing")
        ),
        "distill": StepCapability(),
        "finetune": StepCapability(),
    },
)


_SEVERAL_NOTE = (
    "several prune steps run as ONE NNI norm pruner over a combined config_list (one entry "
    "per step: its op_names, sparse_ratio and granularity: out_channel, in_channel or "
    "element-wise); "
    "NNI's AGPPruner/LinearPruner carry one schedule for all targets, so squeezelab's "
    "training loop sets each step's sparse_ratio to its Distiller target and has NNI "
    "regenerate that step's masks at the start of each of its pruning epochs"
)


def _several_prune_rules(steps: list[Step]) -> list[tuple[int, Verdict]]:
    """Several prune steps (e.g. a Distiller schedule's concurrent policies): they must be
    consecutive and fit one NNI norm pruner (one norm order for all channel steps)."""
    prunes = [(i, s) for i, s in enumerate(steps) if isinstance(s, PruneStep)]
    if len(prunes) < 2:
        return []
    out: list[tuple[int, Verdict]] = []
    first, last = prunes[0][0], prunes[-1][0]
    if last - first + 1 != len(prunes):
        out += [(i, unsupported(
            "several prune steps must be consecutive with NNI: they run together as one "
            "NNI pruner")) for i, _ in prunes]
    channel = {s.criterion.value for _, s in prunes if s.structure in STRUCTURED}
    for i, step in prunes:
        if step.criterion.value in ("fpgm", "taylor"):
            out.append((i, unsupported(
                f"criterion {step.criterion.value} in a recipe with several prune steps: they "
                "share one NNI L1/L2 norm pruner (use a single prune step for FPGM/Taylor)")))
        elif step.structure in STRUCTURED and len(channel) > 1:
            out.append((i, unsupported(
                f"channel steps with different criteria ({', '.join(sorted(channel))}) "
                "cannot share one NNI norm pruner")))
        else:
            out.append((i, approximated(_SEVERAL_NOTE)))
    return out


def _check_steps(steps: list[Step]) -> list[tuple[int, Verdict]]:
    """Cross-step rules (see NniAdapter.check_recipe)."""
    out: list[tuple[int, Verdict]] = _several_prune_rules(steps)
    several = len(out) > 0
    for i, step in enumerate(steps):
        if step.kind == "distill" and i > 0:
            out.append((i, unsupported(
                "distill trains a freshly built student: it must be the first step "
                "(the steps before it would be discarded)")))
        if step.kind in ("quantize", "binarize") and i < len(steps) - 1:
            out.append((i, unsupported(
                f"{step.kind} must be the last step with NNI: the QDQ/binary ONNX export "
                "ends the pipeline (NNI's fake-quant model cannot be fine-tuned further here)")))
        if isinstance(step, PruneStep):
            if step.structure is PruneStructure.unstructured and step.criterion.value == "fpgm":
                out.append((i, unsupported(
                    "FPGM ranks whole filters by their geometric median: use structure channel")))
            if step.structure is PruneStructure.unstructured and step.criterion.value == "taylor":
                out.append((i, unsupported(
                    "NNI's TaylorPruner ranks output channels: use structure channel")))
            if step.structure in STRUCTURED and step.criterion.value == "level":
                out.append((i, unsupported(
                    "LevelPruner is element-wise: use structure unstructured or another "
                    "criterion")))
            if step.structure is PruneStructure.unstructured and \
                    step.criterion.value in ("l1", "l2"):
                out.append((i, approximated(
                    "element-wise L1 and L2 rank weights the same way as magnitude: "
                    + ("element-wise granularity in the shared NNI norm pruner" if several
                       else "NNI LevelPruner"))))
            constant = step.schedule is not None and step.schedule.curve.value == "constant"
            if constant and not several:
                out.append((i, unsupported(
                    "NNI 3.0 scheduled pruners are AGP and linear; a constant curve is "
                    "a one-shot prune (drop the schedule)")))
            if step.structure is PruneStructure.input_channel and \
                    step.criterion.value in ("fpgm", "taylor"):
                out.append((i, unsupported(
                    f"NNI's {step.criterion.value} pruner ranks output channels: input channels "
                    "take criterion l1 or l2")))
            if step.structure in STRUCTURED:
                out.append((i, Verdict(NATIVE.support, _CHANNEL_NOTE)))
        unstructured_before = any(isinstance(s, PruneStep) and
                                  s.structure is PruneStructure.unstructured for s in steps[:i])
        if isinstance(step, QuantizeStep) and unstructured_before and \
                step.method is QuantMethod.qat:
            out.append((i, unsupported(
                "QAT after unstructured pruning would regrow the pruned weights (NNI's "
                "pruner/quantizer fusion is not wired here); use method static")))
        if isinstance(step, BinarizeStep) and unstructured_before:
            out.append((i, unsupported(
                "binarizing after unstructured pruning turns the pruned zeros into +1")))
    return out


class NniAdapter(Adapter):
    capabilities = CAPABILITIES

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        """Ordering rules (distill first, quantize/binarize last, several prune steps
        consecutive and sharing one norm pruner, no training quantizer over unstructured
        masks) and NNI quantizer limits."""
        return _check_steps(steps)

    def check_model(self, steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
        """What the toolkit documents it cannot do with this model (model_rules.py)."""
        return model_rules.check_model(steps, model)

    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        from adapters.nni import _impl

        return _impl.run(ctx)


ADAPTER = NniAdapter()
