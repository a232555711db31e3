"""NNI 3.0 backend: end-to-end runs on the tiny model (real NNI); plans are in
test_nni_plan.py (no toolkit needed)."""

from __future__ import annotations

import pytest
from tiny import assert_follows_schedule, assert_runs_concurrently, concurrent_agp, late_agp

pytest.importorskip("nni")


@pytest.mark.slow
def test_channel_pruning_runs_speedup_and_shrinks(run_recipe) -> None:
    record = run_recipe("nni", [{"prune": {"sparsity": 0.5, "structure": "channel"}},
                                {"finetune": {"epochs": 1}}])
    details = record["details"]
    assert details["parameters_after"] < 0.6 * details["parameters_before"]
    assert record["size_ratio"] > 1.5  # the ONNX itself is smaller, not just zeroed
    # the smaller model still classifies once fine-tuned (reference about 0.94, chance 0.1)
    assert record["accuracy_drop"] < 0.2


@pytest.mark.slow
def test_input_channel_pruning_removes_channels_and_their_producers(run_recipe) -> None:
    record = run_recipe("nni", [{"prune": {"sparsity": 0.5, "structure": "input_channel",
                                           "targets": {"op_types": ["conv", "linear"]}}}])
    details = record["details"]
    # the consumers lose input channels and ModelSpeedup thins the producers' filters too
    assert details["parameters_after"] < 0.7 * details["parameters_before"]
    assert record["size_ratio"] > 1.4
    # the recipe asks for no training: the smaller model is not fine-tuned
    assert not any("fine-tuned" in n for n in record["notes"])
    # the input layer has no producer to thin: the central target resolution leaves it out
    assert any("left out by default: features.0.0" in n for n in record["notes"])


@pytest.mark.slow
def test_unstructured_global_l1_hits_sparsity_and_keeps_it(run_recipe) -> None:
    record = run_recipe("nni", [
        {"prune": {"sparsity": 0.5, "scope": "global", "criterion": "l1"}},
        {"finetune": {"epochs": 1}},
    ])
    assert abs(record["sparsity"] - 0.5) <= 0.02
    assert record["epoch_log"][-1]["sparsity"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.slow
def test_agp_schedule_logs_each_epoch(run_recipe) -> None:
    record = run_recipe("nni", [{"prune": {
        "sparsity": 0.6, "schedule": {"initial_sparsity": 0.1, "end_epoch": 3}}}])
    log = record["epoch_log"]
    assert [e["epoch"] for e in log] == [0, 1, 2]
    # Distiller's AGP, written out: span = end - start - 1 = 2 epochs, mask set at epoch start
    for entry in log:
        expected = 0.6 + (0.1 - 0.6) * (1 - entry["epoch"] / 2) ** 3
        assert abs(entry["sparsity"] - expected) < 0.01, entry
    assert record["sparsity"] == pytest.approx(0.6, abs=0.02)


@pytest.mark.slow
def test_agp_with_late_start_and_frequency_follows_distiller(run_recipe) -> None:
    step, expected = late_agp(0.6)
    assert_follows_schedule(run_recipe("nni", [step])["epoch_log"], expected)


@pytest.mark.slow
def test_concurrent_agp_steps_follow_distiller(run_recipe) -> None:
    steps, expected = concurrent_agp()
    assert_runs_concurrently(run_recipe("nni", steps), expected)


@pytest.mark.slow
def test_qat_gives_int8_kernels(run_recipe) -> None:
    record = run_recipe("nni", [{"quantize": {"method": "qat", "granularity": "per_channel"}}])
    assert record["quantized_compute_ops"] > 0
    assert record["int8_fraction"] > 0.8
    assert record["details"]["weight_grid_max_error"] < 1e-3  # NNI's scales, on grid


@pytest.mark.slow
def test_static_ptq_does_not_train(run_recipe) -> None:
    record = run_recipe("nni", [{"quantize": {"method": "static",
                                              "granularity": "per_tensor"}}])
    assert record["quantized_compute_ops"] > 0
    assert record["accuracy_drop"] < 0.05


@pytest.mark.slow
def test_bnn_binarizes_every_target_weight(run_recipe) -> None:
    record = run_recipe("nni", [{"binarize": {"style": "bnn"}}])
    assert record["max_distinct_values"] == 2
    assert set(record["details"]["distinct_values"].values()) == {2}


@pytest.mark.slow
def test_distill_trains_the_student(run_recipe) -> None:
    record = run_recipe("nni", [{"distill": {"student": "python:tiny:micro_student",
                                             "epochs": 2}}])
    details = record["details"]
    assert details["student_parameters"] < details["teacher_parameters"]
    assert details["parameters"] == details["student_parameters"]  # the student is exported
    assert record["accuracy"] > 0.5  # it learned from the teacher (10 classes: chance 0.1)
