"""Phase 2 of a run: the latency of every measured row of one model, timed in the driver
after every worker has stopped, interleaved with the fp32 reference
(unified.measure.latency). Latency is never cached: each run, resumed or not, times again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unified.context import ReferenceArtifacts
from unified.data.splits import DataSplits
from unified.measure.latency import PairedSettings, Timing, onnx_candidate, paired_latency
from unified.measure.native import NativeFiles, native_candidate
from unified.run.job import harness_settings
from unified.run.results import LATENCY_FIELDS
from unified.run.storage import atomic_write
from unified.spec.scenario import Scenario

MEASURED = ("ok", "approximated")
REFERENCE = "fp32 reference"
GAP = 1.5  # native vs ONNX speedups further apart than this get a note saying why
# the notes this pass writes: they describe one timing, so each pass replaces them
LATENCY_NOTE = re.compile(r"^(native )?latency not measured: |^native \S+ [\d.]+x of its fp32 \(")


def row_onnx(record: dict[str, Any], artifacts: Path) -> Path:
    """The ONNX file a row measured, in its job folder's artifacts."""
    name = record.get("onnx_file") or "model.onnx"
    path = Path(name)
    return path if path.is_absolute() else artifacts / path


def time_rows(view: Scenario, ref: ReferenceArtifacts, rows: Sequence[dict[str, Any]],
              artifacts_of: Callable[[dict[str, Any]], Path]) -> Timing:
    """Time the reference and ``rows`` (one model's measured rows) in one interleaved pass;
    set each row's latency fields in place and return the reference's own timing.

    A row whose ONNX is missing or does not run keeps null latency and gets a note.
    """
    settings = harness_settings(view)
    sample = DataSplits.load(ref.data).test_x[:1]
    candidates = []
    keyed: dict[str, dict[str, Any]] = {}
    for index, record in enumerate(rows):
        for name in LATENCY_FIELDS:
            record[name] = None
        record["notes"] = without_latency_notes(record.get("notes") or [])
        path = row_onnx(record, artifacts_of(record))
        if not path.is_file():
            _note(record, f"latency not measured: {path} is missing")
            continue
        key = f"{index}:{record['recipe']}@{record['backend']}"
        keyed[key] = record
        candidates.append(onnx_candidate(key, path, sample, settings.threads))
    paired = PairedSettings.from_runs(settings.warmup, settings.runs)
    timings = paired_latency(onnx_candidate(REFERENCE, ref.onnx, sample, settings.threads),
                             candidates, paired)
    for key, record in keyed.items():
        timing = timings[key]
        if timing.error is not None:
            _note(record, f"latency not measured: {timing.error}")
            continue
        record.update(latency_ms_p50=timing.latency_ms_p50,
                      latency_ms_p90=timing.latency_ms_p90, speedup=timing.speedup,
                      speedup_ci_low=timing.speedup_ci_low,
                      speedup_ci_high=timing.speedup_ci_high)
    for record in keyed.values():
        _time_native(record, artifacts_of(record), sample, settings.threads, paired)
    return timings[REFERENCE]


def _time_native(record: dict[str, Any], folder: Path, sample: Any, threads: int,
                 paired: PairedSettings) -> None:
    """The row's native model timed interleaved with its runtime's fp32 baseline (same
    paired design as the ONNX pass): ``native_latency_ms`` and ``native_speedup``."""
    declared = record.get("native_files")
    if not declared:
        return
    files = NativeFiles.from_record(declared, folder)
    missing = [str(p) for p in (files.model, files.reference) if not p.is_file()]
    if missing:
        _note(record, f"native latency not measured: {', '.join(missing)} missing")
        return
    key = f"native {record['recipe']}@{record['backend']}"
    timings = paired_latency(
        native_candidate(f"{key} fp32", files.runtime, files.reference, sample, threads),
        [native_candidate(key, files.runtime, files.model, sample, threads, files.engine)],
        paired)
    timing = timings[key]
    if timing.error is not None:
        _note(record, f"native latency not measured: {timing.error}")
        return
    record.update(native_latency_ms=timing.latency_ms_p50, native_speedup=timing.speedup)
    note = gap_note(files.runtime, record)
    if note is not None:
        _note(record, note)


def gap_note(runtime: str, record: dict[str, Any]) -> str | None:
    """Why a row's native and ONNX speedups are more than ``GAP`` apart, or None. A native
    speedup above the ONNX one is the round-trip only if the native model is also faster in
    absolute terms; otherwise the native runtime's fp32 baseline is the slow one."""
    onnx, native = record.get("speedup"), record.get("native_speedup")
    onnx_ms, native_ms = record.get("latency_ms_p50"), record.get("native_latency_ms")
    if not (onnx and native and onnx_ms and native_ms):
        return None
    if max(onnx, native) / min(onnx, native) <= GAP:
        return None
    figures = (f"native {runtime} {native:.2f}x of its fp32 ({native_ms:.3f} ms), ONNX "
               f"{onnx:.2f}x of the fp32 ONNX ({onnx_ms:.3f} ms)")
    if native < onnx:
        return f"{figures}: onnxruntime runs this toolkit's output faster than its own runtime"
    if native_ms < onnx_ms:
        return f"{figures}: the gap is the round-trip to onnxruntime, not the toolkit"
    return (f"{figures}: the ONNX is as fast or faster in absolute terms; the native "
            "runtime's fp32 baseline is the slower one, not the round-trip")


def without_latency_notes(notes: Sequence[str]) -> list[str]:
    """``notes`` less those a latency pass wrote (a resumed run times again)."""
    return [n for n in notes if not LATENCY_NOTE.match(n)]


def _note(record: dict[str, Any], text: str) -> None:
    notes = list(record.get("notes") or [])
    if text not in notes:
        notes.append(text)
    record["notes"] = notes


def update_reference_summary(path: Path, timing: Timing) -> None:
    """The run folder's reference.json gets the reference's latency from this run's pass."""
    summary = json.loads(path.read_text())
    summary.update(latency_ms_p50=timing.latency_ms_p50, latency_ms_p90=timing.latency_ms_p90)
    atomic_write(path, json.dumps(summary, indent=2).encode())
