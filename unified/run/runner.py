"""Run a scenario: plan every job, build the reference once, run each job in its own
worker process with a timeout, append records as they finish, reuse cached jobs.

User errors stop the run before any job; a toolkit that throws, crashes or hangs becomes
a ``failed`` / ``timeout`` row and the other jobs go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import unified
from adapters.base import Plan
from adapters.registry import get_adapter
from unified.context import ReferenceArtifacts
from unified.run.cache import job_key, reference_content_digest
from unified.run.job import Job, write_json
from unified.run.model_info import model_summary
from unified.run.reference import prepare_reference
from unified.run.results import append_record, new_record, read_records, write_csv
from unified.spec.model_summary import ModelSummary
from unified.spec.scenario import Scenario

PENDING_STATUSES = ("failed", "timeout")  # not cached: a rerun tries them again


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezelab"


@dataclass
class RunOptions:
    out: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    jobs: int = 1
    timeout: float | None = None  # overrides the scenario's evaluate.timeout
    backends: tuple[str, ...] = ()  # empty: all of the scenario's
    recipes: tuple[str, ...] = ()
    use_cache: bool = True


@dataclass
class Progress:
    """Callbacks for the CLI's progress bar; all optional."""

    on_stage: Callable[[str], None] = lambda _msg: None
    on_start: Callable[[Job], None] = lambda _job: None
    on_done: Callable[[Job, dict[str, Any]], None] = lambda _job, _rec: None


def _warn(message: str) -> None:
    print(f"squeezelab: warning: {message}", file=sys.stderr)


def _os_reason(exc: OSError) -> str:
    """'No space left on device', also from shutil.Error's list of (src, dst, why)."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        return str(exc.args[0][0][-1]) if exc.args[0] else str(exc)
    return exc.strerror or str(exc)


def expand_jobs(scenario: Scenario, options: RunOptions, multi_model: bool = False) -> list[Job]:
    """recipes × backends of one (single-model) scenario, filtered by the options."""
    backends = [b for b in scenario.backends if not options.backends or b in options.backends]
    recipes = [r for r in scenario.recipes if not options.recipes or r in options.recipes]
    model = scenario.model.label if multi_model else ""
    return [Job(recipe, backend, model) for recipe in recipes for backend in backends]


def scenario_order(scenario: Scenario) -> Callable[[dict[str, Any]], int]:
    """Sort key putting records in scenario order: model, recipe, backend."""
    order = {(view.model.label, recipe, backend): i for i, (view, recipe, backend) in
             enumerate((v, r, b) for v in scenario.views() for r in v.recipes
                       for b in v.backends)}
    return lambda record: order.get(
        (record["model"], record["recipe"], record["backend"]), len(order))


def count_jobs(scenario: Scenario, options: RunOptions) -> int:
    return sum(len(expand_jobs(view, options)) for view in scenario.views())


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def worker_env(backend: str, torch_threads: int, lock_path: Path) -> dict[str, str]:
    """The environment of a worker process of ``backend`` (its adapter adds what its toolkit
    reads at import; a user's explicit value wins)."""
    env = dict(os.environ)
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    for key, value in get_adapter(backend).capabilities.environment.items():
        env.setdefault(key, value)
    env["SQUEEZELAB_LATENCY_LOCK"] = str(lock_path)
    env["OMP_NUM_THREADS"] = str(torch_threads)
    # the worker must import this very package, and python: model sources from the cwd
    paths = [str(Path(unified.__file__).resolve().parents[1]), os.getcwd()]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class Runner:
    def __init__(self, scenario: Scenario, options: RunOptions,
                 progress: Progress | None = None) -> None:
        self.scenario = scenario
        self.options = options
        self.progress = progress or Progress()
        self.out = options.out
        self.results_path = self.out / "results.jsonl"
        self._lock = threading.Lock()
        self.records: list[dict[str, Any]] = []

    # -- public ---------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Run every model × recipe × backend; return the records in scenario order."""
        views = self.scenario.views()
        multi = len(views) > 1
        planned = [(view, job, self._plan(view, job))
                   for view in views for job in expand_jobs(view, self.options, multi)]
        self.out.mkdir(parents=True, exist_ok=True)
        # with several models, `model` is only the first of them: leave it out
        write_json(self.out / "scenario.json", self.scenario.model_dump(
            mode="json", exclude={"model"} if self.scenario.models else None))
        done = {r.get("job_key"): r for r in read_records(self.results_path)
                if r.get("status") not in PENDING_STATUSES}

        runnable: list[tuple[Scenario, Job, str, ReferenceArtifacts]] = []
        for view in views:
            self.progress.on_stage(f"reference model {view.model.label}")
            ref = prepare_reference(view, self.options.cache_dir)
            name = f"reference-{_safe(view.model.label)}.json" if multi else "reference.json"
            shutil.copy(ref.summary, self.out / name)
            ref_digest = reference_content_digest(ref.folder)
            summary = model_summary(view, ref)
            for _, job, plan in (p for p in planned if p[0] is view):
                if not isinstance(plan, dict):  # again, with what the model is made of
                    plan = self._plan(view, job, summary)
                key = job_key(view, job.recipe, job.backend, ref_digest,
                              get_adapter(job.backend).capabilities.versions())
                if key in done:  # resume: already in this run folder
                    self._keep(job, done[key])
                elif isinstance(plan, dict):  # unavailable toolkit or unsupported recipe
                    plan["job_key"] = key
                    self._finish(job, plan)
                elif (cached := self._from_cache(view, job, key)) is not None:
                    self._finish(job, cached)
                else:
                    runnable.append((view, job, key, ref))

        self.progress.on_stage("jobs")
        workers = max(1, self.options.jobs)
        threads = max(1, (os.cpu_count() or 1) // workers)
        if workers == 1:
            for view, job, key, ref in runnable:
                self._run_job(view, job, key, ref, threads)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for future in [pool.submit(self._run_job, view, job, key, ref, threads)
                               for view, job, key, ref in runnable]:
                    future.result()
        self.records.sort(key=scenario_order(self.scenario))
        write_csv(self.out / "results.csv", self.records)
        return self.records

    # -- steps ----------------------------------------------------------------------------

    def _plan(self, view: Scenario, job: Job,
              summary: ModelSummary | None = None) -> Plan | dict[str, Any]:
        """The adapter's plan (with the model's summary once the reference exists), or a
        finished record when the job cannot run at all."""
        adapter = get_adapter(job.backend)
        caps = adapter.capabilities
        plan = adapter.plan(view.recipes[job.recipe], summary)
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
        return folder / f"{job.recipe}@{job.backend}"

    def _cache_dir(self, key: str) -> Path:
        return self.options.cache_dir / "jobs" / key

    def _from_cache(self, view: Scenario, job: Job, key: str) -> dict[str, Any] | None:
        if not self.options.use_cache:
            return None
        folder = self._cache_dir(key)
        record_file = folder / "record.json"
        if not record_file.is_file():
            return None
        record: dict[str, Any] = json.loads(record_file.read_text())
        target = self._job_dir(job) / "artifacts"
        if (folder / "artifacts").is_dir() and not target.exists():
            try:
                shutil.copytree(folder / "artifacts", target)
            except OSError as exc:  # e.g. a full disk: run the job instead
                shutil.rmtree(target, ignore_errors=True)
                _warn(f"cached {job.label} not reused: {_os_reason(exc)}")
                return None
        record.update(scenario=view.name, model=view.model.label, recipe=job.recipe,
                      cached=True)
        return record

    def _store_in_cache(self, job: Job, key: str, job_dir: Path,
                        record: dict[str, Any]) -> None:
        """Best effort: the row is already in results.jsonl; a cache that cannot be written
        (a full disk, a read-only folder) costs a rerun next time, never this run."""
        folder = self._cache_dir(key)
        if folder.exists():
            return
        tmp = folder.parent / f".{key}.{os.getpid()}.{threading.get_ident()}"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            if (job_dir / "artifacts").is_dir():
                shutil.copytree(job_dir / "artifacts", tmp / "artifacts")
            tmp.mkdir(parents=True, exist_ok=True)
            write_json(tmp / "record.json", record)
        except OSError as exc:  # shutil.Error too
            shutil.rmtree(tmp, ignore_errors=True)
            _warn(f"{job.label} not stored in the cache {self.options.cache_dir}: "
                  f"{_os_reason(exc)}")
            return
        try:
            tmp.rename(folder)
        except OSError:  # a concurrent run stored it first
            shutil.rmtree(tmp, ignore_errors=True)

    def _run_job(self, view: Scenario, job: Job, key: str, ref: ReferenceArtifacts,
                 torch_threads: int) -> None:
        self.progress.on_start(job)
        job_dir = self._job_dir(job)
        if job_dir.exists():
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True)
        write_json(job_dir / "job.json", {
            "scenario": view.model_dump(mode="json"),
            "recipe": job.recipe,
            "backend": job.backend,
            "reference": str(ref.folder),
            "torch_threads": torch_threads,
        })
        timeout = self.options.timeout or view.evaluate.timeout
        record = self._spawn(view, job, job_dir, timeout, torch_threads)
        record["job_key"] = key
        self._finish(job, record)  # the row first: it must survive a failing cache write
        if record["status"] not in PENDING_STATUSES:
            self._store_in_cache(job, key, job_dir, record)

    def _spawn(self, view: Scenario, job: Job, job_dir: Path, timeout: float,
               torch_threads: int) -> dict[str, Any]:
        """Run the worker; turn every way it can end into a record."""
        env = worker_env(job.backend, torch_threads, self.options.cache_dir / "latency.lock")
        self.options.cache_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with (job_dir / "worker.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "unified.run.worker", str(job_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # so a timeout kills the worker's children too
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return self._record(
                    view, job, "timeout",
                    reason=f"no result after {timeout:g} s; worker killed "
                           f"(log: {job_dir / 'worker.log'})",
                    compress_seconds=round(time.monotonic() - start, 3))
        record_file = job_dir / "record.json"
        if code == 0 and record_file.is_file():
            record: dict[str, Any] = json.loads(record_file.read_text())
            return record
        error_file = job_dir / "error.json"
        if error_file.is_file():
            reason = json.loads(error_file.read_text())["reason"]
        elif code < 0:
            reason = f"worker killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"worker exited with code {code} without a result"
        return self._record(view, job, "failed", reason=f"{reason} (log: {job_dir / 'worker.log'})",
                            compress_seconds=round(time.monotonic() - start, 3),
                            versions=get_adapter(job.backend).capabilities.versions())

    def _keep(self, job: Job, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
        self.progress.on_done(job, record)

    def _finish(self, job: Job, record: dict[str, Any]) -> None:
        """Append to results.jsonl at once, so nothing finished is lost."""
        with self._lock:
            append_record(self.results_path, record)
            self.records.append(record)
        self.progress.on_done(job, record)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
