"""A search for people: one line per trial while it runs, then the history, the Pareto
front, the best setting per toolkit and the winning recipe as a snippet; the same as a
section of ``squeezelab report`` (HTML with plots, and summary.md). Reads ``trials.json``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from unified.report.html import png_base64
from unified.search.history import WINNER_FILE, read_history


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "–"
    if name == "accuracy_drop":
        return f"{value:+.4f}"
    return f"{value:.2f}×"


def _state(entry: dict[str, Any]) -> str:
    if entry["state"] == "pruned":
        return f"duplicate of {entry['duplicate_of']}"
    if entry["state"] == "interrupted":
        return "interrupted (retried)"
    if entry["state"] == "fail":
        row = entry["row"]
        return f"{row['status']}" if row else "interrupted"
    return "feasible" if entry["feasible"] else "infeasible"


def trial_line(entry: dict[str, Any], history: dict[str, Any] | None = None,
               done: int | None = None, total: int | None = None) -> str:
    """``trial 7 [3/30]: quant.weights-4 @ onnxruntime: size 7.41×, drop +0.0040: feasible``."""
    count = f" [{done}/{total}]" if done is not None and total is not None else ""
    row = entry.get("row") or {}
    figures = []
    for name, value in (entry.get("objectives") or {}).items():
        figures.append(f"{name} {_value(name, value)}")
    if row.get("accuracy_drop") is not None and "accuracy_drop" not in (
            entry.get("objectives") or {}):
        figures.append(f"drop {row['accuracy_drop']:+.4f}")
    if row.get("cached"):
        figures.append("cached")
    violated = [k for k, v in (entry.get("constraints") or {}).items() if v > 0]
    state = _state(entry) + (f" ({', '.join(violated)})" if violated else "")
    if entry["state"] == "fail" and row.get("reason"):
        state += f": {str(row['reason'])[:120]}"
    text = f"trial {entry['number']}{count}: {entry['name']} @ {entry['backend']}"
    return text + (f": {', '.join(figures)}" if figures else "") + f": {state}"


def _by_number(history: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {e["number"]: e for e in history["trials"]}


def summary_parts(history: dict[str, Any]) -> dict[str, Any]:
    """What a search found: ``head`` (lines), ``best`` (toolkit → line), ``winner`` (a line,
    or None) and ``snippet`` (YAML, or None)."""
    trials = _by_number(history)
    evaluated = [e for e in history["trials"] if e["row"] is not None]
    names = [o["name"] for o in history["objectives"]]
    head = [f"search of {history['scenario']}: {history['evaluated']} trials evaluated "
            f"({sum(e['feasible'] for e in evaluated)} feasible) of a space of "
            f"{history['space']['size'] or 'uncountably many'} settings, in "
            f"{history.get('wall_seconds', 0):.0f} s; objectives: "
            + ", ".join(f"{o['label']} ({'max' if o['maximize'] else 'min'})"
                        for o in history["objectives"])]
    if history["targets"]:
        met = history["first_meeting_targets"]
        head.append(f"targets {', '.join(history['targets'])}: "
                    + (f"first met by trial {met}" if met is not None else "not met"))
    head.append("Pareto front (" + ", ".join(names) + (", accuracy drop" if
                "accuracy_drop" not in names else "") + "): " + (", ".join(
                    f"{trials[n]['name']} @ {trials[n]['backend']} (trial {n})"
                    for n in history["pareto"]) or "empty"))
    best = {backend: trial_line(trials[n]).partition(": ")[2] if isinstance(n, int) else n
            for backend, n in history["best_per_backend"].items()}
    winner = None
    if history["winner"] is not None:
        win = trials[history["winner"]]
        winner = f"winner: trial {win['number']}, {trial_line(win).partition(': ')[2]}"
    return {"head": head, "best": best, "winner": winner, "snippet": history["snippet"]}


def summary_lines(history: dict[str, Any]) -> list[str]:
    """The end of ``squeezelab search``: what was found, and how to rerun it."""
    parts = summary_parts(history)
    out = [*parts["head"], "best setting per toolkit:",
           *(f"  {backend}: {line}" for backend, line in parts["best"].items())]
    if parts["winner"] is None:
        return [*out, "no trial meets the constraints"]
    return [*out, parts["winner"],
            f"as a plain scenario (the whole file: {WINNER_FILE} in the run folder):",
            *("  " + line for line in parts["snippet"].splitlines())]


def _history_table(history: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    names = [o["name"] for o in history["objectives"]]
    headers = ["trial", "recipe", "backend", *names, "drop", "state"]
    rows = []
    for e in history["trials"]:
        objs = e["objectives"] or {}
        drop = (e["row"] or {}).get("accuracy_drop")
        rows.append([str(e["number"]), e["name"] or "–", e["backend"] or "–",
                     *[_value(n, objs.get(n)) for n in names],
                     "–" if drop is None else f"{drop:+.4f}", _state(e)])
    return headers, rows


def markdown_section(history: dict[str, Any]) -> list[str]:
    headers, rows = _history_table(history)
    parts = summary_parts(history)
    lines = ["", "### Search", "", *[f"- {line}" for line in parts["head"]],
             "- best setting per toolkit:",
             *(f"  - {backend}: {line}" for backend, line in parts["best"].items()),
             f"- {parts['winner'] or 'no trial meets the constraints'}"]
    if parts["snippet"]:
        lines += ["", "```yaml", parts["snippet"], "```"]
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _plot(history: dict[str, Any]) -> str:
    """Each objective against the trial number: feasible filled, infeasible hollow, failed
    at the bottom, the best feasible so far as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = history["objectives"]
    fig, axes = plt.subplots(1, len(objectives), figsize=(5.2 * len(objectives), 3.6), dpi=100,
                             squeeze=False)
    for ax, objective in zip(axes[0], objectives, strict=True):
        name = objective["name"]
        done = [e for e in history["trials"] if e["objectives"]]
        good = [e for e in done if e["feasible"]]
        bad = [e for e in done if not e["feasible"]]
        ax.scatter([e["number"] for e in good], [e["objectives"][name] for e in good],
                   label="feasible", color="#176f2c")
        ax.scatter([e["number"] for e in bad], [e["objectives"][name] for e in bad],
                   label="infeasible", facecolors="none", edgecolors="#b42318")
        best, xs, ys = None, [], []
        for e in sorted(good, key=lambda e: e["number"]):
            value = e["objectives"][name]
            if best is None or (value > best if objective["maximize"] else value < best):
                best = value
            xs.append(e["number"])
            ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", color="k", lw=1, label="best feasible so far")
        failed = [e["number"] for e in history["trials"]
                  if e["state"] in ("fail", "interrupted")]
        if failed:
            ax.scatter(failed, [ax.get_ylim()[0]] * len(failed), marker="x", color="grey",
                       label="failed / interrupted")
        ax.set_xlabel("trial")
        ax.set_ylabel(objective["label"])
        ax.legend(fontsize=7)
    return png_base64(fig)


def html_section(history: dict[str, Any]) -> tuple[str, str]:
    from unified.report.html import _table

    headers, rows = _history_table(history)
    pareto = set(history["pareto"])
    classes = ["pareto" if e["number"] in pareto else "" for e in history["trials"]]
    parts = summary_parts(history)
    body = ["<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in
                             [*parts["head"], parts["winner"] or "no trial meets the "
                              "constraints"]) + "</ul>"]
    body.append("<h3>Best setting per toolkit</h3><ul>" + "".join(
        f"<li>{html.escape(backend)}: {html.escape(line)}</li>"
        for backend, line in parts["best"].items()) + "</ul>")
    if parts["snippet"]:
        body.append(f"<h3>Winning recipe (paste into a scenario, or run {WINNER_FILE})</h3>"
                    f"<pre>{html.escape(parts['snippet'])}</pre>")
    body.append(f'<img alt="objective vs trial" src="data:image/png;base64,{_plot(history)}">')
    body.append("<h3>Trials</h3><p>bold trial = on the Pareto front</p>")
    body.append(_table([html.escape(h) for h in headers],
                       [[html.escape(c) for c in r] for r in rows], classes, left=3))
    return "Search", "\n".join(body)


def report_parts(run_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """The search's HTML section and Markdown lines for ``squeezelab report`` (nothing for a
    folder that holds no search)."""
    history = read_history(run_dir)
    if history is None:
        return [], []
    return [html_section(history)], markdown_section(history)
