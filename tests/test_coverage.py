"""squeezelab coverage: rows by model × backend and the failure causes grouped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tiny import tiny_scenario

from unified.report.coverage import coverage, markdown
from unified.report.table import results_table, unlabelled_note
from unified.run.results import append_record, new_record

ROOT = Path(__file__).resolve().parents[1]
NNI_CAUSE = ("nni QuantizationSetting.get: AssertionError: Conv2dStaticSamePadding is not "
             "registered, please register setting with QuantizationSetting.register()")


def records() -> list[dict]:
    def row(model: str, recipe: str, backend: str, status: str, **fields: object) -> dict:
        return new_record("zoo", model, recipe, backend, status, **fields)

    return [
        row("lite0", "fp32", "nni", "ok", agreement=1.0, rel_l2=0.0),
        row("lite0", "int8", "nni", "failed",
            reason=f"{NNI_CAUSE} (log: /runs/z/jobs/lite0/int8@nni/worker.log)"),
        row("lite0", "prune", "nni", "failed",
            reason=f"{NNI_CAUSE} (log: /runs/z/jobs/lite0/prune@nni/worker.log)"),
        row("lite0", "int8", "coreml", "approximated", agreement=0.9, notes=["weights only"]),
        row("lite0", "cluster", "nni", "unsupported", reason="NNI 3.0 has no weight clustering"),
        row("resnet", "fp32", "nni", "ok", accuracy=0.9, agreement=1.0),
        row("resnet", "int8", "nni", "timeout", reason="no result after 60 s; worker killed"),
        row("resnet", "int8", "coreml", "ok", accuracy=0.9, agreement=1.0),
    ]


def test_counts_by_model_and_backend_and_causes_grouped_across_jobs() -> None:
    cov = coverage(records())
    assert cov.models == ["lite0", "resnet"] and cov.backends == ["nni", "coreml"]
    lite0_nni = cov.counts[("lite0", "nni")]
    assert (lite0_nni["ok"], lite0_nni["failed"], lite0_nni["unsupported"]) == (1, 2, 1)
    assert cov.counts[("resnet", "nni")]["failed"] == 1  # a timeout is a failure
    nni = [g for g in cov.failures if g.backend == "nni"]
    assert [len(g.rows) for g in nni] == [2, 1]  # the two NNI failures are one cause
    assert nni[0].reason == NNI_CAUSE and nni[0].rows == ["lite0: int8", "lite0: prune"]
    assert nni[1].reason.startswith("timeout: no result after 60 s")
    assert cov.unsupported[0].reason == "NNI 3.0 has no weight clustering"
    # 2 ok of 5 tried on nni (the unsupported row is not counted as tried)
    assert cov.success(cov.total("nni")) == 2 / 5
    text = markdown(cov)
    assert "| lite0 | 1 ok · 1 unsup · 2 failed | 1 ≈ | 1 ok · 1 ≈ · 1 unsup · 2 failed |" \
        in text
    assert "| ok or ≈ of the supported | 40% | 100% | 57% |" in text


def test_the_command_prints_the_table_for_a_run_folder(tmp_path: Path) -> None:
    scenario = tiny_scenario({"fp32": [], "int8": [], "prune": [], "cluster": []},
                             ["nni", "coreml"])
    (tmp_path / "scenario.json").write_text(scenario.model_dump_json())
    for record in records():
        append_record(tmp_path / "results.jsonl", record)
    result = subprocess.run([sys.executable, "-m", "unified.cli", "coverage", str(tmp_path),
                             "--markdown"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "**Failure causes**" in result.stdout and NNI_CAUSE in result.stdout
    assert "/runs/z/jobs" not in result.stdout  # per-job log paths are not part of a cause
    bad = subprocess.run([sys.executable, "-m", "unified.cli", "coverage", str(tmp_path / "x")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr


def test_unlabelled_models_are_said_in_the_table() -> None:
    rows = records()
    assert unlabelled_note(rows) is not None and "(lite0)" in str(unlabelled_note(rows))
    assert results_table(rows).caption == unlabelled_note(rows)
    labelled = [r for r in rows if r["model"] == "resnet"]
    assert unlabelled_note(labelled) is None
    assert json.dumps(rows)  # records stay plain JSON
