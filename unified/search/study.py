"""The search loop: an Optuna study over the planned space, stored in the run folder.

The study is SQLite in the run folder (``study.db``). Optuna's heartbeat marks a trial whose
process died; a search started again on the folder (it holds a lock on it, so no other
process can be running its trials) fails every trial still marked running at once and
queues each again, once (``RetryHeartbeatStaleTrialCallback(max_retry=1)``). Finished trials
stay in the study and are never run again; a retried trial's job comes back from
``results.jsonl`` or the cache when it had finished before the kill.

``--trials N`` counts evaluated trials: a duplicate the sampler proposes is pruned, not
counted, and an unexplored setting is queued instead; a trial interrupted by a kill is not
counted either (its retry is).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified.run.job import write_json
from unified.run.options import Progress, RunOptions
from unified.run.session import JobSession
from unified.search.history import trial_history, write_history
from unified.search.objectives import (
    Target,
    check_for_data,
    needs_latency,
    objectives,
)
from unified.search.space import SpacePlan, plan_space
from unified.search.trial import JobFailed, Objective
from unified.spec.errors import SqueezelabError
from unified.spec.search_space import SearchScenario

STUDY_NAME = "squeezelab-search"
INSTALL_HINT = "pip install 'squeezelab[search]'"


@dataclass
class SearchOptions:
    trials: int = 30
    until_met: bool = False
    targets: tuple[Target, ...] = ()
    sampler: str = "tpe"  # tpe | nsga2
    jobs: int = 1  # trials at once
    heartbeat_seconds: int = 30
    # each evaluated trial as it ends: its history entry, and how many are evaluated
    on_trial: Callable[[dict[str, Any], int], None] = lambda _entry, _done: None


@dataclass
class SearchResult:
    history: dict[str, Any]  # what trials.json holds
    records: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the run folder for this search (the kernel lets go when the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".search.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SqueezelabError(f"{folder}: another search is running in this folder") \
                from None
        yield


def _fingerprint(plan: SpacePlan, select: dict[str, Any]) -> dict[str, Any]:
    """What a resumed search must share with the search that wrote the folder."""
    base = plan.search.scenario.model_dump(mode="json", exclude={"recipes", "backends",
                                                                  "imported", "select"})
    space = [{"recipe": c.recipe, "backend": c.backend,
              "params": {p.name: p.domain.describe() for p in c.params},
              "allowed": {k: list(v) for k, v in c.allowed.items()},
              "combos": [list(x) for x in c.combos] if c.combos is not None else None}
             for c in plan.candidates]
    return {"base": base, "select": select, "space": space}


def _check_folder(out: Path, fingerprint: dict[str, Any]) -> None:
    path = out / "search.json"
    if path.is_file():
        earlier = json.loads(path.read_text())
        if earlier != json.loads(json.dumps(fingerprint, default=str)):
            raise SqueezelabError(f"{out} holds a search of another scenario, space or "
                                  "select; give another --out")
    elif (out / "results.jsonl").is_file():
        raise SqueezelabError(f"{out} holds a run that is not a search; give another --out")
    write_json(path, fingerprint)


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SqueezelabError(f"squeezelab search needs Optuna: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _sampler(optuna: Any, name: str, seed: int, options: SearchOptions) -> Any:
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=min(50, max(4, options.trials // 4)))
    return optuna.samplers.TPESampler(
        seed=seed, multivariate=True, group=True, constant_liar=options.jobs > 1,
        n_startup_trials=min(10, max(3, options.trials // 3)))


def open_study(optuna: Any, out: Path, directions: list[str], options: SearchOptions,
               seed: int) -> Any:
    """The folder's study (created or loaded), interrupted trials failed and queued again."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{(out / 'study.db').resolve()}",
        heartbeat_interval=options.heartbeat_seconds,
        grace_period=4 * options.heartbeat_seconds,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=1))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, load_if_exists=True,
                                directions=directions)
    if [d.name.lower() for d in study.directions] != directions:
        raise SqueezelabError(f"{out}: its study optimizes other objectives; give another --out")
    # a new seed per start, so that a resumed search does not repeat the first one's draws
    study.sampler = _sampler(optuna, options.sampler, seed + len(study.trials), options)
    running = optuna.trial.TrialState.RUNNING
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        # killed mid-trial (maybe after its row, before Optuna heard of it): not evaluated;
        # its retry takes the row from results.jsonl
        storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        if storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL):
            storage.heartbeat_stale_trial_callback(study, storage.get_trial(trial._trial_id))
    return study


def evaluated(trial: Any) -> bool:
    """Did the trial run (or reuse) a job? Duplicates and interrupted trials did not."""
    return (trial.state.name in ("COMPLETE", "FAIL") and "row" in trial.user_attrs
            and not trial.user_attrs.get("interrupted"))


def run_search(search: SearchScenario, run: RunOptions, options: SearchOptions,
               progress: Progress | None = None) -> SearchResult:
    """Search ``search``'s space into the run folder ``run.out``; resume what is there."""
    scenario = search.scenario
    if scenario.models:
        raise SqueezelabError("a search runs on one model: give model:, not models:")
    metrics = objectives(scenario.select)
    check_for_data(scenario.select, options.targets, scenario.data.labelled)
    plan = plan_space(search)
    if not plan.candidates:
        raise SqueezelabError("no recipe of the scenario runs on any of its backends: " +
                              "; ".join(f"{r} @ {b}: {why}" for r, b, why in plan.excluded))
    optuna = _optuna()
    start = time.monotonic()
    with folder_lock(run.out):
        _check_folder(run.out, _fingerprint(plan, scenario.select.model_dump(mode="json")))
        directions = ["maximize" if m.maximize else "minimize" for m in metrics]
        study = open_study(optuna, run.out, directions, options, scenario.seed)
        claimed = {t.user_attrs["setting"]["name"] + "@" + t.user_attrs["setting"]["backend"]:
                   t.number for t in study.trials if evaluated(t)}
        latency = needs_latency(scenario.select, options.targets)
        with JobSession(scenario, run, progress) as session:
            objective = Objective(plan, session, scenario.select, metrics, latency,
                                  scenario.seed + len(study.trials), claimed)
            objective.enqueue = study.enqueue_trial
            objective.stop = study.stop
            _optimize(optuna, study, objective, metrics, options)
            records = session.finish()
        history = trial_history(study, plan, metrics, scenario.select, options.targets,
                                records)
        history["wall_seconds"] = round(time.monotonic() - start, 1)
        write_history(run.out, history, plan)
    return SearchResult(history, records)


def _optimize(optuna: Any, study: Any, objective: Objective, metrics: list[Any],
              options: SearchOptions) -> None:
    """Run trials until N are evaluated, the space is used up, or (--until-met) a trial
    meets the constraints and the targets."""
    from unified.search.history import meets, trial_entry

    def after(study: Any, trial: Any) -> None:
        if evaluated(trial):
            options.on_trial(trial_entry(trial, metrics, options.targets),
                             sum(evaluated(t) for t in study.get_trials(deepcopy=False)))
        if options.until_met and meets(trial, options.targets):
            study.set_user_attr("met_by", trial.number)
            study.stop()

    while True:
        trials = study.get_trials(deepcopy=False)
        done = sum(evaluated(t) for t in trials)
        met = options.until_met and any(meets(t, options.targets) for t in trials)
        if met or done >= options.trials or objective.exhausted:
            return
        left = options.trials - done
        study.optimize(objective, n_trials=left, n_jobs=min(options.jobs, left),
                       catch=(JobFailed,), callbacks=[after], gc_after_trial=False)
