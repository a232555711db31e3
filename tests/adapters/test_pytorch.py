"""The PyTorch-native backend: plans without torch, real torch.ao / torch.nn.utils.prune runs
on the tiny model, structural checks on the ONNX it writes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny import assert_runs_concurrently, concurrent_agp

from adapters.pytorch import ADAPTER
from unified.spec.steps import Recipe


def plan(*steps: Any) -> Any:
    return ADAPTER.plan(Recipe.model_validate(list(steps)))


def onnx_graph(tmp_path: Path) -> onnx.GraphProto:
    return onnx.load(str(tmp_path / "pytorch" / "model.onnx")).graph


def ops(graph: onnx.GraphProto) -> Counter[str]:
    return Counter(node.op_type for node in graph.node)


def float_weights(graph: onnx.GraphProto, op_type: str) -> list[np.ndarray]:
    """The float weight initializer (input 1) of every ``op_type`` node."""
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[1]] for n in graph.node if n.op_type == op_type]


# --- plan: the capability table and the cross-step rules, no toolkit import ---------------


@pytest.mark.parametrize(("step", "status"), [
    ({"quantize": {"method": "static"}}, "ok"),
    ({"quantize": {"method": "static", "granularity": "per_tensor", "symmetric": False}}, "ok"),
    ({"quantize": {"method": "qat", "epochs": 1}}, "ok"),
    ({"quantize": {"method": "dynamic"}}, "ok"),
    ({"quantize": {"dtype": "float16", "weights": 16, "activations": 16}}, "ok"),
    ({"quantize": {"dtype": "float16", "weights": 16}}, "approximated"),
    ({"quantize": {"dtype": "float16", "weights": 16, "method": "dynamic"}}, "unsupported"),
    ({"quantize": {"weights": 4}}, "unsupported"),
    ({"quantize": {"weights": 1}}, "unsupported"),
    ({"quantize": {"activations": None}}, "unsupported"),
    ({"quantize": {"granularity": "per_block"}}, "unsupported"),
    ({"quantize": {"symmetric": False}}, "unsupported"),
    ({"quantize": {"method": "qat", "algorithm": "lsq"}}, "unsupported"),
    ({"quantize": {"method": "dynamic", "targets": {"op_types": ["conv"]}}}, "unsupported"),
    ({"prune": {"sparsity": 0.5}}, "ok"),
    ({"prune": {"sparsity": 0.5, "scope": "global", "criterion": "level"}}, "ok"),
    ({"prune": {"sparsity": 0.5, "criterion": "random"}}, "ok"),
    ({"prune": {"sparsity": 0.3, "structure": "channel", "criterion": "l2"}}, "approximated"),
    ({"prune": {"sparsity": 0.3, "structure": "channel", "scope": "global"}}, "unsupported"),
    ({"prune": {"sparsity": 0.3, "structure": "channel", "criterion": "level"}}, "unsupported"),
    ({"prune": {"sparsity": 0.5, "structure": "n:m", "n": 2, "m": 4}}, "unsupported"),
    ({"prune": {"sparsity": 0.5, "structure": "block", "block": [4, 4]}}, "unsupported"),
    ({"prune": {"sparsity": 0.5, "criterion": "fpgm"}}, "unsupported"),
    ({"prune": {"sparsity": 0.5, "criterion": "taylor"}}, "unsupported"),
    ({"prune": {"sparsity": 0.5, "schedule": {"end_epoch": 1, "curve": "constant"}}}, "ok"),
    ({"prune": {"sparsity": 0.8, "schedule": {"initial_sparsity": 0.05, "end_epoch": 4}}}, "ok"),
    ({"cluster": {"clusters": 16}}, "unsupported"),
    ({"binarize": {}}, "unsupported"),
    ({"distill": {"student": "builtin:convnet-thin"}}, "ok"),
    ({"finetune": {"epochs": 1}}, "ok"),
])
def test_plan_verdicts(step: dict[str, Any], status: str) -> None:
    result = plan(step)
    assert result.status == status, result
    if status == "unsupported":
        assert result.reason  # every unsupported verdict says why


def test_plan_names_alternatives_for_cluster_and_binarize() -> None:
    assert "coremltools" in (plan({"cluster": {"clusters": 16}}).reason or "")
    assert "NNI" in (plan({"binarize": {}}).reason or "")


def test_plan_quantize_must_be_last() -> None:
    result = plan({"quantize": {}}, {"finetune": {}})
    assert [s.verdict.support.value for s in result.steps] == ["native", "unsupported"]
    assert "last step" in (result.reason or "")


def test_plan_steps_before_distill_are_lost_but_after_are_fine() -> None:
    before = plan({"prune": {"sparsity": 0.5}}, {"distill": {"student": "builtin:convnet-thin"}})
    assert before.steps[0].verdict.support.value == "unsupported"
    after = plan({"distill": {"student": "builtin:convnet-thin"}}, {"prune": {"sparsity": 0.5}},
                 {"quantize": {}})
    assert after.status == "ok"


def test_plan_prune_then_qat_is_approximated() -> None:
    result = plan({"prune": {"sparsity": 0.5}}, {"quantize": {"method": "qat"}})
    assert result.status == "approximated"
    assert "re-applied" in result.notes[0]


def test_plan_reports_every_problem_at_once() -> None:
    result = plan({"cluster": {"bits": 4}}, {"quantize": {"weights": 4}})
    assert [s.verdict.support.value for s in result.steps] == ["unsupported", "unsupported"]


# --- helpers (no harness) ------------------------------------------------------------------


def test_target_selection_by_op_type_and_name() -> None:
    from unified.spec.steps import Targets
    from unified.torchkit.nets import convnet_tiny
    from unified.torchkit.targets import select_modules

    model = convnet_tiny(10, (1, 8, 8))
    names = lambda t: [n for n, _ in select_modules(model, t)]  # noqa: E731
    assert names(Targets(op_types=("depthwise",))) == ["features.1.0"]
    assert names(Targets(op_types=("linear",))) == ["fc", "classifier"]
    assert "classifier" not in names(Targets(exclude=("classifier*",)))
    assert names(Targets(include=("re:features\\.4\\..*",))) == [
        "features.4.conv1.0", "features.4.conv2"]


# --- end to end: real torch, the tiny model, the onnxruntime harness ----------------------


def test_static_ptq(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"quantize": {"method": "static"}}])
    assert record["status"] == "ok"
    counts = ops(onnx_graph(tmp_path))
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    int8 = [i for i in onnx_graph(tmp_path).initializer if i.data_type == onnx.TensorProto.INT8]
    assert sum(numpy_helper.to_array(i).size for i in int8) > 5000  # conv/linear weights
    assert record["ort_ops"].get("QLinearConv", 0) > 0
    assert record["quantized_compute_ops"] > 0
    assert record["int8_fraction"] > 0.7
    assert record["size_ratio"] > 2.3  # tiny model: names and scales weigh; quickstart reaches 3.8
    assert record["accuracy_drop"] < 0.03
    assert record["details"]["torch_vs_onnx_agreement"] > 0.95


def test_static_per_tensor_affine(run_recipe: Any) -> None:
    record = run_recipe("pytorch", [{"quantize": {"granularity": "per_tensor",
                                                  "symmetric": False}}])
    assert record["quantized_compute_ops"] > 0
    assert record["accuracy_drop"] < 0.05


def test_static_targets_leave_excluded_layers_float(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"quantize": {"targets": {"op_types": ["conv", "depthwise"]}}}])
    assert record["ort_ops"].get("QLinearConv", 0) > 0
    assert record["float_compute_ops"] > 0  # the two Linear layers
    assert any("left float" in n and "classifier" in n for n in record["notes"])


@pytest.mark.slow
def test_qat(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"quantize": {"method": "qat", "epochs": 1}}])
    assert record["status"] == "ok"
    counts = ops(onnx_graph(tmp_path))
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > 0
    assert record["ort_ops"].get("QLinearConv", 0) > 0
    assert record["int8_fraction"] > 0.7
    assert record["size_ratio"] > 2.3
    assert record["accuracy_drop"] < 0.03
    assert [e["kind"] for e in record["epoch_log"]] == ["qat"]


def test_dynamic_is_approximated_linear_only(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"quantize": {"method": "dynamic"}}])
    assert record["status"] == "approximated"
    counts = ops(onnx_graph(tmp_path))
    assert counts["MatMulInteger"] == 2 and counts["QuantizeLinear"] == 2  # 7-bit inputs
    assert counts["Conv"] > 0  # convs stay float
    assert any("convs stay float" in n for n in record["notes"])
    assert any("torch's int8 weights and scales in MatMulInteger" in n for n in record["notes"])
    assert record["accuracy_drop"] < 0.03
    # the ONNX computes what torch's own dynamic model computes
    assert record["details"]["parity"]["onnx_rel_l2"] < 1e-4
    assert (tmp_path / "pytorch" / "model.pt").stat().st_size == record["native_bytes"]


def conv_only(num_classes: int, input_shape: tuple[int, int, int]) -> Any:
    """No nn.Linear at all, like SqueezeNet: a 1x1 conv classifier and global pooling."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(input_shape[0], 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_dynamic_on_a_model_without_linear_leaves_it_float(cache_dir: Path,
                                                           tmp_path: Path) -> None:
    from tiny import tiny_scenario

    from unified.run.job import Job, execute
    from unified.run.reference import prepare_reference

    model = {"source": "python:test_pytorch:conv_only", "weights": "train",
             "input_shape": [1, 8, 8], "num_classes": 10}
    scenario = tiny_scenario({"dyn": [{"quantize": {"method": "dynamic"}}]}, ["pytorch"],
                             model=model)
    record = execute(scenario, Job("dyn", "pytorch"), tmp_path / "pytorch",
                     prepare_reference(scenario, cache_dir))
    # what torch's quantize_dynamic does on SqueezeNet: nothing to quantize, said so
    assert record["status"] == "approximated"
    assert any("leaves this model unchanged" in n for n in record["notes"])
    counts = ops(onnx_graph(tmp_path))
    assert counts["MatMulInteger"] == 0 and counts["DynamicQuantizeLinear"] == 0
    assert record["accuracy_drop"] == 0 and record["agreement"] == 1.0


def test_float16(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"quantize": {"dtype": "float16", "weights": 16,
                                                  "activations": 16}}])
    graph = onnx_graph(tmp_path)
    conv_weights = float_weights(graph, "Conv")
    assert conv_weights and all(w.dtype == np.float16 for w in conv_weights)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert record["size_ratio"] > 1.6
    assert record["accuracy_drop"] < 0.02


def test_prune_global(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"prune": {"sparsity": 0.5, "scope": "global"}}])
    assert record["status"] == "ok"
    # targets exclude nothing, so the harness's sparsity (all conv/linear weights) is ours
    assert abs(record["sparsity"] - 0.5) < 0.02
    per_layer = [float((w == 0).mean()) for w in float_weights(onnx_graph(tmp_path), "Conv")]
    assert max(per_layer) - min(per_layer) > 0.1  # global: layers end up different


@pytest.mark.slow
def test_prune_local_then_finetune_keeps_masks(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"prune": {"sparsity": 0.5}}, {"finetune": {"epochs": 1}}])
    graph = onnx_graph(tmp_path)
    for w in [*float_weights(graph, "Conv"), *float_weights(graph, "Gemm")]:
        assert abs(float((w == 0).mean()) - 0.5) <= 1 / w.size + 1e-9  # every layer: 50%
    assert record["epoch_log"][0]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_prune_channel_zeroes_whole_filters(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"prune": {
        "sparsity": 0.3, "structure": "channel",
        "targets": {"op_types": ["conv", "depthwise"]}}}])
    assert record["status"] == "approximated"
    weights = float_weights(onnx_graph(tmp_path), "Conv")
    for w in weights:
        rows = w.reshape(w.shape[0], -1)
        zero_rows = int((np.abs(rows).sum(1) == 0).sum())
        assert zero_rows == round(0.3 * w.shape[0])
        assert int((rows == 0).sum()) == zero_rows * rows.shape[1]  # only whole filters
    assert record["size_ratio"] == pytest.approx(1.0, abs=0.02)  # torch only zeroes


def test_prune_input_channels_zeroes_whole_input_slices(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe("pytorch", [{"prune": {
        "sparsity": 0.5, "structure": "input_channel",
        "targets": {"op_types": ["conv", "depthwise", "linear"]}}}])
    assert record["status"] == "approximated"
    notes = " ".join(record["notes"])
    assert "left out by default: features.0.0 (the input layer" in notes
    assert "features.1.0 (a depthwise conv" in notes
    graph = onnx_graph(tmp_path)
    pruned = [w for w in [*float_weights(graph, "Conv"), *float_weights(graph, "Gemm")]
              if w.shape[1] > 1]
    assert len(pruned) >= 4
    for w in pruned:
        columns = np.moveaxis(w, 1, 0).reshape(w.shape[1], -1)
        zero_columns = int((np.abs(columns).sum(1) == 0).sum())
        assert zero_columns == round(0.5 * w.shape[1]), w.shape
        assert int((w == 0).sum()) == zero_columns * columns.shape[1]  # only whole channels


@pytest.mark.slow
def test_prune_agp_follows_distiller_formula(run_recipe: Any) -> None:
    initial, final, start, end, freq = 0.05, 0.8, 0, 4, 1
    record = run_recipe("pytorch", [{"prune": {
        "sparsity": final, "scope": "global",
        "schedule": {"initial_sparsity": initial, "start_epoch": start, "end_epoch": end,
                     "frequency": freq}}}])
    log = [e for e in record["epoch_log"] if e["kind"] == "prune"]
    assert [e["epoch"] for e in log] == list(range(end))
    span = ((end - start - 1) // freq) * freq
    for entry in log:
        expected = final + (initial - final) * (1 - (entry["epoch"] - start) / span) ** 3
        assert entry["target"] == pytest.approx(expected, abs=1e-6)
        assert abs(entry["sparsity"] - expected) < 0.01
    assert abs(record["sparsity"] - final) < 0.01


@pytest.mark.slow
def test_concurrent_agp_steps_follow_distiller(run_recipe) -> None:
    steps, expected = concurrent_agp()
    assert_runs_concurrently(run_recipe("pytorch", steps), expected)


@pytest.mark.slow
def test_distill_into_smaller_student(run_recipe: Any, tiny_reference: Any) -> None:
    from unified.run.reference import load_summary

    record = run_recipe("pytorch", [{"distill": {"student": "python:tiny:micro_student",
                                                 "epochs": 3}}])
    assert record["status"] == "ok"
    assert record["parameters"] < load_summary(tiny_reference)["parameters"]
    assert [e["kind"] for e in record["epoch_log"]] == ["distill"] * 3
    assert record["accuracy"] > 0.5  # it learned from the teacher (10 classes: chance 0.1)
