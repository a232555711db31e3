"""The comparison table printed at the end of a run (rich)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.table import Table

STATUS_STYLE = {
    "ok": "green",
    "approximated": "yellow",
    "unsupported": "dim",
    "failed": "red",
    "timeout": "red",
}

COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (record field, header, format)
    ("accuracy", "acc", "{:.4f}"),
    ("accuracy_drop", "drop", "{:+.4f}"),
    ("agreement", "agree", "{:.3f}"),
    ("rel_l2", "rel L2", "{:.3g}"),
    ("onnx_bytes", "ONNX KB", "kb"),
    ("size_ratio", "size×", "{:.2f}"),
    ("native_ratio", "native×", "{:.2f}"),
    ("gzip_ratio", "gzip×", "{:.2f}"),
    ("sparsity", "sparse", "{:.2f}"),
    ("max_distinct_values", "distinct", "{}"),
    ("int8_fraction", "int8", "{:.2f}"),
    ("latency_ms_p50", "p50 ms", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}"),
)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "kb":
        return f"{value / 1024:.1f}"
    return fmt.format(value)


UNLABELLED_NOTE = ("acc – : the test data has no labels for the model's classes (e.g. photos for "
                   "an ImageNet model), so agreement with the fp32 model (agree) and the "
                   "relative L2 distance of the logits (rel L2) are the figures")


def unlabelled_models(records: Iterable[dict[str, Any]]) -> list[str]:
    """Models whose measured rows have agreement but no accuracy: their data is unlabelled."""
    measured = [r for r in records if r.get("agreement") is not None]
    models = dict.fromkeys(str(r["model"]) for r in measured)
    return [m for m in models
            if all(r.get("accuracy") is None for r in measured if str(r["model"]) == m)]


def unlabelled_note(records: Iterable[dict[str, Any]]) -> str | None:
    """The sentence that says why accuracy is empty, or None when every model has labels."""
    records = list(records)
    models = unlabelled_models(records)
    if not models:
        return None
    several = len({str(r["model"]) for r in records}) > 1
    return f"{UNLABELLED_NOTE} ({', '.join(models)})" if several else UNLABELLED_NOTE


def results_table(records: Iterable[dict[str, Any]], title: str | None = None) -> Table:
    records = list(records)
    with_model = len({r.get("model") for r in records}) > 1
    table = Table(title=title, header_style="bold", caption=unlabelled_note(records))
    if with_model:
        table.add_column("model")
    table.add_column("recipe")
    table.add_column("backend")
    table.add_column("status")
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("reason / notes", overflow="fold", max_width=60)
    for record in records:
        status = record["status"]
        style = STATUS_STYLE.get(status, "")
        cached = " (cached)" if record.get("cached") else ""
        text = record.get("reason") or "; ".join(record.get("notes") or [])
        if len(text) > 120:  # the full text is in results.jsonl and the HTML report
            text = text[:119] + "…"
        table.add_row(
            *([record["model"]] if with_model else []),
            record["recipe"],
            record["backend"],
            f"[{style}]{status}[/]{cached}",
            *[_cell(record.get(name), fmt) for name, _, fmt in COLUMNS],
            text,
        )
    return table
