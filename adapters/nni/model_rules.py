"""What NNI 3.0 cannot do with a given model, known at plan time from its summary."""

from __future__ import annotations

from adapters.base import Verdict, approximated
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import BinarizeStep, QuantizeStep, Step

ATTENTION = (
    "nn.MultiheadAttention's projections stay float: NNI quantizes the modules it wraps (its "
    "QuantizationSetting registry: Linear, Conv*, …), and the attention computes them inside "
    "F.multi_head_attention_forward with its own weights, never calling a module (its "
    "out_proj included)"
)


def check_model(steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
    if not model.count("MultiheadAttention"):
        return []
    return [(i, approximated(ATTENTION)) for i, step in enumerate(steps)
            if isinstance(step, QuantizeStep | BinarizeStep)]
