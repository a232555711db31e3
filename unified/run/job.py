"""One job = one recipe on one backend: compress with the adapter, measure on the harness."""

from __future__ import annotations

import dataclasses
import json
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from unified.context import JobContext, ReferenceArtifacts
from unified.data.splits import DataSplits
from unified.measure.harness import HarnessSettings, ReferenceFigures, measure_outputs
from unified.measure.outputs import collapse_reason
from unified.run.layers import check_layers, resolve_targets
from unified.run.model_info import model_summary
from unified.run.reference import degenerate as reference_degenerate
from unified.run.reference import load_summary
from unified.run.results import new_record
from unified.run.storage import atomic_write
from unified.spec.names import first_few
from unified.spec.scenario import Scenario
from unified.spec.steps import Recipe


@dataclass(frozen=True)
class Job:
    """One recipe on one backend. ``repeat`` > 0: the same job again with another seed
    (evaluate.repeats); ``hidden``: a job whose record is no row of the table (a backend's
    fp32 native baseline when no recipe is empty; repeats are folded into their row)."""

    recipe: str
    backend: str
    model: str = ""  # the model's label when a scenario compares several models
    repeat: int = 0
    hidden: bool = False

    @property
    def label(self) -> str:
        prefix = f"{self.model}: " if self.model else ""
        suffix = f" (repeat {self.repeat + 1})" if self.repeat else ""
        if self.hidden and not self.repeat:
            suffix = " (fp32 native baseline)"
        return f"{prefix}{self.recipe} @ {self.backend}{suffix}"

    @property
    def is_row(self) -> bool:
        """Whether its record is a row of results.jsonl (else: auxiliary.jsonl)."""
        return not self.hidden and self.repeat == 0


def job_from_spec(spec: dict[str, Any]) -> tuple[Scenario, Job]:
    """The scenario and job of a job.json (unified.run.expand.job_spec wrote it): a baseline's
    recipe, absent from the user's recipes, is added from its steps."""
    scenario = Scenario.model_validate(spec["scenario"])
    name = spec["recipe"]
    if name not in scenario.recipes and spec.get("steps") is not None:
        recipes = {**scenario.recipes, name: Recipe.model_validate(spec["steps"])}
        scenario = scenario.model_copy(update={"recipes": recipes})
    return scenario, Job(name, spec["backend"], repeat=int(spec.get("repeat") or 0))


def harness_settings(scenario: Scenario) -> HarnessSettings:
    """The scenario's harness settings (the latency pass uses warm-up and runs)."""
    latency = scenario.evaluate.latency
    return HarnessSettings(threads=latency.threads, warmup=latency.warmup, runs=latency.runs)


def deterministic_settings(scenario: Scenario) -> HarnessSettings:
    """What a job measures where it runs: everything but latency, which the driver's paired
    pass times afterwards (unified.run.latency_pass)."""
    return replace(harness_settings(scenario), runs=0)


def reference_figures(ref: ReferenceArtifacts) -> ReferenceFigures:
    summary = load_summary(ref)
    return ReferenceFigures(
        accuracy=summary["accuracy"],
        logits=np.load(ref.logits),
        onnx_bytes=summary["onnx_bytes"],
        gzip_bytes=summary["gzip_bytes"],
        latency_ms_p50=None,  # latency comes from the paired pass, never from a job
        macs=summary.get("macs"),
    )


def resampled_calibration(data: DataSplits, seed: int, size: int) -> DataSplits:
    """The splits with another calibration sample of the same size drawn from the train
    split with ``seed``: what a repeat of a calibrated job varies (train and test stay)."""
    size = min(size, len(data.train_x))
    rows = np.sort(np.random.default_rng([seed, 1]).permutation(len(data.train_x))[:size])
    return replace(data, calib_x=np.ascontiguousarray(data.train_x[rows]))


def execute(scenario: Scenario, job: Job, workdir: Path, ref: ReferenceArtifacts,
            data: DataSplits | None = None) -> dict[str, Any]:
    """Run one job in this process and return its record. Toolkit errors propagate."""
    from adapters.registry import get_adapter

    adapter = get_adapter(job.backend)
    data = data if data is not None else DataSplits.load(ref.data)
    if job.repeat:  # another seed: another calibration sample too
        data = resampled_calibration(data, scenario.seed, len(data.calib_x))
    recipe = scenario.recipes[job.recipe]
    ctx = JobContext(scenario=scenario, recipe_name=job.recipe, recipe=recipe,
                     backend=job.backend, workdir=workdir, reference=ref, data=data,
                     model_summary=model_summary(scenario, ref),
                     targets=resolve_targets(scenario, recipe, ref))
    start = time.perf_counter()
    result = adapter.compress(ctx)
    compressed = time.perf_counter()
    artifacts = result.artifacts
    deploy = artifacts.deploy_path or artifacts.native_path
    figures, logits = measure_outputs(
        artifacts.onnx_path, native_path=artifacts.native_path, deploy_path=deploy,
        test_x=data.test_x, test_y=data.test_y, reference=reference_figures(ref),
        settings=deterministic_settings(scenario))
    layers = check_layers(ctx, artifacts.onnx_path)
    write_json(workdir / "layers.json", layers.data)
    for message in layers.deviations:
        ctx.deviate(message)
    timings = {"compress": round(result.compress_seconds, 3),
               # the template method's ONNX check and lossless compaction
               "check": round(compressed - start - result.compress_seconds, 3),
               "measure": round(time.perf_counter() - compressed, 3)}
    plan = result.plan
    notes = [*plan.notes, *ctx.notes, *result.artifacts.notes, *layers.notes]
    status, reason = plan.status, None
    imported = scenario.imported.get(job.recipe)
    if imported is not None:
        notes += [f"Distiller schedule: {n}" for n in imported.notes]
        notes += [f"Distiller part not carried out: {u}" for u in imported.unsupported]
        lr_missing = bool(imported.lr_schedulers) and not ctx.lr_schedule_applied
        if lr_missing and ctx.lr_schedule_applied is None:  # False: already noted why
            labels = "; ".join(lr.label for lr in imported.lr_schedulers)
            notes.append(f"Distiller LR scheduler not applied ({labels}): no training loop of "
                         "this backend runs on the schedule's epochs; the budget's lr applies")
        if imported.unsupported or lr_missing:
            ctx.deviations.append("Distiller schedule not carried out in full")
    if ctx.deviations and status == "ok":
        status = "approximated"
    summary = load_summary(ref)
    notes += summary.get("model_notes") or []  # how the model was made exportable
    degenerate = reference_degenerate(summary)
    if degenerate:
        notes.append(f"the fp32 reference is degenerate ({degenerate}): accuracy, agreement "
                     "and rel_l2 say nothing about this row")
    failure = _failure(ctx, logits, ref, figures, layers.zeroed)
    if failure is not None:
        status, reason = "failed", failure
    return new_record(
        scenario.name, scenario.model.label, job.recipe, job.backend, status, reason=reason,
        notes=list(dict.fromkeys(notes)),
        compress_seconds=round(result.compress_seconds, 3),
        versions=adapter.capabilities.versions(),
        epoch_log=[entry.as_record() for entry in ctx.epoch_log] or None,
        details=_details(result.artifacts.details, ctx) or None,
        plan=[str(s.verdict) for s in plan.steps],
        layers_targeted=len(layers.targeted),
        layers_changed=None if layers.changed is None else len(layers.changed),
        onnx_file=_relative(result.artifacts.onnx_path, workdir),
        deploy_file=None if deploy is None else _relative(deploy, workdir),
        native_files=(None if result.artifacts.native_timing is None
                      else result.artifacts.native_timing.as_record(workdir)),
        timings=timings,
        **figures,
    )


def _failure(ctx: JobContext, logits: np.ndarray, ref: ReferenceArtifacts,
             figures: dict[str, Any], zeroed: list[str]) -> str | None:
    """Why a row that ran is still a failure: its export changed the model (native vs ONNX
    parity), or its outputs collapsed (with the layers pruned away entirely, the usual
    cause: a global ranking that takes every weight of layers whose weights are small)."""
    if ctx.parity is not None and not ctx.parity.faithful:
        return ctx.parity.failure()
    reason = collapse_reason(logits, np.load(ref.logits), figures.get("rel_l2"))
    if reason is not None and zeroed:
        reason += f"; {len(zeroed)} layer(s) pruned entirely: {first_few(zeroed)}"
    return reason


def _details(details: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The adapter's details, with the native-vs-ONNX parity where it was checked."""
    out = dict(details)
    if ctx.parity is not None:
        out["parity"] = dataclasses.asdict(ctx.parity)
    return out


def _relative(path: Path, folder: Path) -> str:
    """``path`` inside ``folder`` (where the latency pass finds the ONNX of a row)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON at once: a reader never sees half a file."""
    atomic_write(path, json.dumps(obj, indent=2, default=str).encode())


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
