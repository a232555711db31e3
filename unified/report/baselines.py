"""The report's "Baselines" section: what every ratio and drop is measured against
(Blalock et al., MLSys 2020: report the baseline's own figures beside the compressed ones).

- each toolkit's fp32 artifacts, the denominators of native× and deploy×;
- the matched baselines ``fp32+ft<N>`` with their own accuracy (± its spread over seeds)
  and the recipes compared with them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

MEASURED = ("ok", "approximated")


def _kb(value: Any) -> str:
    return "–" if value is None else f"{value / 1024:.1f}"


def _pm(record: dict[str, Any], name: str, sign: str = "") -> str:
    # a drop against the fixed reference spreads like the accuracy it is computed from
    value, std = record.get(name), record.get(f"{name.removesuffix('_drop')}_std")
    if value is None:
        return "–"
    return f"{value:{sign}.4f}" + (f" ± {std:.4f}" if std is not None else "")


def fp32_rows(records: Sequence[dict[str, Any]],
              auxiliary: Sequence[dict[str, Any]]) -> list[list[str]]:
    """model, backend, deployable file, its bytes, native bytes: one per backend's fp32 job."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in [*records, *auxiliary]:
        key = (str(r["model"]), str(r["backend"]))
        if r.get("role") != "fp32" or r.get("repeat") or r["status"] not in MEASURED \
                or key in seen:
            continue
        seen.add(key)
        out.append([*key, str(r.get("deploy_format") or "–"), _kb(r.get("deploy_bytes")),
                    _kb(r.get("native_bytes")),
                    "hidden job (no recipe without steps)" if r in auxiliary else r["recipe"]])
    return out


def matched_rows(records: Sequence[dict[str, Any]]) -> list[list[str]]:
    """model, baseline, accuracy ± std, its drop against the reference, seeds, the measured
    rows whose accuracy_drop is against it."""
    out = []
    for r in records:
        if r.get("role") != "baseline":
            continue
        users = [f"{o['recipe']} @ {o['backend']}" for o in records
                 if o.get("matched_baseline") == r["recipe"] and o.get("model") == r["model"]
                 and o["status"] in MEASURED]
        out.append([str(r["model"]), str(r["recipe"]), r["status"], _pm(r, "accuracy"),
                    _pm(r, "accuracy_drop", "+"), str(r.get("repeats") or "–"),
                    ", ".join(users) or "–"])
    return out


def baselines_html(records: Sequence[dict[str, Any]], auxiliary: Sequence[dict[str, Any]],
                   table: Any) -> list[str]:
    """The section's HTML parts; ``table(headers, rows, left=...)`` draws a table."""
    parts = ["<h2>Baselines</h2>",
             "<p>native× and deploy× divide each toolkit's own fp32 file by the row's (same "
             "format: .pt by .pt, .tflite by .tflite, .mlpackage by .mlpackage, the ONNX for "
             "onnxruntime):</p>"]
    fp32 = fp32_rows(records, auxiliary)
    parts.append(table(["model", "backend", "deployable file", "KB", "native KB", "from"],
                       [[html.escape(c) for c in row] for row in fp32], left=3)
                 if fp32 else "<p>no fp32 artifact was measured</p>")
    matched = matched_rows(records)
    if matched:
        parts += ["<p>A recipe that trains N epochs beyond the reference has its "
                  "accuracy_drop measured against the reference fine-tuned N epochs under the "
                  "same budget (fp32+ft&lt;N&gt;); the drop against the plain reference is "
                  "accuracy_drop_vs_reference:</p>",
                  table(["model", "baseline", "status", "accuracy", "drop vs reference",
                         "seeds", "compared with it"],
                        [[html.escape(c) for c in row] for row in matched], left=3)]
    return parts
