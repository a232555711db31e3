"""Benchmark: where the time of a cold run goes.

    python benchmarks/cold_run.py [--scenario scenarios/quickstart.yaml] [--tree DIR]
                                  [--out DIR] [-- extra squeezelab run options]

Runs ``squeezelab run`` on an empty cache (a fresh temporary cache folder: nothing is
reused), as a log would see it (stdout not a terminal), and prints the wall time, the
time until the first finished row was on screen, the CPU seconds of the whole process tree
and the machine's load (the machine may be shared: CPU seconds are what the run itself
cost), then the parts: the reference build; per backend the worker start + toolkit
imports, compress, the torch→Keras bridge, export to ONNX, and the harness measurement;
the latency pass. ``--tree`` runs another checkout of squeezelab (e.g. an older commit,
for a before/after); a run folder without ``timings.json`` (made before it existed) is
broken down from its files' times instead, with what cannot be told apart lumped together.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_cold(tree: Path, scenario: Path, out: Path, extra: list[str],
             cache_root: Path | None) -> dict[str, Any]:
    """Run the scenario with an empty cache; return wall, first-row and CPU figures."""
    if cache_root is not None:
        cache_root.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="cold-cache-", dir=cache_root))
    env = {**os.environ, "PYTHONPATH": str(tree), "SQUEEZELAB_PROFILE": "1",
           "ORT_DISABLE_TELEMETRY": os.environ.get("ORT_DISABLE_TELEMETRY", "1")}
    command = [sys.executable, "-c", "from unified.cli import main; main()", "run",
               str(scenario), "--out", str(out), "--cache-dir", str(cache), *extra]
    load_before = os.getloadavg()
    start = time.monotonic()
    first_row: float | None = None
    lines: list[str] = []
    with subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            # a finished job's line ("[ 1/60] ...", or rich's progress in older versions)
            if first_row is None and line.startswith("["):
                first_row = time.monotonic() - start
    wall = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stdout.writelines(lines[-40:])
        raise SystemExit(f"squeezelab run exited with {proc.returncode}")
    return {"wall": wall, "first_row": first_row, "cpu": usage.ru_utime + usage.ru_stime,
            "load_before": load_before, "load_after": os.getloadavg(), "cache": str(cache),
            "start_time": time.time() - wall}


def breakdown(out: Path, start_time: float) -> dict[str, Any]:
    """Seconds per part, from timings.json and the records (or the files' times)."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ran = [r for r in records if r.get("status") not in ("unsupported",) and not r.get("cached")]
    parts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    timings_file = out / "timings.json"
    if timings_file.is_file():
        timings = json.loads(timings_file.read_text())
        for start in timings.get("worker_starts", []):
            parts[start["backend"]]["worker start + imports"] += start["seconds"]
        for r in ran:
            t = r.get("timings") or {}
            into = parts[r["backend"]]
            export, bridge = t.get("export", 0.0), t.get("bridge", 0.0)
            into["compress"] += max(0.0, (t.get("compress") or r.get("compress_seconds") or 0.0)
                                    - export - bridge)
            into["bridge torch→Keras"] += bridge
            into["export to ONNX"] += export
            into["measure (harness)"] += t.get("measure", 0.0) + t.get("check", 0.0)
            into["jobs"] += 1
        return {"reference": sum(timings.get("reference_seconds", {}).values()),
                "latency pass": sum(timings.get("latency_seconds", {}).values()),
                "phase 1": timings.get("phase1_seconds"), "backends": parts}
    # before timings.json: a job's wall is from its job.json to its record.json
    first_job = min(((out / "jobs").rglob("job.json")), key=lambda p: p.stat().st_mtime)
    for r in ran:
        folder = out / "jobs" / f"{r['recipe']}@{r['backend']}"
        end = max((folder / n).stat().st_mtime for n in ("record.json", "error.json",
                                                         "worker.log")
                  if (folder / n).exists())
        wall = end - (folder / "job.json").stat().st_mtime
        compress = r.get("compress_seconds") or 0.0
        into = parts[r["backend"]]
        into["compress (incl. export)"] += compress
        into["worker start + imports + measure"] += max(0.0, wall - compress)
        into["jobs"] += 1
    return {"reference": first_job.stat().st_mtime - start_time, "latency pass": None,
            "phase 1": None, "backends": parts}


def report(figures: dict[str, Any], parts: dict[str, Any]) -> None:
    first = figures["first_row"]
    print(f"wall {figures['wall']:.1f} s; first row on screen after "
          f"{'–' if first is None else f'{first:.1f} s'}; CPU {figures['cpu']:.1f} s "
          f"(driver and every worker); load average before "
          f"{figures['load_before'][0]:.2f}, after {figures['load_after'][0]:.2f} "
          f"on {os.cpu_count()} cores")
    print(f"reference build        {parts['reference']:8.1f} s")
    if parts["phase 1"] is not None:
        print(f"phase 1 (all jobs)     {parts['phase 1']:8.1f} s wall")
    for backend, items in sorted(parts["backends"].items()):
        jobs = int(items.pop("jobs", 0))
        total = sum(items.values())
        detail = ", ".join(f"{name} {seconds:.1f}" for name, seconds in items.items())
        print(f"{backend:<12} {jobs:3d} jobs {total:8.1f} s  ({detail})")
    if parts["latency pass"] is not None:
        print(f"latency pass           {parts['latency pass']:8.1f} s")
    print("(per backend: seconds summed over its jobs and workers; with several workers at "
          "once they overlap in wall time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=Path("scenarios") / "quickstart.yaml",
                        help="relative to --tree")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the squeezelab checkout to run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache-root", type=Path, default=None,
                        help="where the empty cache folder is made (default: the temp folder)")
    parser.add_argument("extra", nargs="*", help="more `squeezelab run` options (after --)")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="squeezelab-cold-run-"))).resolve()
    figures = run_cold(args.tree.resolve(), args.scenario, out, args.extra, args.cache_root)
    print(f"run folder {out}, cache {figures['cache']}")
    report(figures, breakdown(out, figures["start_time"]))


if __name__ == "__main__":
    main()
