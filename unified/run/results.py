"""The result record (docs/architecture.md) and the run folder's files: results.jsonl and
results.csv."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from unified.run.storage import append_line, atomic_write

STATUSES = ("ok", "approximated", "unsupported", "failed", "timeout")

# The user-facing contract: keep these names (extend, don't rename).
RECORD_FIELDS = (
    "scenario", "model", "recipe", "backend", "role", "status", "reason", "notes",
    "accuracy", "accuracy_std", "accuracy_drop", "accuracy_drop_vs_reference",
    "matched_baseline", "baseline_accuracy", "agreement", "agreement_std", "rel_l2", "repeats",
    "onnx_bytes", "native_bytes", "deploy_bytes", "deploy_format", "gzip_bytes",
    "size_ratio", "native_ratio", "deploy_ratio", "gzip_ratio", "macs", "macs_ratio",
    "parameters", "sparsity", "max_distinct_values", "int8_fraction",
    "quantized_compute_ops", "float_compute_ops", "layers_targeted", "layers_changed",
    "latency_ms_p50", "latency_ms_p90", "speedup", "speedup_ci_low", "speedup_ci_high",
    "native_latency_ms", "native_speedup", "compress_seconds", "executor", "host", "versions",
)
# Fields beyond the table: kept in results.jsonl, left out of results.csv.
EXTRA_FIELDS = ("job_key", "ort_ops", "epoch_log", "details", "plan", "cached", "onnx_file",
                "deploy_file", "timings", "seed", "repeat", "seeds",
                "native_files")
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
    """Append one JSON line: one write, synced; a write that fails half-way (a full disk) is
    undone, so the file never ends in a torn line (unified.run.storage)."""
    append_line(path, (json.dumps(record, sort_keys=False, default=str) + "\n").encode())


def rewrite_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace results.jsonl at once (temp file, fsync, rename): after the latency pass, and
    when a resumed run drops the rows it will compute again."""
    data = "".join(json.dumps(r, sort_keys=False, default=str) + "\n" for r in records)
    atomic_write(path, data.encode())


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a results.jsonl. A line that is not a JSON object (torn by a crash
    mid-write, or garbage) is skipped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(record, dict) and {"recipe", "backend", "status"} <= set(record):
            out.append(record)
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
    atomic_write(path, buf.getvalue().encode())
