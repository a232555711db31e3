"""coremltools backend on the tiny real model: structure of the ONNX read back from Core ML;
plans are in test_coreml_plan.py (no toolkit needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import assert_follows_schedule, assert_runs_concurrently, concurrent_agp, late_agp

# Not importorskip: importing coremltools here, before the adapter hides tensorflow from it,
# would load TF next to triton (see adapters/coreml/_impl_ct.py).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("coremltools") is None,
                                reason="coremltools is not installed")


def onnx_weights(record: dict[str, Any]) -> list[np.ndarray]:
    from adapters.coreml._impl_post import onnx_layer_weights

    package = Path(record["details"]["mlpackage"])
    return onnx_layer_weights(package.parent / "model.onnx")


# --- training-time helpers ---------------------------------------------------------------


def test_agp_update_steps_match_distiller() -> None:
    from adapters.coreml._impl_torch import agp_update_steps
    from unified.spec.steps import Schedule

    # Distiller: span = ((4 - 0 - 1) // 1) * 1 = 3 → prune at epochs 0, 1, 2, 3
    assert agp_update_steps(Schedule(start_epoch=0, end_epoch=4)) == [1, 2, 3, 4]
    # span = ((6 - 1 - 1) // 2) * 2 = 4 → epochs 1, 3, 5
    assert agp_update_steps(Schedule(start_epoch=1, end_epoch=6, frequency=2)) == [2, 4, 6]


# --- post-training (optimize.coreml) end to end ---------------------------------------------


@pytest.mark.slow
def test_linear_int8_per_tensor(run_recipe) -> None:
    rec = run_recipe("coreml", [{"quantize": {"weights": 8, "activations": None,
                                              "granularity": "per_tensor"}}])
    assert rec["status"] == "ok"
    assert rec["details"]["readback_exact"] is True
    weights = onnx_weights(rec)
    assert all(len(np.unique(w)) <= 256 for w in weights)
    assert rec["native_bytes"] < 0.35 * rec["details"]["fp32_weight_bytes"]


@pytest.mark.slow
def test_linear_int4_per_channel(run_recipe) -> None:
    rec = run_recipe("coreml", [{"quantize": {"weights": 4, "activations": None}}])
    assert rec["details"]["readback_exact"] is True
    for w in onnx_weights(rec):  # per channel: at most 16 levels in every output channel
        assert max(len(np.unique(row)) for row in w.reshape(w.shape[0], -1)) <= 16
    assert rec["details"]["weight_file_ratio"] < 0.25


@pytest.mark.slow
def test_palettize_2bit_per_tensor(run_recipe) -> None:
    rec = run_recipe("coreml", [{"cluster": {"bits": 2}}])
    assert rec["max_distinct_values"] <= 4
    assert all(len(np.unique(w)) <= 4 for w in onnx_weights(rec))
    assert rec["details"]["readback_exact"] is True


@pytest.mark.slow
def test_prune_half(run_recipe) -> None:
    rec = run_recipe("coreml", [{"prune": {"sparsity": 0.5}}])
    assert rec["details"]["readback_exact"] is True
    for w in onnx_weights(rec):
        assert (w == 0).mean() >= 0.49
    assert rec["sparsity"] >= 0.45  # harness: share of zeros over all conv/linear weights


@pytest.mark.slow
def test_joint_prune_palettize_and_activation_note(run_recipe) -> None:
    rec = run_recipe("coreml", [{"prune": {"sparsity": 0.5}},
                                {"cluster": {"bits": 2}}])
    assert rec["details"]["readback_exact"] is True
    for w in onnx_weights(rec):
        assert (w == 0).mean() >= 0.49
        assert len(np.unique(w)) <= 5  # 4 LUT entries + the pruned zeros
    assert any("joint_compression" in n for n in rec["notes"])
    static = run_recipe("coreml", [{"quantize": {"weights": 8, "activations": 8}}])
    assert static["status"] == "approximated"
    assert any("macOS" in n for n in static["notes"])


# --- training-time (optimize.torch) ---------------------------------------------------------


@pytest.mark.slow
def test_scheduled_prune_logs_sparsity(run_recipe) -> None:
    step, expected = late_agp(0.6)
    rec = run_recipe("coreml", [step])
    assert_follows_schedule(rec["epoch_log"], expected)
    assert rec["details"]["readback_exact"] is True


@pytest.mark.slow
def test_concurrent_agp_steps_follow_distiller(run_recipe) -> None:
    steps, expected = concurrent_agp()
    rec = run_recipe("coreml", steps)
    assert_runs_concurrently(rec, expected)
    assert rec["details"]["readback_exact"] is True


@pytest.mark.slow
def test_qat_exports_qdq(run_recipe) -> None:
    rec = run_recipe("coreml", [{"quantize": {"method": "qat", "weights": 8, "activations": 8}}])
    assert rec["status"] == "ok"
    assert rec["quantized_compute_ops"] and rec["quantized_compute_ops"] > 0
