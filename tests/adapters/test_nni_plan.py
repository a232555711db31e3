"""NNI backend plans: what each option maps to, decided from the capability table and the
cross-step rules alone (no toolkit needed)."""

from __future__ import annotations

import pytest

from adapters.nni import ADAPTER
from unified.spec.steps import Recipe


def _plan(steps: list[object]) -> list[str]:
    plan = ADAPTER.plan(Recipe.model_validate(steps))
    return [s.verdict.support.value for s in plan.steps]


@pytest.mark.parametrize(("steps", "expected"), [
    ([{"prune": {"sparsity": 0.5, "structure": "channel"}}, "finetune"], ["native", "native"]),
    ([{"prune": {"sparsity": 0.5, "criterion": "l1"}}], ["approximated"]),
    ([{"prune": {"sparsity": 0.5, "criterion": "level", "structure": "channel"}}],
     ["unsupported"]),
    ([{"prune": {"sparsity": 0.5, "criterion": "random"}}], ["unsupported"]),
    ([{"prune": {"sparsity": 0.5, "structure": "n:m", "n": 2, "m": 4}}], ["unsupported"]),
    ([{"quantize": {"method": "dynamic"}}], ["unsupported"]),
    ([{"quantize": {"method": "qat", "algorithm": "pact"}}], ["unsupported"]),
    ([{"quantize": {"method": "qat", "algorithm": "lsq"}}], ["native"]),
    ([{"quantize": {"method": "static"}}, "finetune"], ["unsupported", "native"]),
    ([{"prune": {"sparsity": 0.5}}, {"quantize": {"method": "qat"}}],
     ["approximated", "unsupported"]),
    ([{"binarize": {"style": "dorefa"}}], ["unsupported"]),
    ([{"binarize": {"style": "bnn"}}], ["native"]),
    ([{"cluster": {"clusters": 16}}], ["unsupported"]),
    (["finetune", {"distill": {"student": "builtin:convnet-tiny"}}], ["native", "unsupported"]),
])
def test_plan_verdicts(steps: list[object], expected: list[str]) -> None:
    assert _plan(steps) == expected


def test_unsupported_steps_carry_a_reason() -> None:
    plan = ADAPTER.plan(Recipe.model_validate([{"cluster": {"clusters": 16}}]))
    assert plan.status == "unsupported"
    assert "clustering" in (plan.reason or "")
