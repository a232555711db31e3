"""The comparison table printed at the end of a run (rich), and the one-line summary of a
finished job printed while a run goes on.

On a terminal the table has a notes column; in a log (stdout not a terminal) it fits in 120
columns and the notes follow it as a list, one entry per row that has any.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table

LOG_WIDTH = 120
NO_DIFFERENCE = "no measurable difference"

# a log's table is narrow: shorter headers and statuses (the legend says what they mean)
LOG_HEADERS = {"native×": "nat×", "deploy×": "dep×", "sparse": "zero", "distinct": "dist",
               "speedup": "spd×", "ONNX KB": "KB", "p50 ms": "p50ms", "MACs×": "MAC×",
               "native spd": "nspd"}
# a log's table leaves these out (results.csv has them)
LOG_SKIP = ("rel_l2", "gzip_ratio", "int8_fraction")
LOG_STATUS = {"approximated": "approx", "unsupported": "unsup"}

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
    ("deploy_ratio", "deploy×", "{:.2f}"),
    ("gzip_ratio", "gzip×", "{:.2f}"),
    ("macs_ratio", "MACs×", "{:.2f}"),
    ("sparsity", "sparse", "{:.2f}"),
    ("max_distinct_values", "distinct", "{}"),
    ("int8_fraction", "int8", "{:.2f}"),
    ("latency_ms_p50", "p50 ms", "{:.3f}"),
    ("speedup", "speedup", "{:.2f}"),
    # the toolkit's own runtime against its fp32 (torch, TFLite): the round-trip set apart
    ("native_speedup", "native spd", "{:.2f}"),
)


# figures repeated with several seeds: the std's field, shown as ± (evaluate.repeats)
SPREAD = {"accuracy": "accuracy_std", "agreement": "agreement_std",
          "accuracy_drop": "accuracy_std"}


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    if fmt == "kb":
        return f"{value / 1024:.1f}"
    return fmt.format(value)


def record_cell(record: dict[str, Any], name: str, fmt: str, log: bool = False) -> str:
    """One cell of a row: mean ± std for a figure repeated with several seeds (in a log,
    three digits and only on the quality column — accuracy, else agreement — to fit)."""
    value, std = record.get(name), record.get(SPREAD.get(name, ""))
    quality = "accuracy" if record.get("accuracy") is not None else "agreement"
    if std is None or value is None or (log and name != quality):
        return _cell(value, fmt)
    sign = "+" if name == "accuracy_drop" else ""
    if log:  # 0.962±.004
        return f"{value:{sign}.3f}±" + f"{std:.3f}".lstrip("0")
    return f"{value:{sign}.4f} ± {std:.4f}"


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


def speedup_verdict(record: dict[str, Any]) -> str | None:
    """'faster', 'slower' or 'no measurable difference' (the 95 % interval of the speedup
    contains 1); None when the row has no interval."""
    low, high = record.get("speedup_ci_low"), record.get("speedup_ci_high")
    if low is None or high is None:
        return None
    if low <= 1.0 <= high:
        return NO_DIFFERENCE
    return "faster" if low > 1.0 else "slower"


def _speedup_cell(record: dict[str, Any]) -> str:
    if record.get("speedup") is None:
        return "–"
    if speedup_verdict(record) == NO_DIFFERENCE:
        return "≈1"
    return f"{record['speedup']:.2f}"


def _interval_cell(record: dict[str, Any]) -> str:
    low, high = record.get("speedup_ci_low"), record.get("speedup_ci_high")
    if low is None or high is None:
        return "–"
    return f"{low:.2f}–{high:.2f}"


def row_text(record: dict[str, Any]) -> str:
    """The reason a row did not run, or its notes, in one line."""
    return record.get("reason") or "; ".join(record.get("notes") or [])


def results_table(records: Iterable[dict[str, Any]], title: str | None = None,
                  log: bool = False) -> Table:
    """The table of a run. ``log``: no notes column (see :func:`notes_lines`) and compact
    borders, so that it fits in LOG_WIDTH columns."""
    records = list(records)
    with_model = len({r.get("model") for r in records}) > 1
    table = Table(title=title, header_style="bold", caption=unlabelled_note(records),
                  box=box.SIMPLE_HEAD if log else box.HEAVY_HEAD,
                  pad_edge=not log, padding=0 if log else (0, 1))
    if with_model:
        table.add_column("model")
    table.add_column("recipe")
    table.add_column("backend")
    table.add_column("status")
    columns = [c for c in COLUMNS if not (log and c[0] in LOG_SKIP)]
    for name, header, _ in columns:
        table.add_column(LOG_HEADERS.get(header, header) if log else header, justify="right")
        if name == "speedup":
            table.add_column("95% CI", justify="right")
    if not log:
        table.add_column("reason / notes", overflow="fold", max_width=60)
    for record in records:
        status = record["status"]
        style = STATUS_STYLE.get(status, "")
        cached = ("*" if log else " (cached)") if record.get("cached") else ""
        cells = []
        for name, _, fmt in columns:
            if name == "speedup":
                cells += [_speedup_cell(record), _interval_cell(record)]
            else:
                cells.append(record_cell(record, name, fmt, log))
        text = row_text(record)
        if len(text) > 120:  # the full text is in results.jsonl and the HTML report
            text = text[:119] + "…"
        table.add_row(
            *([record["model"]] if with_model else []),
            record["recipe"],
            record["backend"],
            f"[{style}]{LOG_STATUS.get(status, status) if log else status}[/]{cached}",
            *cells,
            *([] if log else [text]),
        )
    return table


def legend(records: Iterable[dict[str, Any]], log: bool = False) -> list[str]:
    """What the table's marks mean (only those it uses)."""
    records = list(records)
    lines = []
    if log:
        lines.append("KB: ONNX size; size×: fp32 ONNX bytes / this; nat×, dep×: the same "
                     "toolkit's fp32 native / deployable file / this one; MAC×: fp32 "
                     "multiply-accumulates / this; zero: share of zero weights; dist: most "
                     "distinct values in a weight; approx: approximated, unsup: unsupported")
    formats = deploy_formats(records)
    if formats:
        lines.append("deploy×: the file a user ships, against the same toolkit's fp32 one: "
                     + ", ".join(f"{b} {f}" for b, f in formats.items()))
    if any(r.get("matched_baseline") for r in records):
        lines.append("drop: against the reference fine-tuned as many epochs as the recipe "
                     "trains (its fp32+ft<N> row); results.csv also has "
                     "accuracy_drop_vs_reference")
    repeated = sorted({int(r["repeats"]) for r in records if (r.get("repeats") or 0) > 1})
    if repeated:
        lines.append(f"±: standard deviation over {'/'.join(map(str, repeated))} seeds "
                     "(evaluate.repeats; trained and calibrated rows)")
    if any(r.get("speedup") is not None for r in records):
        lines.append("speedup: median over rounds of fp32 latency / this latency, timed "
                     "interleaved with the fp32 model in one process; "
                     f"≈1: {NO_DIFFERENCE} (the 95% CI contains 1)")
    if log and any(r.get("cached") for r in records):
        lines.append("*: from the cache")
    return lines


def deploy_formats(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """backend → the kind of file its deploy_ratio compares (.pt, .mlpackage ...)."""
    out: dict[str, str] = {}
    for record in records:
        if record.get("deploy_format") and record.get("role") != "baseline":
            out.setdefault(str(record["backend"]), str(record["deploy_format"]))
    return out


def notes_lines(records: Iterable[dict[str, Any]], width: int = LOG_WIDTH) -> list[str]:
    """The reasons and notes left out of a log's table: one entry per row that has any,
    wrapped to ``width``."""
    import textwrap

    lines = []
    for record in records:
        text = row_text(record)
        if not text:
            continue
        model = f"{record['model']}: " if record.get("model") and _several(records) else ""
        head = f"{model}{record['recipe']} @ {record['backend']}: "
        lines += textwrap.wrap(head + text, width=width, subsequent_indent="    ")
    return lines


def _several(records: Iterable[dict[str, Any]]) -> bool:
    return len({r.get("model") for r in records}) > 1


def job_line(label: str, record: dict[str, Any], done: int, total: int) -> str:
    """One line for a job that just finished, e.g. ``[ 7/60] int8 @ pytorch: ok, acc 0.9810,
    size× 3.91 (12.3 s)``."""
    width = len(str(total))
    head = f"[{done:>{width}}/{total}] {label}: "
    status = record["status"]
    if status not in ("ok", "approximated"):
        why = record.get("reason") or ""
        line = f"{head}{status}" + (f" — {why}" if why else "")
        return line if len(line) <= LOG_WIDTH else line[:LOG_WIDTH - 1] + "…"
    parts = [status]
    if record.get("accuracy") is not None:
        parts.append(f"acc {record['accuracy']:.4f}")
    if record.get("size_ratio") is not None:
        parts.append(f"size× {record['size_ratio']:.2f}")
    where = " (cached)" if record.get("cached") else ""
    seconds = (record.get("timings") or {}).get("job")
    if seconds is not None and not record.get("cached"):
        where = f" ({seconds:.1f} s)"
    return head + ", ".join(parts) + where
