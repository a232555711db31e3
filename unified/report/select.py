"""Pick the best toolkit: constraints, a winner per objective, the Pareto front, and one
line for every other backend on why it lost or was excluded.

Only compressed rows compete: each backend's fp32 row and the matched ``fp32+ft<N>``
baselines are yardsticks, never a recommendation. Size is the deployable artifact's ratio
to the same toolkit's fp32 one (``deploy_ratio``: .pt, .tflite, .mlpackage, the ONNX for
onnxruntime), so formats compare like for like.

Differences inside the measured spread are ties. Latency is compared by speedup intervals
(the paired latency pass gives each row of a model a 95 % interval of its speedup over the
fp32 reference); accuracy, for rows repeated with several seeds (``evaluate.repeats``), by
mean ± standard deviation: two rows whose ±1 std bars overlap are equally accurate. Ties
count for the winners and for the Pareto front alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unified.spec.scenario import SelectSpec

MEASURED = ("ok", "approximated")
YARDSTICKS = ("fp32", "baseline")  # record roles that never win


@dataclass(frozen=True)
class Objective:
    column: str  # the record field
    unit: str  # how a value reads
    higher_is_better: bool = False

    def key(self, record: dict[str, Any]) -> float:
        """Smaller is better."""
        value = float(record[self.column])
        return -value if self.higher_is_better else value


OBJECTIVES: dict[str, Objective] = {
    "size": Objective("deploy_ratio", "× smaller than its toolkit's fp32 file", True),
    "native_size": Objective("native_bytes", "native bytes"),
    "onnx_size": Objective("onnx_bytes", "ONNX bytes"),
    "latency": Objective("latency_ms_p50", "ms p50"),
    "accuracy_drop": Objective("accuracy_drop", "accuracy drop"),
}


def row_name(record: dict[str, Any], with_model: bool = False) -> str:
    name = f"{record['recipe']} @ {record['backend']}"
    return f"{record['model']}: {name}" if with_model else name


def competes(record: dict[str, Any]) -> bool:
    """A compressed row (not a backend's fp32 row, not a matched baseline)."""
    return record.get("role") not in YARDSTICKS


def exclusion(record: dict[str, Any], spec: SelectSpec) -> str | None:
    """Why a row cannot be recommended, or None if it meets every constraint."""
    if record["status"] not in MEASURED:
        return f"{record['status']}: {record.get('reason') or 'no result'}"
    checks = (
        ("accuracy_drop", spec.max_accuracy_drop, "accuracy drop", lambda v, lim: v > lim),
        ("agreement", spec.min_agreement, "agreement", lambda v, lim: v < lim),
        ("onnx_bytes", spec.max_onnx_bytes, "ONNX bytes", lambda v, lim: v > lim),
        ("latency_ms_p50", spec.max_latency_ms, "latency p50 ms", lambda v, lim: v > lim),
    )
    for name, limit, label, violates in checks:
        if limit is None:
            continue
        value = record.get(name)
        if value is None:
            return f"{label} not measured"
        if violates(value, limit):
            return f"{label} {value:.4g} violates the limit {limit:g}"
    return None


def interval(record: dict[str, Any]) -> tuple[float, float] | None:
    """A row's speedup interval, or None when it has none."""
    low, high = record.get("speedup_ci_low"), record.get("speedup_ci_high")
    return None if low is None or high is None else (float(low), float(high))


def latency_order(a: dict[str, Any], b: dict[str, Any]) -> int:
    """-1 when ``a`` is measurably faster than ``b``, 1 when slower, 0 for a tie: rows of one
    model whose speedup intervals overlap (rows without intervals compare their p50)."""
    ia, ib = interval(a), interval(b)
    if ia is not None and ib is not None and a.get("model") == b.get("model"):
        if ia[0] > ib[1]:
            return -1
        return 1 if ib[0] > ia[1] else 0
    pa, pb = float(a["latency_ms_p50"]), float(b["latency_ms_p50"])
    return (pa > pb) - (pa < pb)


def _quality(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The quality figure two rows compare on: accuracy, or agreement on unlabelled data."""
    return "accuracy" if a.get("accuracy") is not None or b.get("accuracy") is not None \
        else "agreement"


def accuracy_order(a: dict[str, Any], b: dict[str, Any]) -> int:
    """-1 when ``a`` is measurably more accurate than ``b``, 1 when less, 0 for a tie: equal,
    or apart by no more than their standard deviations over seeds added up (±1 std bars
    that overlap)."""
    name = _quality(a, b)
    va, vb = a.get(name) or 0.0, b.get(name) or 0.0
    spread = (a.get(f"{name}_std") or 0.0) + (b.get(f"{name}_std") or 0.0)
    if abs(va - vb) <= spread:
        return 0
    return (va < vb) - (va > vb)


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` on accuracy ↑ (ties by spread), deploy_ratio ↑ and
    latency (ties by interval) and better on one of them."""
    accuracy, latency = accuracy_order(a, b), latency_order(a, b)
    if accuracy > 0 or a["deploy_ratio"] < b["deploy_ratio"] or latency > 0:
        return False
    return accuracy < 0 or a["deploy_ratio"] > b["deploy_ratio"] or latency < 0


def pareto_front(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated on (accuracy ↑, deploy_ratio ↑, latency ↓, ties by spread and
    interval); backends' fp32 rows take part, matched baselines do not."""
    rows = [r for r in records if r["status"] in MEASURED and r.get("role") != "baseline"
            and r.get("deploy_ratio") is not None and r.get("latency_ms_p50") is not None]
    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _latency_winner(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any],
                                                                list[dict[str, Any]]]:
    """The fastest row and the rows tied with it (overlapping speedup intervals); among
    the tied, the most accurate, then the smallest, wins."""
    fastest = min(candidates, key=lambda r: r["latency_ms_p50"])
    tied = [r for r in candidates if latency_order(r, fastest) == 0]
    tied.sort(key=lambda r: (-(r.get("accuracy") or 0.0), -(r.get("deploy_ratio") or 0.0),
                             r["latency_ms_p50"]))
    return tied[0], tied[1:]


def _accuracy_winner(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any],
                                                                 list[dict[str, Any]]]:
    """The smallest drop and the rows whose accuracy ties it within their spread over
    seeds; among the tied, the smallest (deploy_ratio), then the smallest drop, wins."""
    best = min(candidates, key=lambda r: r["accuracy_drop"])
    tied = [r for r in candidates if accuracy_order(r, best) == 0]
    tied.sort(key=lambda r: (-(r.get("deploy_ratio") or 0.0), r["accuracy_drop"]))
    return tied[0], tied[1:]


TIE_RULES = {
    "latency": "speedup intervals overlap; the most accurate wins",
    "accuracy_drop": "accuracy within the spread of its seeds; the smallest wins",
}


def _plus_minus(record: dict[str, Any], name: str, std_name: str) -> str:
    value, std = record.get(name), record.get(std_name)
    if value is None:
        return "–"
    return f"{value:+.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _figure(objective: str, row: dict[str, Any]) -> str:
    """How the winner of an objective reads, e.g. '7.80× smaller than its toolkit's fp32
    .mlpackage'."""
    spec = OBJECTIVES[objective]
    value = row[spec.column]
    if objective == "size":
        kind = row.get("deploy_format") or "file"
        kb = f", {row['deploy_bytes'] / 1024:.1f} KB" if row.get("deploy_bytes") else ""
        return f"{value:.2f}× smaller than its toolkit's fp32 {kind}{kb}"
    text = f"{value:.4g} {spec.unit}"
    if objective == "latency" and (ci := interval(row)) is not None:
        text += f", speedup {row['speedup']:.2f} [{ci[0]:.2f}–{ci[1]:.2f}]"
    return text


@dataclass
class Recommendation:
    winners: dict[str, dict[str, Any]]  # objective → row
    pareto: list[dict[str, Any]]
    feasible: list[dict[str, Any]]
    excluded: dict[str, str]  # row name → reason
    name: Callable[[dict[str, Any]], str] = row_name  # how rows are named
    backend_verdicts: dict[str, str] = field(default_factory=dict)
    ties: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # objective → rows

    def lines(self) -> list[str]:
        out = []
        for objective, row in self.winners.items():
            drop = _plus_minus(row, "accuracy_drop", "accuracy_std")
            against = row.get("matched_baseline")
            line = (f"best {objective}: {self.name(row)} ({_figure(objective, row)}, "
                    f"accuracy drop {drop}" + (f" vs {against}" if against else "") + ")")
            tied = self.ties.get(objective)
            if tied:
                line += (f"; tied ({TIE_RULES[objective]}): "
                         + ", ".join(self.name(r) for r in tied))
            out.append(line)
        if not self.winners:
            out.append("no compressed row meets the constraints")
        out.append("Pareto front (accuracy, size, latency): "
                   + (", ".join(self.name(r) for r in self.pareto) or "empty"))
        out.extend(f"{backend}: {verdict}" for backend, verdict in self.backend_verdicts.items())
        return out


def recommend(records: Sequence[dict[str, Any]], spec: SelectSpec) -> Recommendation:
    with_model = len({r.get("model") for r in records}) > 1

    def name(r: dict[str, Any]) -> str:
        return row_name(r, with_model)

    excluded = {name(r): why for r in records if (why := exclusion(r, spec)) is not None}
    feasible = [r for r in records if name(r) not in excluded]
    winners: dict[str, dict[str, Any]] = {}
    ties: dict[str, list[dict[str, Any]]] = {}
    for objective in spec.minimize:
        goal = OBJECTIVES[objective]
        candidates = [r for r in feasible if competes(r) and r.get(goal.column) is not None]
        if candidates and objective == "latency":
            winners[objective], ties[objective] = _latency_winner(candidates)
        elif candidates and objective == "accuracy_drop":
            winners[objective], ties[objective] = _accuracy_winner(candidates)
        elif candidates:
            winners[objective] = min(
                candidates, key=lambda r: (goal.key(r), -(r.get("accuracy") or 0.0)))
    rec = Recommendation(winners, pareto_front(records), feasible, excluded, name, ties=ties)
    rec.backend_verdicts = _backend_verdicts(records, rec)
    return rec


def _compare(objective: str, best: dict[str, Any], winner: dict[str, Any],
             name: str) -> str:
    """One objective of a losing backend's line."""
    goal = OBJECTIVES[objective]
    if objective == "latency" and latency_order(best, winner) == 0:
        return f"latency: best {name} ties the winner (speedup intervals overlap)"
    if objective == "accuracy_drop" and accuracy_order(best, winner) == 0:
        return f"accuracy drop: best {name} ties the winner (within the spread of its seeds)"
    if objective == "size":
        return (f"size: best {name} is {best[goal.column]:.2f}× smaller than its fp32 "
                f"{best.get('deploy_format') or 'file'} (the winner "
                f"{winner[goal.column]:.2f}×)")
    if not winner[goal.column]:
        return f"{objective}: best {name}"
    return (f"{objective}: best {name} is {best[goal.column] / winner[goal.column]:.2f}× "
            f"the winner's {goal.unit}")


def _backend_verdicts(records: Sequence[dict[str, Any]],
                      rec: Recommendation) -> dict[str, str]:
    """One line per backend: why it won, lost, or was excluded."""
    verdicts: dict[str, str] = {}
    backends = list(dict.fromkeys(r["backend"] for r in records if competes(r)))
    for backend in backends:
        won = [o for o, row in rec.winners.items() if row["backend"] == backend]
        if won:
            verdicts[backend] = f"wins {', '.join(won)}"
            continue
        mine = [r for r in rec.feasible if r["backend"] == backend and competes(r)]
        if not mine:
            reasons = [rec.excluded[rec.name(r)] for r in records
                       if r["backend"] == backend and rec.name(r) in rec.excluded]
            verdicts[backend] = "excluded: every compressed row fails a constraint (" + \
                "; ".join(dict.fromkeys(reasons)) + ")"
            continue
        parts = []
        for objective, winner in rec.winners.items():
            goal = OBJECTIVES[objective]
            best = min((r for r in mine if r.get(goal.column) is not None),
                       key=goal.key, default=None)
            parts.append(f"{objective} not measured" if best is None
                         else _compare(objective, best, winner, rec.name(best)))
        verdicts[backend] = "loses — " + "; ".join(parts) if parts else "no objective"
    return verdicts
