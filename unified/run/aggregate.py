"""From the records of every job to the rows of the table, once phase 1 has ended
(docs/architecture.md, "Fair baselines"):

1. repeats folded into their row: accuracy / agreement / rel_l2 become the mean over the
   measured seeds, with ``accuracy_std`` / ``agreement_std`` (sample standard deviation) and
   ``repeats``; each seed's own values stay in ``seeds``;
2. sizes like for like: ``native_ratio`` and ``deploy_ratio`` divide the backend's own fp32
   artifact (its empty-recipe job) by the row's;
3. accuracy drops against the matched baseline: a recipe that trains N epochs is compared
   with ``fp32+ft<N>``; ``accuracy_drop_vs_reference`` keeps the drop against the plain
   reference.

Every step is idempotent: a resumed run folds its already folded rows again to the same
figures (a row's own seed is ``seeds[0]``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from unified.run.expand import ROLE_BASELINE, ROLE_FP32

MEASURED = ("ok", "approximated")
SEED_FIELDS = ("accuracy", "agreement", "rel_l2")
SPREAD_FIELDS = {"accuracy": "accuracy_std", "agreement": "agreement_std"}

Key = tuple[str, str, str]  # model, recipe, backend


# what aggregate() writes into a row from other rows (its baselines, its repeats)
AGGREGATED_FIELDS = ("accuracy_drop", "accuracy_drop_vs_reference", "baseline_accuracy",
                     "native_ratio", "deploy_ratio", "repeats", "seeds",
                     *SPREAD_FIELDS.values())


def _key(record: dict[str, Any]) -> Key:
    return (str(record["model"]), str(record["recipe"]), str(record["backend"]))


def _note(record: dict[str, Any], text: str) -> None:
    notes = list(record.get("notes") or [])
    if text not in notes:
        notes.append(text)
    record["notes"] = notes


def seed_entry(record: dict[str, Any]) -> dict[str, Any]:
    """One seed's own figures: a folded row's are kept as its ``seeds[0]``."""
    if record.get("seeds"):
        return dict(record["seeds"][0])
    return {"repeat": record.get("repeat", 0), "seed": record.get("seed"),
            "status": record["status"], "job_key": record.get("job_key"),
            **{name: record.get(name) for name in SEED_FIELDS}}


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), std


def fold_repeats(rows: Sequence[dict[str, Any]], auxiliary: Iterable[dict[str, Any]]) -> None:
    """Mean ± std of each row over its seeds (the row's own and its repeats')."""
    repeats: dict[Key, list[dict[str, Any]]] = {}
    for record in auxiliary:
        if record.get("repeat"):
            repeats.setdefault(_key(record), []).append(record)
    for row in rows:
        others = sorted(repeats.get(_key(row), []), key=lambda r: int(r["repeat"]))
        if row["status"] not in MEASURED:
            continue
        if not others and not row.get("seeds"):
            row["repeats"] = 1
            continue
        entries = [seed_entry(row), *[seed_entry(r) for r in others]]
        row["seeds"] = entries
        measured = [e for e in entries if e["status"] in MEASURED]
        row["repeats"] = len(measured)
        for name in SEED_FIELDS:
            values = [float(e[name]) for e in measured if e.get(name) is not None]
            mean, std = _mean_std(values)
            row[name] = mean
            if name in SPREAD_FIELDS:
                row[SPREAD_FIELDS[name]] = std
        for entry in entries:
            if entry["status"] not in MEASURED:
                _note(row, f"repeat with seed {entry['seed']} {entry['status']}: "
                           "left out of the mean")


def fp32_artifacts(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, backend) → the record of the backend's fp32 job (seed 0), a row's first."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record.get("role") != ROLE_FP32 or record.get("repeat") \
                or record["status"] not in MEASURED:
            continue
        out.setdefault((str(record["model"]), str(record["backend"])), record)
    return out


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def fill_ratios(rows: Sequence[dict[str, Any]], auxiliary: Sequence[dict[str, Any]]) -> None:
    """native_ratio and deploy_ratio against the backend's own fp32 artifacts."""
    bases = fp32_artifacts([*rows, *auxiliary])
    for row in rows:
        if row["status"] not in MEASURED:
            continue
        base = bases.get((str(row["model"]), str(row["backend"])))
        if base is None:
            row["native_ratio"] = row["deploy_ratio"] = None
            _note(row, f"native_ratio, deploy_ratio: no fp32 artifact of {row['backend']} "
                       "(its empty-recipe job did not run or failed)")
            continue
        row["native_ratio"] = _ratio(base.get("native_bytes"), row.get("native_bytes"))
        row["deploy_ratio"] = _ratio(base.get("deploy_bytes"), row.get("deploy_bytes"))


def _drop(baseline: float | None, accuracy: float | None) -> float | None:
    """baseline − accuracy, rounded to 9 decimals: both are fractions of the test rows, and
    0.97 − 0.96 must be 0.01, not 0.010000000000000009 (a limit of 0.01 would reject it)."""
    if baseline is None or accuracy is None:
        return None
    return round(float(baseline) - float(accuracy), 9)


def fill_drops(rows: Sequence[dict[str, Any]],
               reference_accuracy: dict[str, float | None]) -> None:
    """accuracy_drop against the matched baseline (else the reference), the baseline's own
    accuracy, and accuracy_drop_vs_reference."""
    matched = {(str(r["model"]), str(r["recipe"])): r for r in rows
               if r.get("role") == ROLE_BASELINE and r["status"] in MEASURED}
    for row in rows:
        accuracy = row.get("accuracy")
        reference = reference_accuracy.get(str(row["model"]))
        if row["status"] not in MEASURED:
            continue
        vs_reference = _drop(reference, accuracy)
        row["accuracy_drop_vs_reference"] = vs_reference
        name = row.get("matched_baseline")
        if name is None:
            row["baseline_accuracy"], row["accuracy_drop"] = reference, vs_reference
            continue
        base = matched.get((str(row["model"]), name))
        base_accuracy = None if base is None else base.get("accuracy")
        row["baseline_accuracy"] = base_accuracy
        row["accuracy_drop"] = _drop(base_accuracy, accuracy)
        if base is None:
            _note(row, f"accuracy_drop: its matched baseline {name} was not measured; "
                       "accuracy_drop_vs_reference is the drop against the plain reference")


def aggregate(rows: Sequence[dict[str, Any]], auxiliary: Sequence[dict[str, Any]],
              reference_accuracy: dict[str, float | None]) -> None:
    """Fold the repeats, then fill the like-for-like ratios and the matched drops, in place."""
    fold_repeats(rows, auxiliary)
    fill_ratios(rows, auxiliary)
    fill_drops(rows, reference_accuracy)


def fp32_summary(rows: Sequence[dict[str, Any]], auxiliary: Sequence[dict[str, Any]],
                 model: str) -> dict[str, dict[str, Any]]:
    """backend → its fp32 artifacts (what the ratios divide), for the run's reference.json."""
    return {backend: {"recipe": record["recipe"], "native_bytes": record.get("native_bytes"),
                      "deploy_bytes": record.get("deploy_bytes"),
                      "deploy_format": record.get("deploy_format"),
                      "job_key": record.get("job_key")}
            for (m, backend), record in fp32_artifacts([*rows, *auxiliary]).items()
            if m == model}
