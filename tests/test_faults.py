"""Faults of a whole run, each caused for real: the runner killed, interrupted or terminated
mid-run, a full disk, a corrupt cache entry, two runs on one cache, a worker over its memory
limit. Runs go through the CLI in a subprocess (the user's view: exit code and stderr) or
through the Runner, with real workers and real toolkits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import TINY_SCENARIO, tiny_scenario

from unified.run.aggregate import AGGREGATED_FIELDS
from unified.run.entries import manifest_problem
from unified.run.latency_pass import without_latency_notes
from unified.run.results import LATENCY_FIELDS
from unified.run.runner import Runner, RunOptions

FIXTURES = Path(__file__).parent / "fixtures"
MISBEHAVING = "python:misbehaving_models:"
QUICK = {"fp32": [], "int8": [{"quantize": {"method": "dynamic"}}]}
# what a recomputed row may change: its timings, and what the end of a run fills in from
# other rows (unified.run.aggregate: ratios against the fp32 files, drops against the
# baselines, repeats); everything else is the toolkit's result
VOLATILE = ("timings", "compress_seconds", "host", "cached", *LATENCY_FIELDS,
            *AGGREGATED_FIELDS)


def write_scenario(folder: Path, recipes: dict[str, Any], backends: list[str],
                   **evaluate: Any) -> Path:
    scenario = {**TINY_SCENARIO, "backends": backends, "recipes": recipes,
                "evaluate": {**TINY_SCENARIO["evaluate"], **evaluate}}
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))  # recipes in order
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """This test's environment, with the misbehaving factories importable in the workers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEEZELAB_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(FIXTURES), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**env, **extra}


def run_command(scenario: Path, out: Path, cache_dir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "unified.cli", "run", str(scenario), "--out", str(out),
            "--cache-dir", str(cache_dir), "--jobs", "1", *flags]


def start(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a run in its own process group, as a shell starts a foreground job."""
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


def workers_in(cwd: Path) -> list[int]:
    """Live squeezelab worker processes started from ``cwd`` (each test runs in its own)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or Path(proc / "cwd").resolve() != cwd.resolve():
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"unified.run.worker" in command and state != "Z":
            found.append(int(proc.name))
    return found


def rows(path: Path) -> dict[str, dict[str, Any]]:
    """The rows of results.jsonl by recipe, checking that every line is one whole row."""
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]  # a torn line fails here
    assert len({r["recipe"] for r in records}) == len(records), "a row appears twice"
    return {r["recipe"]: r for r in records}


def stable(record: dict[str, Any]) -> dict[str, Any]:
    """The record less what a run's latency pass sets (its fields and its notes)."""
    kept = {k: v for k, v in record.items() if k not in VOLATILE}
    return {**kept, "notes": without_latency_notes(record.get("notes") or [])}


# -- the runner killed, interrupted or terminated ----------------------------------------


@pytest.mark.slow
def test_a_killed_run_rerun_keeps_its_finished_rows_and_computes_the_rest(
        tmp_path: Path, cache_dir: Path) -> None:
    recipes = {**QUICK, "slow": [{"distill": {"student": MISBEHAVING + "sleeping_student",
                                              "epochs": 1}}]}
    scenario = write_scenario(tmp_path, recipes, ["pytorch"])
    out = tmp_path / "run"
    command = run_command(scenario, out, cache_dir, "--no-cache")
    run = start(command, tmp_path, cli_env(SQUEEZELAB_TEST_SLEEP="3600"))
    try:
        wait_for(lambda: (out / "jobs" / "slow@pytorch" / "worker.log").exists(),
                 "the slow job to start")
        os.kill(run.pid, signal.SIGKILL)  # kill -9 of the runner alone
        run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    # its worker, in a process group of its own, notices and ends itself
    wait_for(lambda: not workers_in(tmp_path), "the orphaned worker to end", 30)
    before = rows(out / "results.jsonl")
    assert sorted(before) == ["fp32", "int8"]
    with (out / "results.jsonl").open("ab") as results:  # a machine that died mid-write
        results.write(b'{"recipe": "slow", "backend": "pyt')

    rerun = subprocess.run(command, cwd=tmp_path, env=cli_env(), capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    after = rows(out / "results.jsonl")
    # the distillation trains one epoch: its matched baseline fp32+ft1 is a row too
    assert sorted(after) == ["fp32", "fp32+ft1", "int8", "slow"]
    assert after["slow"]["status"] == "ok"
    for recipe in ("fp32", "int8"):  # kept as they were: not computed again
        assert after[recipe]["timings"] == before[recipe]["timings"]
        assert stable(after[recipe]) == stable(before[recipe])
    assert not workers_in(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_cleanly_keeps_rows_and_leaves_no_worker(
        signum: int, code: int, tmp_path: Path, cache_dir: Path) -> None:
    recipes = {**QUICK, "slow": [{"distill": {"student": MISBEHAVING + "sleeping_student",
                                              "epochs": 1}}]}
    scenario = write_scenario(tmp_path, recipes, ["pytorch"])
    out = tmp_path / "run"
    run = start(run_command(scenario, out, cache_dir, "--no-cache"), tmp_path,
                cli_env(SQUEEZELAB_TEST_SLEEP="3600"))
    try:
        wait_for(lambda: (out / "jobs" / "slow@pytorch" / "worker.log").exists(),
                 "the slow job to start")
        if signum == signal.SIGINT:
            os.killpg(run.pid, signum)  # Ctrl-C: the terminal signals the foreground group
        else:
            os.kill(run.pid, signum)  # `kill <pid>`, a scheduler, a container stopping
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    # 4 rows: fp32, int8, slow and the distillation's matched baseline fp32+ft1
    assert err.splitlines() == [
        f"squeezelab: interrupted ({name}); 2 of 4 rows kept in {out}/results.jsonl; to "
        f"resume, run the same command with --out {out}"], err
    assert run.returncode == code
    assert sorted(rows(out / "results.jsonl")) == ["fp32", "int8"]
    assert not workers_in(tmp_path)  # the runner killed its worker before it exited


# -- a full disk ------------------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs none /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


FULL_DISK_SCRIPT = """
set -u
mount -t tmpfs -o size=4m tmpfs "$DISK"
SQUEEZELAB_TEST_FILL="$DISK/filler" "$@" >"$SAVED/first.out" 2>"$SAVED/first.err"
echo $? >"$SAVED/first.rc"
cp -a "$DISK/run" "$SAVED/first"
rm "$DISK/filler"
"$@" >"$SAVED/second.out" 2>"$SAVED/second.err"
echo $? >"$SAVED/second.rc"
cp -a "$DISK/run" "$SAVED/second"
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_disk_is_one_line_naming_the_file_and_corrupts_nothing(
        tmp_path: Path, cache_dir: Path) -> None:
    """The run folder is a 4 MB tmpfs (in a mount namespace of the test's own); the third job
    fills it mid-run, as another program might. Then the space is freed and the run rerun."""
    recipes = {**QUICK, "fill": [{"distill": {"student": MISBEHAVING + "disk_filling_student",
                                              "epochs": 1}}]}
    scenario = write_scenario(tmp_path, recipes, ["pytorch"])
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    saved.mkdir()
    command = run_command(scenario, disk / "run", cache_dir, "--no-cache")
    subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK_SCRIPT, "sh", *command],
                   cwd=tmp_path, env=cli_env(DISK=str(disk), SAVED=str(saved)), check=True,
                   timeout=1800)
    err = (saved / "first.err").read_text()
    results = disk / "run" / "results.jsonl"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"squeezelab: error: cannot write {disk / 'run'}/"), err
    assert ": No space left on device; " in err and f"--out {disk / 'run'} to resume" in err
    assert (saved / "first.rc").read_text().strip() == "1"
    first = rows(saved / "first" / "results.jsonl")  # every line whole
    assert first["fp32"]["status"] == "ok" and first["int8"]["status"] == "approximated"
    assert f"rows kept in {results};" in err

    assert (saved / "second.rc").read_text().strip() == "0", (saved / "second.err").read_text()
    second = rows(saved / "second" / "results.jsonl")
    # the distillation trains one epoch: its matched baseline fp32+ft1 is a row too
    assert sorted(second) == ["fill", "fp32", "fp32+ft1", "int8"]
    assert second["fill"]["status"] == "ok"
    for recipe in ("fp32", "int8"):
        assert second[recipe]["timings"] == first[recipe]["timings"]


FULL_CACHE_SCRIPT = """
set -u
mount -t tmpfs -o size=4m tmpfs "$DISK"
mkdir -p "$DISK/cache/reference"
cp -a "$REFERENCE" "$DISK/cache/reference/"
cat /dev/zero >"$DISK/filler" 2>/dev/null
"$@" >"$SAVED/run.out" 2>"$SAVED/run.err"
echo $? >"$SAVED/run.rc"
ls -A "$DISK/cache/jobs" >"$SAVED/jobs.txt" 2>/dev/null
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -rm to mount a small tmpfs")
def test_a_full_cache_disk_costs_a_warning_per_row_never_a_row(
        tmp_path: Path, tiny_reference: Any) -> None:
    """The cache is a full 4 MB tmpfs holding the reference: the rows are computed and kept,
    none is stored, and nothing half-written is left in the cache."""
    scenario = write_scenario(tmp_path, QUICK, ["onnxruntime"])
    disk, saved, out = tmp_path / "disk", tmp_path / "saved", tmp_path / "run"
    disk.mkdir()
    saved.mkdir()
    command = run_command(scenario, out, disk / "cache")
    subprocess.run(["unshare", "-rm", "sh", "-c", FULL_CACHE_SCRIPT, "sh", *command],
                   cwd=tmp_path, env=cli_env(DISK=str(disk), SAVED=str(saved),
                                             REFERENCE=str(tiny_reference.folder)),
                   check=True, timeout=900)
    assert (saved / "run.rc").read_text().strip() == "0", (saved / "run.err").read_text()
    assert sorted((saved / "run.err").read_text().splitlines()) == [
        f"squeezelab: warning: {recipe} @ onnxruntime not stored in the cache {disk / 'cache'}: "
        "No space left on device" for recipe in sorted(QUICK)]
    assert (saved / "jobs.txt").read_text() == ""  # no entry, no temp folder
    assert {r["status"] for r in rows(out / "results.jsonl").values()} == {"ok"}


# -- the cache ----------------------------------------------------------------------------


def _seeded_cache(folder: Path, reference: Any) -> Path:
    """A cache of its own holding a copy of the session's tiny reference (no training)."""
    target = folder / "reference" / reference.folder.name
    shutil.copytree(reference.folder, target)
    return folder


@pytest.mark.slow
def test_a_corrupt_cache_entry_is_recomputed_with_a_warning(
        tmp_path: Path, tiny_reference: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _seeded_cache(tmp_path / "cache", tiny_reference)
    scenario = tiny_scenario(QUICK, ["onnxruntime"])
    first = {r["recipe"]: r for r in Runner(scenario, RunOptions(out=tmp_path / "a",
                                                                 cache_dir=cache)).run()}
    entries = {json.loads((e / "record.json").read_text())["recipe"]: e
               for e in (cache / "jobs").iterdir()}
    onnx = entries["fp32"] / "artifacts" / "model.onnx"
    record = entries["int8"] / "record.json"
    sizes = {path: path.stat().st_size for path in (onnx, record)}
    onnx.write_bytes(onnx.read_bytes()[: sizes[onnx] // 2])  # a truncated ONNX
    record.write_bytes(record.read_bytes()[:100])  # a truncated JSON
    capsys.readouterr()

    second = {r["recipe"]: r for r in Runner(scenario, RunOptions(out=tmp_path / "b",
                                                                  cache_dir=cache)).run()}
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert sorted(warnings) == sorted([
        f"squeezelab: warning: cache entry {entries['fp32']} is corrupt (artifacts/model.onnx "
        f"has {sizes[onnx] // 2} bytes, not {sizes[onnx]}); computing fp32 @ onnxruntime again",
        f"squeezelab: warning: cache entry {entries['int8']} is corrupt (record.json has 100 "
        f"bytes, not {sizes[record]}); computing int8 @ onnxruntime again"]), warnings
    for recipe in QUICK:
        assert not second[recipe].get("cached")
        assert stable(second[recipe]) == stable(first[recipe])
        assert manifest_problem(entries[recipe]) is None  # stored again, whole
    third = Runner(scenario, RunOptions(out=tmp_path / "c", cache_dir=cache)).run()
    assert all(r.get("cached") for r in third)


@pytest.mark.slow
def test_a_corrupt_reference_is_rebuilt_with_a_warning(
        tmp_path: Path, tiny_reference: Any, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _seeded_cache(tmp_path / "cache", tiny_reference)
    folder = cache / "reference" / tiny_reference.folder.name
    (folder / "model.onnx").write_bytes(b"\x08\x07")  # an ONNX cut after two bytes
    scenario = tiny_scenario({"fp32": []}, ["onnxruntime"])
    (record,) = Runner(scenario, RunOptions(out=tmp_path / "run", cache_dir=cache)).run()
    assert record["status"] == "ok"
    err = capsys.readouterr().err
    assert (f"squeezelab: warning: cached reference {folder} is corrupt (model.onnx has 2 "
            "bytes, not ") in err, err
    assert err.rstrip().endswith("); building it again")
    assert manifest_problem(folder) is None


@pytest.mark.slow
def test_two_runs_on_one_cache_at_once_both_finish_and_the_cache_stays_whole(
        tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # empty: both runs need the reference, one builds it
    scenario = write_scenario(tmp_path, QUICK, ["onnxruntime"])
    runs = [start(run_command(scenario, tmp_path / name, cache), tmp_path, cli_env())
            for name in ("a", "b")]
    for run in runs:
        _, err = run.communicate(timeout=900)
        assert run.returncode == 0, err
    a, b = (rows(tmp_path / name / "results.jsonl") for name in ("a", "b"))
    assert sorted(a) == sorted(b) == sorted(QUICK)
    assert all(stable(a[r]) == stable(b[r]) for r in QUICK)
    for kind, count in (("reference", 1), ("jobs", 2)):
        entries = list((cache / kind).iterdir())
        assert len(entries) == count, entries  # no second copy, no temp folder left
        assert all(manifest_problem(e) is None for e in entries)
    third = subprocess.run(run_command(scenario, tmp_path / "c", cache), cwd=tmp_path,
                           env=cli_env(), capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stderr
    assert all(r.get("cached") for r in rows(tmp_path / "c" / "results.jsonl").values())


# -- a worker over its memory limit -------------------------------------------------------


@pytest.mark.slow
def test_a_worker_over_its_memory_limit_is_a_failed_row_and_the_others_finish(
        tmp_path: Path, cache_dir: Path) -> None:
    recipes = {**QUICK, "greedy": [{"distill": {"student": MISBEHAVING + "greedy_student",
                                                "epochs": 1}}]}
    scenario = write_scenario(tmp_path, recipes, ["pytorch"], memory_limit="2GiB")
    out = tmp_path / "run"
    result = subprocess.run(run_command(scenario, out, cache_dir, "--no-cache"),
                            cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr
    found = rows(out / "results.jsonl")
    assert found["fp32"]["status"] == "ok" and found["int8"]["status"] == "approximated"
    assert found["greedy"]["status"] == "failed"
    reason = found["greedy"]["reason"]
    assert reason.startswith("worker exceeded evaluate.memory_limit 2 GiB: "), reason
    assert "greedy_student" in reason and "can't allocate memory" in reason, reason
    line = next(x for x in result.stdout.splitlines() if "greedy @ pytorch:" in x)
    assert "failed — worker exceeded evaluate.memory_limit 2 GiB" in line


def test_a_model_whose_reference_cannot_be_built_fails_its_rows_and_the_others_finish(
        tmp_path: Path, cache_dir: Path) -> None:
    """Two models: the first cannot be exported to ONNX. Its rows are ``failed`` naming the
    torch function and the cause in one line; the second model's rows run; the console gets
    no dump of the exporter's graph."""
    broken = {**TINY_SCENARIO["model"], "source": MISBEHAVING + "unexportable"}
    scenario = {**{k: v for k, v in TINY_SCENARIO.items() if k != "model"},
                "models": {"broken": broken, "tiny": TINY_SCENARIO["model"]},
                "backends": ["onnxruntime"], "recipes": {"fp32": []}}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False))
    out = tmp_path / "run"
    result = subprocess.run(run_command(path, out, cache_dir), cwd=tmp_path, env=cli_env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    found = {r["model"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    assert found["tiny"]["status"] == "ok"
    assert found["broken"]["status"] == "failed"
    reason = found["broken"]["reason"]
    assert reason.startswith("the fp32 reference of broken could not be built: torch "), reason
    assert "adaptive_avg_pool2d" in reason and "Please feel free" not in reason, reason
    assert "Torch IR graph" not in result.stdout + result.stderr
    error = json.loads((out / "reference-broken.error.json").read_text())
    assert "Traceback" in error["traceback"]
