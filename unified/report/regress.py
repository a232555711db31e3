"""Cross-framework regression: compare a run with a stored baseline under tolerances."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from unified.spec.errors import SqueezelabError
from unified.spec.tolerances import TOLERANCES

BASELINE_FIELDS = ("status", "accuracy", "accuracy_std", "agreement", "agreement_std",
                   "repeats", "onnx_bytes", "native_bytes", "deploy_bytes", "size_ratio",
                   "deploy_ratio", "macs", "sparsity", "max_distinct_values", "latency_ms_p50")
GOOD_STATUSES = ("ok", "approximated")


def job_name(record: dict[str, Any], with_model: bool = False) -> str:
    name = f"{record['recipe']}@{record['backend']}"
    return f"{record['model']}/{name}" if with_model else name


def several_models(records: list[dict[str, Any]]) -> bool:
    return len({r.get("model") for r in records}) > 1


def make_baseline(records: list[dict[str, Any]], scenario: str) -> dict[str, Any]:
    return {
        "format": 1,
        "scenario": scenario,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "jobs": {job_name(r, several_models(records)): {k: r.get(k) for k in BASELINE_FIELDS} | {
            "versions": r.get("versions")} for r in records},
    }


def load_baseline(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SqueezelabError(f"{path}: baseline file not found") from None
    except json.JSONDecodeError as exc:
        raise SqueezelabError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data.get("jobs"), dict):
        raise SqueezelabError(f"{path}: not a squeezelab baseline (no 'jobs' mapping)")
    return data


@dataclass
class Finding:
    job: str
    metric: str
    message: str
    regression: bool


def compare(records: list[dict[str, Any]], baseline: dict[str, Any],
            tolerance: dict[str, float], spread: float | None = None) -> list[Finding]:
    """Every regression (and every new / vanished job) of ``records`` against ``baseline``.
    ``spread``: an accuracy or agreement change is a regression only beyond this many
    standard deviations over seeds (baseline's and this run's combined), when that is more
    than the tolerance."""
    unknown = set(tolerance) - set(TOLERANCES)
    if unknown:
        raise SqueezelabError(f"unknown tolerance metric(s) {sorted(unknown)}; allowed: "
                              f"{', '.join(TOLERANCES)}")
    findings: list[Finding] = []
    current = {job_name(r, several_models(records)): r for r in records}
    base_jobs: dict[str, dict[str, Any]] = baseline["jobs"]
    for name in base_jobs.keys() - current.keys():
        findings.append(Finding(name, "job", "vanished: in the baseline, not in this run", True))
    for name in current.keys() - base_jobs.keys():
        findings.append(Finding(name, "job", "new: not in the baseline", False))
    for name in sorted(current.keys() & base_jobs.keys()):
        findings.extend(_compare_job(name, current[name], base_jobs[name], tolerance, spread))
    return findings


def spread_limit(base: dict[str, Any], now: dict[str, Any], field: str,
                 spread: float | None) -> float:
    """``spread`` × the combined standard deviation of ``field`` over seeds (0 when either
    side was not repeated)."""
    if spread is None:
        return 0.0
    stds = [r.get(f"{field}_std") for r in (base, now)]
    return spread * math.sqrt(sum(s * s for s in stds if s is not None))


def _compare_job(name: str, now: dict[str, Any], base: dict[str, Any],
                 tolerance: dict[str, float], spread: float | None = None) -> list[Finding]:
    out = []
    if base["status"] in GOOD_STATUSES and now["status"] not in GOOD_STATUSES:
        return [Finding(name, "status", f"status {base['status']} → {now['status']}: "
                                        f"{now.get('reason')}", True)]
    if base["status"] != now["status"]:
        out.append(Finding(name, "status", f"status {base['status']} → {now['status']}",
                           False))

    def check(metric: str, field: str, worse: float | None, limit: float, text: str) -> None:
        if worse is not None and worse > limit + 1e-12:
            out.append(Finding(name, metric, f"{field} {base[field]:.6g} → {now[field]:.6g} "
                                             f"({text} {worse:.4g} > tolerance {limit:g})", True))

    def both(field: str) -> bool:
        return base.get(field) is not None and now.get(field) is not None

    for metric in ("accuracy", "agreement"):
        if metric in tolerance and both(metric):
            noise = spread_limit(base, now, metric, spread)
            limit = max(tolerance[metric], noise)
            check(metric, metric, base[metric] - now[metric], limit,
                  "drop" if noise <= tolerance[metric] else f"drop beyond {spread:g} std of the "
                  "seeds:")
    if "size_ratio" in tolerance and both("size_ratio") and base["size_ratio"]:
        check("size_ratio", "size_ratio", 1 - now["size_ratio"] / base["size_ratio"],
              tolerance["size_ratio"], "relative fall")
    if "latency" in tolerance and both("latency_ms_p50") and base["latency_ms_p50"]:
        check("latency", "latency_ms_p50", now["latency_ms_p50"] / base["latency_ms_p50"] - 1,
              tolerance["latency"], "relative rise")
    return out


def write_junit(path: Path, records: list[dict[str, Any]], findings: list[Finding],
                suite: str) -> None:
    """One test case per job; a failure element per regressed metric."""
    by_job: dict[str, list[Finding]] = {}
    for f in findings:
        by_job.setdefault(f.job, []).append(f)
    names = sorted({job_name(r, several_models(records)) for r in records} | set(by_job))
    failures = sum(1 for n in names if any(f.regression for f in by_job.get(n, [])))
    root = ET.Element("testsuite", name=suite, tests=str(len(names)),
                      failures=str(failures), errors="0")
    for name in names:
        case = ET.SubElement(root, "testcase", classname=suite, name=name)
        for f in by_job.get(name, []):
            if f.regression:
                ET.SubElement(case, "failure", message=f"{f.metric}: {f.message}").text = \
                    f.message
            else:
                ET.SubElement(case, "system-out").text = f.message
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
