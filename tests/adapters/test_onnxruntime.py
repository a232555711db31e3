"""onnxruntime backend: real onnxruntime.quantization on the tiny trained reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from adapters.onnxruntime import ADAPTER
from unified.spec.steps import Recipe

pytest.importorskip("onnxruntime")

BACKEND = "onnxruntime"


def plan_of(steps: list[Any]) -> Any:
    return ADAPTER.plan(Recipe.model_validate(steps))


def written(tmp_path: Path) -> onnx.ModelProto:
    """The ONNX the adapter wrote (run_recipe's workdir is tmp_path / backend)."""
    return onnx.load(str(tmp_path / BACKEND / "model.onnx"))


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def activation_types(model: onnx.ModelProto) -> set[int]:
    """Zero-point types of the QuantizeLinear nodes: activations (weights are stored
    already quantized, so every QuantizeLinear quantizes an activation)."""
    inits = {t.name: t for t in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}


def weight_layers(tiny_reference: Any) -> int:
    from adapters.onnxruntime._impl import layers

    return len(layers(onnx.load(str(tiny_reference.onnx))))


# --- plan level: no toolkit import ------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        ([{"prune": {"sparsity": 0.5}}], "no pruning"),
        ([{"cluster": {"clusters": 16}}], "no weight clustering"),
        ([{"binarize": {}}], "no 1-bit weights"),
        ([{"distill": {"student": "builtin:convnet-thin"}}], "trains a student"),
        ([{"finetune": {}}], "fine-tuning is training"),
        ([{"quantize": {"method": "qat"}}], "quantization-aware training"),
        ([{"quantize": {"method": "static", "granularity": "per_block"}}], "MatMulNBits"),
        ([{"quantize": {"method": "dynamic", "weights": 4}}], "MatMulNBits"),
        ([{"quantize": {"method": "static", "activations": None}}], "always quantizes"),
        ([{"quantize": {"method": "static", "weights": 2}}], "no 2-bit type"),
        ([{"quantize": {"method": "static"}}, {"finetune": {}}], "nothing can follow"),
        ([{"quantize": {"method": "static"}}, {"quantize": {"method": "dynamic"}}],
         "nothing can follow"),
    ],
)
def test_unsupported_rows_give_the_reason(steps: list[Any], reason: str) -> None:
    plan = plan_of(steps)
    assert plan.status == "unsupported"
    assert reason in plan.reason


@pytest.mark.parametrize(
    "step",
    [
        {"method": "static"},
        {"method": "static", "granularity": "per_tensor", "symmetric": False},
        {"method": "static", "activations": 16},
        {"method": "static", "weights": 4},
        {"method": "dynamic"},
        {"dtype": "float16", "weights": 16, "activations": 16},
    ],
)
def test_supported_quantize_plans_are_native(step: dict[str, Any]) -> None:
    assert plan_of([{"quantize": step}]).status == "ok"


def test_float16_with_8_bit_activations_is_approximated() -> None:
    """A float16 graph computes its activations in float16: activations 8 (the default) is
    not what runs, and the row says so."""
    plan = plan_of([{"quantize": {"dtype": "float16", "weights": 16}}])
    assert plan.status == "approximated"
    assert any("activations: 8 ignored" in note for note in plan.notes)


def test_node_names_map_to_torch_module_names(tmp_path: Path) -> None:
    from adapters.onnxruntime._impl import layers
    from unified.measure.onnx_names import module_name
    from unified.spec.steps import OpType
    from unified.torchkit.export import export_onnx
    from unified.torchkit.models import build_model

    model = build_model("builtin:convnet-tiny", 10, (1, 8, 8))
    modules = dict(model.named_modules())
    graph = onnx.load(str(export_onnx(model, tmp_path / "m.onnx", (1, 8, 8))))
    found = layers(graph)
    assert {layer.module for layer in found} == {
        name for name, m in modules.items() if type(m).__name__ in ("Conv2d", "Linear")
    }
    depthwise = [layer.module for layer in found if layer.kind is OpType.depthwise]
    assert depthwise == [n for n, m in modules.items()
                         if type(m).__name__ == "Conv2d" and m.groups == m.in_channels > 1]
    assert module_name("/features/features.4/Add") == "features.4"
    assert module_name("/Flatten") == ""


# --- end to end on the tiny reference ---------------------------------------------------------


def test_fp32_is_the_reference_copied(run_recipe: Any, tiny_reference: Any,
                                      tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [])
    assert record["status"] == "ok"
    assert record["agreement"] == 1.0
    assert record["size_ratio"] == 1.0
    out = tmp_path / BACKEND / "model.onnx"
    assert out.read_bytes() == Path(tiny_reference.onnx).read_bytes()


def test_static_per_channel_u8s8_fuses_to_integer_ops(run_recipe: Any, tiny_reference: Any,
                                                       tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "static"}}])
    assert record["status"] == "ok"
    model = written(tmp_path)
    ops = op_counts(model)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    inits = {t.name: t for t in model.graph.initializer}
    linear_w = inits["classifier.weight_quantized"]
    assert linear_w.data_type == TensorProto.INT8  # weights S8
    assert activation_types(model) == {TensorProto.UINT8}
    assert numpy_helper.to_array(inits["classifier.weight_scale"]).shape == (10,)  # per channel
    n_layers = weight_layers(tiny_reference)
    assert record["quantized_compute_ops"] == n_layers
    assert record["float_compute_ops"] == 0
    assert record["ort_ops"]["QLinearConv"] == n_layers - 2  # 2 Linear layers -> QGemm
    assert record["int8_fraction"] > 0.9
    assert record["accuracy_drop"] < 0.03
    assert record["agreement"] > 0.95
    # tiny model: names and scales are a large share of the file (weights are 11 k params)
    assert record["size_ratio"] > 1.3
    assert any("QInt8 per_channel symmetric" in n for n in record["notes"])


def test_static_per_tensor(run_recipe: Any, tiny_reference: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "static",
                                                "granularity": "per_tensor"}}])
    assert record["status"] == "ok"
    inits = {t.name: t for t in written(tmp_path).graph.initializer}
    assert numpy_helper.to_array(inits["classifier.weight_scale"]).shape == ()
    assert record["quantized_compute_ops"] == weight_layers(tiny_reference)
    assert record["accuracy_drop"] < 0.03


def test_dynamic_uses_integer_matmul(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "dynamic",
                                                "targets": {"op_types": ["linear"]}}}])
    assert record["status"] == "ok"
    ops = op_counts(written(tmp_path))
    assert ops["MatMulInteger"] == 2 and ops["DynamicQuantizeLinear"] >= 1
    assert "ConvInteger" not in ops and ops["Conv"] > 0  # convs not targeted
    assert record["float_compute_ops"] == ops["Conv"]
    assert record["agreement"] > 0.95


def test_dynamic_default_targets_quantize_convs_too(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "dynamic"}}])
    ops = op_counts(written(tmp_path))
    assert ops["ConvInteger"] > 0 and ops["MatMulInteger"] == 2
    assert record["float_compute_ops"] == 0
    assert any("ConvInteger" in n for n in record["notes"])


def test_excluding_the_classifier_leaves_its_gemm_float(run_recipe: Any,
                                                        tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "static",
                                                "targets": {"exclude": ["classifier"]}}}])
    assert record["status"] == "ok"
    model = written(tmp_path)
    gemm = next(n for n in model.graph.node if n.name == "/classifier/Gemm")
    assert gemm.input[1] == "classifier.weight"  # the float initializer, no DequantizeLinear
    assert record["float_compute_ops"] >= 1
    assert record["ort_ops"].get("QGemm") == 1  # fc still quantized
    assert any("/classifier/Gemm (classifier)" in n for n in record["notes"])


def test_depthwise_target_quantizes_only_the_depthwise_conv(run_recipe: Any) -> None:
    # the other layers sit between tensors ORT would quantize; they must stay float
    record = run_recipe(BACKEND, [{"quantize": {"method": "static",
                                                "targets": {"op_types": ["depthwise"]}}}])
    assert record["quantized_compute_ops"] == 1
    assert record["ort_ops"]["QLinearConv"] == 1


def test_float16_stores_half_weights_keeps_float_io(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"dtype": "float16", "weights": 16}}])
    # activations 8 (the default) is not what a float16 graph runs: the row says so
    assert record["status"] == "approximated"
    assert any("activations: 8 ignored" in note for note in record["notes"])
    model = written(tmp_path)
    types = {t.data_type for t in model.graph.initializer if len(t.dims) > 1}
    assert types == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert record["size_ratio"] > 1.5
    assert record["agreement"] > 0.98


def test_16bit_activations_run_with_float_compute(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "static", "activations": 16}}])
    assert record["status"] == "ok"
    model = written(tmp_path)
    assert activation_types(model) == {TensorProto.UINT16}
    assert record["quantized_compute_ops"] == 0  # no int16 kernels in ORT's CPU EP
    assert record["agreement"] > 0.95


def test_4bit_weights_are_stored_as_int4(run_recipe: Any, tmp_path: Path) -> None:
    record = run_recipe(BACKEND, [{"quantize": {"method": "static", "weights": 4}}])
    assert record["status"] == "ok"
    weights = [t for t in written(tmp_path).graph.initializer if t.name.endswith("_quantized")
               and len(t.dims) > 1]
    assert weights and all(t.data_type == TensorProto.INT4 for t in weights)
    assert record["max_distinct_values"] <= 16
    assert record["accuracy_drop"] < 0.1


# --- size on a model whose weights dominate the file ------------------------------------------


def test_static_int8_is_over_2_5x_smaller_on_convnet(tmp_path: Path) -> None:
    from tiny import tiny_scenario

    from unified.context import JobContext, ReferenceArtifacts
    from unified.data.splits import DataSplits
    from unified.torchkit.export import export_onnx
    from unified.torchkit.models import build_model

    ref = ReferenceArtifacts(tmp_path / "ref")
    ref.folder.mkdir()
    export_onnx(build_model("builtin:convnet", 10, (1, 8, 8)), ref.onnx, (1, 8, 8))
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    scenario = tiny_scenario({"r": [{"quantize": {"method": "static"}}]}, [BACKEND])
    ctx = JobContext(scenario=scenario, recipe_name="r", recipe=scenario.recipes["r"],
                     backend=BACKEND, workdir=tmp_path / "w", reference=ref,
                     data=DataSplits(x, None, x, x[:4], None))
    result = ADAPTER.compress(ctx)
    ratio = ref.onnx.stat().st_size / result.artifacts.onnx_path.stat().st_size
    assert ratio > 2.5
    assert any("40 samples (batch 32)" in n for n in ctx.notes)
