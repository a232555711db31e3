"""The reference model's summary (layer types, parameters) that plans read: computed once,
stored next to the reference."""

from __future__ import annotations

from unified.context import ReferenceArtifacts
from unified.spec.model_summary import ModelSummary, read_summary
from unified.spec.scenario import Scenario


def model_summary(scenario: Scenario, ref: ReferenceArtifacts) -> ModelSummary:
    """The stored summary of ``scenario``'s model, computed (without weights: the structure is
    what matters) and stored in the reference folder the first time."""
    known = read_summary(ref.model_summary)
    if known is not None:
        return known
    from unified.torchkit.models import build_model
    from unified.torchkit.summary import summarize

    spec = scenario.model
    summary = summarize(build_model(spec.source, spec.num_classes, spec.input_shape))
    summary.save(ref.model_summary)
    return summary
