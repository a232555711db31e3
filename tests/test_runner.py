"""The runner: worker processes, containment of crashes and hangs, cache, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny import tiny_scenario

from unified.run.results import LATENCY_FIELDS, RECORD_FIELDS, read_records, rewrite_records
from unified.run.runner import Runner, RunOptions

MISBEHAVING = "python:misbehaving_models:"
FIXTURES = Path(__file__).parent / "fixtures"


def by_recipe(records: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["recipe"], r["backend"]): r for r in records}


@pytest.mark.slow
def test_crash_hang_and_error_are_rows_and_other_jobs_finish(
        tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the workers import the misbehaving factories from here (a user's python: source)
    monkeypatch.setenv("PYTHONPATH", str(FIXTURES))
    scenario = tiny_scenario(
        {
            "fp32": [],
            "killed": [{"distill": {"student": MISBEHAVING + "killed_student", "epochs": 1}}],
            "hangs": [{"distill": {"student": MISBEHAVING + "hanging_student", "epochs": 1}}],
            "raises": [{"distill": {"student": MISBEHAVING + "raising_student", "epochs": 1}}],
            "int8": [{"quantize": {"method": "static"}}],
        },
        ["pytorch", "onnxruntime"],
        evaluate={"latency": {"warmup": 1, "runs": 3}, "timeout": 60},
    )
    out = tmp_path / "run"
    records = by_recipe(Runner(scenario, RunOptions(out=out, cache_dir=cache_dir, jobs=2)).run())
    assert len(records) == 11  # 5 recipes × 2 backends, and the distillations' fp32+ft1
    assert records[("killed", "pytorch")]["status"] == "failed"
    assert "SIGKILL" in records[("killed", "pytorch")]["reason"]
    assert records[("hangs", "pytorch")]["status"] == "timeout"
    assert records[("raises", "pytorch")]["status"] == "failed"
    assert "exploded on purpose" in records[("raises", "pytorch")]["reason"]
    # onnxruntime cannot distill: planned, never started
    assert records[("killed", "onnxruntime")]["status"] == "unsupported"
    for key in [("fp32", "pytorch"), ("fp32", "onnxruntime"), ("int8", "pytorch"),
                ("int8", "onnxruntime"), ("fp32+ft1", "pytorch")]:
        assert records[key]["status"] == "ok", records[key]
    # every row is in results.jsonl, with every contract field present
    stored = read_records(out / "results.jsonl")
    assert len(stored) == 11
    assert all(set(RECORD_FIELDS) <= set(r) for r in stored)
    assert (out / "results.csv").read_text().count("\n") == 12


@pytest.mark.slow
def test_second_run_comes_from_cache_and_resume_skips_done_jobs(tmp_path: Path) -> None:
    scenario = tiny_scenario(
        {"fp32": [], "int8": [{"quantize": {"method": "static"}}]}, ["onnxruntime"])
    cache_dir = tmp_path / "cache"  # its own cache: other tests may have run these jobs
    first = Runner(scenario, RunOptions(out=tmp_path / "a", cache_dir=cache_dir)).run()
    assert all(not r.get("cached") for r in first)

    second = Runner(scenario, RunOptions(out=tmp_path / "b", cache_dir=cache_dir)).run()
    assert all(r.get("cached") for r in second)
    # no worker started: no job log, no worker log, no job given to an executor
    assert not list((tmp_path / "b").glob("jobs/*/worker.log"))
    assert not (tmp_path / "b" / "workers").exists()
    timings = json.loads((tmp_path / "b" / "timings.json").read_text())
    assert timings["worker_starts"] == []
    assert (tmp_path / "b" / "jobs" / "int8@onnxruntime" / "artifacts").is_dir()
    # latency is never cached: the second run timed every row again, in its own pass
    assert all(r["latency_ms_p50"] > 0 and r["speedup"] > 0 for r in second)
    assert [r["latency_ms_p50"] for r in second] != [r["latency_ms_p50"] for r in first]
    strip = ("cached", *LATENCY_FIELDS)
    assert [{k: v for k, v in r.items() if k not in strip} for r in first] == \
           [{k: v for k, v in r.items() if k not in strip} for r in second]

    # resume into the same folder without the cache: nothing is rerun or duplicated
    again = Runner(scenario, RunOptions(out=tmp_path / "a", cache_dir=cache_dir,
                                        use_cache=False)).run()
    assert len(again) == 2
    assert len(read_records(tmp_path / "a" / "results.jsonl")) == 2


def test_unavailable_or_unsupported_rows_need_no_worker(tmp_path: Path, cache_dir: Path) -> None:
    scenario = tiny_scenario({"prune": [{"prune": {"sparsity": 0.5}}]}, ["onnxruntime"])
    (record,) = Runner(scenario, RunOptions(out=tmp_path, cache_dir=cache_dir)).run()
    assert record["status"] == "unsupported" and record["reason"]
    assert not list(tmp_path.glob("jobs/*"))
    assert json.loads((tmp_path / "results.jsonl").read_text())["status"] == "unsupported"


def test_a_cache_that_cannot_be_written_costs_no_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import errno
    import os
    import shutil

    from unified.run import runner

    real = shutil.copy2

    def full_disk(src: Path, dst: Path, *args: Any, **kwargs: Any) -> Any:
        # a file of a cache entry being built, in a dot-folder of a dot-folder under jobs
        if "jobs" in Path(dst).parts and Path(dst).parent.parent.name.startswith("."):
            raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))
        return real(src, dst, *args, **kwargs)

    def other_disk(src: Path, dst: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(src), None, str(dst))

    # the cache on another, full disk: no hard link, and the copy finds no space
    monkeypatch.setattr(os, "link", other_disk)
    monkeypatch.setattr(runner.shutil, "copy2", full_disk)
    scenario = tiny_scenario({"fp32": []}, ["onnxruntime"])
    (record,) = Runner(scenario, RunOptions(out=tmp_path / "run",
                                            cache_dir=tmp_path / "cache")).run()
    assert record["status"] == "ok"
    assert len(read_records(tmp_path / "run" / "results.jsonl")) == 1
    jobs = tmp_path / "cache" / "jobs"
    assert not jobs.exists() or not list(jobs.iterdir())  # nothing half-written
    err = capsys.readouterr().err
    assert "fp32 @ onnxruntime not stored in the cache" in err
    assert err.rstrip().endswith("No space left on device")


WARM_RECIPES = {
    "pytorch": ({"int8": [{"quantize": {"method": "static"}}]},
                {"prune": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}],
                 "qat": [{"quantize": {"method": "qat"}}]}),
    "tfmot": ({"prune": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}]},
              {"int8": [{"quantize": {"method": "static"}}],
               "cluster": [{"cluster": {"clusters": 8}}]}),
    "nni": ({"prune": [{"prune": {"sparsity": 0.5, "structure": "channel"}},
                       {"finetune": {"epochs": 1}}]},
            {"int8": [{"quantize": {"method": "static"}}],
             "qat": [{"quantize": {"method": "qat"}}]}),
    "coreml": ({"palettize": [{"cluster": {"bits": 4}}]},
               {"int8": [{"quantize": {"method": "static", "activations": None}}],
                "prune": [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}]}),
}
DETERMINISTIC = ("status", "accuracy", "agreement", "onnx_bytes", "native_bytes", "gzip_bytes",
                 "sparsity", "max_distinct_values", "int8_fraction", "ort_ops")


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(WARM_RECIPES))
def test_a_warm_worker_gives_a_job_the_same_record_after_other_jobs(
        backend: str, tmp_path: Path, tiny_reference: Any) -> None:
    """The first job of a fresh worker and the same job after others in that worker."""
    from unified.run.executor import Task, worker_env
    from unified.run.job import Job, write_json
    from unified.run.local import WarmWorker

    target, others = WARM_RECIPES[backend]
    scenario = tiny_scenario({**target, **others}, [backend])
    (name,) = target

    def task(recipe: str, folder: Path) -> Task:
        folder.mkdir(parents=True)
        write_json(folder / "job.json", {"scenario": scenario.model_dump(mode="json"),
                                         "recipe": recipe, "backend": backend,
                                         "reference": str(tiny_reference.folder),
                                         "torch_threads": 1})
        return Task(Job(recipe, backend), recipe, folder, 600, 1)

    worker = WarmWorker(backend, worker_env(backend, 1), tmp_path / "worker.log")
    worker.wait_ready(600)
    order = [(name, tmp_path / "first"), *[(r, tmp_path / r) for r in others],
             (name, tmp_path / "again")]
    try:
        for recipe, folder in order:
            outcome = worker.run(task(recipe, folder))
            assert outcome.ended == "exited" and outcome.code == 0, \
                (folder / "worker.log").read_text()[-2000:]
        assert worker.proc is not None and worker.proc.poll() is None  # one process for all
    finally:
        worker.close()
    first, again = (json.loads((tmp_path / f / "record.json").read_text())
                    for f in ("first", "again"))
    assert first["status"] in ("ok", "approximated")
    assert {k: first[k] for k in DETERMINISTIC} == {k: again[k] for k in DETERMINISTIC}


def test_in_a_log_each_job_is_one_line_and_the_table_fits_in_120_columns(
        tmp_path: Path, cache_dir: Path) -> None:
    import subprocess
    import sys

    import yaml
    from tiny import TINY_SCENARIO

    scenario = {**TINY_SCENARIO, "backends": ["onnxruntime"],
                "recipes": {"fp32": [], "int8-dynamic": [{"quantize": {"method": "dynamic"}}],
                            "prune": [{"prune": {"sparsity": 0.5}}]}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(scenario))
    result = subprocess.run(  # stdout is a pipe: what a CI log gets
        [sys.executable, "-m", "unified.cli", "run", str(path), "--out", str(tmp_path / "run"),
         "--cache-dir", str(cache_dir)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # nothing redrawn
    done = [line for line in lines if line.startswith("[")]
    assert [line[:6] for line in done] == ["[1/3] ", "[2/3] ", "[3/3] "]
    assert any("prune @ onnxruntime: unsupported" in line for line in done)
    assert max(len(line) for line in lines) <= 120
    notes = "\n".join(lines[lines.index("reasons and notes:") + 1:])
    assert "prune @ onnxruntime: step 1 (prune): onnxruntime has no pruning" in notes, notes


def test_a_stored_job_shares_its_files_with_the_cache_on_one_disk(tmp_path: Path) -> None:
    """A job's artifacts and their cache entry are one copy on disk (hard links)."""
    scenario = tiny_scenario({"fp32": []}, ["onnxruntime"])
    (record,) = Runner(scenario, RunOptions(out=tmp_path / "run",
                                            cache_dir=tmp_path / "cache")).run()
    assert record["status"] == "ok"
    produced = tmp_path / "run" / "jobs" / "fp32@onnxruntime" / "artifacts" / "model.onnx"
    (stored,) = (tmp_path / "cache" / "jobs").glob("*/artifacts/model.onnx")
    assert produced.stat().st_ino == stored.stat().st_ino
    assert produced.stat().st_nlink == 2


def test_slices_run_into_one_folder_add_up(tmp_path: Path) -> None:
    """--recipe / --backend slices into one --out keep each other's rows; running a slice
    again replaces only its own rows."""
    scenario = tiny_scenario({"fp32": [], "int8": [{"quantize": {"method": "dynamic"}}]},
                             ["onnxruntime"])
    out, cache = tmp_path / "run", tmp_path / "cache"
    Runner(scenario, RunOptions(out=out, cache_dir=cache, recipes=("fp32",))).run()
    records = Runner(scenario, RunOptions(out=out, cache_dir=cache, recipes=("int8",))).run()
    assert sorted(r["recipe"] for r in records) == ["fp32", "int8"]
    assert sorted(r["recipe"] for r in read_records(out / "results.jsonl")) == ["fp32", "int8"]
    Runner(scenario, RunOptions(out=out, cache_dir=cache, recipes=("int8",))).run()
    assert sorted(r["recipe"] for r in read_records(out / "results.jsonl")) == ["fp32", "int8"]
    # a failed row outside the slice is not the slice's to retry: it stays as it was
    rows = read_records(out / "results.jsonl")
    for row in rows:
        if row["recipe"] == "fp32":
            row.update(status="failed", reason="as a toolkit crash leaves it")
    rewrite_records(out / "results.jsonl", rows)
    Runner(scenario, RunOptions(out=out, cache_dir=cache, recipes=("int8",))).run()
    kept = {r["recipe"]: r for r in read_records(out / "results.jsonl")}
    assert kept["fp32"]["status"] == "failed" and kept["int8"]["status"] != "failed"
    # the slice that covers it retries it
    Runner(scenario, RunOptions(out=out, cache_dir=cache, recipes=("fp32",))).run()
    assert {r["recipe"]: r["status"] for r in read_records(out / "results.jsonl")}["fp32"] == "ok"
