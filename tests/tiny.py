"""The tiny scenario shared by the tests (a real model on real digits, seconds to train)."""

from __future__ import annotations

from typing import Any

from unified.scenario import Scenario

TINY_SCENARIO: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "model": {"source": "builtin:convnet-tiny", "weights": "train",
              "input_shape": [1, 8, 8], "num_classes": 10},
    "data": {"source": "digits", "train": 1000, "calibration": 64, "test": 300},
    "budget": {"train_epochs": 4, "finetune_epochs": 1, "batch_size": 32, "lr": 0.05},
    "evaluate": {"latency": {"warmup": 2, "runs": 5, "threads": 1}, "timeout": 600},
    "backends": ["pytorch"],
    "recipes": {"fp32": []},
}


def tiny_scenario(recipes: dict[str, list[Any]], backends: list[str],
                  **overrides: Any) -> Scenario:
    data = {**TINY_SCENARIO, "recipes": recipes, "backends": backends, **overrides}
    return Scenario.model_validate(data)
