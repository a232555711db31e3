"""What TF-MOT 0.8 (through the nobuco bridge) cannot do with a given model, known at plan
time from its summary."""

from __future__ import annotations

from adapters.base import Verdict, approximated
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import ClusterStep, PruneStep, QuantizeStep, QuantMethod, Step

QAT_FLOAT = (
    "TF-MOT 0.8's default 8-bit QAT scheme (Default8BitQuantizeRegistry) has no "
    "MultiHeadAttention / LayerNormalization entry: the bridged attention and layer norms are "
    "trained and exported in float"
)
ATTENTION_WEIGHTS = (
    "the attention projections are not {what}: the bridge makes nn.MultiheadAttention one Keras "
    "MultiHeadAttention layer, and this adapter {verb}s the Conv2D / DepthwiseConv2D / Dense "
    "layers named after torch modules"
)


def check_model(steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
    attention = model.count("MultiheadAttention")
    norms = model.count("LayerNorm")
    out: list[tuple[int, Verdict]] = []
    for i, step in enumerate(steps):
        if isinstance(step, QuantizeStep) and step.method is QuantMethod.qat and (
                attention or norms):
            out.append((i, approximated(QAT_FLOAT)))
        elif isinstance(step, PruneStep) and attention:
            out.append((i, approximated(ATTENTION_WEIGHTS.format(what="pruned", verb="prune"))))
        elif isinstance(step, ClusterStep) and attention:
            out.append((i, approximated(ATTENTION_WEIGHTS.format(what="clustered",
                                                                   verb="cluster"))))
    return out
