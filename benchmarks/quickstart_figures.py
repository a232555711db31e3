"""Benchmark: the quickstart's headline figures, speed measured side by side in one run.

    python benchmarks/quickstart_figures.py [--out runs/bench] [--cache-dir DIR] [--rounds 7]

Runs (or reuses from the cache) the quickstart scenario, then times the fp32 reference and
every int8 / pruned / distilled ONNX *interleaved* — round after round, each model once per
round — so that machine noise hits all of them alike, and prints size, accuracy and speed
ratios per backend. Latency targets live here, not in the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from rich.console import Console
from rich.table import Table

from unified.data.splits import DataSplits
from unified.load.scenario_file import load_scenario
from unified.measure.harness import make_session, measure_latency
from unified.run.reference import prepare_reference
from unified.run.runner import Runner, RunOptions, default_cache_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=ROOT / "scenarios" / "quickstart.yaml")
    parser.add_argument("--out", type=Path, default=Path("runs") / "bench-quickstart")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200, help="timed runs per model per round")
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    records = Runner(scenario, RunOptions(out=args.out, cache_dir=args.cache_dir)).run()
    measured = [r for r in records if r["status"] in ("ok", "approximated")]
    reference = next(r for r in measured if r["recipe"] == "fp32")
    fp32_onnx = args.out / "jobs" / f"fp32@{reference['backend']}" / "artifacts" / "model.onnx"
    models = {"fp32 reference": fp32_onnx}
    for r in measured:
        if r["recipe"] != "fp32":
            models[f"{r['recipe']} @ {r['backend']}"] = (
                args.out / "jobs" / f"{r['recipe']}@{r['backend']}" / "artifacts" / "model.onnx")

    data = DataSplits.load(prepare_reference(scenario, args.cache_dir).data)
    sample = data.test_x[:1]
    threads = scenario.evaluate.latency.threads
    sessions = {name: make_session(path, threads) for name, path in models.items()
                if path.is_file()}
    p50s: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            p50s[name].append(measure_latency(session, sample, warmup=20, runs=args.runs)[0])
    base = statistics.median(p50s["fp32 reference"])

    table = Table(title=f"{scenario.name}: interleaved latency, {args.rounds} rounds × "
                        f"{args.runs} runs, {threads} thread(s), batch 1")
    for header in ("model", "status", "acc", "drop", "size×", "native×", "params",
                   "p50 ms", "speedup"):
        table.add_column(header, justify="left" if header in ("model", "status") else "right")
    by_name = {f"{r['recipe']} @ {r['backend']}": r for r in measured}
    for name in sessions:
        r = by_name.get(name, reference)
        p50 = statistics.median(p50s[name])
        table.add_row(
            name, r["status"], f"{r['accuracy']:.4f}",
            f"{r['accuracy_drop']:+.4f}" if name != "fp32 reference" else "–",
            f"{r['size_ratio']:.2f}" if name != "fp32 reference" else "1.00",
            f"{r['native_ratio']:.2f}" if r.get("native_ratio") else "–",
            str(r.get("parameters")), f"{p50:.4f}", f"{base / p50:.2f}",
        )
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
