"""One job = one recipe on one backend: compress with the adapter, measure on the harness."""

from __future__ import annotations

import fcntl
import json
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unified.context import JobContext, ReferenceArtifacts
from unified.data.splits import DataSplits
from unified.measure.harness import HarnessSettings, ReferenceFigures, measure
from unified.run.model_info import model_summary
from unified.run.reference import load_summary
from unified.run.results import new_record
from unified.spec.scenario import Scenario


@dataclass(frozen=True)
class Job:
    recipe: str
    backend: str
    model: str = ""  # the model's label when a scenario compares several models

    @property
    def label(self) -> str:
        prefix = f"{self.model}: " if self.model else ""
        return f"{prefix}{self.recipe} @ {self.backend}"


def harness_settings(scenario: Scenario) -> HarnessSettings:
    latency = scenario.evaluate.latency
    return HarnessSettings(threads=latency.threads, warmup=latency.warmup, runs=latency.runs)


def reference_figures(ref: ReferenceArtifacts) -> ReferenceFigures:
    summary = load_summary(ref)
    return ReferenceFigures(
        accuracy=summary["accuracy"],
        logits=np.load(ref.logits),
        onnx_bytes=summary["onnx_bytes"],
        gzip_bytes=summary["gzip_bytes"],
        latency_ms_p50=summary["latency_ms_p50"],
    )


def execute(scenario: Scenario, job: Job, workdir: Path, ref: ReferenceArtifacts,
            data: DataSplits | None = None) -> dict[str, Any]:
    """Run one job in this process and return its record. Toolkit errors propagate."""
    from adapters.registry import get_adapter

    adapter = get_adapter(job.backend)
    data = data if data is not None else DataSplits.load(ref.data)
    ctx = JobContext(scenario=scenario, recipe_name=job.recipe,
                     recipe=scenario.recipes[job.recipe], backend=job.backend,
                     workdir=workdir, reference=ref, data=data,
                     model_summary=model_summary(scenario, ref))
    result = adapter.compress(ctx)
    with measurement_lock():
        figures = measure(result.artifacts.onnx_path, native_path=result.artifacts.native_path,
                      test_x=data.test_x, test_y=data.test_y,
                          reference=reference_figures(ref),
                          settings=harness_settings(scenario))
    plan = result.plan
    notes = [*plan.notes, *ctx.notes, *result.artifacts.notes]
    status = plan.status
    imported = scenario.imported.get(job.recipe)
    if imported is not None:
        notes += [f"Distiller schedule: {n}" for n in imported.notes]
        notes += [f"Distiller part not carried out: {u}" for u in imported.unsupported]
        lr_missing = bool(imported.lr_schedulers) and not ctx.lr_schedule_applied
        if lr_missing and ctx.lr_schedule_applied is None:  # False: already noted why
            labels = "; ".join(lr.label for lr in imported.lr_schedulers)
            notes.append(f"Distiller LR scheduler not applied ({labels}): no training loop of "
                         "this backend runs on the schedule's epochs; the budget's lr applies")
        if (imported.unsupported or lr_missing) and status == "ok":
            status = "approximated"
    return new_record(
        scenario.name, scenario.model.label, job.recipe, job.backend, status,
        notes=list(dict.fromkeys(notes)),
        compress_seconds=round(result.compress_seconds, 3),
        versions=adapter.capabilities.versions(),
        epoch_log=ctx.epoch_log or None,
        details=result.artifacts.details or None,
        plan=[str(s.verdict) for s in plan.steps],
        **figures,
    )


@contextmanager
def measurement_lock() -> Iterator[None]:
    """Parallel workers measure one at a time, so latencies are not contended."""
    path = os.environ.get("SQUEEZELAB_LATENCY_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def failure_text(exc: BaseException) -> str:
    """One line for the record: the exception type and message."""
    last = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {last[-1] if last else ''}".strip().rstrip(":")


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
