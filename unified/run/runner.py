"""Run a scenario in two phases.

Phase 1: plan every job, build the reference once per model, then run each job not in the
run folder or the cache on an executor (warm local workers, or a Ray cluster), appending
its record to results.jsonl the moment it finishes. Phase 2: once every worker has stopped,
time the latency of every measured row of a model in this process, interleaved with the
fp32 reference (unified.run.latency_pass); results.jsonl is then rewritten with it.

User errors stop the run before any job; a toolkit that throws, crashes or hangs becomes
a ``failed`` / ``timeout`` row and the other jobs go on.
"""

from __future__ import annotations

import functools
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapters.base import Plan
from adapters.registry import get_adapter
from unified.context import ReferenceArtifacts
from unified.run.aggregate import aggregate, fp32_summary
from unified.run.cache import job_key, reference_identity, reference_key
from unified.run.entries import read_json_object, warn
from unified.run.executor import Executor, Outcome, Task, signal_text
from unified.run.expand import all_recipes, expand, job_scenario, job_spec, recipe_of, tag
from unified.run.failure import failure_reason
from unified.run.job import Job, format_traceback, write_json
from unified.run.job_cache import JobCache
from unified.run.latency_pass import MEASURED, time_rows, update_reference_summary
from unified.run.locks import Busy, run_folder_lock
from unified.run.model_info import model_summary
from unified.run.options import (
    Progress,
    RunOptions,
    default_jobs,
    make_executor,
    threads_per_job,
)
from unified.run.reference import load_summary, prepare_reference
from unified.run.results import (
    append_record,
    new_record,
    read_records,
    rewrite_records,
    write_csv,
)
from unified.run.signals import (
    EXIT_BUSY,
    EXIT_STORAGE,
    Interrupted,
    RunStopped,
    signals_ignored,
    stop_signals,
)
from unified.run.storage import atomic_write, storage_problem
from unified.spec.baselines import MATCHED_BACKEND
from unified.spec.errors import SqueezelabError
from unified.spec.model_summary import ModelSummary
from unified.spec.scenario import Scenario
from unified.spec.sizes import format_size
from unified.spec.steps import Recipe

PENDING_STATUSES = ("failed", "timeout")  # not cached: a rerun tries them again


def _job_of(record: dict[str, Any]) -> tuple[Any, Any, Any, int]:
    """(model, recipe, backend, repeat) of a record, as a run's slice names its jobs."""
    return (record.get("model"), record.get("recipe"), record.get("backend"),
            record.get("repeat") or 0)


def _runnable(job: Job, recipe: Recipe) -> bool:
    """Whether a job's plan can run: its backend's toolkit is there and supports the recipe."""
    adapter = get_adapter(job.backend)
    return not adapter.capabilities.missing() and adapter.plan(recipe).status != "unsupported"


def expand_jobs(scenario: Scenario, options: RunOptions, multi_model: bool = False) -> list[Job]:
    """Every job of one (single-model) scenario, filtered by the options: recipes × backends,
    then the baselines and repeats a fair comparison adds (unified.run.expand)."""
    backends = [b for b in scenario.backends if not options.backends or b in options.backends]
    recipes = [r for r in scenario.recipes if not options.recipes or r in options.recipes]
    model = scenario.model.label if multi_model else ""
    return expand(scenario, recipes, backends, model,
                  lambda job: _runnable(job, recipe_of(scenario, job)))


def scenario_order(scenario: Scenario) -> Callable[[dict[str, Any]], int]:
    """Sort key putting records in scenario order: model, recipe (the matched baselines after
    the fp32 recipe), backend."""
    order = {(view.model.label, recipe, backend): i for i, (view, recipe, backend) in
             enumerate((v, r, b) for v in scenario.views() for r in all_recipes(v)
                       for b in dict.fromkeys([*v.backends, MATCHED_BACKEND]))}
    return lambda record: order.get(
        (record["model"], record["recipe"], record["backend"]), len(order))


def count_jobs(scenario: Scenario, options: RunOptions) -> int:
    return sum(len(expand_jobs(view, options)) for view in scenario.views())


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


class Runner:
    def __init__(self, scenario: Scenario, options: RunOptions,
                 progress: Progress | None = None) -> None:
        self.scenario = scenario
        self.options = options
        self.progress = progress or Progress()
        self.out = options.out
        self.results_path = self.out / "results.jsonl"
        # repeats and hidden fp32 baselines: folded into the rows, not rows themselves
        self.auxiliary_path = self.out / "auxiliary.jsonl"
        self._lock = threading.Lock()
        self.cache = JobCache(options.cache_dir, warn)
        self._total = 0
        self.records: list[dict[str, Any]] = []
        self._auxiliary_keys: set[Any] = set()  # resumed records of auxiliary.jsonl
        self.auxiliary: list[dict[str, Any]] = []
        self.timings: dict[str, Any] = {"executor": options.executor,
                                        "jobs": options.jobs or default_jobs()}

    # -- public ---------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Run every model × recipe × backend; return the records in scenario order.

        Raises RunStopped when the run ends early (Ctrl-C, SIGTERM, a file it cannot write,
        the run folder in use): every row finished by then is in results.jsonl, and the same
        run folder given again resumes.
        """
        views = self.scenario.views()
        multi = len(views) > 1
        planned = [(view, job, self._plan(view, job))
                   for view in views for job in expand_jobs(view, self.options, multi)]
        try:
            with run_folder_lock(self.out), stop_signals():
                return self._run(views, planned, multi)
        except Busy as exc:
            raise RunStopped(f"error: {exc}", EXIT_BUSY) from None
        except Interrupted as exc:
            raise RunStopped(self._kept(f"interrupted ({exc.name})", "to resume, run the "
                                        f"same command with --out {self.out}"),
                             exc.exit_code) from None
        except OSError as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            raise RunStopped(self._kept(f"error: cannot write {problem}", "once it can be "
                                        f"written, run the same command with --out {self.out}"
                                        " to resume"), EXIT_STORAGE) from None

    def _run(self, views: list[Scenario],
             planned: list[tuple[Scenario, Job, Plan | dict[str, Any]]],
             multi: bool) -> list[dict[str, Any]]:
        start = time.monotonic()
        self._total = len(planned)
        # with several models, `model` is only the first of them: leave it out
        write_json(self.out / "scenario.json", self.scenario.model_dump(
            mode="json", exclude={"model"} if self.scenario.models else None))
        sliced = {(v.model.label, j.recipe, j.backend, j.repeat) for v, j, _ in planned}
        done = self._resume(sliced)
        executor = make_executor(self.options)
        references: dict[str, ReferenceArtifacts] = {}
        try:
            self._prestart(executor, views, planned)
            tasks: list[tuple[Scenario, Task]] = []
            for view in views:
                try:
                    references[view.model.label] = ref = self._reference(view, multi)
                except SqueezelabError:  # the user's input: one line, exit 2 (unified.cli)
                    raise
                except Exception as exc:  # this model's rows fail; the other models go on
                    self._reference_failed(view, [j for v, j, _ in planned if v is view], exc)
                    continue
                tasks += self._classify(view, ref, [(j, p) for v, j, p in planned if v is view],
                                        done)
            self.progress.on_stage("jobs")
            phase1 = time.monotonic()
            by_task = {id(task): view for view, task in tasks}
            executor.run([task for _, task in tasks], self._started,
                         lambda task, outcome: self._ended(by_task[id(task)], task, outcome))
            self.timings["phase1_seconds"] = round(time.monotonic() - phase1, 3)
        except BaseException:
            with signals_ignored():  # a second Ctrl-C must not cut the clean-up short
                executor.stop()
                executor.close()
            raise
        executor.close()
        self.timings["worker_starts"] = [vars(s) for s in getattr(executor, "starts", [])]
        self._keep_outside(done, sliced)
        self._aggregate(views, references, multi)
        self._latency_pass(views, references, multi)
        self.records.sort(key=scenario_order(self.scenario))
        rewrite_records(self.results_path, self.records)
        write_csv(self.out / "results.csv", self.records)
        self.timings["wall_seconds"] = round(time.monotonic() - start, 3)
        write_json(self.out / "timings.json", self.timings)
        return self.records

    def _resume(self, sliced: set[tuple[str, str, str, int]] | None = None
                ) -> dict[Any, dict[str, Any]]:
        """The rows (and repeats, hidden baselines) of an earlier run in this folder that are
        kept, once each: finished ones, and every row outside this run's slice (a failed row
        there is not this run's to retry; None: every job is this run's). results.jsonl and
        auxiliary.jsonl are rewritten with just those, so that a row computed again never
        appears twice and a torn line (a machine that crashed mid-write) is gone before
        anything is appended after it."""
        done: dict[Any, dict[str, Any]] = {}
        for path in (self.results_path, self.auxiliary_path):
            if not path.exists():
                continue
            kept = {r["job_key"]: r for r in read_records(path)
                    if r.get("job_key") and (r.get("status") not in PENDING_STATUSES
                                             or (sliced is not None
                                                 and _job_of(r) not in sliced))}
            rewrite_records(path, kept.values())
            done.update(kept)
            if path == self.auxiliary_path:
                self._auxiliary_keys.update(kept)
        return done

    def _keep_outside(self, done: dict[Any, dict[str, Any]],
                      sliced: set[tuple[str, str, str, int]]) -> None:
        """Finished rows of this folder that this run's slice (--recipe, --backend, the
        scenario's models) does not cover stay in it: slices run into one folder add up."""
        for key, record in done.items():
            if _job_of(record) in sliced:
                continue
            (self.auxiliary if key in self._auxiliary_keys else self.records).append(record)

    def _kept(self, what: str, how: str) -> str:
        """The one line of a run that stopped early: what happened, what was kept, how to
        go on."""
        return (f"{what}; {len(self.records)} of {self._total} rows kept in "
                f"{self.results_path}; {how}")

    # -- phase 1 --------------------------------------------------------------------------

    def _prestart(self, executor: Executor, views: list[Scenario],
                  planned: list[tuple[Scenario, Job, Plan | dict[str, Any]]]) -> None:
        """When the first reference must be built, start the warm worker of the backend with
        the most jobs, so that its imports overlap the training (one only: more processes than
        cores slow multi-threaded training down more than the imports save)."""
        prestart = getattr(executor, "prestart", None)
        if prestart is None or not views:
            return
        if (self.options.cache_dir / "reference" / reference_key(views[0]) /
                "reference.json").is_file():
            return  # the jobs may all come from the cache: start nothing yet
        runnable = [job.backend for view, job, plan in planned
                    if view is views[0] and isinstance(plan, Plan)]
        counts = {b: runnable.count(b) for b in runnable}
        prestart(sorted(counts, key=lambda b: -counts[b])[:1])

    def _reference(self, view: Scenario, multi: bool) -> ReferenceArtifacts:
        self.progress.on_stage(f"reference model {view.model.label}")
        start = time.monotonic()
        ref = prepare_reference(view, self.options.cache_dir, on_wait=lambda lock: (
            self.progress.on_stage(f"reference model {view.model.label}: waiting for another "
                                   f"run building it (lock {lock})")))
        self.timings.setdefault("reference_seconds", {})[view.model.label] = round(
            time.monotonic() - start, 3)
        name = f"reference-{_safe(view.model.label)}.json" if multi else "reference.json"
        atomic_write(self.out / name, ref.summary.read_bytes())
        return ref

    def _reference_failed(self, view: Scenario, jobs: list[Job], exc: Exception) -> None:
        """A reference that could not be built (its model does not train, run or export):
        every row of that model is ``failed`` with the cause; the traceback is kept."""
        label = view.model.label
        reason = f"the fp32 reference of {label} could not be built: {failure_reason(exc)}"
        write_json(self.out / f"reference-{_safe(label)}.error.json",
                   {"reason": reason, "traceback": format_traceback(exc)})
        warn(reason)
        for job in jobs:
            if job.is_row:
                self._finish(job, self._record(view, job, "failed", reason=reason))

    def _classify(self, view: Scenario, ref: ReferenceArtifacts,
                  jobs: list[tuple[Job, Plan | dict[str, Any]]],
                  done: dict[Any, dict[str, Any]],
                  drop_idle_baselines: bool = True) -> list[tuple[Scenario, Task]]:
        """Finish what needs no worker (resumed, unsupported, cached); return the rest.
        Plans again with what the model is made of; a backend's hidden fp32 baseline is
        dropped when none of its rows is left to run (``drop_idle_baselines``)."""
        ref_id = reference_identity(view, ref.folder)
        timeout = self.options.timeout or view.evaluate.timeout
        summary = model_summary(view, ref)
        jobs = [(job, plan if isinstance(plan, dict) else self._plan(view, job, summary))
                for job, plan in jobs]
        working = {job.backend for job, plan in jobs
                   if not job.hidden and not isinstance(plan, dict)}
        tasks = []
        for job, plan in jobs:
            if drop_idle_baselines and job.hidden and job.backend not in working:
                continue
            job_view = job_scenario(view, job)
            key = job_key(job_view, job.recipe, job.backend, ref_id,
                          get_adapter(job.backend).capabilities.versions(), repeat=job.repeat)
            if key in done:  # resume: already in this run folder
                self._keep(job, done[key])
            elif isinstance(plan, dict):  # unavailable toolkit or unsupported recipe
                plan["job_key"] = key
                self._finish(job, tag(plan, view, job))
            elif (cached := self._from_cache(view, job, key)) is not None:
                self._finish(job, tag(cached, view, job))
            else:
                tasks.append((view, self._task(view, job, key, ref, timeout)))
        return tasks

    def _task(self, view: Scenario, job: Job, key: str, ref: ReferenceArtifacts,
              timeout: float) -> Task:
        folder = self._job_dir(job)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        threads = threads_per_job(self.options)
        write_json(folder / "job.json", {
            **job_spec(view, job),
            "reference": str(ref.folder),
            "torch_threads": threads,
        })
        return Task(job, key, folder, timeout, threads)

    def _plan(self, view: Scenario, job: Job,
              summary: ModelSummary | None = None) -> Plan | dict[str, Any]:
        """The adapter's plan (with the model's summary once the reference exists), or a
        finished record when the job cannot run at all."""
        adapter = get_adapter(job.backend)
        caps = adapter.capabilities
        plan = adapter.plan(recipe_of(view, job), summary)
        if plan.status == "unsupported":
            return self._record(view, job, "unsupported", reason=plan.reason, notes=plan.notes,
                                versions=caps.versions(),
                                plan=[str(s.verdict) for s in plan.steps])
        missing = caps.missing()
        if missing:
            return self._record(
                view, job, "unsupported",
                reason=f"backend unavailable: {', '.join(missing)} not installed; "
                       f"{caps.install_hint}",
                versions=caps.versions())
        return plan

    def _record(self, view: Scenario, job: Job, status: str, **fields: Any) -> dict[str, Any]:
        return new_record(view.name, view.model.label, job.recipe, job.backend, status,
                          **fields)

    def _job_dir(self, job: Job) -> Path:
        folder = self.out / "jobs"
        if job.model:
            folder = folder / _safe(job.model)
        repeat = f".repeat{job.repeat}" if job.repeat else ""
        return folder / f"{job.recipe}@{job.backend}{repeat}"

    def _artifacts(self, model: str, record: dict[str, Any]) -> Path:
        return self._job_dir(Job(record["recipe"], record["backend"], model)) / "artifacts"

    def _started(self, task: Task, where: str) -> None:
        self.progress.on_start(task.job, where)

    def _ended(self, view: Scenario, task: Task, outcome: Outcome) -> None:
        record = tag(self._outcome_record(view, task, outcome), view, task.job)
        record["job_key"] = task.key
        self._finish(task.job, record)  # the row first: it must survive a failing cache write
        if record["status"] not in PENDING_STATUSES:
            self.cache.store(task.key, task.job.label, task.folder, record)

    def _outcome_record(self, view: Scenario, task: Task, outcome: Outcome) -> dict[str, Any]:
        """Turn every way a job can end into a record."""
        job, folder = task.job, task.folder
        where = {"executor": self.options.executor, "host": outcome.host}
        log = f"(log: {folder / 'worker.log'})"
        seconds = round(outcome.seconds, 3)
        if outcome.ended == "timeout":
            return self._record(view, job, "timeout", compress_seconds=seconds,
                                reason=f"no result after {task.timeout:g} s; worker killed {log}",
                                **where)
        record_file = folder / "record.json"
        if outcome.ended == "exited" and outcome.code == 0 and record_file.is_file():
            record: dict[str, Any] = json.loads(record_file.read_text())
            record.update(where)
            record.setdefault("timings", {})["job"] = seconds
            return record
        error = read_json_object(folder / "error.json") or {}
        reason = error.get("reason") or outcome.error
        if not isinstance(reason, str):
            reason = outcome.reason or signal_text(outcome.code or 0)
            limit = view.evaluate.memory_limit
            if limit is not None and (outcome.code or 0) < 0:  # e.g. std::bad_alloc → abort
                reason += f" under evaluate.memory_limit {format_size(limit)}"
        return self._record(view, job, "failed", reason=f"{reason} {log}",
                            compress_seconds=seconds,
                            versions=get_adapter(job.backend).capabilities.versions(), **where)

    # -- the cache ------------------------------------------------------------------------

    def _from_cache(self, view: Scenario, job: Job, key: str) -> dict[str, Any] | None:
        if not self.options.use_cache:
            return None
        record = self.cache.load(key, job.label, self._job_dir(job) / "artifacts")
        if record is not None:
            record.update(scenario=view.name, model=view.model.label, recipe=job.recipe,
                          cached=True)
        return record

    def _keep(self, job: Job, record: dict[str, Any]) -> None:
        with self._lock:
            (self.records if job.is_row else self.auxiliary).append(record)
        self.progress.on_done(job, record)

    def _finish(self, job: Job, record: dict[str, Any]) -> None:
        """Append to results.jsonl (a repeat or hidden baseline: auxiliary.jsonl) at once,
        so nothing finished is lost."""
        with self._lock:
            if job.is_row:
                append_record(self.results_path, record)
                self.records.append(record)
            else:
                append_record(self.auxiliary_path, record)
                self.auxiliary.append(record)
        self.progress.on_done(job, record)

    # -- between the phases ---------------------------------------------------------------

    def _aggregate(self, views: list[Scenario], references: dict[str, ReferenceArtifacts],
                   multi: bool) -> None:
        """Fold repeats into their rows, fill the like-for-like ratios and the matched drops
        (unified.run.aggregate); the run's reference.json lists each backend's fp32 files."""
        accuracy = {label: load_summary(ref).get("accuracy")
                    for label, ref in references.items()}
        aggregate(self.records, self.auxiliary, accuracy)
        for view in views:
            label = view.model.label
            path = self.out / (f"reference-{_safe(label)}.json" if multi else "reference.json")
            if path.is_file():
                summary = json.loads(path.read_text())
                summary["fp32_artifacts"] = fp32_summary(self.records, self.auxiliary, label)
                write_json(path, summary)

    # -- phase 2 --------------------------------------------------------------------------

    def _latency_pass(self, views: list[Scenario], references: dict[str, ReferenceArtifacts],
                      multi: bool) -> None:
        """Time every measured row of each model against its reference, in this process."""
        seconds: dict[str, float] = {}
        for view in views:
            label = view.model.label
            rows = [r for r in self.records if r["model"] == label and r["status"] in MEASURED]
            self.progress.on_stage(f"latency of {len(rows)} rows of {label}, interleaved with "
                                   "the fp32 reference")
            start = time.monotonic()
            if label not in references:  # its reference failed: no row was measured
                continue
            timing = time_rows(view, references[label], rows,
                               functools.partial(self._artifacts, label if multi else ""))
            seconds[label] = round(time.monotonic() - start, 3)
            name = f"reference-{_safe(label)}.json" if multi else "reference.json"
            update_reference_summary(self.out / name, timing)
        self.timings["latency_seconds"] = seconds
