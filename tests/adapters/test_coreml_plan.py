"""Core ML backend plans: routes (post-training or training-time) and verdicts from the
capability table and the cross-step rules alone (no toolkit needed)."""

from __future__ import annotations

from typing import Any

from adapters.base import Support
from adapters.coreml import ADAPTER, routes
from unified.spec.steps import Recipe


def plan(steps: list[Any]) -> Any:
    return ADAPTER.plan(Recipe.model_validate(steps))


def test_plan_activation_quantization_is_weights_only() -> None:
    static = plan([{"quantize": {"method": "static", "weights": 8, "activations": 8}}])
    assert static.status == "approximated"
    assert "macOS" in static.steps[0].verdict.note
    dynamic = plan([{"quantize": {"method": "dynamic", "weights": 8, "activations": 8}}])
    assert "weights only" in dynamic.steps[0].verdict.note
    qat = plan([{"quantize": {"method": "qat", "weights": 8, "activations": 8}}])
    assert qat.status == "ok"


def test_plan_verdicts() -> None:
    assert plan([{"quantize": {"weights": 2, "activations": None}}]).status == "approximated"
    assert plan([{"cluster": {"bits": 5}}]).status == "approximated"
    assert plan([{"cluster": {"bits": 6}}]).status == "ok"
    assert plan([{"cluster": {"clusters": 512}}]).status == "unsupported"
    assert plan([{"binarize": {}}]).status == "unsupported"
    assert plan([{"prune": {"sparsity": 0.5, "structure": "channel"}}]).status == "unsupported"
    # a finetune after a post-training step cannot train the mlpackage
    bad = plan([{"quantize": {"weights": 8, "activations": None}}, {"finetune": {}}])
    assert bad.steps[1].verdict.support is Support.unsupported
    joint = plan([{"prune": {"sparsity": 0.5}}, {"cluster": {"bits": 2}}])
    assert joint.status == "ok"


def test_routes_follow_the_recipe() -> None:
    def route(steps: list[Any]) -> list[str]:
        return routes(Recipe.model_validate(steps).steps)

    assert route([{"quantize": {"method": "qat"}}]) == ["torch"]
    assert route([{"prune": {"sparsity": 0.5}}]) == ["coreml"]
    assert route([{"prune": {"sparsity": 0.5}}, {"finetune": {}}]) == ["torch", "train"]
    assert route([{"prune": {"sparsity": 0.8, "schedule": {"end_epoch": 2}}}]) == ["torch"]
    assert route([{"cluster": {"bits": 4}}, {"finetune": {}}]) == ["torch", "train"]
    # consecutive prune steps share one MagnitudePruner: a scheduled one makes all train
    together = [{"prune": {"sparsity": 0.5}},
                {"prune": {"sparsity": 0.8, "schedule": {"end_epoch": 2}}}]
    assert route(together) == ["torch", "torch"]
    assert plan(together).status == "ok"
    apart = [*together, {"cluster": {"bits": 4}}, {"finetune": {}}]
    assert plan(apart).steps[2].verdict.support is Support.unsupported
