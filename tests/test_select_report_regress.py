"""select / report / baseline / regress on a real (tiny) run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import yaml
from tiny import TINY_SCENARIO

from unified.report.html import RunFolder, markdown_summary
from unified.report.regress import compare, make_baseline
from unified.report.select import dominates, pareto_front, recommend
from unified.spec.scenario import SelectSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory,
             cache_dir: Path) -> tuple[Path, Path]:
    """A finished run of a small scenario file: (scenario file, run folder)."""
    folder = tmp_path_factory.mktemp("tiny-run")
    scenario = {**TINY_SCENARIO, "backends": ["onnxruntime", "pytorch"],
                "recipes": {"fp32": [], "int8": [{"quantize": {"method": "static"}}],
                            "pruned": [{"prune": {"sparsity": 0.5}}]},
                "select": {"max_accuracy_drop": 0.05, "minimize": ["size", "latency"]}}
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run = squeezelab("run", str(path), "--out", str(folder / "run"), "--cache-dir",
                     str(cache_dir))
    assert run.returncode == 0, run.stderr
    return path, folder / "run"


def squeezelab(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unified.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_select_names_winners_front_and_every_backend(tiny_run: tuple[Path, Path]) -> None:
    run = RunFolder(tiny_run[1])
    rec = recommend(run.records, run.scenario.select)
    assert set(rec.winners) == {"size", "latency"}
    assert rec.winners["size"]["recipe"] == "int8"  # int8 is the smallest ONNX
    assert "pruned @ onnxruntime" in rec.excluded  # unsupported rows are excluded
    assert set(rec.backend_verdicts) == {"onnxruntime", "pytorch"}
    for row in rec.pareto:  # nobody on the front is dominated (latency ties by interval)
        assert not any(dominates(o, row) for o in rec.feasible if o is not row)
    result = squeezelab("select", str(tiny_run[1]))
    assert result.returncode == 0 and "best size:" in result.stdout
    assert "pytorch:" in result.stdout and "onnxruntime:" in result.stdout


def test_constraints_exclude_with_reason() -> None:
    rows = [
        {"recipe": "a", "backend": "x", "status": "ok", "accuracy": 0.9, "accuracy_drop": 0.05,
         "agreement": 0.9, "deploy_ratio": 16.0, "latency_ms_p50": 1.0},
        {"recipe": "b", "backend": "y", "status": "ok", "accuracy": 0.95, "accuracy_drop": 0.0,
         "agreement": 1.0, "deploy_ratio": 4.0, "latency_ms_p50": 2.0},
        {"recipe": "c", "backend": "y", "status": "ok", "accuracy": 0.94, "accuracy_drop": 0.01,
         "agreement": 1.0, "deploy_ratio": 3.2, "latency_ms_p50": 3.0},
    ]
    rec = recommend(rows, SelectSpec(max_accuracy_drop=0.01, minimize=("size",)))
    assert rec.winners["size"]["recipe"] == "b"
    assert "accuracy drop 0.05 violates the limit 0.01" in rec.excluded["a @ x"]
    assert rec.backend_verdicts["x"].startswith("excluded")
    assert [r["recipe"] for r in pareto_front(rows)] == ["a", "b"]  # c is dominated by b


def test_speedups_whose_intervals_overlap_are_ties() -> None:
    def row(recipe: str, p50: float, ci: tuple[float, float], accuracy: float,
            size: int) -> dict[str, Any]:
        return {"model": "m", "recipe": recipe, "backend": "b", "status": "ok",
                "accuracy": accuracy, "accuracy_drop": 0.0, "deploy_ratio": 40 / size,
                "latency_ms_p50": p50, "speedup": sum(ci) / 2, "speedup_ci_low": ci[0],
                "speedup_ci_high": ci[1]}

    fast = row("fast", 0.95, (1.9, 2.1), 0.90, 10)
    accurate = row("accurate", 1.00, (2.0, 2.2), 0.95, 20)  # overlaps fast: a tie
    slow = row("slow", 2.00, (0.95, 1.05), 0.99, 40)
    rec = recommend([fast, accurate, slow], SelectSpec(minimize=("latency",)))
    assert rec.winners["latency"] is accurate  # tied with fast, more accurate
    assert rec.ties["latency"] == [fast]
    assert "tied (speedup intervals overlap" in rec.lines()[0]
    # fast is smaller, accurate more accurate, slow most accurate: a tie on latency
    # dominates nobody, so all three are on the front; without the intervals, slow is
    # only beaten on latency and size, never on accuracy, and stays too
    assert pareto_front([fast, accurate, slow]) == [fast, accurate, slow]
    worse = row("worse", 0.97, (1.95, 2.05), 0.90, 30)  # ties fast, bigger, same accuracy
    assert dominates(fast, worse) and not dominates(worse, fast)
    assert worse not in pareto_front([fast, worse])


def test_report_is_self_contained_html(tiny_run: tuple[Path, Path]) -> None:
    result = squeezelab("report", str(tiny_run[1]))
    assert result.returncode == 0, result.stderr
    page = (tiny_run[1] / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page  # opens without network
    for text in ("Capability matrix", "Shared budget", "Toolkit versions", "int8", "Pareto"):
        assert text in page
    summary = (tiny_run[1] / "summary.md").read_text()
    assert "| int8 | onnxruntime | ok |" in summary
    assert markdown_summary(RunFolder(tiny_run[1])) == summary


def test_regress_same_code_passes_better_baseline_fails(tiny_run: tuple[Path, Path],
                                                        tmp_path: Path,
                                                        cache_dir: Path) -> None:
    scenario_file, run_dir = tiny_run
    baseline = tmp_path / "baseline.json"
    assert squeezelab("baseline", str(run_dir), "-o", str(baseline)).returncode == 0
    same = squeezelab("regress", str(scenario_file), "--baseline", str(baseline),
                      "--cache-dir", str(cache_dir), "--out", str(tmp_path / "r1"),
                      "--junit", str(tmp_path / "j1.xml"))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "0 regression(s)" in same.stdout

    data = json.loads(baseline.read_text())
    data["jobs"]["int8@onnxruntime"]["accuracy"] += 0.05  # the baseline was better
    data["jobs"]["ghost@pytorch"] = dict(data["jobs"]["fp32@pytorch"])
    baseline.write_text(json.dumps(data))
    worse = squeezelab("regress", str(scenario_file), "--baseline", str(baseline),
                       "--cache-dir", str(cache_dir), "--out", str(tmp_path / "r2"),
                       "--junit", str(tmp_path / "j2.xml"))
    assert worse.returncode == 1
    assert "REGRESSION: int8@onnxruntime: accuracy:" in worse.stdout
    assert "REGRESSION: ghost@pytorch: job: vanished" in worse.stdout
    suite = ET.parse(tmp_path / "j2.xml").getroot()
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"int8@onnxruntime", "ghost@pytorch"}


def test_compare_tolerances() -> None:
    base = make_baseline([{"recipe": "r", "backend": "b", "status": "ok", "accuracy": 0.9,
                           "size_ratio": 4.0, "latency_ms_p50": 1.0}], "s")
    now = [{"recipe": "r", "backend": "b", "status": "ok", "accuracy": 0.895,
            "size_ratio": 3.9, "latency_ms_p50": 1.2}]
    assert not [f for f in compare(now, base, {"accuracy": 0.01, "size_ratio": 0.05,
                                               "latency": 0.3}) if f.regression]
    found = compare(now, base, {"accuracy": 0.001, "latency": 0.1})
    assert {f.metric for f in found if f.regression} == {"accuracy", "latency"}
    broken = [{**now[0], "status": "failed", "reason": "boom"}]
    (finding,) = compare(broken, base, {})
    assert finding.regression and finding.metric == "status"


def test_several_models_report_select_and_regress(tmp_path: Path, cache_dir: Path) -> None:
    scenario = {
        "name": "two", "seed": 0,
        "models": {
            "tiny": {"source": "builtin:convnet-tiny", "input_shape": [1, 8, 8]},
            "thin": {"source": "builtin:convnet-thin", "input_shape": [1, 8, 8],
                     "recipes": ["fp32"]},
        },
        "data": TINY_SCENARIO["data"], "budget": TINY_SCENARIO["budget"],
        "evaluate": TINY_SCENARIO["evaluate"], "backends": ["onnxruntime"],
        "recipes": {"fp32": [], "int8": [{"quantize": {"method": "static"}}]},
    }
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))  # the order of models matters
    out = tmp_path / "run"
    run = squeezelab("run", str(path), "--out", str(out), "--cache-dir", str(cache_dir))
    assert run.returncode == 0, run.stderr
    records = RunFolder(out).records
    assert [(r["model"], r["recipe"]) for r in records] == [
        ("tiny", "fp32"), ("tiny", "int8"), ("thin", "fp32")]
    assert squeezelab("report", str(out)).returncode == 0
    assert "tiny: int8 @ onnxruntime" in squeezelab("select", str(out)).stdout
    baseline = tmp_path / "b.json"
    assert squeezelab("baseline", str(out), "-o", str(baseline)).returncode == 0
    assert set(json.loads(baseline.read_text())["jobs"]) == {
        "tiny/fp32@onnxruntime", "tiny/int8@onnxruntime", "thin/fp32@onnxruntime"}


def test_epoch_tables_put_each_backend_beside_the_schedule() -> None:
    from unified.context import EpochEntry
    from unified.report.epoch_table import epoch_tables, markdown

    def record(backend: str, log: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": "m", "recipe": "agp", "backend": backend, "epoch_log": log}

    def entry(step: int, kind: str, epoch: int, sparsity: float,
              target: float | None) -> dict[str, Any]:
        return EpochEntry(step, kind, epoch, sparsity, target).as_record()

    records = [
        # one prune step, so one table; the finetune step after it has no target
        record("pytorch", [entry(1, "prune", 0, 0.05, 0.05), entry(1, "prune", 1, 0.479, 0.48)]),
        record("nni", [entry(1, "prune", 0, 0.0, 0.05), entry(1, "prune", 1, 0.48, 0.48),
                       entry(2, "finetune", 0, 0.48, None)]),
        record("onnxruntime", []),
    ]
    (table,) = epoch_tables(records)
    assert table.epochs == [0, 1] and table.step is None
    assert table.deviation("pytorch") == pytest.approx(0.001)
    assert table.deviation("nni") == pytest.approx(0.05)
    assert [row[0] for row in table.rows()] == ["Distiller target", "pytorch", "nni"]
    text = "\n".join(markdown([table]))
    assert "| nni | 0.0000 | 0.4800 | 0.0500 |" in text


def test_concurrent_prune_steps_get_one_epoch_table_each() -> None:
    from unified.context import EpochEntry
    from unified.report.epoch_table import epoch_tables

    log = [EpochEntry(step, "prune", epoch, 0.1 * step + 0.01 * epoch,
                      0.1 * step + 0.012 * epoch).as_record()
           for epoch in range(3) for step in (1, 2)]
    tables = epoch_tables([{"model": "m", "recipe": "agp", "backend": "tfmot", "epoch_log": log}])
    assert [(t.step, t.epochs) for t in tables] == [(1, [0, 1, 2]), (2, [0, 1, 2])]
    assert tables[1].target[2] == pytest.approx(0.224)
    assert tables[1].deviation("tfmot") == pytest.approx(0.004)
    assert tables[0].title == "m / agp, step 1"


def test_regress_spread_widens_the_accuracy_tolerance_of_repeated_rows() -> None:
    row = {"recipe": "r", "backend": "b", "status": "ok", "accuracy": 0.90,
           "accuracy_std": 0.01}
    base = make_baseline([row], "s")
    now = [{**row, "accuracy": 0.88, "accuracy_std": 0.01}]  # 0.02 lower: 1.4 combined stds
    assert [f.metric for f in compare(now, base, {"accuracy": 0.01}) if f.regression] == \
        ["accuracy"]
    assert not [f for f in compare(now, base, {"accuracy": 0.01}, spread=2.0) if f.regression]
    found = [f for f in compare(now, base, {"accuracy": 0.01}, spread=1.0) if f.regression]
    assert [f.metric for f in found] == ["accuracy"]  # 0.02 > 1 × 0.0141


def test_select_ties_accuracies_inside_their_spread_and_never_picks_a_yardstick() -> None:
    def row(recipe: str, accuracy: float, std: float | None, ratio: float,
            role: str = "compressed") -> dict[str, Any]:
        return {"model": "m", "recipe": recipe, "backend": "b", "status": "ok", "role": role,
                "accuracy": accuracy, "accuracy_std": std, "accuracy_drop": 0.96 - accuracy,
                "deploy_ratio": ratio, "latency_ms_p50": 1.0}

    rows = [row("fp32", 0.96, None, 1.0, "fp32"), row("fp32+ft1", 0.97, None, 1.0, "baseline"),
            row("small", 0.950, 0.004, 8.0), row("accurate", 0.955, 0.004, 4.0),
            row("far", 0.90, 0.001, 2.0)]
    rec = recommend(rows, SelectSpec(minimize=("accuracy_drop", "size")))
    # small and accurate tie on accuracy (±1 std bars overlap): the smaller wins
    assert rec.winners["accuracy_drop"]["recipe"] == "small"
    assert [r["recipe"] for r in rec.ties["accuracy_drop"]] == ["accurate"]
    assert rec.winners["size"]["recipe"] == "small"
    assert "8.00× smaller than its toolkit's fp32" in rec.lines()[1]
    assert all(r["recipe"] != "fp32+ft1" for r in rec.pareto)
