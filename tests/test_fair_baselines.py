"""Fair baselines: which jobs a scenario adds (matched fp32+ft<N> baselines, fp32 native
baselines, repeats), and how their records become rows (mean ± std, like-for-like ratios,
drops against the matched baseline)."""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest
from tiny import tiny_scenario

from unified.run.aggregate import aggregate
from unified.run.expand import expand, job_scenario, tag
from unified.run.job import Job
from unified.spec.baselines import (
    NATIVE_BASELINE,
    matched_baselines,
    repeat_seed,
    seed_dependent,
    training_epochs,
)

RECIPES: dict[str, list[Any]] = {
    "fp32": [],
    "dynamic": [{"quantize": {"method": "dynamic"}}],
    "static": [{"quantize": {"method": "static"}}],
    "qat": [{"quantize": {"method": "qat"}}],  # budget.finetune_epochs = 1
    "prune": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}],
    "kd": [{"distill": {"student": "builtin:convnet-thin", "epochs": 2}}],
    "agp": [{"prune": {"sparsity": 0.5, "schedule": {"start_epoch": 0, "end_epoch": 3}}}],
}


def test_epochs_beyond_the_reference_and_seed_dependence() -> None:
    scenario = tiny_scenario(RECIPES, ["pytorch"])
    epochs = {name: training_epochs(r, scenario.budget) for name, r in scenario.recipes.items()}
    assert epochs == {"fp32": 0, "dynamic": 0, "static": 0, "qat": 1, "prune": 1, "kd": 2,
                      "agp": 3}
    assert {n for n, r in scenario.recipes.items() if seed_dependent(r, scenario.budget)} == \
        {"static", "qat", "prune", "kd", "agp"}
    assert list(matched_baselines(scenario.recipes, scenario.budget)) == \
        ["fp32+ft1", "fp32+ft2", "fp32+ft3"]
    assert repeat_seed(0, 0) == 0 and len({repeat_seed(0, k) for k in range(5)}) == 5


def test_expand_adds_baselines_and_repeats_where_they_can_run() -> None:
    scenario = tiny_scenario({k: RECIPES[k] for k in ("dynamic", "static", "prune")},
                             ["pytorch", "onnxruntime"], evaluate={"repeats": 3})

    def runnable(job: Job) -> bool:  # onnxruntime cannot prune
        return not (job.backend == "onnxruntime" and job.recipe == "prune")

    jobs = expand(scenario, list(scenario.recipes), ["pytorch", "onnxruntime"], "", runnable)
    rows = [(j.recipe, j.backend) for j in jobs if j.is_row]
    assert rows == [(r, b) for r in ("dynamic", "static", "prune")
                    for b in ("pytorch", "onnxruntime")] + [("fp32+ft1", "pytorch")]
    # no recipe without steps: each backend's fp32 artifacts come from a hidden job
    assert [(j.recipe, j.backend) for j in jobs if j.hidden] == \
        [(NATIVE_BASELINE, "pytorch"), (NATIVE_BASELINE, "onnxruntime")]
    repeats = {(j.recipe, j.backend, j.repeat) for j in jobs if j.repeat}
    assert repeats == {(r, b, k) for k in (1, 2) for r, b in
                       [("static", "pytorch"), ("static", "onnxruntime"), ("prune", "pytorch"),
                        ("fp32+ft1", "pytorch")]}
    repeat = next(j for j in jobs if j.repeat == 2)
    assert job_scenario(scenario, repeat).seed == repeat_seed(scenario.seed, 2) != 0


def _record(recipe: str, backend: str, **fields: Any) -> dict[str, Any]:
    return {"model": "", "recipe": recipe, "backend": backend, "status": "ok",
            "notes": [], **fields}


def _rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    scenario = tiny_scenario({k: RECIPES[k] for k in ("fp32", "dynamic", "prune")},
                             ["pytorch"])

    def tagged(recipe: str, repeat: int = 0, **fields: Any) -> dict[str, Any]:
        return tag(_record(recipe, "pytorch", **fields), job_scenario(scenario, Job(
            recipe, "pytorch", repeat=repeat)), Job(recipe, "pytorch", repeat=repeat))

    rows = [
        tagged("fp32", accuracy=0.95, native_bytes=1000, deploy_bytes=1000),
        tagged("dynamic", accuracy=0.94, native_bytes=400, deploy_bytes=400),
        tagged("prune", accuracy=0.96, native_bytes=1010, deploy_bytes=1010),
        tagged("fp32+ft1", accuracy=0.97, native_bytes=1000, deploy_bytes=1000),
    ]
    auxiliary = [tagged("prune", 1, accuracy=0.95), tagged("prune", 2, accuracy=0.97),
                 tagged("fp32+ft1", 1, accuracy=0.98)]
    return rows, auxiliary


def test_aggregate_folds_repeats_ratios_and_matched_drops() -> None:
    rows, auxiliary = _rows()
    aggregate(rows, auxiliary, {"": 0.95})
    fp32, dynamic, prune, matched = rows
    assert fp32["native_ratio"] == fp32["deploy_ratio"] == 1.0
    assert dynamic["native_ratio"] == dynamic["deploy_ratio"] == 2.5
    assert prune["native_ratio"] == pytest.approx(1000 / 1010)
    assert prune["repeats"] == 3 and prune["accuracy"] == pytest.approx(0.96)
    assert prune["accuracy_std"] == pytest.approx(statistics.stdev([0.96, 0.95, 0.97]))
    assert [s["accuracy"] for s in prune["seeds"]] == [0.96, 0.95, 0.97]
    assert matched["accuracy"] == pytest.approx(0.975) and matched["repeats"] == 2
    # prune trains one epoch: its drop is against fp32+ft1, the old one kept beside it
    assert prune["matched_baseline"] == "fp32+ft1"
    assert prune["accuracy_drop"] == pytest.approx(0.975 - 0.96)
    assert prune["accuracy_drop_vs_reference"] == pytest.approx(0.95 - 0.96)
    assert dynamic["matched_baseline"] is None
    assert dynamic["accuracy_drop"] == dynamic["accuracy_drop_vs_reference"] == \
        pytest.approx(0.01)
    assert dynamic["repeats"] == 1 and dynamic.get("accuracy_std") is None


def test_a_drop_of_exactly_the_limit_is_the_limit() -> None:
    """0.97 - 0.96 in floats is 0.010000000000000009: a max_accuracy_drop of 0.01 must not
    reject it."""
    rows, auxiliary = _rows()
    rows[1]["accuracy"] = 0.96
    aggregate(rows, auxiliary, {"": 0.97})
    assert 0.97 - 0.96 > 0.01  # the float subtraction alone
    assert rows[1]["accuracy_drop"] == rows[1]["accuracy_drop_vs_reference"] == 0.01


def test_aggregate_is_idempotent_on_a_resumed_run() -> None:
    rows, auxiliary = _rows()
    aggregate(rows, auxiliary, {"": 0.95})
    once = copy.deepcopy(rows)
    aggregate(rows, auxiliary, {"": 0.95})
    assert rows == once


def test_a_row_without_its_fp32_artifact_says_why() -> None:
    rows, auxiliary = _rows()
    rows[0]["status"] = "failed"
    aggregate(rows, auxiliary, {"": 0.95})
    assert rows[1]["native_ratio"] is None
    assert any("no fp32 artifact of pytorch" in n for n in rows[1]["notes"])


def test_the_baselines_section_lists_what_each_yardstick_measures() -> None:
    from unified.report.baselines import fp32_rows, matched_rows

    rows, auxiliary = _rows()
    rows.append({**rows[2], "backend": "onnxruntime", "status": "unsupported"})
    aggregate(rows, auxiliary, {"": 0.95})
    ((model, name, status, accuracy, drop, seeds, users),) = matched_rows(rows)
    assert (model, name, status, seeds, users) == ("", "fp32+ft1", "ok", "2", "prune @ pytorch")
    assert accuracy.startswith("0.9750 ± ") and drop.startswith("-0.0250 ± ")
    assert fp32_rows(rows, auxiliary) == [["", "pytorch", "–", "1.0", "1.0", "fp32"]]
