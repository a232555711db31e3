"""TF-MOT backend plans: verdicts and their reasons from the capability table and the
cross-step rules alone (no toolkit needed)."""

from __future__ import annotations

import pytest

from adapters.tfmot import ADAPTER
from unified.spec.steps import Recipe


def plan(steps: list) -> object:
    return ADAPTER.plan(Recipe.model_validate(steps))


@pytest.mark.parametrize(
    ("steps", "status", "words"),
    [
        ([{"quantize": {"method": "static"}}], "ok", None),
        ([{"quantize": {"method": "qat"}}], "ok", None),
        ([{"prune": {"sparsity": 0.5, "targets": {"op_types": ["conv", "linear"]}}}], "ok", None),
        ([{"prune": {"sparsity": 0.5}}], "approximated", "DepthwiseConv2D"),
        ([{"prune": {"sparsity": 0.5, "scope": "global",
                     "targets": {"op_types": ["conv"]}}}], "approximated", "local"),
        ([{"prune": {"sparsity": 0.5, "structure": "channel"}}], "unsupported", "channel"),
        ([{"cluster": {"clusters": 16}}], "approximated", "BatchNorm"),
        ([{"binarize": {}}], "unsupported", "binarization"),
        ([{"distill": {"student": "builtin:convnet-thin"}}], "unsupported", "distillation"),
        ([{"quantize": {"method": "static", "weights": 4}}], "unsupported", "8 bits"),
        ([{"quantize": {"method": "static"}}, {"finetune": {}}], "unsupported", "last step"),
        ([{"quantize": {"method": "qat", "granularity": "per_tensor"}}], "unsupported",
         "per-channel"),
        ([{"quantize": {"method": "qat"}}, {"prune": {"sparsity": 0.5}}], "unsupported",
         "before quantize"),
        ([{"quantize": {"method": "static", "targets": {"op_types": ["conv"]}}}], "unsupported",
         "whole model"),
        ([{"prune": {"sparsity": 0.5, "targets": {"op_types": ["conv"]}}}, {"finetune": {}},
          {"prune": {"sparsity": 0.5, "targets": {"op_types": ["linear"]}}}], "approximated",
         "no longer enforced"),
    ],
)
def test_plan_verdicts(steps: list, status: str, words: str | None) -> None:
    result = plan(steps)
    assert result.status == status, result
    if words is not None:
        text = " ".join([result.reason or "", *result.notes])
        assert words in text, text
