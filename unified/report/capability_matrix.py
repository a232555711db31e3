"""The capability matrix: representative recipes planned on every backend.

Built from each adapter's own plan(), so the matrix can never disagree with what a run does.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from adapters.registry import backends, get_adapter
from unified.spec.steps import Recipe

PROBES: dict[str, list[dict[str, Any]]] = {
    "prune unstructured local": [{"prune": {"sparsity": 0.5}}],
    "prune unstructured global": [{"prune": {"sparsity": 0.5, "scope": "global"}}],
    "prune channel (filters)": [{"prune": {"sparsity": 0.3, "structure": "channel"}}],
    "prune input channels": [{"prune": {"sparsity": 0.3, "structure": "input_channel"}}],
    "prune fpgm channel": [{"prune": {"sparsity": 0.3, "structure": "channel",
                                      "criterion": "fpgm"}}],
    "prune taylor channel": [{"prune": {"sparsity": 0.3, "structure": "channel",
                                        "criterion": "taylor"}}],
    "prune n:m 2:4": [{"prune": {"sparsity": 0.5, "structure": "n:m", "n": 2, "m": 4}}],
    "prune AGP schedule": [{"prune": {"sparsity": 0.8, "schedule": {
        "initial_sparsity": 0.05, "start_epoch": 0, "end_epoch": 4}}}],
    "quantize dynamic int8": [{"quantize": {"method": "dynamic"}}],
    "quantize static int8 per-channel": [{"quantize": {"method": "static"}}],
    "quantize static int8 per-tensor": [{"quantize": {"method": "static",
                                                      "granularity": "per_tensor"}}],
    "quantize qat int8": [{"quantize": {"method": "qat"}}],
    "quantize qat lsq": [{"quantize": {"method": "qat", "algorithm": "lsq"}}],
    "quantize float16": [{"quantize": {"method": "static", "weights": 16, "dtype": "float16",
                                       "activations": None}}],
    "quantize weights 4-bit": [{"quantize": {"method": "static", "weights": 4,
                                             "activations": None}}],
    "cluster 16": [{"cluster": {"clusters": 16}}],
    "binarize": [{"binarize": {}}],
    "distill": [{"distill": {"student": "builtin:convnet-thin"}}],
    "finetune": [{"finetune": {}}],
}

CELL = {"ok": "[green]native[/]", "approximated": "[yellow]approx[/]",
        "unsupported": "[dim]–[/]"}


def matrix() -> dict[str, dict[str, tuple[str, str]]]:
    """{probe: {backend: (status, reason or note)}}."""
    out: dict[str, dict[str, tuple[str, str]]] = {}
    for probe, steps in PROBES.items():
        recipe = Recipe.model_validate(steps)
        row = {}
        for backend in backends():
            plan = get_adapter(backend).plan(recipe)
            row[backend] = (plan.status, plan.reason or "; ".join(plan.notes))
        out[probe] = row
    return out


def matrix_table() -> Table:
    table = Table(title="capability matrix (native / approx / – unsupported)")
    table.add_column("recipe")
    for backend in backends():
        table.add_column(backend, justify="center")
    for probe, row in matrix().items():
        table.add_row(probe, *[CELL[row[b][0]] for b in backends()])
    return table


def backend_table() -> Table:
    table = Table(title="backends")
    for header in ("backend", "toolkit", "input", "artifact", "available", "versions"):
        table.add_column(header)
    for backend in backends():
        caps = get_adapter(backend).capabilities
        versions = ", ".join(f"{k} {v}" for k, v in caps.versions().items() if v)
        available = ("[green]yes[/]" if caps.available()
                     else f"[red]unavailable[/]: {caps.install_hint}")
        table.add_row(backend, caps.toolkit, caps.input_framework, caps.artifact, available,
                      versions or "–")
    return table
