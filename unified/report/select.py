"""Pick the best toolkit: constraints, a winner per objective, the Pareto front, and one
line for every other backend on why it lost or was excluded.

Latency is compared by speedup intervals (the paired latency pass gives each row of a model
a 95 % interval of its speedup over the fp32 reference): rows of one model whose intervals
overlap are ties, for the latency winner and for the Pareto front alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from unified.spec.scenario import SelectSpec

MEASURED = ("ok", "approximated")
# objective name → (record field, human unit)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "size": ("onnx_bytes", "ONNX bytes"),
    "native_size": ("native_bytes", "native bytes"),
    "latency": ("latency_ms_p50", "ms p50"),
    "accuracy_drop": ("accuracy_drop", "accuracy drop"),
}


def row_name(record: dict[str, Any], with_model: bool = False) -> str:
    name = f"{record['recipe']} @ {record['backend']}"
    return f"{record['model']}: {name}" if with_model else name


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


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` on accuracy ↑, ONNX bytes ↓ and latency (ties by
    interval) and better on one of them."""
    acc_a, acc_b = a.get("accuracy") or 0.0, b.get("accuracy") or 0.0
    latency = latency_order(a, b)
    if acc_a < acc_b or a["onnx_bytes"] > b["onnx_bytes"] or latency > 0:
        return False
    return acc_a > acc_b or a["onnx_bytes"] < b["onnx_bytes"] or latency < 0


def pareto_front(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows not dominated on (accuracy ↑, onnx_bytes ↓, latency ↓, ties by interval)."""
    rows = [r for r in records if r["status"] in MEASURED
            and r.get("onnx_bytes") is not None and r.get("latency_ms_p50") is not None]
    return [r for r in rows if not any(dominates(o, r) for o in rows if o is not r)]


def _latency_winner(candidates: list[dict[str, Any]]) -> tuple[dict[str, Any],
                                                                list[dict[str, Any]]]:
    """The fastest row and the rows tied with it (overlapping speedup intervals); among
    the tied, the most accurate, then the smallest, wins."""
    fastest = min(candidates, key=lambda r: r["latency_ms_p50"])
    tied = [r for r in candidates if latency_order(r, fastest) == 0]
    tied.sort(key=lambda r: (-(r.get("accuracy") or 0.0), r.get("onnx_bytes") or 0,
                             r["latency_ms_p50"]))
    return tied[0], tied[1:]


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
            column, unit = OBJECTIVES[objective]
            speed = ""
            if objective == "latency" and (ci := interval(row)) is not None:
                speed = f", speedup {row['speedup']:.2f} [{ci[0]:.2f}–{ci[1]:.2f}]"
            line = (f"best {objective}: {self.name(row)} ({row[column]:.4g} {unit}{speed}, "
                    f"accuracy drop {_fmt(row.get('accuracy_drop'))})")
            tied = self.ties.get(objective)
            if tied:
                line += ("; tied (speedup intervals overlap; the most accurate wins): "
                         + ", ".join(self.name(r) for r in tied))
            out.append(line)
        if not self.winners:
            out.append("no row meets the constraints")
        out.append("Pareto front (accuracy, size, latency): "
                   + (", ".join(self.name(r) for r in self.pareto) or "empty"))
        out.extend(f"{backend}: {verdict}" for backend, verdict in self.backend_verdicts.items())
        return out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def recommend(records: Sequence[dict[str, Any]], spec: SelectSpec) -> Recommendation:
    with_model = len({r.get("model") for r in records}) > 1

    def name(r: dict[str, Any]) -> str:
        return row_name(r, with_model)

    excluded = {name(r): why for r in records if (why := exclusion(r, spec)) is not None}
    feasible = [r for r in records if name(r) not in excluded]
    winners: dict[str, dict[str, Any]] = {}
    ties: dict[str, list[dict[str, Any]]] = {}
    for objective in spec.minimize:
        column, _ = OBJECTIVES[objective]
        candidates = [r for r in feasible if r.get(column) is not None]
        if candidates and objective == "latency":
            winners[objective], ties[objective] = _latency_winner(candidates)
        elif candidates:
            winners[objective] = min(
                candidates, key=lambda r: (r[column], -(r.get("accuracy") or 0.0)))
    rec = Recommendation(winners, pareto_front(records), feasible, excluded, name, ties=ties)
    rec.backend_verdicts = _backend_verdicts(records, rec)
    return rec


def _backend_verdicts(records: Sequence[dict[str, Any]],
                      rec: Recommendation) -> dict[str, str]:
    """One line per backend: why it won, lost, or was excluded."""
    verdicts: dict[str, str] = {}
    backends = list(dict.fromkeys(r["backend"] for r in records))
    for backend in backends:
        won = [o for o, row in rec.winners.items() if row["backend"] == backend]
        if won:
            verdicts[backend] = f"wins {', '.join(won)}"
            continue
        mine = [r for r in rec.feasible if r["backend"] == backend]
        if not mine:
            reasons = [rec.excluded[rec.name(r)] for r in records if r["backend"] == backend]
            verdicts[backend] = "excluded: every row fails a constraint (" + "; ".join(
                dict.fromkeys(reasons)) + ")"
            continue
        parts = []
        for objective, winner in rec.winners.items():
            column, unit = OBJECTIVES[objective]
            best = min((r for r in mine if r.get(column) is not None),
                       key=lambda r: r[column], default=None)
            if best is None:
                parts.append(f"{objective} not measured")
            elif objective == "latency" and latency_order(best, winner) == 0:
                parts.append(f"latency: best {rec.name(best)} ties the winner (speedup "
                             "intervals overlap)")
            elif winner[column]:
                parts.append(f"{objective}: best {rec.name(best)} is "
                             f"{best[column] / winner[column]:.2f}× the winner's {unit}")
        verdicts[backend] = "loses — " + "; ".join(parts) if parts else "no objective"
    return verdicts
