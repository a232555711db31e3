"""The seed article's claims set side by side with a run's measurements (report section).

docs/architecture.md, "The seed article's claims": each claim becomes rows of one HTML table,
one row per model of the run, with the figures measured here and a verdict (agrees, partly,
differs, or n/a with the reason). Recipes are recognised by their steps, not their names,
so any scenario with e.g. a dynamic-quantization recipe gets the matching row. The judges
are in ``article_claims``; recipe kinds, tolerances and the per-model rows in
``article_rows``.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from unified.report.article_claims import CLAIMS
from unified.report.article_rows import (
    KEEPS_ACCURACY,
    PROPORTIONAL,
    SIZE_SAME,
    SPEED_SAME,
    VERDICT_CLASS,
    ModelRows,
    classify,
    model_rows,
)

if TYPE_CHECKING:
    from unified.report.html import RunFolder

__all__ = ["article_sections", "classify", "comparison_table"]


def _describe(m: ModelRows) -> str:
    arch = m.arch[0] if m.arch else m.spec.source
    weights = ("random weights" if m.spec.weights == "random" else "trained weights"
               if m.trained else "trained weights, at chance level")
    shape = "×".join(str(d) for d in m.spec.input_shape)
    return f"{m.label}<br><small>{html.escape(arch)}, {shape}, {weights}</small>"


def comparison_table(models: list[ModelRows]) -> str | None:
    """The HTML table (claim | model | measured here | verdict), or None without rows."""
    body: list[str] = []
    technique_rows = 0
    for index, (claim, judge) in enumerate(CLAIMS):
        results = [(m, out) for m in models if (out := judge(m)) is not None]
        if not results:
            continue
        if index > 0:
            technique_rows += len(results)
        for i, (m, (ours, (verdict, why))) in enumerate(results):
            claim_cell = (f'<td class="l" rowspan="{len(results)}">{html.escape(claim)}</td>'
                          if i == 0 else "")
            body.append(
                f"<tr>{claim_cell}<td class=\"l\">{_describe(m)}</td>"
                f'<td class="l">{ours}</td>'
                f'<td class="l"><span class="{VERDICT_CLASS[verdict]}"><b>{verdict}</b>'
                f"</span>: {html.escape(why)}</td></tr>")
    if not technique_rows:
        return None
    head = ("<table><tr><th>the article says</th><th>model</th><th>measured here</th>"
            "<th>verdict</th></tr>")
    return head + "\n".join(body) + "</table>"


def article_sections(run: RunFolder) -> list[tuple[str, str]]:
    """(title, HTML) sections comparing the seed article's tables with ``run``; none when
    the run has nothing the article measured."""
    models = model_rows(run.records, run.scenario)
    table = comparison_table(models)
    if table is None:
        return []
    intro = (
        "<p>The seed article compressed MobileNetV2, ResNet50 and SqueezeNet1.1 trained on "
        "ImageNet. No pretrained weights can be downloaded here: size and latency come from "
        "the same architectures with random weights at their full input size, accuracy from "
        "versions trained on the run's labelled data at a small resolution. Ratios are "
        "fp32 / compressed (size: ONNX bytes, native: the toolkit's own artifact, gzip: the "
        "gzipped ONNX); speed = fp32 p50 latency / this p50 on the one onnxruntime harness "
        "(batch 1; on a shared machine latency ratios are noisy, sizes are exact). "
        "Verdict tolerances: sizes exact, 'no gain' = within "
        f"{SIZE_SAME[0]:g}–{SIZE_SAME[1]:g}× in size and {SPEED_SAME[0]:g}–{SPEED_SAME[1]:g}× "
        f"in speed, 'keeps accuracy' = drop ≤ {KEEPS_ACCURACY:g}, 'in proportion to the "
        f"bits' = within {PROPORTIONAL:.0%} of 32/bits.</p>")
    return [("The seed article vs this run", intro + table)]
