"""The result record (docs/architecture.md) and the run folder's files: results.jsonl and
results.csv."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATUSES = ("ok", "approximated", "unsupported", "failed", "timeout")

# The user-facing contract: keep these names (extend, don't rename).
RECORD_FIELDS = (
    "scenario", "model", "recipe", "backend", "status", "reason", "notes",
    "accuracy", "accuracy_drop", "agreement", "rel_l2",
    "onnx_bytes", "native_bytes", "gzip_bytes", "size_ratio", "native_ratio", "gzip_ratio",
    "parameters", "sparsity", "max_distinct_values", "int8_fraction",
    "quantized_compute_ops", "float_compute_ops", "layers_targeted", "layers_changed",
    "latency_ms_p50", "latency_ms_p90", "speedup", "speedup_ci_low", "speedup_ci_high",
    "native_latency_ms", "native_speedup", "compress_seconds", "executor", "host", "versions",
)
# Fields beyond the table: kept in results.jsonl, left out of results.csv.
EXTRA_FIELDS = ("job_key", "ort_ops", "epoch_log", "details", "plan", "cached", "onnx_file",
                "timings", "native_files")
# Fields the driver's latency pass sets on every run: never taken from a cache.
LATENCY_FIELDS = ("latency_ms_p50", "latency_ms_p90", "speedup", "speedup_ci_low",
                  "speedup_ci_high", "native_latency_ms", "native_speedup")

CSV_FIELDS = tuple(f for f in RECORD_FIELDS if f != "versions")


def new_record(
    scenario: str, model: str, recipe: str, backend: str, status: str, **fields: Any
) -> dict[str, Any]:
    """A record with every contract field present (null where not measured)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}. Got {status!r} instead")
    record: dict[str, Any] = dict.fromkeys(RECORD_FIELDS)
    record.update(scenario=scenario, model=model, recipe=recipe, backend=backend,
                  status=status, notes=[])
    unknown = set(fields) - set(RECORD_FIELDS) - set(EXTRA_FIELDS)
    if unknown:
        raise ValueError(f"unknown record fields: {sorted(unknown)}")
    record.update(fields)
    return record


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line atomically (one write on an O_APPEND descriptor, then fsync)."""
    line = (json.dumps(record, sort_keys=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def rewrite_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace results.jsonl at once (temp file, fsync, rename): after the latency pass."""
    data = "".join(json.dumps(r, sort_keys=False, default=str) + "\n" for r in records)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results.jsonl; a torn last line (crash mid-write) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_csv(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Rewrite results.csv atomically (temp file + rename)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for record in records:
        row = dict(record)
        row["notes"] = " | ".join(record.get("notes") or [])
        writer.writerow(row)
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)
