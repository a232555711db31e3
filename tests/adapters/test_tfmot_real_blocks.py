"""The TF-MOT backend's torch → Keras bridge on blocks of real networks
(tests/fixtures/real_blocks.py): batch-free reshapes, 'SAME'-padded conv subclasses,
squeeze-and-excitation, channel shuffle, attention, max pooling without a -inf padding
constant. In a module named test_tfmot_* so it runs after the other backends (conftest)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import BLOCKS, blocks_scenario

from adapters.tfmot import ADAPTER
from unified.context import ReferenceArtifacts

if not ADAPTER.capabilities.available():
    pytest.skip(f"tfmot toolkit missing: {ADAPTER.capabilities.missing()}", allow_module_level=True)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:  # the python:real_blocks:<factory> model sources
    sys.path.insert(0, str(FIXTURES))


@pytest.fixture(scope="module")
def bridge() -> Any:
    from adapters.tfmot import _impl_bridge

    return _impl_bridge


def convert(bridge: Any, factory: str) -> tuple[Any, Any, np.ndarray]:
    import real_blocks
    import torch

    torch.manual_seed(0)
    model = getattr(real_blocks, factory)(10, (3, 32, 32)).eval()
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    return bridge.torch_to_keras(model, (3, 32, 32), x), model, x


def layer_kinds(keras_model: Any) -> Counter[str]:
    return Counter(type(layer).__name__ for layer in keras_model.layers)


@pytest.mark.parametrize("factory", BLOCKS)
def test_bridge_takes_any_batch(bridge: Any, factory: str) -> None:
    """The Keras model computes the torch model on batches of 1 and 3 too (traced on 5)."""
    import torch

    result, model, x = convert(bridge, factory)
    assert result.max_abs_diff < 1e-4
    for batch in (1, 3):
        with torch.no_grad():
            want = model(torch.from_numpy(x[:batch])).numpy()
        got = result.model(x[:batch].transpose(0, 2, 3, 1), training=False).numpy()
        assert np.abs(want - got).max() < 1e-4


def test_bridge_same_padding_subclass_and_batch_view(bridge: Any) -> None:
    result, _, _ = convert(bridge, "same_pad_net")
    kinds = layer_kinds(result.model)
    # Conv2dStaticSamePadding: its ZeroPad2d + F.conv2d become ZeroPadding2D + a Conv2D /
    # DepthwiseConv2D named after the torch module
    assert type(result.model.get_layer("stem")).__name__ == "Conv2D"
    assert type(result.model.get_layer("dw")).__name__ == "DepthwiseConv2D"
    assert kinds["ZeroPadding2D"] == 2
    assert kinds["Reshape"] == 1  # view(bs, -1): batch-free
    assert not result.shape_traced
    assert not [n for n in result.nonstandard if "reshape" in n or "pad" in n]


def test_bridge_channel_shuffle_and_max_pool(bridge: Any) -> None:
    result, _, _ = convert(bridge, "shuffle_net")
    kinds = layer_kinds(result.model)
    assert kinds["Reshape"] == 4  # two per shuffle, the batch left free
    assert kinds["Concatenate"] == 2
    assert kinds["MaxPooling2D"] == 1
    # the stride-2 stem conv's padding, and the max pool's (of a ReLU output: zeros, not -inf)
    assert kinds["ZeroPadding2D"] == 2
    assert not [n for n in result.nonstandard if "pad" in n or "reshape" in n]
    assert not result.shape_traced


def test_bridge_names_with_a_leading_underscore(bridge: Any) -> None:
    """EfficientNet's ``_conv_stem`` / ``_fc``: a TF root name scope cannot start with '_',
    so the Keras layer is '._conv_stem', and targets (torch names) still find it."""
    from adapters.tfmot._impl_common import select_layers, torch_names

    result, _, _ = convert(bridge, "lite_names_net")
    assert result.max_abs_diff < 1e-4
    assert type(result.model.get_layer("._conv_stem")).__name__ == "Conv2D"
    assert result.keras_to_torch["._conv_stem"] == "_conv_stem"
    assert result.keras_to_torch["._fc"] == "_fc"
    found = [layer.name for layer in select_layers(result.model, ("_conv_stem", "_fc"))]
    assert torch_names(found) == ["_conv_stem", "_fc"]


def test_bridge_attention_traces_shapes(bridge: Any) -> None:
    result, _, _ = convert(bridge, "tiny_vit")
    kinds = layer_kinds(result.model)
    assert kinds["MultiHeadAttention"] == 2 and kinds["LayerNormalization"] == 5
    # the class token is expanded to the batch size: only traced shape arithmetic is batch-free
    assert result.shape_traced


def test_bridge_errors_keep_the_informative_line(bridge: Any) -> None:
    """Keras and TensorFlow wrap the cause in boilerplate; the reason keeps the cause, not the
    last line (which was '  • mask=None')."""
    keras_error = ValueError(
        "Exception encountered when calling layer 'model' (type Functional).\n\n"
        'Input 0 of layer "fc" is incompatible with the layer: expected axis -1 of input '
        "shape to have value 32, but received input with shape (2, 256)\n\n"
        "Call arguments received by layer 'model' (type Functional):\n"
        "  • inputs=tf.Tensor(shape=(16, 32, 32, 3), dtype=float32)\n  • mask=None")
    assert bridge.first_line(keras_error).startswith('Input 0 of layer "fc" is incompatible')
    tf_error = RuntimeError(
        "{{function_node __wrapped__Reshape_device_/job:localhost/replica:0/task:0/device:CPU:0}}"
        " Input to reshape is a tensor with 221184 values, but the requested shape has 13824 "
        "[Op:Reshape] name: ")
    assert bridge.first_line(tf_error).startswith("Input to reshape is a tensor")


# --- end to end -----------------------------------------------------------------------------


@pytest.fixture
def run_block(cache_dir: Path, tmp_path: Path) -> Callable[[str, list[Any]], dict[str, Any]]:
    from unified.run.job import Job, execute
    from unified.run.reference import prepare_reference

    def run(factory: str, steps: list[Any]) -> dict[str, Any]:
        scenario = blocks_scenario(factory, {"r": steps}, ["tfmot"])
        ref: ReferenceArtifacts = prepare_reference(scenario, cache_dir)
        return execute(scenario, Job("r", "tfmot"), tmp_path / "tfmot", ref)

    return run


@pytest.mark.slow
def test_int8_shuffle_net_calibrates_no_padding_constant(run_block: Any, tmp_path: Path) -> None:
    from adapters.tfmot._impl_bridge import tf

    record = run_block("shuffle_net", [{"quantize": {"method": "static"}}])
    assert record["status"] == "ok"
    assert record["details"]["tflite_onnx_agreement"] >= 0.99
    assert record["ort_ops"].get("QLinearConv", 0) >= 1
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "tfmot" / "model.tflite"))
    details = interpreter.get_tensor_details()
    scales = [float(s) for t in details
              for s in np.atleast_1d(t["quantization_parameters"]["scales"])]
    assert scales and max(scales) < 1e3  # a -inf padding constant made it ~1e36
    # full-integer: the only float 4-D tensor is the model's input (shuffles, pads included)
    assert [tuple(t["shape"]) for t in details
            if len(t["shape"]) == 4 and t["dtype"] == np.float32] == [(1, 32, 32, 3)]
    assert record["agreement"] >= 0.9


@pytest.mark.slow
def test_int8_same_pad_net(run_block: Any) -> None:
    record = run_block("same_pad_net", [{"quantize": {"method": "static"}}])
    assert record["status"] == "ok"
    assert record["ort_ops"].get("QLinearConv", 0) + record["ort_ops"].get("QGemm", 0) >= 3
    assert record["agreement"] >= 0.9


@pytest.mark.slow
def test_cluster_tiny_vit(run_block: Any) -> None:
    """palettize 4-bit on a ViT: the conv / dense kernels get 16 values, the attention is
    left alone and the row says so (it failed in clone_model before)."""
    record = run_block("tiny_vit", [{"cluster": {"bits": 4}}])
    assert record["status"] == "approximated", record.get("reason")
    assert any("attention projections are not clustered" in n
               for n in [*record["plan"], *record["notes"]])
    assert record["details"]["clustered_max_distinct"] <= 16
    assert "patch_embed" in record["details"]["clustered_layers"]
