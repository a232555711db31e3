"""Outputs that carry no information: a compressed model whose outputs collapsed (all zeros, or
the same for every input), and an fp32 reference whose own outputs are degenerate (near-zero
logits, one class for every input), against which accuracy and agreement mean nothing."""

from __future__ import annotations

import numpy as np

NEAR_ZERO = 1e-6  # logits smaller than this in absolute value are numerically nothing
CONSTANT_RTOL = 1e-6  # outputs varying less than this (relative) across inputs are constant


def rel_l2(values: np.ndarray, reference: np.ndarray) -> float | None:
    """Relative L2 distance of ``values`` from ``reference`` (None: the reference is all
    zeros, so no distance is relative to anything)."""
    ref = np.asarray(reference, dtype=np.float64)
    norm = float(np.linalg.norm(ref))
    if norm == 0:
        return None
    return float(np.linalg.norm(np.asarray(values, dtype=np.float64) - ref)) / norm


def _as_rows(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)


def _constant(rows: np.ndarray) -> bool:
    """Every input gives the same output (within a relative tolerance)."""
    spread = float(np.max(rows.max(axis=0) - rows.min(axis=0))) if rows.size else 0.0
    return spread <= CONSTANT_RTOL * max(1.0, float(np.abs(rows).max(initial=0.0)))


def degenerate_reason(logits: np.ndarray) -> str | None:
    """Why the fp32 reference's outputs on the test inputs carry no information, or None."""
    rows = _as_rows(logits)
    if len(rows) < 2:
        return None
    largest = float(np.abs(rows).max(initial=0.0))
    if largest < NEAR_ZERO:
        return (f"its logits are all near zero (largest |logit| {largest:.3g}): any "
                "quantization rounds them away")
    if _constant(rows):
        return "its outputs are the same for every test input"
    classes = np.unique(rows.argmax(axis=1))
    if rows.shape[1] > 1 and classes.size == 1:
        return f"it predicts one class ({int(classes[0])}) for every test input"
    return None


def collapse_reason(logits: np.ndarray, reference: np.ndarray,
                    rel_l2: float | None) -> str | None:
    """Why a compressed model's outputs collapsed (all zeros, or the same for every input
    while the reference's vary), or None."""
    rows, ref = _as_rows(logits), _as_rows(reference)
    if len(rows) < 2:
        return None
    distance = "" if rel_l2 is None else f", rel_l2 {rel_l2:.3g}"
    if not np.any(rows) and np.any(ref):
        return f"outputs collapsed: all zeros on every test input{distance}"
    if _constant(rows) and not _constant(ref):
        return f"outputs collapsed: the same output for every test input{distance}"
    return None
