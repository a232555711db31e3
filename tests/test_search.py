"""Searchable values and ``squeezelab search``: the format, the space planned on the real
adapters, constraints and the Pareto front, and whole searches on the tiny model with the
real toolkits (onnxruntime, PyTorch), including one killed with SIGKILL and resumed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import TINY_SCENARIO, invoke

from adapters.registry import get_adapter
from unified.load.scenario_file import load_search_scenario
from unified.search.history import pareto
from unified.search.objectives import METRICS, constraints, parse_target
from unified.search.space import plan_space
from unified.spec.errors import SqueezelabError
from unified.spec.scenario import SelectSpec
from unified.spec.searchable import Range, parse_domain, setting_name

ROOT = Path(__file__).resolve().parents[1]

QUANT = [{"quantize": {"method": {"choice": ["static", "dynamic"]},
                       "weights": {"choice": [4, 8]}}}]
SPARSE = [{"prune": {"sparsity": {"range": [0.2, 0.8], "step": 0.3},
                     "structure": "unstructured"}},
          {"finetune": {"epochs": 1}}]


def write_scenario(folder: Path, recipes: dict[str, Any], backends: list[str],
                   select: dict[str, Any] | None = None) -> Path:
    data = {"version": 1, **TINY_SCENARIO, "name": "tinysearch", "backends": backends,
            "recipes": recipes,
            "select": select or {"max_accuracy_drop": 0.02, "minimize": ["size"]}}
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the format ------------------------------------------------------------------------------


def test_a_range_with_a_step_lists_its_points_and_snaps_to_them() -> None:
    ints = parse_domain({"range": [2, 8], "step": 2})
    assert isinstance(ints, Range) and ints.points() == [2, 4, 6, 8] and ints.is_int
    floats = parse_domain({"range": [0.2, 0.8], "step": 0.3})
    assert isinstance(floats, Range) and floats.points() == [0.2, 0.5, 0.8]
    assert floats.snap(0.61) == 0.5
    free = parse_domain({"range": [0.3, 0.9]})
    assert isinstance(free, Range) and free.points() == [] and free.snap(0.512345) == 0.5123
    assert free.test_values() == [0.3, 0.6, 0.9]
    with pytest.raises(ValueError, match="low < high"):
        parse_domain({"range": [0.9, 0.3]})


def test_a_setting_is_named_by_its_values() -> None:
    assert setting_name("quant", {"method": "static", "weights": 4}) == \
        "quant.method-static.weights-4"
    assert setting_name("fp32", {}) == "fp32"


def test_the_base_scenario_takes_each_first_value(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"fp32": [], "quant": QUANT, "sparse": SPARSE},
                          ["onnxruntime", "pytorch"])
    search = load_search_scenario(path)
    assert [p.name for p in search.params] == ["method", "weights", "sparsity"]
    quant = search.scenario.recipes["quant"].canonical()
    assert "static" in json.dumps(quant) and "dynamic" not in json.dumps(quant)
    assert search.spaces["fp32"].params == ()
    assert search.grid_size() == 1 + 4 + 3


def test_the_plan_offers_each_backend_only_what_it_supports(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {
        "fp32": [], "quant": QUANT, "sparse": SPARSE,
        "palettize": [{"cluster": {"bits": {"choice": [2, 4, 8]}}}]},
        ["onnxruntime", "pytorch", "coreml"])
    plan = plan_space(load_search_scenario(path))
    offered = {(c.recipe, c.backend) for c in plan.candidates}
    excluded = {(r, b) for r, b, _ in plan.excluded}
    # onnxruntime cannot prune, PyTorch cannot cluster: never offered, and said why
    assert ("sparse", "onnxruntime") in excluded and ("palettize", "pytorch") in excluded
    assert ("sparse", "pytorch") in offered and ("palettize", "coreml") in offered
    assert plan.candidate("quant", "pytorch").allowed["weights"] == (8,)  # int8 only
    assert "weights" in plan.candidate("quant", "pytorch").unsupported
    # every setting the search may sample plans as supported on its backend, and the rows
    # a plain run of every combination would mark unsupported are exactly the ones left out
    settings = list(plan.settings())
    assert len(settings) == plan.size() and len({s.key for s in settings}) == len(settings)
    search = plan.search
    for setting in settings:
        recipe = search.recipe(setting.recipe, setting.as_dict())
        assert get_adapter(setting.backend).plan(recipe).status != "unsupported", setting
    for recipe, space in search.spaces.items():
        for backend in search.scenario.backends:
            for values in space.combinations():
                verdict = get_adapter(backend).plan(search.recipe(recipe, values)).status
                name = plan.setting(recipe, backend, values).key
                assert (verdict != "unsupported") == any(s.key == name for s in settings), \
                    (name, verdict)


def test_validate_says_what_each_backend_takes(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, {"fp32": [], "quant": QUANT, "sparse": SPARSE},
                          ["onnxruntime", "pytorch"])
    code, out, err = invoke("validate", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert "valid search scenario 'tinysearch'" in lines[0] and "3 searchable" in lines[0]
    quant = lines.index("  quant: method {static, dynamic}, weights {4, 8}")
    assert lines[quant + 2].startswith("    @ pytorch: ") and "weights 4 unsupported (" in \
        lines[quant + 2]
    sparse = lines.index("  sparse: sparsity [0.2, 0.8] step 0.3")
    assert lines[sparse + 1].startswith("    @ onnxruntime: unsupported (")
    code, out, err = invoke("run", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and "use `squeezelab search" in err and not (tmp_path / "out").exists()


def test_constraints_follow_optunas_sign() -> None:
    select = SelectSpec(max_accuracy_drop=0.01, min_agreement=0.95, minimize=["size"])
    met = constraints({"accuracy_drop": 0.004, "agreement": 0.97}, select)
    assert met["max_accuracy_drop"] == pytest.approx(-0.006)
    assert met["min_agreement"] < 0
    missed = constraints({"accuracy_drop": 0.03}, select)
    assert missed["max_accuracy_drop"] == pytest.approx(0.02)
    assert missed["min_agreement"] == 1.0  # not measured: violated


def test_a_target_names_a_metric_and_a_figure() -> None:
    target = parse_target("size=8")
    assert target.met({"size_ratio": 8.2}) and not target.met({"size_ratio": 7.9})
    native = parse_target("native_size=6")  # the toolkit's artifact; its ONNX when none
    assert native.met({"size_ratio": 1.0, "native_ratio": 6.5})
    assert not native.met({"size_ratio": 7.0, "native_ratio": 1.0})
    assert native.met({"size_ratio": 6.1, "native_ratio": None})
    assert parse_target("accuracy_drop=0.005").met({"accuracy_drop": 0.004})
    with pytest.raises(SqueezelabError, match="METRIC=VALUE"):
        parse_target("bytes=3")


def _entry(number: int, size: float, drop: float, ok: bool = True) -> dict[str, Any]:
    return {"number": number, "feasible": ok, "objectives": {"size": size},
            "row": {"accuracy_drop": drop}}


def test_the_pareto_front_trades_size_against_drop() -> None:
    entries = [_entry(0, 4.0, 0.001), _entry(1, 7.0, 0.008), _entry(2, 3.0, 0.005),
               _entry(3, 9.0, 0.02, ok=False), _entry(4, 7.0, 0.009)]
    assert pareto(entries, [METRICS["size"]]) == [0, 1]


# --- whole searches on real toolkits ---------------------------------------------------------


def _history(out: Path) -> dict[str, Any]:
    history: dict[str, Any] = json.loads((out / "trials.json").read_text())
    return history


def _evaluated(history: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in history["trials"] if e["row"] is not None]


@pytest.mark.slow
def test_a_search_across_two_toolkits(tmp_path: Path, cache_dir: Path,
                                      tiny_reference: Any) -> None:
    path = write_scenario(tmp_path, {"fp32": [], "quant": QUANT, "sparse": SPARSE},
                          ["onnxruntime", "pytorch"])
    out = tmp_path / "out"
    args = ["search", str(path), "--out", str(out), "--cache-dir", str(cache_dir)]
    code, stdout, err = invoke(*args, "--trials", "8", "--until-met", "--target", "size=2.5")
    history = _history(out)
    done = _evaluated(history)
    meeting = [e for e in done if e["meets_targets"]]
    # --until-met: stops at the first trial that is feasible and reaches the target
    assert (code == 0) == bool(meeting), stdout + err
    if meeting:
        assert done[-1] is meeting[0] and history["first_meeting_targets"] == done[-1]["number"]
    else:
        assert len(done) == 8
    before = {e["number"] for e in done}

    code, stdout, err = invoke(*args, "--trials", "6")
    assert code == 0, stdout + err
    history = _history(out)
    done = _evaluated(history)
    assert len(done) == max(6, len(before)) and before <= {e["number"] for e in done}
    keys = [f"{e['name']}@{e['backend']}" for e in done]
    assert len(set(keys)) == len(keys), "a setting evaluated twice"
    rows = {(r["recipe"], r["backend"]): r for r in
            map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    for entry in done:  # every trial is an ordinary row of the run folder
        row = rows[(entry["name"], entry["backend"])]
        assert row["job_key"] == entry["row"]["job_key"]
        drop = row["accuracy_drop"]
        assert entry["feasible"] == (drop is not None and drop <= 0.02), entry
    feasible = [e for e in done if e["feasible"]]
    winner = next(e for e in done if e["number"] == history["winner"])
    assert winner["objectives"]["size"] == max(e["objectives"]["size"] for e in feasible)
    assert "size" in stdout and f"trial {winner['number']}" in stdout
    winner_file = yaml.safe_load((out / "winner.yaml").read_text())
    assert list(winner_file["recipes"]) == [winner["name"]]
    assert winner_file["backends"] == [winner["backend"]]

    code, stdout, err = invoke("report", str(out))
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert "<h2>Search</h2>" in page and "objective vs trial" in page
    assert "### Search" in (out / "summary.md").read_text()
    code, stdout, err = invoke("select", str(out))
    assert code == 0 and winner["name"] in stdout, stdout + err


def _count_complete(db: Path) -> int:
    if not db.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return int(con.execute("select count(*) from trials where state = 'COMPLETE'")
                       .fetchone()[0])
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0


def _job_stamps(out: Path) -> dict[str, int]:
    """The jobs with a row in results.jsonl (finished): when their record was written."""
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {name: (out / "jobs" / name / "record.json").stat().st_mtime_ns
            for name in (f"{r['recipe']}@{r['backend']}" for r in rows)}


@pytest.mark.slow
def test_a_search_killed_with_sigkill_resumes_without_recomputing(
        tmp_path: Path, cache_dir: Path, tiny_reference: Any) -> None:
    granularity = {"choice": ["per_channel", "per_tensor"]}
    quant = [{"quantize": {**QUANT[0]["quantize"], "granularity": granularity}}]
    path = write_scenario(tmp_path, {"fp32": [], "quant": quant}, ["onnxruntime"])
    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(cache_dir / "reference", cache / "reference")  # no jobs cached
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "unified.cli", "search", str(path), "--trials", "5",
               "--out", str(out), "--cache-dir", str(cache)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while _count_complete(out / "study.db") < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in 10 minutes"
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "trials.json").exists()  # killed before its end
    time.sleep(1.5)  # a worker busy at the kill notices its driver is gone and stops
    stamps = _job_stamps(out)
    assert len(stamps) >= 2

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    history = _history(out)
    done = _evaluated(history)
    assert len(done) == 5, result.stdout
    keys = [f"{e['name']}@{e['backend']}" for e in done]
    assert len(set(keys)) == len(keys), "the resumed study evaluated a setting twice"
    after = _job_stamps(out)
    for job, stamp in stamps.items():  # a job finished before the kill did not run again
        assert after[job] == stamp, job
    assert len(after) == 5 and len(list((out / "jobs").glob("*/record.json"))) == 5
    assert not any(e["row"].get("cached") for e in done), "a fresh cache: nothing cached"


def test_a_plain_range_field_outside_recipes_is_not_searchable() -> None:
    from unified.spec.searchable import find_markers

    document = {"data": {"preprocess": {"range": [-1, 1]}},
                "recipes": {"q": [{"quantize": {"weights": {"range": [4, 8], "step": 4}}}]},
                "budget": {"lr": {"choice": [0.1, 0.01]}}}
    assert list(find_markers(document)) == [("recipes", "q", 0, "quantize", "weights"),
                                            ("budget", "lr")]
