"""The tiny scenario shared by the tests (a real model on real digits, seconds to train)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from unified.spec.scenario import Scenario

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


def micro_student(num_classes: int, input_shape: tuple[int, int, int]) -> Any:
    """A distillation student smaller than convnet-tiny (the tiny reference): no residual
    block. Named in recipes as ``python:tiny:micro_student``."""
    from unified.torchkit.nets import ConvNet

    return ConvNet(num_classes, input_shape, width=8, residual=False)


def tiny_scenario(recipes: dict[str, list[Any]], backends: list[str],
                  **overrides: Any) -> Scenario:
    data = {**TINY_SCENARIO, "recipes": recipes, "backends": backends, **overrides}
    return Scenario.model_validate(data)


def late_agp(final: float) -> tuple[dict[str, Any], list[float]]:
    """A prune step whose AGP starts late and prunes every other epoch (Distiller: starting
    epoch 1, ending epoch 6, frequency 2), and the sparsity Distiller gives each of epochs
    0..5, written out: pruning at the start of epochs 1, 3, 5 over a span of 4; no mask
    before epoch 1; target(3) = final + (0.1 - final) * (1 - 2/4)^3."""
    middle = final + (0.1 - final) * 0.125
    step = {"prune": {"sparsity": final, "schedule": {
        "initial_sparsity": 0.1, "start_epoch": 1, "end_epoch": 6, "frequency": 2}}}
    return step, [0.0, 0.1, 0.1, middle, middle, final]


def assert_follows_schedule(log: list[dict[str, Any]], expected: list[float]) -> None:
    """One epoch_log entry per epoch, each within 0.01 of the expected sparsity."""
    assert [e["epoch"] for e in log] == list(range(len(expected)))
    for entry, target in zip(log, expected, strict=True):
        assert abs(entry["sparsity"] - target) < 0.01, entry


def concurrent_agp() -> tuple[list[dict[str, Any]], dict[int, list[float]]]:
    """Two AGP prune steps with different spans that Distiller runs together, and the
    sparsity it gives each step in epochs 0..3, written out: step 1 (convs, 5% -> 80%) spans
    epochs 0..3 (span 3); step 2 (linears, 10% -> 50%) spans epochs 1..3 (span 2), nothing
    masked in epoch 0."""
    steps = [
        {"prune": {"sparsity": 0.8, "targets": {"op_types": ["conv"]},
                   "schedule": {"initial_sparsity": 0.05, "end_epoch": 4}}},
        {"prune": {"sparsity": 0.5, "targets": {"op_types": ["linear"]},
                   "schedule": {"initial_sparsity": 0.1, "start_epoch": 1, "end_epoch": 4}}},
    ]
    expected = {1: [0.05, 0.8 - 0.75 * (2 / 3) ** 3, 0.8 - 0.75 * (1 / 3) ** 3, 0.8],
                2: [0.0, 0.1, 0.5 - 0.4 * 0.5 ** 3, 0.5]}
    return steps, expected


def assert_runs_concurrently(record: dict[str, Any], expected: dict[int, list[float]]) -> None:
    """One training loop: every epoch logs every step, each within 0.01 of Distiller."""
    epochs = len(next(iter(expected.values())))
    log = [e for e in record["epoch_log"] if e["kind"] == "prune"]
    assert [(e["epoch"], e["step"]) for e in log] == \
        [(e, s) for e in range(epochs) for s in sorted(expected)]
    for entry in log:
        assert abs(entry["sparsity"] - expected[entry["step"]][entry["epoch"]]) < 0.01, entry
    assert any("ran concurrently in one training loop" in n for n in record["notes"])


# --- real-network blocks (tests/fixtures/real_blocks.py) ------------------------------------

BLOCKS = ("same_pad_net", "se_net", "shuffle_net", "tiny_vit")


def python_model_scenario(source: str, name: str, input_shape: list[int],
                          data: dict[str, Any], recipes: dict[str, list[Any]],
                          backends: list[str]) -> Scenario:
    """A scenario of a ``python:`` fixture model with seeded random weights on synthetic
    inputs (no training: the checks are structural and against its own fp32 outputs)."""
    return Scenario.model_validate({
        **TINY_SCENARIO,
        "name": name,
        "model": {"source": source, "weights": "random", "input_shape": input_shape,
                  "num_classes": 10},
        "data": {"source": "synthetic", **data},
        "budget": {"train_epochs": 0, "finetune_epochs": 0, "batch_size": 32},
        "recipes": recipes, "backends": backends,
    })


def blocks_scenario(factory: str, recipes: dict[str, list[Any]], backends: list[str]) -> Scenario:
    """A fixture model of real_blocks (3×32×32), importable once tests/fixtures is on the
    path."""
    return python_model_scenario(f"python:real_blocks:{factory}", f"blocks-{factory}",
                                 [3, 32, 32], {"train": 64, "calibration": 32, "test": 64},
                                 recipes, backends)


def invoke(*args: str) -> tuple[int, str, str]:
    """``squeezelab ARGS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    from unified.cli import main

    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), out.getvalue(), err.getvalue()
