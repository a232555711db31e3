"""Benchmark: does the harness time what a bare ``session.run`` loop times?

    python benchmarks/harness_overhead.py [--onnx FILE] [--rounds 9] [--runs 200]

On one ONNX file (default: the quickstart's builtin:convnet, random weights, exported here)
and in one process, alternates round by round between the harness's paired latency pass
(unified.measure.latency: the model as a candidate against itself as the reference) and a
bare loop (an InferenceSession with only the thread count set, ``perf_counter`` around each
``session.run``), and prints the median p50 of each and their ratio. The harness is fine
when the ratio is within ±5 %.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def default_onnx(folder: Path) -> tuple[Path, tuple[int, int, int]]:
    from unified.torchkit.export import export_onnx
    from unified.torchkit.models import build_model

    shape = (1, 28, 28)
    path = folder / "convnet.onnx"
    export_onnx(build_model("builtin:convnet", 10, shape).eval(), path, shape)
    return path, shape


def bare_p50(path: Path, x: np.ndarray, threads: int, warmup: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def harness_p50(path: Path, x: np.ndarray, threads: int, warmup: int, runs: int) -> float:
    from unified.measure.latency import PairedSettings, onnx_candidate, paired_latency

    out = paired_latency(onnx_candidate("reference", path, x, threads),
                         [onnx_candidate("candidate", path, x, threads)],
                         PairedSettings.from_runs(warmup, runs))
    p50 = out["candidate"].latency_ms_p50
    assert p50 is not None
    return p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx is None:
            path, shape = default_onnx(Path(tmp))
        else:
            import onnx

            path = args.onnx
            dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1:]
            shape = tuple(d.dim_value for d in dims)  # type: ignore[assignment]
        x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
        harness, bare = [], []
        for _ in range(args.rounds):
            harness.append(harness_p50(path, x, args.threads, args.warmup, args.runs))
            bare.append(bare_p50(path, x, args.threads, args.warmup, args.runs))
    h, b = statistics.median(harness), statistics.median(bare)
    print(f"{path.name}: harness p50 {h:.4f} ms, bare session.run loop p50 {b:.4f} ms, "
          f"ratio {h / b:.3f} over {args.rounds} alternating rounds of {args.runs} runs "
          f"({'within' if abs(h / b - 1) <= 0.05 else 'OUTSIDE'} ±5 %); load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
