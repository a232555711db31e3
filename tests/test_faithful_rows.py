"""Rows say what really happened (real toolkits on tiny models): a run-time deviation makes a row
``approximated`` with a note naming it, an export that changes the model or outputs that
collapsed make it ``failed``, and a degenerate reference is flagged. Models that misbehave
on purpose are in tests/fixtures/unfaithful_models.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tiny import TINY_SCENARIO, tiny_scenario

FIXTURES = Path(__file__).parent / "fixtures"
Run = Callable[..., dict[str, Any]]


@pytest.fixture
def run_model(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run one recipe on one backend with the reference built from ``python:`` ``source``."""
    from unified.run.job import Job, execute
    from unified.run.reference import prepare_reference

    monkeypatch.syspath_prepend(str(FIXTURES))

    def run(source: str, backend: str, steps: list[Any], weights: str = "train") -> dict[str, Any]:
        model = {**TINY_SCENARIO["model"], "source": f"python:unfaithful_models:{source}",
                 "weights": weights}
        scenario = tiny_scenario({"r": steps}, [backend], model=model)
        ref = prepare_reference(scenario, cache_dir)
        record = execute(scenario, Job("r", backend), tmp_path / backend, ref)
        record["_reference"] = json.loads(ref.summary.read_text())
        record["_ref"], record["_scenario"] = ref, scenario
        return record

    return run


def _notes(record: dict[str, Any], text: str) -> list[str]:
    return [note for note in record["notes"] if text in note]


# --- run-time deviations: approximated with a note naming them --------------------------------


@pytest.mark.slow
def test_nni_linear_schedule_ignores_initial_sparsity(run_recipe: Run) -> None:
    pytest.importorskip("nni")
    record = run_recipe("nni", [{"prune": {"sparsity": 0.5, "schedule": {
        "curve": "linear", "initial_sparsity": 0.2, "end_epoch": 3}}}])
    assert record["status"] == "approximated"
    assert _notes(record, "LinearPruner ramps from 0, not from initial_sparsity 0.2")


@pytest.mark.slow
def test_nni_channel_pruning_trains_only_when_asked(run_recipe: Run) -> None:
    """The same channel recipe (no targets, no training) prunes the same layers on pytorch
    and NNI, and neither trains: their drops agree (NNI once fine-tuned the sped-up model on
    its own, and its drop was 0.001 where pytorch's was 0.86)."""
    pytest.importorskip("nni")
    steps = [{"prune": {"sparsity": 0.5, "structure": "channel", "criterion": "l1"}}]
    nni = run_recipe("nni", steps)
    torch_row = run_recipe("pytorch", steps)
    assert not _notes(nni, "fine-tuned")
    assert nni["layers_targeted"] == torch_row["layers_targeted"]
    assert abs(nni["accuracy_drop"] - torch_row["accuracy_drop"]) <= 0.05, (nni, torch_row)


@pytest.mark.slow
def test_pytorch_prunes_grouped_convs(run_model: Run, tmp_path: Path) -> None:
    record = run_model("grouped", "pytorch", [{"prune": {
        "sparsity": 0.5, "structure": "channel", "targets": {"op_types": ["conv"]}}}])
    assert record["status"] in ("ok", "approximated"), record.get("reason")
    layers = json.loads((tmp_path / "pytorch" / "layers.json").read_text())
    assert layers["steps"][0]["layers"] == ["features.0.0", "features.1.0", "features.2.0"]
    assert "features.1.0" in layers["reported"]["1"]  # the grouped conv
    assert "features.1.0" in layers["onnx"]["changed"]
    assert record["layers_targeted"] == record["layers_changed"] == 3


def test_onnxruntime_fusing_fewer_integer_ops_than_targeted(run_model: Run) -> None:
    """The classifier's Gemm (alpha 0.5) is targeted and wrapped in QDQ, but onnxruntime's
    session optimizer runs it in float: the row counts the fused ops, not the QDQ pairs."""
    record = run_model("half_gemm_head", "onnxruntime", [{"quantize": {"method": "static"}}])
    assert record["status"] == "approximated", record.get("reason")
    (note,) = _notes(record, "onnxruntime's session optimizer fused only")
    targeted = record["layers_targeted"]
    assert f"fused only {targeted - 1} of the {targeted} targeted layers" in note
    assert record["details"]["runtime_float_ops"] == 1


@pytest.mark.slow
def test_tfmot_qat_names_the_layers_it_leaves_float(run_model: Run, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow_model_optimization")
    from unified.run.latency_pass import time_rows

    record = run_model("scaled", "tfmot", [{"quantize": {"method": "qat"}}])
    assert record["status"] == "approximated"
    assert _notes(record, "TF-MOT QAT cannot quantize these layers and leaves them in float")
    # the TFLite interpreter times the int8 model against the fp32 TFLite of the same model
    assert record["native_files"]["runtime"] == "tflite"
    time_rows(record["_scenario"], record["_ref"], [record], lambda _: tmp_path / "tfmot")
    assert record["native_latency_ms"] > 0 and record["native_speedup"] > 0


# --- failed rows and a degenerate reference ------------------------------------------------


@pytest.mark.slow
def test_an_export_that_changes_the_model_fails_the_row(run_model: Run) -> None:
    record = run_model("export_differs", "pytorch", [{"prune": {"sparsity": 0.3}}])
    assert record["status"] == "failed"
    assert record["reason"].startswith("export changed the model")
    assert record["details"]["parity"]["agreement"] < 0.99


@pytest.mark.slow
def test_collapsed_outputs_fail_the_row(run_model: Run) -> None:
    record = run_model("crushed_head", "onnxruntime", [{"quantize": {
        "method": "static", "granularity": "per_tensor"}}])
    assert not record["_reference"]["reference_degenerate"]
    assert record["status"] == "failed"
    assert record["reason"].startswith("outputs collapsed")


def test_a_collapse_names_the_layers_pruned_entirely(run_model: Run) -> None:
    """torch's global_unstructured ranks every weight of the scenario's model together: a
    layer whose weights are all small (here a 1x1 conv scaled by 1e-4) loses every one of
    them, and the row's reason says so beside the collapse."""
    record = run_model("small_middle", "pytorch", [{"prune": {"sparsity": 0.5,
                                                              "scope": "global"}}],
                       weights="random")
    assert record["status"] == "failed"
    assert record["reason"].startswith("outputs collapsed"), record["reason"]
    assert record["reason"].endswith("1 layer(s) pruned entirely: middle")
    assert _notes(record, "1 layer(s) pruned entirely (every weight zero in the ONNX): middle")


def test_a_degenerate_reference_is_flagged_on_every_row(run_model: Run) -> None:
    record = run_model("silent", "onnxruntime", [], weights="random")
    assert "near zero" in record["_reference"]["reference_degenerate_reason"]
    assert _notes(record, "the fp32 reference is degenerate (its logits are all near zero")


# --- native latency: the toolkit's own runtime beside the ONNX -------------------------------


@pytest.mark.slow
def test_latency_pass_times_the_native_model_against_its_fp32(
        run_recipe: Run, tiny_reference: Any, tmp_path: Path) -> None:
    from unified.run.latency_pass import time_rows

    record = run_recipe("pytorch", [{"quantize": {"method": "static"}}])
    assert record["native_files"]["runtime"] == "torchscript"
    time_rows(tiny_scenario({"r": []}, ["pytorch"]), tiny_reference, [record],
              lambda _: tmp_path / "pytorch")
    assert record["native_latency_ms"] > 0
    assert record["native_speedup"] > 0
    assert record["speedup"] > 0  # the ONNX pass still ran, beside it
    # a resumed run times again: a note from an earlier pass is replaced, not kept beside
    stale = "native torchscript 9.99x of its fp32 (0.001 ms), ONNX 1.00x of the fp32 ONNX"
    record["notes"] = [*record["notes"], stale, "latency not measured: gone.onnx is missing"]
    time_rows(tiny_scenario({"r": []}, ["pytorch"]), tiny_reference, [record],
              lambda _: tmp_path / "pytorch")
    assert not any("9.99x" in n or "gone.onnx" in n for n in record["notes"])
    assert any("per_channel" in n for n in record["notes"])  # the toolkit's own notes stay


@pytest.mark.parametrize(("speedup", "onnx_ms", "native", "native_ms", "says"), [
    (1.0, 0.2, 2.5, 0.1, "the round-trip to onnxruntime, not the toolkit"),
    (2.0, 0.09, 8.9, 0.13, "fp32 baseline is the slower one"),
    (2.0, 0.09, 1.06, 1.0, "faster than its own runtime"),
    (2.0, 0.09, 1.8, 0.1, None),  # within 1.5x: no note
])
def test_gap_note_says_which_side_is_slow(speedup: float, onnx_ms: float, native: float,
                                          native_ms: float, says: str | None) -> None:
    from unified.run.latency_pass import gap_note

    note = gap_note("torchscript", {"speedup": speedup, "latency_ms_p50": onnx_ms,
                                    "native_speedup": native, "native_latency_ms": native_ms})
    assert (note is None) if says is None else (note is not None and says in note)
