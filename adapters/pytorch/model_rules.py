"""What torch.ao cannot do with a given model, known at plan time from its summary."""

from __future__ import annotations

from adapters.base import Verdict, unsupported
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import QuantDType, QuantizeStep, QuantMethod, Step

FX_LIMIT = (
    "torch.ao FX graph mode quantization needs a model torch.fx can trace symbolically "
    "(PyTorch's FX graph mode quantization guide: the model must be symbolically traceable; "
    "torch.fx 'Limitations of Symbolic Tracing': no control flow on tensor values); eager mode "
    "would need QuantStub/DeQuantStub edits of the model code"
)


def check_model(steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
    """Static and QAT int8 trace the model with torch.fx: an untraceable model cannot run."""
    if model.fx_error is None:
        return []
    return [(i, unsupported(f"{FX_LIMIT}; torch.fx cannot trace this model: {model.fx_error}"))
            for i, step in enumerate(steps)
            if isinstance(step, QuantizeStep) and step.dtype is QuantDType.int
            and step.method in (QuantMethod.static, QuantMethod.qat)]
