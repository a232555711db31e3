"""One self-contained HTML report (plots embedded as PNG, no network) and a Markdown summary."""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unified.report.baselines import baselines_html
from unified.report.epoch_table import epoch_tables
from unified.report.epoch_table import markdown as epoch_markdown
from unified.report.select import Recommendation, recommend
from unified.report.table import COLUMNS, _cell, record_cell, unlabelled_note
from unified.run.results import read_records
from unified.spec.scenario import Scenario

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3} td.l{text-align:left} tr.pareto td:first-child{font-weight:bold}
.ok{color:#176f2c}.approximated{color:#9a6700}.unsupported{color:#888}
.failed,.timeout{color:#b42318} img{max-width:48%;margin-right:1%}
td:last-child{min-width:480px;font-size:11px;text-align:left}
"""


SIZE_AXIS = "deployable file: the same toolkit's fp32 file / this (log)"


class RunFolder:
    """What a finished run folder holds."""

    def __init__(self, folder: Path) -> None:
        from unified.spec.errors import SqueezelabError

        self.folder = folder
        if not (folder / "results.jsonl").is_file():
            raise SqueezelabError(f"{folder}: not a run folder (no results.jsonl)")
        from unified.run.runner import scenario_order

        self.scenario = Scenario.model_validate_json((folder / "scenario.json").read_text())
        self.records = sorted(read_records(folder / "results.jsonl"),
                              key=scenario_order(self.scenario))
        # repeats and hidden fp32 baselines (folded into the rows already)
        self.auxiliary = read_records(folder / "auxiliary.jsonl")
        ref = folder / "reference.json"
        self.reference: dict[str, Any] = json.loads(ref.read_text()) if ref.is_file() else {}


def _plot(records: list[dict[str, Any]], pareto: list[dict[str, Any]], x_field: str,
          x_label: str, ref: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_field = y_axis(records)
    rows = [r for r in records if r.get(x_field) is not None and r.get(y_field) is not None
            and r.get("role") != "baseline"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    backends = sorted({r["backend"] for r in rows})
    markers = "osD^vP*X"
    for i, backend in enumerate(backends):
        mine = [r for r in rows if r["backend"] == backend]
        xs, ys = [r[x_field] for r in mine], [r[y_field] for r in mine]
        ax.scatter(xs, ys, marker=markers[i % len(markers)], label=backend, alpha=0.8)
        errors = [r.get(f"{y_field}_std") or 0.0 for r in mine]
        if any(errors):  # ±1 std over the seeds of repeated rows
            ax.errorbar(xs, ys, yerr=errors, fmt="none", ecolor="grey", elinewidth=0.8,
                        capsize=2)
    front = sorted((r for r in pareto if r in rows), key=lambda r: r[x_field])
    if front:
        ax.plot([r[x_field] for r in front], [r[y_field] for r in front], "k--", lw=1,
                label="Pareto front")
    for r in rows:
        ax.annotate(r["recipe"], (r[x_field], r[y_field]), fontsize=6, alpha=0.7)
    if y_field == "accuracy" and ref.get("accuracy") is not None:
        ax.axhline(ref["accuracy"], color="grey", lw=0.8, ls=":", label="fp32 reference")
    for base in (r for r in records if r.get("role") == "baseline" and r.get(y_field)):
        ax.axhline(base[y_field], color="tab:brown", lw=0.8, ls="-.", alpha=0.6,
                   label=f"{base['recipe']} (matched baseline)")
    ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 accuracy" if y_field == "accuracy" else "top-1 agreement with fp32")
    ax.legend(fontsize=7)
    return png_base64(fig)


def png_base64(fig: Any) -> str:
    """A matplotlib figure as base64 PNG (for an <img> in a self-contained page); closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def y_axis(records: list[dict[str, Any]]) -> str:
    """accuracy, or agreement with fp32 when no row has an accuracy (unlabelled data)."""
    return "accuracy" if any(r.get("accuracy") is not None for r in records) else "agreement"


def _table(headers: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
           left: int = 3) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        cells = "".join(
            f'<td class="l">{c}</td>' if j < left or j == len(row) - 1 else f"<td>{c}</td>"
            for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    return "\n".join(out) + "</table>"


def results_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "recipe", "backend", "status", *[h for _, h, _ in COLUMNS],
               "reason / notes"]
    rows = []
    for r in records:
        notes = r.get("reason") or "; ".join(r.get("notes") or [])
        rows.append([html.escape(str(r["model"])), html.escape(r["recipe"]),
                     html.escape(r["backend"]),
                     f'<span class="{r["status"]}">{r["status"]}</span>',
                     *[record_cell(r, name, fmt) for name, _, fmt in COLUMNS],
                     html.escape(notes)])
    return headers, rows


def html_report(run: RunFolder, extra_sections: list[tuple[str, str]] | None = None) -> str:
    from unified.report.capability_matrix import matrix

    rec = recommend(run.records, run.scenario.select)
    pareto_names = {rec.name(r) for r in rec.pareto}
    headers, rows = results_rows(run.records)
    classes = ["pareto" if rec.name(r) in pareto_names else "" for r in run.records]
    sc = run.scenario
    budget = {
        "reference weights": f"{sc.model.source}, weights: {sc.model.weights}",
        "data": f"{sc.data.source}: train {sc.data.train}, calibration {sc.data.calibration} "
                f"(subset of train), test {sc.data.test}; seed {sc.seed}",
        "training budget": ", ".join(f"{k} {v}" for k, v in
                                     sc.budget.model_dump(mode="json").items()),
        "harness": f"onnxruntime CPU, batch 1 latency, threads {sc.evaluate.latency.threads}, "
                   f"warm-up {sc.evaluate.latency.warmup}, runs {sc.evaluate.latency.runs}",
    }
    versions: dict[str, str] = {}
    for r in run.records:
        for k, v in (r.get("versions") or {}).items():
            if v:
                versions[k] = v
    caps = matrix()
    backends = list(next(iter(caps.values())).keys())
    cap_rows = [[html.escape(p), *[f'<span class="{row[b][0]}" title="{html.escape(row[b][1])}">'
                                   f"{row[b][0]}</span>" for b in backends]]
                for p, row in caps.items()]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>squeezelab: {sc.name}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>squeezelab: {html.escape(sc.name)}</h1>",
        f"<p>model <b>{html.escape(sc.model.source)}</b>; fp32 reference accuracy "
        f"{_cell(run.reference.get('accuracy'), '{:.4f}')}, ONNX "
        f"{_cell(run.reference.get('onnx_bytes'), 'kb')} KB, p50 "
        f"{_cell(run.reference.get('latency_ms_p50'), '{:.3f}')} ms</p>",
        "<h2>Recommendation</h2><ul>"
        + "".join(f"<li>{html.escape(line)}</li>" for line in rec.lines()) + "</ul>",
        *baselines_html(run.records, run.auxiliary, _table),
        "<h2>Results</h2><p>bold recipe = on the Pareto front (accuracy, size, latency); "
        "deploy× = the same toolkit's fp32 deployable file / this one; ± = standard "
        "deviation over the seeds of repeated rows</p>",
        *([f"<p><b>{html.escape(note)}</b></p>"] if (note := unlabelled_note(run.records))
          else []),
        _table(headers, rows, classes, left=4),
        "<h2>Accuracy vs size and latency</h2>",
        f'<img alt="accuracy vs size" src="data:image/png;base64,'
        f'{_plot(run.records, rec.pareto, "deploy_ratio", SIZE_AXIS, run.reference)}">',
        f'<img alt="accuracy vs latency" src="data:image/png;base64,'
        f'{_plot(run.records, rec.pareto, "latency_ms_p50", "p50 ms (log)", run.reference)}">',
    ]
    for table in epoch_tables(run.records):
        parts += [f"<h2>Sparsity per epoch: {html.escape(table.title)}</h2>",
                  _table(table.headers(), table.rows(), left=1)]
    for title, body in extra_sections or []:
        parts.append(f"<h2>{html.escape(title)}</h2>{body}")
    parts += [
        "<h2>Shared budget (the same for every backend)</h2>",
        _table(["what", "value"], [[html.escape(k), html.escape(v)] for k, v in budget.items()],
               left=2),
        "<h2>Capability matrix</h2>",
        _table(["recipe", *backends], cap_rows, left=1 + len(backends)),
        "<h2>Toolkit versions</h2>",
        _table(["package", "version"], [[html.escape(k), html.escape(v)]
                                        for k, v in sorted(versions.items())], left=2),
        "</body></html>",
    ]
    return "\n".join(parts)


def markdown_summary(run: RunFolder, rec: Recommendation | None = None) -> str:
    rec = rec or recommend(run.records, run.scenario.select)
    several = len({str(r["model"]) for r in run.records}) > 1
    headers = [*(["model"] if several else []), "recipe", "backend", "status", "acc", "drop",
               "drop vs ref", "agree", "size×", "deploy×", "MACs×", "p50 ms", "speedup",
               "native spd"]
    lines = [f"## squeezelab: {run.scenario.name}", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in run.records:
        lines.append("| " + " | ".join([
            *([str(r["model"])] if several else []),
            r["recipe"], r["backend"], r["status"], record_cell(r, "accuracy", "{:.4f}"),
            record_cell(r, "accuracy_drop", "{:+.4f}"),
            _cell(r.get("accuracy_drop_vs_reference"), "{:+.4f}"),
            record_cell(r, "agreement", "{:.3f}"), _cell(r.get("size_ratio"), "{:.2f}"),
            _cell(r.get("deploy_ratio"), "{:.2f}"), _cell(r.get("macs_ratio"), "{:.2f}"),
            _cell(r.get("latency_ms_p50"), "{:.3f}"), _cell(r.get("speedup"), "{:.2f}"),
            _cell(r.get("native_speedup"), "{:.2f}"),
        ]) + " |")
    note = unlabelled_note(run.records)
    lines += ["", *([f"_{note}_", ""] if note else []), *[f"- {line}" for line in rec.lines()]]
    lines += epoch_markdown(epoch_tables(run.records))
    if several or len({r["backend"] for r in run.records}) > 1:
        from unified.report.coverage import coverage, markdown

        lines += ["", "### Coverage", "", markdown(coverage(run.records))]
    return "\n".join(lines) + "\n"


def coverage_section(run: RunFolder) -> tuple[str, str]:
    """The coverage table (model × backend counts) and the failure causes, as HTML."""
    from unified.report.coverage import coverage, matrix_rows

    cov = coverage(run.records)
    headers, rows = matrix_rows(cov)
    body = _table(headers, [[html.escape(c) for c in row] for row in rows], left=len(headers))
    for title, groups in (("Failure causes", cov.failures),
                          ("Unsupported (planned, never started)", cov.unsupported)):
        if groups:
            body += f"<h3>{title}</h3>" + _table(
                ["backend", "rows", "cause", "affected rows"],
                [[html.escape(g.backend), str(len(g.rows)), html.escape(g.reason),
                  html.escape(", ".join(g.rows))] for g in groups], left=4)
    return "Coverage (rows by model × backend; ≈ = approximated)", body


def write_report(folder: Path, sections: Sequence[tuple[str, str]] = (),
                 markdown: Sequence[str] = ()) -> tuple[Path, Path]:
    """report.html and summary.md of a run folder; ``sections`` (title, HTML) and
    ``markdown`` lines come from a layer above (a search's history)."""
    from unified.report.article import article_sections

    run = RunFolder(folder)
    html_path, md_path = folder / "report.html", folder / "summary.md"
    html_path.write_text(html_report(run, [*sections, *article_sections(run),
                                           coverage_section(run)]))
    md_path.write_text(markdown_summary(run) + "".join(f"{line}\n" for line in markdown))
    return html_path, md_path
