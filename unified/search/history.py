"""A search's history as plain data (``trials.json`` in the run folder): every trial with its
setting, objective values, constraints and row; the Pareto front; the best setting per
toolkit; the winner and its recipe as a plain scenario snippet (and ``winner.yaml``, a whole
plain scenario that reruns it). The report reads this file, not the study: no Optuna needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unified.run.job import write_json
from unified.search.objectives import Metric, Target
from unified.search.space import SpacePlan
from unified.spec.scenario import SelectSpec

HISTORY_FILE = "trials.json"
WINNER_FILE = "winner.yaml"


def feasible(trial: Any) -> bool:
    """A complete trial whose every constraint is ≤ 0 (Optuna's rule)."""
    return trial.state.name == "COMPLETE" and all(v <= 0 for v in trial.constraints.values())


def meets(trial: Any, targets: tuple[Target, ...]) -> bool:
    """Feasible, and every target reached by its row."""
    row = trial.user_attrs.get("row")
    # the row summary keeps every field a metric reads
    return feasible(trial) and row is not None and all(t.met(row) for t in targets)


def trial_entry(trial: Any, metrics: list[Metric], targets: tuple[Target, ...]) -> dict[str, Any]:
    setting = trial.user_attrs.get("setting") or {}
    row = trial.user_attrs.get("row") or {}
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
    values = trial.values if trial.state.name == "COMPLETE" else None
    state = trial.state.name.lower()
    if trial.user_attrs.get("interrupted"):
        state, row = "interrupted", {}
    return {
        "number": trial.number,
        "state": state,
        "recipe": setting.get("recipe"), "backend": setting.get("backend"),
        "name": setting.get("name"), "values": setting.get("values"),
        "objectives": dict(zip([m.name for m in metrics], values, strict=True))
        if values else None,
        "constraints": dict(trial.constraints), "feasible": feasible(trial),
        "meets_targets": meets(trial, targets) if targets else None,
        "row": row or None, "seconds": seconds,
        "duplicate_of": trial.user_attrs.get("duplicate_of"),
        "retry_of": trial.system_attrs.get("failed_trial"),
    }


def _dominates(a: list[float], b: list[float], maximize: list[bool]) -> bool:
    better = [(x >= y) if up else (x <= y) for x, y, up in zip(a, b, maximize, strict=True)]
    strictly = [(x > y) if up else (x < y) for x, y, up in zip(a, b, maximize, strict=True)]
    return all(better) and any(strictly)


def pareto(entries: list[dict[str, Any]], metrics: list[Metric]) -> list[int]:
    """Feasible trials not dominated on the objectives (and on accuracy drop when it is not
    an objective but was measured: the trade-off a size search is about)."""
    names = [m.name for m in metrics]
    maximize = [m.maximize for m in metrics]
    with_drop = "accuracy_drop" not in names
    points = {}
    for e in entries:
        if not e["feasible"] or not e["objectives"]:
            continue
        point = [e["objectives"][n] for n in names]
        drop = (e["row"] or {}).get("accuracy_drop")
        if with_drop and drop is not None:
            point.append(drop)
        points[e["number"]] = point
    if with_drop and any(len(p) != len(names) + 1 for p in points.values()):
        points = {n: p[:len(names)] for n, p in points.items()}
    axes = maximize + ([False] if points and len(next(iter(points.values()))) > len(names)
                       else [])
    return [n for n, p in points.items()
            if not any(_dominates(q, p, axes) for m, q in points.items() if m != n)]


def _rank(entry: dict[str, Any], metrics: list[Metric]) -> tuple[float, ...]:
    """Sort key: the objectives in order (best first), then the smaller accuracy drop."""
    objs = entry["objectives"]
    key = [-objs[m.name] if m.maximize else objs[m.name] for m in metrics]
    drop = (entry["row"] or {}).get("accuracy_drop")
    return (*key, drop if drop is not None else 0.0, entry["number"])


def trial_history(study: Any, plan: SpacePlan, metrics: list[Metric], select: SelectSpec,
                  targets: tuple[Target, ...], records: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole history of a search as plain data (see the module docstring)."""
    entries = [trial_entry(t, metrics, targets) for t in study.trials]
    good = sorted((e for e in entries if e["feasible"] and e["objectives"]),
                  key=lambda e: _rank(e, metrics))
    best_per_backend: dict[str, Any] = {}
    for backend in dict.fromkeys(c.backend for c in plan.candidates):
        mine = [e for e in good if e["backend"] == backend]
        tried = [e for e in entries if e["backend"] == backend and e["row"]]
        best_per_backend[backend] = mine[0]["number"] if mine else (
            f"no feasible trial ({len(tried)} tried)")
    winner = good[0] if good else None
    first_met = next((e["number"] for e in entries if e["meets_targets"]), None)
    return {
        "scenario": plan.search.scenario.name,
        "objectives": [{"name": m.name, "label": m.label, "maximize": m.maximize}
                       for m in metrics],
        "select": select.model_dump(mode="json"),
        "targets": [str(t) for t in targets],
        "space": {"size": plan.size(), "candidates": [
            {"recipe": c.recipe, "backend": c.backend, "status": c.status,
             "allowed": {k: list(v) for k, v in c.allowed.items()},
             "unsupported": {k: {str(v): r for v, r in d.items()}
                             for k, d in c.unsupported.items()}}
            for c in plan.candidates],
            "excluded": [list(x) for x in plan.excluded]},
        "trials": entries,
        "evaluated": sum(1 for e in entries if e["row"] is not None),
        "pareto": pareto(entries, metrics),
        "best_per_backend": best_per_backend,
        "winner": winner["number"] if winner else None,
        "first_meeting_targets": first_met,
        "met_by": study.user_attrs.get("met_by"),
        "snippet": snippet(plan, winner) if winner else None,
        "rows": len(records),
    }


def _entries_of(plan: SpacePlan, entry: dict[str, Any]) -> list[Any]:
    space = plan.search.spaces[entry["recipe"]]
    entries = space.entries(entry["values"]) if space.params else list(space.template)
    imported = plan.search.scenario.imported.get(entry["recipe"])
    if imported is not None:  # the schedule file by its absolute path: reruns from anywhere
        entries = [{"distiller": imported.source} if isinstance(e, dict) and "distiller" in e
                   else e for e in entries]
    return entries


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def snippet(plan: SpacePlan, entry: dict[str, Any]) -> str:
    """The winning recipe as plain scenario YAML (recipes and backends) to paste and rerun."""
    lines = [f"backends: [{entry['backend']}]", "recipes:", f"  {entry['name']}:"]
    steps = _entries_of(plan, entry)
    if not steps:
        lines[-1] += " []"
    for step in steps:
        if isinstance(step, dict) and len(step) == 1:
            ((kind, body),) = step.items()
            lines.append(f"    - {kind}: {_flow(body) if body is not None else '{}'}")
        else:
            lines.append(f"    - {_flow(step)}")
    return "\n".join(lines)


def winner_scenario(plan: SpacePlan, entry: dict[str, Any]) -> dict[str, Any]:
    """A whole plain scenario of the winner alone (paths absolute): ``squeezelab run`` on it
    reruns the winning job (from the cache when it is still there)."""
    base = plan.search.scenario
    data = base.model_dump(mode="json", exclude_defaults=True,
                           exclude={"recipes", "backends", "imported", "models"})
    data["name"] = f"{base.name}-winner"
    data["version"] = base.version
    data["backends"] = [entry["backend"]]
    data["recipes"] = {entry["name"]: _entries_of(plan, entry)}
    return data


def write_history(out: Path, history: dict[str, Any], plan: SpacePlan) -> None:
    """trials.json, and winner.yaml when a trial won."""
    write_json(out / HISTORY_FILE, history)
    winner = next((e for e in history["trials"] if e["number"] == history["winner"]), None)
    if winner is not None:
        text = yaml.safe_dump(winner_scenario(plan, winner), sort_keys=False, width=100)
        (out / WINNER_FILE).write_text(f"# the winning trial ({winner['number']}) of the "
                                       f"search in this folder, as a plain scenario\n{text}")


def read_history(out: Path) -> dict[str, Any] | None:
    path = out / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else None
