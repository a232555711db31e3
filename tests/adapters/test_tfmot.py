"""tfmot backend: real TF-MOT / TFLite / tf2onnx on the tiny convnet (no mocks); plans are
in test_tfmot_plan.py (no toolkit needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny import assert_follows_schedule, assert_runs_concurrently, concurrent_agp, late_agp

from adapters.tfmot import ADAPTER

# find_spec, not importorskip: importing TensorFlow before torch/triton would crash the bridge
if not ADAPTER.capabilities.available():
    pytest.skip(f"tfmot toolkit missing: {ADAPTER.capabilities.missing()}", allow_module_level=True)


# --- the bridge ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bridge():
    from adapters.tfmot import _impl_bridge

    return _impl_bridge


def test_bridge_parity_and_standard_layers(bridge) -> None:
    import torch

    from unified.torchkit.nets import convnet_tiny

    torch.manual_seed(0)
    model = convnet_tiny(10, (1, 8, 8)).eval()
    for module in model.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    result = bridge.torch_to_keras(model, (1, 8, 8), x)
    assert result.max_abs_diff < 1e-4
    assert result.nonstandard == []
    kinds = [type(layer).__name__ for layer in result.model.layers]
    for kind in ("Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add", "Dense",
                 "MaxPooling2D", "Flatten"):
        assert kind in kinds
    assert "TFOpLambda" not in kinds
    # the 1-input-channel stem stays a Conv2D (prunable), the 3x3 depthwise a DepthwiseConv2D
    assert type(result.model.get_layer("features.0.0")).__name__ == "Conv2D"
    assert type(result.model.get_layer("features.1.0")).__name__ == "DepthwiseConv2D"


@pytest.mark.parametrize(("size", "out"), [(7, 3), (2, 3), (6, 1)])
def test_bridge_adaptive_pool_and_flatten_order(bridge, size: int, out: int) -> None:
    """Adaptive pooling (uniform windows → one pooling layer, else crops) and flatten of a
    spatial map (NHWC → torch's C, H, W order) match torch."""
    import torch

    head = torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(out), torch.nn.Flatten(),
                               torch.nn.Linear(4 * out * out, 5)).eval()
    x = np.random.default_rng(1).normal(size=(16, 4, size, size)).astype(np.float32)
    result = bridge.torch_to_keras(head, (4, size, size), x)
    assert result.max_abs_diff < 1e-5
    assert result.nonstandard == []


def test_bridge_names_the_unconvertible_op(bridge) -> None:
    import torch

    class Odd(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cummax(x.flatten(1), 1)[0]

    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(bridge.BridgeError, match="cummax"):
        bridge.torch_to_keras(Odd(), (1, 8, 8), x)


# --- end to end on the tiny model ----------------------------------------------------------


def _onnx(tmp_path: Path):
    import onnx

    return onnx.load(str(tmp_path / "tfmot" / "model.onnx"))


@pytest.mark.slow
def test_static_int8(run_recipe, tmp_path: Path) -> None:
    record = run_recipe("tfmot", [{"quantize": {"method": "static"}}])
    assert record["status"] == "ok"
    assert record["details"]["tflite_onnx_agreement"] >= 0.99
    assert record["ort_ops"].get("QLinearConv", 0) >= 1
    assert record["int8_fraction"] > 0.5
    model = _onnx(tmp_path)
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 1
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [1, 8, 8]  # NCHW
    assert record["native_bytes"] < record["onnx_bytes"] * 2  # the .tflite exists, int8


@pytest.mark.slow
def test_cluster_distinct_values(run_recipe, tmp_path: Path) -> None:
    from onnx import numpy_helper

    clusters = 8
    record = run_recipe("tfmot", [{"cluster": {"clusters": clusters}}])
    assert record["status"] == "approximated"  # BN folding + lr note
    clustered = record["details"]["clustered_layers"]
    assert "features.1.0" not in clustered  # depthwise: TF-MOT cannot cluster it
    assert record["details"]["clustered_max_distinct"] <= clusters
    # per clustered layer, read from the ONNX right after export (node names intact)
    per_layer = record["details"]["onnx_clustered_distinct"]
    assert len(per_layer) >= len(clustered) - 1  # the last MatMul is named after the output
    assert max(per_layer.values()) <= clusters
    # and in the measured ONNX: that many conv/linear weights have at most `clusters` values
    small = [numpy_helper.to_array(i) for i in _onnx(tmp_path).graph.initializer]
    small = [w for w in small if w.ndim in (2, 4) and w.size > clusters
             and np.unique(w).size <= clusters]
    assert len(small) >= len(clustered)
    assert record["details"]["tflite_onnx_agreement"] >= 0.99


@pytest.mark.slow
def test_prune_one_shot_and_agp(run_recipe) -> None:
    record = run_recipe("tfmot", [
        {"prune": {"sparsity": 0.5, "targets": {"op_types": ["conv", "linear"]}}},
        {"finetune": {"epochs": 1}},
    ])
    assert record["status"] == "ok"
    assert abs(record["details"]["pruned_kernel_sparsity"] - 0.5) < 0.01
    assert record["sparsity"] > 0.4  # harness: over every conv/linear weight incl. depthwise
    assert [(e["step"], e["kind"], e["epoch"]) for e in record["epoch_log"]] == \
        [(1, "prune", None), (2, "finetune", 0)]

    step, expected = late_agp(0.8)
    step["prune"]["targets"] = {"op_types": ["conv", "linear"]}
    record = run_recipe("tfmot", [step])
    assert_follows_schedule(record["epoch_log"], expected)


@pytest.mark.slow
def test_concurrent_agp_steps_follow_distiller(run_recipe) -> None:
    steps, expected = concurrent_agp()
    record = run_recipe("tfmot", steps)
    assert_runs_concurrently(record, expected)


@pytest.mark.slow
def test_qat(run_recipe, tmp_path: Path) -> None:
    record = run_recipe("tfmot", [{"quantize": {"method": "qat"}}])
    # the tiny model's classifier is a Dense layer, which TF-MOT's 8-bit scheme quantizes
    # per-tensor although per_channel (the default) was asked: the row says so
    assert record["status"] == "approximated"
    assert any("quantizes Dense kernels per-tensor" in n for n in record["notes"])
    assert record["int8_fraction"] > 0.5
    assert record["details"]["tflite_onnx_agreement"] >= 0.99
    assert sum(n.op_type == "QuantizeLinear" for n in _onnx(tmp_path).graph.node) >= 1


def test_bridge_note_counts_repeated_nonstandard_ops() -> None:
    """EfficientNetV2 leaves ~100 SiLU lambdas: the note counts them instead of listing."""
    from adapters.tfmot._impl import _counted

    layers = ["tf.nn.silu (TFOpLambda)", *[f"tf.nn.silu_{i} (TFOpLambda)" for i in range(1, 40)],
              "tf.math.multiply (TFOpLambda)"]
    assert _counted(layers) == "tf.nn.silu (TFOpLambda) ×40, tf.math.multiply (TFOpLambda)"
