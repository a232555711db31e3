"""Coverage of a run: for each model × backend, how many rows ended ok / approximated /
unsupported / failed, and the causes of the failures grouped (``squeezelab coverage``)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

# what a cell counts: timeouts are failures too (their cause says "timeout")
KINDS = ("ok", "approximated", "unsupported", "failed")
SHORT = {"ok": "ok", "approximated": "≈", "unsupported": "unsup", "failed": "failed"}
LOG_SUFFIX = re.compile(r"\s*\(log: [^)]*\)\s*$")
JOB_PATH = re.compile(r"(/[^\s:'\"]+)+/(jobs|reference|artifacts)/[^\s:'\"]*")


def kind(status: str) -> str:
    return "failed" if status == "timeout" else status


def cause(record: dict[str, Any]) -> str:
    """A failed row's reason without what differs from job to job (its log path)."""
    reason = str(record.get("reason") or "no reason recorded")
    if record["status"] == "timeout":
        return "timeout: " + LOG_SUFFIX.sub("", reason).split(";")[0]
    return JOB_PATH.sub("<job>", LOG_SUFFIX.sub("", reason))


@dataclass
class Group:
    """Rows of one backend that ended the same way for the same reason."""

    backend: str
    status: str
    reason: str
    rows: list[str] = field(default_factory=list)  # "model: recipe"


@dataclass
class Coverage:
    models: list[str]
    backends: list[str]
    counts: dict[tuple[str, str], Counter[str]]
    failures: list[Group]
    unsupported: list[Group]

    def total(self, backend: str | None = None) -> Counter[str]:
        out: Counter[str] = Counter()
        for (_, b), counts in self.counts.items():
            if backend is None or b == backend:
                out.update(counts)
        return out

    @staticmethod
    def success(counts: Counter[str]) -> float | None:
        """Share of the rows the toolkit claims to support (planned, not unsupported) that
        ended ok or approximated; None when there are none."""
        tried = counts["ok"] + counts["approximated"] + counts["failed"]
        return (counts["ok"] + counts["approximated"]) / tried if tried else None


def coverage(records: Iterable[dict[str, Any]]) -> Coverage:
    """Count the rows of a run by model × backend and group the failures by cause. The
    matched fp32+ft<N> baselines are no toolkit's rows: they are left out."""
    records = [r for r in records if r.get("role") != "baseline"]
    models = list(dict.fromkeys(str(r["model"]) for r in records))
    backends = list(dict.fromkeys(str(r["backend"]) for r in records))
    counts: dict[tuple[str, str], Counter[str]] = {}
    groups: dict[tuple[str, str, str], Group] = {}
    for r in records:
        status = kind(r["status"])
        counts.setdefault((str(r["model"]), r["backend"]), Counter())[status] += 1
        if status in ("failed", "unsupported"):
            reason = cause(r) if status == "failed" else str(r.get("reason") or "")
            key = (r["backend"], status, reason)
            group = groups.setdefault(key, Group(r["backend"], status, reason))
            group.rows.append(f"{r['model']}: {r['recipe']}")
    ordered = sorted(groups.values(), key=lambda g: (backends.index(g.backend), -len(g.rows)))
    return Coverage(models, backends, counts,
                    [g for g in ordered if g.status == "failed"],
                    [g for g in ordered if g.status == "unsupported"])


def cell(counts: Counter[str]) -> str:
    """'4 ok · 1 ≈ · 2 unsup · 1 failed', leaving out zeros."""
    parts = [f"{counts[k]} {SHORT[k]}" for k in KINDS if counts[k]]
    return " · ".join(parts) or "–"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def matrix_rows(cov: Coverage) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the model × backend table, with a total row and the success rate
    (ok + approximated among the rows that were not unsupported)."""
    headers = ["model", *cov.backends, "all backends"]
    rows = [[model, *[cell(cov.counts.get((model, b), Counter())) for b in cov.backends],
             cell(sum((cov.counts.get((model, b), Counter()) for b in cov.backends),
                      Counter()))]
            for model in cov.models]
    rows.append(["all models", *[cell(cov.total(b)) for b in cov.backends], cell(cov.total())])
    rows.append(["ok or ≈ of the supported",
                 *[_rate(cov.success(cov.total(b))) for b in cov.backends],
                 _rate(cov.success(cov.total()))])
    return headers, rows


def _affected(rows: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(rows[:limit])
    return shown + (f", … ({len(rows) - limit} more)" if len(rows) > limit else "")


def rich_tables(cov: Coverage) -> list[Table]:
    headers, rows = matrix_rows(cov)
    matrix = Table(title="coverage: rows by model × backend (≈ = approximated)",
                   header_style="bold")
    for h in headers:
        matrix.add_column(h)
    for row in rows:
        matrix.add_row(*row)
    out = [matrix]
    for title, groups in (("failure causes", cov.failures),
                          ("unsupported (planned, never started)", cov.unsupported)):
        if not groups:
            continue
        table = Table(title=title, header_style="bold")
        for h in ("backend", "rows", "cause", "affected rows"):
            table.add_column(h, overflow="fold")
        for g in groups:
            table.add_row(g.backend, str(len(g.rows)), g.reason, _affected(g.rows))
        out.append(table)
    return out


def markdown(cov: Coverage) -> str:
    """The coverage as Markdown: the matrix, then failure causes and unsupported reasons."""
    headers, rows = matrix_rows(cov)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    for title, groups in (("Failure causes", cov.failures),
                          ("Unsupported (planned, never started)", cov.unsupported)):
        if groups:
            lines += ["", f"**{title}**", "", "| backend | rows | cause | affected |",
                      "|---|---|---|---|"]
            lines += [f"| {g.backend} | {len(g.rows)} | {_md(g.reason)} | "
                      f"{_md(_affected(g.rows))} |" for g in groups]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
