"""The metrics ``squeezelab regress`` compares, and how a worse value is measured.

In the spec layer so that a scenario's ``regress.tolerance`` and ``--tolerance`` are checked
before any run, against the same names :mod:`unified.report.regress` compares.
"""

from __future__ import annotations

TOLERANCES = {
    "accuracy": "absolute drop of accuracy",
    "agreement": "absolute drop of agreement",
    "size_ratio": "relative fall of size_ratio",
    "latency": "relative rise of latency_ms_p50",
}
