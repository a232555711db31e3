"""Scheduled pruning, epoch by epoch: each backend's sparsity beside the schedule's target.

Backends log one ``epoch_log`` entry per training epoch of each step (``unified.context.
EpochEntry``: step, kind, epoch, sparsity, target); entries with a ``target`` (the Distiller
formula's sparsity for that epoch) belong to a schedule. A recipe whose schedules belong to
several (concurrent) prune steps gets one table per step; a single schedule gets one table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class EpochTable:
    model: str
    recipe: str
    step: int | None  # the recipe's prune step, when several ran concurrently
    epochs: list[int]
    target: dict[int, float]
    sparsity: dict[str, dict[int, float]]  # backend -> epoch -> sparsity

    @property
    def title(self) -> str:
        step = f", step {self.step}" if self.step is not None else ""
        return f"{self.model} / {self.recipe}{step}"

    def deviation(self, backend: str) -> float:
        """The largest |sparsity - target| over the epochs this backend logged."""
        mine = self.sparsity[backend]
        return max(abs(mine[e] - self.target[e]) for e in mine if e in self.target)

    def rows(self) -> list[list[str]]:
        out = [["Distiller target", *[f"{self.target[e]:.4f}" for e in self.epochs], ""]]
        for backend, mine in self.sparsity.items():
            out.append([backend, *[f"{mine[e]:.4f}" if e in mine else "" for e in self.epochs],
                        f"{self.deviation(backend):.4f}"])
        return out

    def headers(self) -> list[str]:
        return ["", *[f"epoch {e}" for e in self.epochs], "max deviation"]


def _schedule_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in record.get("epoch_log") or []
            if isinstance(e.get("epoch"), int) and e.get("target") is not None
            and e.get("sparsity") is not None]


def epoch_tables(records: list[dict[str, Any]]) -> list[EpochTable]:
    tables: dict[tuple[str, str, int | None], EpochTable] = {}
    for record in records:
        entries = _schedule_entries(record)
        steps = {e.get("step") for e in entries if isinstance(e.get("step"), int)}
        for entry in entries:
            step = entry.get("step") if len(steps) > 1 else None
            key = (str(record["model"]), str(record["recipe"]), step)
            table = tables.setdefault(key, EpochTable(*key, [], {}, {}))
            epoch = entry["epoch"]
            if epoch not in table.epochs:
                table.epochs.append(epoch)
            table.target.setdefault(epoch, float(entry["target"]))
            table.sparsity.setdefault(record["backend"], {})[epoch] = float(entry["sparsity"])
    for table in tables.values():
        table.epochs.sort()
    return list(tables.values())


def markdown(tables: list[EpochTable]) -> list[str]:
    lines: list[str] = []
    for table in tables:
        headers = table.headers()
        lines += ["", f"### Sparsity per epoch: {table.title}", "",
                  "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows()]
    return lines
