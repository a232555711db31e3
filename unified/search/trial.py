"""One trial of a search: sample a setting from the planned space, run it as an ordinary job,
turn its row into objective values and constraints.

Parameter names in the study: ``recipe``; ``<recipe>.backend``; ``<recipe>.<param>`` for a
parameter whose every value the backend takes (shared by those backends, so the sampler
learns across them), ``<recipe>.<param>@<backend>`` where the backend takes only some values
(a categorical of those), and ``<recipe>.setting@<backend>`` where support depends on the
combination (a categorical of the supported combinations).

A setting already evaluated (or running) is not run again: the trial is pruned as a duplicate
and an unexplored setting is queued for the next trial, so every evaluated trial is a
distinct job and the budget is spent on distinct settings.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

from unified.run.session import JobSession
from unified.search.objectives import MEASURED, Metric, constraints
from unified.search.space import Candidate, Setting, SpacePlan
from unified.spec.scenario import SelectSpec
from unified.spec.searchable import Param, Range

MAX_LISTED = 20000  # a space up to this size is listed to find an unexplored setting


class JobFailed(Exception):
    """The trial's job ended failed / timeout (or without a figure an objective needs)."""


def param_key(cand: Candidate, param: Param) -> str:
    shared = f"{cand.recipe}.{param.name}"
    return shared if cand.full(param) else f"{shared}@{cand.backend}"


def combo_key(cand: Candidate) -> str:
    return f"{cand.recipe}.setting@{cand.backend}"


def combo_label(params: list[Param], combo: tuple[Any, ...]) -> str:
    return ", ".join(f"{p.name}={v!r}" for p, v in zip(params, combo, strict=True))


def sample(trial: Any, plan: SpacePlan) -> Setting:
    """Ask ``trial`` (an optuna.Trial) for a setting, define-by-run on the planned space."""
    recipe = trial.suggest_categorical("recipe", plan.recipes())
    backend = trial.suggest_categorical(f"{recipe}.backend", plan.backends(recipe))
    cand = plan.candidate(recipe, backend)
    values: dict[str, Any] = {}
    if cand.combos is not None:
        discrete = cand.discrete()
        labels = [combo_label(discrete, c) for c in cand.combos]
        chosen = trial.suggest_categorical(combo_key(cand), labels)
        values.update(zip((p.name for p in discrete), cand.combos[labels.index(chosen)],
                          strict=True))
    for param in cand.params:
        if param.name in values:
            continue
        name, domain = param_key(cand, param), param.domain
        if isinstance(domain, Range) and cand.full(param):
            if domain.continuous:
                raw = trial.suggest_float(name, domain.low, domain.high)
            elif domain.is_int:
                raw = trial.suggest_int(name, int(domain.low), int(domain.high),
                                        step=int(domain.step or 1))
            else:
                raw = trial.suggest_float(name, domain.low, domain.high, step=domain.step)
            values[param.name] = domain.snap(raw)
        else:
            values[param.name] = trial.suggest_categorical(name, list(cand.allowed[param.name]))
    return plan.setting(recipe, backend, values)


def study_params(plan: SpacePlan, setting: Setting) -> dict[str, Any]:
    """The study's parameters that make the sampler give ``setting`` (to queue it)."""
    cand = plan.candidate(setting.recipe, setting.backend)
    values = setting.as_dict()
    params: dict[str, Any] = {"recipe": setting.recipe,
                              f"{setting.recipe}.backend": setting.backend}
    inside: set[str] = set()
    if cand.combos is not None:
        discrete = cand.discrete()
        params[combo_key(cand)] = combo_label(discrete, tuple(values[p.name] for p in discrete))
        inside = {p.name for p in discrete}
    for param in cand.params:
        if param.name not in inside:
            params[param_key(cand, param)] = values[param.name]
    return params


def row_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a trial keeps of its row (the row itself stays in results.jsonl)."""
    keep = ("recipe", "backend", "status", "reason", "accuracy", "accuracy_drop", "agreement",
            "onnx_bytes", "native_bytes", "size_ratio", "native_ratio", "latency_ms_p50",
            "speedup", "cached", "job_key")
    return {k: record.get(k) for k in keep}


class Objective:
    """The callable ``study.optimize`` runs, once per trial (from several threads at once
    with ``--jobs``)."""

    def __init__(self, plan: SpacePlan, session: JobSession, select: SelectSpec,
                 metrics: list[Metric], latency: bool, seed: int,
                 claimed: dict[str, int]) -> None:
        self.plan = plan
        self.session = session
        self.select = select
        self.metrics = metrics
        self.latency = latency
        self.claimed = claimed  # setting key → the trial that evaluated (or runs) it
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.exhausted = False
        self.enqueue: Callable[[dict[str, Any]], None] = lambda _params: None
        self.stop: Callable[[], None] = lambda: None

    def __call__(self, trial: Any) -> float | list[float]:
        import optuna

        trial.set_user_attr("interrupted", False)  # a retry inherits its failed trial's attrs
        setting = sample(trial, self.plan)
        with self.lock:
            earlier = self.claimed.get(setting.key)
            if earlier is None:
                self.claimed[setting.key] = trial.number
        trial.set_user_attr("setting", {"recipe": setting.recipe, "backend": setting.backend,
                                        "values": setting.as_dict(), "name": setting.name})
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier)
            self._queue_unexplored()
            raise optuna.TrialPruned(f"{setting.key} is trial {earlier}'s setting")
        try:
            record = self._run(setting)
        except BaseException:
            with self.lock:  # not evaluated: another trial may take it
                self.claimed.pop(setting.key, None)
            raise
        trial.set_user_attr("row", row_summary(record))
        if record["status"] not in MEASURED:
            raise JobFailed(f"{record['status']}: {record.get('reason')}")
        for name, value in constraints(record, self.select).items():
            trial.set_constraint(name, value)
        values = [metric.read(record) for metric in self.metrics]
        missing = [m.name for m, v in zip(self.metrics, values, strict=True) if v is None]
        if missing:
            raise JobFailed(f"{', '.join(missing)} not measured")
        floats = [float(v) for v in values if v is not None]
        return floats[0] if len(floats) == 1 else floats

    def _run(self, setting: Setting) -> dict[str, Any]:
        search = self.plan.search
        recipe = search.recipe(setting.recipe, setting.as_dict())
        view = search.trial_scenario(setting.name, setting.recipe, recipe, setting.backend)
        record = self.session.run_job(view)
        if self.latency and record["status"] in MEASURED:
            self.session.time_latency(record)
        return record

    def _queue_unexplored(self) -> None:
        """Queue a setting no trial has evaluated (the sampler proposed a known one); when
        none is left the search stops."""
        with self.lock:
            fresh = self._unexplored()
            if fresh is None:
                self.exhausted = True
            else:  # claimed by its queued trial, so that no other duplicate queues it too
                self.claimed.setdefault(f"queued:{fresh.key}", -1)
        if fresh is None:
            self.stop()
        else:
            self.enqueue(study_params(self.plan, fresh))

    def _unexplored(self) -> Setting | None:
        def taken(s: Setting) -> bool:
            return s.key in self.claimed or f"queued:{s.key}" in self.claimed

        size = self.plan.size()
        if size is not None and size <= MAX_LISTED:
            left = [s for s in self.plan.settings() if not taken(s)]
            return self.rng.choice(left) if left else None
        for _ in range(1000):
            setting = self.plan.random_setting(self.rng)
            if not taken(setting):
                return setting
        return None
