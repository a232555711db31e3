"""Jobs handed over one at a time into one run folder: what a search needs.

Every job is an ordinary job of the runner: planned by its adapter, taken from the run folder
(resume) or the cache when it is there, else run on the executor, its record appended to
``results.jsonl`` the moment it ends and stored in the cache. The executor stays open between
jobs and its local workers are kept warm. :meth:`JobSession.finish` then does what the end of
a run does: the paired latency pass over every measured row of the folder (the fp32 reference
interleaved), ``results.jsonl`` rewritten with the latencies, ``results.csv``,
``scenario.json`` (a plain scenario of every recipe the folder holds) and ``timings.json``.
So the table, ``select`` and the report read the folder as any run's.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from unified.context import ReferenceArtifacts
from unified.run.aggregate import fill_drops, fill_ratios
from unified.run.executor import Executor
from unified.run.expand import ROLE_BASELINE, ROLE_FP32, empty_recipe
from unified.run.job import Job, write_json
from unified.run.latency_pass import time_rows
from unified.run.options import Progress, RunOptions, make_executor
from unified.run.reference import load_summary
from unified.run.results import read_records, rewrite_records, write_csv
from unified.run.runner import PENDING_STATUSES, Runner
from unified.spec.baselines import MATCHED_BACKEND, NATIVE_BASELINE
from unified.spec.errors import SqueezelabError
from unified.spec.scenario import ImportedSchedule, Scenario
from unified.spec.steps import Recipe

# the parts of a scenario that make two runs comparable (not its recipes and backends)
_BASE_EXCLUDE = {"name", "recipes", "backends", "imported", "select", "regress"}


class JobSession(Runner):
    """A run folder that takes jobs one at a time (from one thread or several at once).

    ``scenario`` is the base: its model, data, budget, evaluation and select; the recipes and
    backends come with each job. Use as a context manager; call :meth:`finish` at the end.
    """

    def __init__(self, scenario: Scenario, options: RunOptions,
                 progress: Progress | None = None, keep_warm: int = 3) -> None:
        if len(scenario.views()) > 1:
            raise SqueezelabError("jobs one at a time run on one model: give model:, not "
                                  "models:")
        super().__init__(scenario, options, progress)
        self.keep_warm = keep_warm
        self._recipes: dict[str, Recipe] = {}
        self._backends: list[str] = []
        self._imported: dict[str, ImportedSchedule] = {}
        self._done: dict[Any, dict[str, Any]] = {}
        self._executor: Executor | None = None
        self._ref: ReferenceArtifacts | None = None
        self._latency_lock = threading.Lock()
        self._yardstick_lock = threading.Lock()
        self._start = time.monotonic()

    # -- opening and closing --------------------------------------------------------------

    def __enter__(self) -> JobSession:
        self.out.mkdir(parents=True, exist_ok=True)
        self._adopt_folder()
        self._done = self._resume()  # finished rows and hidden baselines, once each
        self._ref = self._reference(self.scenario, False)
        self._executor = make_executor(self.options, keep_warm=self.keep_warm)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._close_executor()

    def _close_executor(self) -> None:
        if self._executor is not None:
            self.timings["worker_starts"] = [
                vars(s) for s in getattr(self._executor, "starts", [])]
            self._executor.close()
            self._executor = None

    def _adopt_folder(self) -> None:
        """Resume a folder this session wrote before: keep the recipes its rows ran."""
        path = self.out / "scenario.json"
        if not path.is_file():
            return
        earlier = Scenario.model_validate_json(path.read_text())
        if earlier.model_dump(mode="json", exclude=_BASE_EXCLUDE) != \
                self.scenario.model_dump(mode="json", exclude=_BASE_EXCLUDE):
            raise SqueezelabError(f"{self.out} holds a run of another model, data, budget or "
                                  "evaluation; give another --out")
        self._recipes = dict(earlier.recipes)
        self._backends = list(earlier.backends)
        self._imported = dict(earlier.imported)

    # -- one job --------------------------------------------------------------------------

    def run_job(self, view: Scenario) -> dict[str, Any]:
        """Run the one job of ``view`` (one recipe on one backend, on the base's model and
        data) unless the folder or the cache has it; return its record."""
        if self._executor is None or self._ref is None:
            raise RuntimeError("run_job outside the session's with block")
        (name,) = view.recipes
        (backend,) = view.backends
        self._register(view)
        self._run_now(view, Job(name, backend))
        with self._lock:  # _finish has put a finished record in _done already
            record = next(r for r in reversed(self.records)
                          if r["recipe"] == name and r["backend"] == backend)
        self._measure_against_yardsticks(view, record)
        return record

    def _run_now(self, view: Scenario, job: Job) -> None:
        """Run one job unless the folder or the cache has it."""
        assert self._executor is not None and self._ref is not None
        tasks = self._classify(view, self._ref, [(job, self._plan(view, job))], self._done,
                               drop_idle_baselines=False)
        if tasks:
            self._executor.run([task for _, task in tasks], self._started,
                               lambda task, outcome: self._ended(view, task, outcome))

    def _finish(self, job: Job, record: dict[str, Any]) -> None:
        """As a run's, and the record is known to the session at once (a trial of the
        same job later is kept, not run again)."""
        super()._finish(job, record)
        if record.get("job_key") and record.get("status") not in PENDING_STATUSES:
            with self._lock:
                self._done[record["job_key"]] = record

    def _measure_against_yardsticks(self, view: Scenario, record: dict[str, Any]) -> None:
        """Judge the row as a run judges it (unified.run.aggregate): run what it is measured
        against when the folder lacks it — its backend's fp32 files (native×, deploy×) and
        its matched fp32+ft<N> baseline (the drop) — then fill its ratios and its drop."""
        assert self._executor is not None and self._ref is not None
        with self._yardstick_lock:  # one thread runs a yardstick; the others find it done
            with self._lock:
                known = [*self.records, *self.auxiliary]
            jobs: list[tuple[Scenario, Job]] = []
            backend = record["backend"]
            if not any(r.get("role") == ROLE_FP32 and r["backend"] == backend for r in known):
                empty = empty_recipe(self.scenario)
                if empty is None:  # no fp32 recipe: the hidden job a run adds
                    jobs.append((view, Job(NATIVE_BASELINE, backend, hidden=True)))
                else:  # the scenario's own fp32 recipe, as a row (as in a run)
                    fp32 = self.scenario.model_copy(update={
                        "recipes": {empty: self.scenario.recipes[empty]},
                        "backends": (backend,)})
                    self._register(fp32)
                    jobs.append((fp32, Job(empty, backend)))
            matched = record.get("matched_baseline")
            if matched and not any(r["recipe"] == matched for r in known):
                jobs.append((view, Job(matched, MATCHED_BACKEND)))
            for job_view, job in jobs:
                self._run_now(job_view, job)
        with self._lock:
            baselines = [r for r in self.records if r.get("role") == ROLE_BASELINE]
            fill_ratios([record], [*self.records, *self.auxiliary])
            fill_drops([record, *baselines],
                       {self.scenario.model.label: load_summary(self._ref).get("accuracy")})

    def time_latency(self, record: dict[str, Any]) -> None:
        """Time one measured row now, interleaved with the fp32 reference (the paired pass of
        one row; one at a time): its latency fields are set in place."""
        if self._ref is None:
            raise RuntimeError("time_latency outside the session's with block")
        with self._latency_lock:
            time_rows(self.scenario, self._ref, [record],
                      lambda r: self._artifacts("", r))

    def _register(self, view: Scenario) -> None:
        """Add the job's recipe and backend to the folder's scenario.json (written at once, so
        a folder killed mid-search still names every recipe its rows ran)."""
        ((name, recipe),) = view.recipes.items()
        with self._lock:
            known = self._recipes.get(name)
            if known is not None and known.canonical() != recipe.canonical():
                raise ValueError(f"recipe name {name!r} is taken by another recipe")
            changed = known is None or view.backends[0] not in self._backends
            self._recipes.setdefault(name, recipe)
            if view.backends[0] not in self._backends:
                self._backends.append(view.backends[0])
            self._imported.update(view.imported)
            if changed:
                write_json(self.out / "scenario.json",
                           self._folder_scenario().model_dump(mode="json"))

    def _folder_scenario(self) -> Scenario:
        order = {b: i for i, b in enumerate(self.scenario.backends)}
        return self.scenario.model_copy(update={
            "recipes": dict(self._recipes),
            "backends": tuple(sorted(self._backends, key=lambda b: order.get(b, len(order)))),
            "imported": dict(self._imported)})

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> list[dict[str, Any]]:
        """Stop the workers, time every measured row of the folder in one paired pass, write
        the folder's files; return its records (one per recipe × backend, the last wins)."""
        if self._ref is None:
            raise RuntimeError("finish outside the session's with block")
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for record in read_records(self.results_path):
            latest[(record["recipe"], record["backend"])] = record
        scenario = self._folder_scenario() if self._recipes else self.scenario
        self._close_executor()
        rank = {(r, b): i for i, (r, b) in enumerate(
            (r, b) for r in scenario.recipes for b in scenario.backends)}
        self.records = sorted(latest.values(),
                              key=lambda r: rank.get((r["recipe"], r["backend"]), len(rank)))
        label = self.scenario.model.label
        self._aggregate([scenario], {label: self._ref}, False)
        self._latency_pass([scenario], {label: self._ref}, False)
        rewrite_records(self.results_path, self.records)
        write_csv(self.out / "results.csv", self.records)
        if self._recipes:
            write_json(self.out / "scenario.json", scenario.model_dump(mode="json"))
        self.timings["wall_seconds"] = round(time.monotonic() - self._start, 3)
        write_json(self.out / "timings.json", self.timings)
        return self.records

