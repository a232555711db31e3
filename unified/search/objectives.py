"""What a search optimizes and what it must respect, read from a row of results.jsonl.

Objectives come from ``select.minimize`` and are all stated so that bigger / smaller is
plain: ``size`` maximizes the ONNX size ratio (fp32 ONNX bytes / this ONNX), ``native_size``
the deployable ratio (fp32 ONNX bytes / the artifact the toolkit ships), ``latency`` the
speedup over the fp32 reference; ``accuracy_drop`` is minimized. Constraints come from
``select``'s limits and follow Optuna's sign: ≤ 0 is feasible. A ``--target`` names a metric
and the value it must reach (``native_size=6``: a deployable size ratio of at least 6).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unified.spec.errors import SqueezelabError
from unified.spec.scenario import SelectSpec

MEASURED = ("ok", "approximated")


def native_ratio(record: dict[str, Any]) -> float | None:
    """The deployable size ratio of a row: fp32 ONNX bytes / the bytes of the artifact the
    toolkit ships (``native_ratio``); the ONNX's ratio when the toolkit ships no other."""
    value = record.get("native_ratio")
    return value if value is not None else record.get("size_ratio")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # for people: "size ratio ×"
    maximize: bool
    read: Callable[[dict[str, Any]], float | None]
    needs_latency: bool = False

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def meets(self, value: float, target: float) -> bool:
        return value >= target if self.maximize else value <= target


def _field(name: str) -> Callable[[dict[str, Any]], float | None]:
    return lambda record: record.get(name)


METRICS: dict[str, Metric] = {
    "size": Metric("size", "ONNX size ratio", True, _field("size_ratio")),
    "native_size": Metric("native_size", "deployable size ratio (native artifact)", True,
                          native_ratio),
    "latency": Metric("latency", "speedup over fp32", True, _field("speedup"), True),
    "accuracy_drop": Metric("accuracy_drop", "accuracy drop", False, _field("accuracy_drop")),
}
# what --target may name besides the objectives
TARGET_METRICS: dict[str, Metric] = {
    **METRICS,
    "accuracy": Metric("accuracy", "accuracy", True, _field("accuracy")),
    "agreement": Metric("agreement", "agreement with fp32", True, _field("agreement")),
}


@dataclass(frozen=True)
class Target:
    metric: Metric
    value: float

    def met(self, record: dict[str, Any]) -> bool:
        value = self.metric.read(record)
        return value is not None and self.metric.meets(float(value), self.value)

    def __str__(self) -> str:
        return f"{self.metric.name} {'≥' if self.metric.maximize else '≤'} {self.value:g}"


def parse_target(text: str) -> Target:
    """``size=8`` → size ratio ≥ 8 (one-line error for anything else)."""
    name, sep, number = text.partition("=")
    metric = TARGET_METRICS.get(name.strip())
    if not sep or metric is None:
        raise SqueezelabError(f"--target {text!r}: expected METRIC=VALUE with METRIC one of "
                              f"{', '.join(TARGET_METRICS)}")
    try:
        return Target(metric, float(number))
    except ValueError:
        raise SqueezelabError(f"--target {text!r}: {number!r} is not a number") from None


def objectives(select: SelectSpec) -> list[Metric]:
    if not select.minimize:
        raise SqueezelabError("select.minimize is empty: a search needs at least one objective")
    return [METRICS[name] for name in select.minimize]


def constraints(record: dict[str, Any], select: SelectSpec) -> dict[str, float]:
    """Each of select's limits as a violation (≤ 0: met), scaled by the limit; a limit on a
    figure the row lacks counts as violated by 1."""
    limits = (
        ("max_accuracy_drop", select.max_accuracy_drop, "accuracy_drop", 1),
        ("min_agreement", select.min_agreement, "agreement", -1),
        ("max_onnx_bytes", select.max_onnx_bytes, "onnx_bytes", 1),
        ("max_latency_ms", select.max_latency_ms, "latency_ms_p50", 1),
    )
    out: dict[str, float] = {}
    for name, limit, column, sign in limits:
        if limit is None:
            continue
        value = record.get(column)
        if value is None:
            out[name] = 1.0
        elif name == "max_accuracy_drop":  # drops are small: not scaled by the limit
            out[name] = float(value) - limit
        else:
            out[name] = sign * (float(value) - limit) / max(abs(limit), 1e-12)
    return out


def needs_latency(select: SelectSpec, targets: tuple[Target, ...]) -> bool:
    """Does a trial need its own latency figure (a paired pass right after its job)?"""
    return (select.max_latency_ms is not None or "latency" in select.minimize
            or any(t.metric.needs_latency for t in targets))


def check_for_data(select: SelectSpec, targets: tuple[Target, ...], labelled: bool) -> None:
    """Accuracy figures need labelled data: say so before anything runs."""
    if labelled:
        return
    asks = [n for n in ("accuracy_drop",) if n in select.minimize]
    asks += ["max_accuracy_drop"] if select.max_accuracy_drop is not None else []
    asks += [t.metric.name for t in targets if t.metric.name in ("accuracy", "accuracy_drop")]
    if asks:
        raise SqueezelabError(f"{asks[0]} needs labelled data, and the scenario's data has no "
                              "labels; use min_agreement / agreement instead")
