"""Bridged models survive ``keras.models.clone_model``, which TF-MOT's clustering, pruning and
QAT all go through: the ViT's class-token expand (nobuco compared the sizes with -1 in a node
whose constant operand the clone dropped) and DenseNet's ``torch.cat([x], 1)`` (a Concatenate
of one input, which the clone could not rebuild). In a module named test_tfmot_* so it runs
after the other backends (conftest)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from adapters.tfmot import ADAPTER

if not ADAPTER.capabilities.available():
    pytest.skip(f"tfmot toolkit missing: {ADAPTER.capabilities.missing()}", allow_module_level=True)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
if str(FIXTURES) not in sys.path:  # the python:real_blocks:<factory> model sources
    sys.path.insert(0, str(FIXTURES))


class DenseUnit(nn.Module):
    """DenseNet's first layer of a block: ``torch.cat([x], 1)`` of its single input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grow = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        features = [x]
        features.append(self.grow(torch.cat(features, 1)))
        return self.fc(torch.cat(features, 1).mean([2, 3]))


def _clone_matches(model: nn.Module) -> Any:
    """Bridge ``model``, clone the Keras model as TF-MOT does (layers reused), check that the
    clone computes what torch does on batches of 1 and 3; return the bridged Keras model."""
    from adapters.tfmot._impl_bridge import keras, torch_to_keras

    model = model.eval()
    x = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    keras_model = torch_to_keras(model, (3, 32, 32), x).model
    clone = keras.models.clone_model(keras_model, clone_function=lambda layer: layer)
    for batch in (1, 3):
        with torch.no_grad():
            want = model(torch.from_numpy(x[:batch])).numpy()
        got = clone(x[:batch].transpose(0, 2, 3, 1), training=False).numpy()
        assert np.abs(want - got).max() < 1e-4
    return keras_model


def test_class_token_expand_clones() -> None:
    import real_blocks

    torch.manual_seed(0)
    keras_model = _clone_matches(real_blocks.tiny_vit(10, (3, 32, 32)))
    assert not [ly.name for ly in keras_model.layers if "__operators__.eq" in ly.name]


def test_concat_of_one_tensor_clones() -> None:
    torch.manual_seed(0)
    keras_model = _clone_matches(DenseUnit())
    concats = [ly for ly in keras_model.layers if type(ly).__name__ == "Concatenate"]
    assert len(concats) == 1  # the cat of two; the cat of one is its input


def test_hard_activations_become_tflite_hard_swish() -> None:
    """MobileNetV3's hardswish is one TFLite HARD_SWISH (int8 too) and its hardsigmoid no
    clip: nobuco's clip formulas were five re-quantized int8 ops each, and the ONNX of
    MobileNetV3 then disagreed with the TFLite model on 7 % of the inputs."""
    import real_blocks

    from adapters.tfmot._impl_bridge import tf, torch_to_keras
    from adapters.tfmot._impl_tflite import to_tflite
    from unified.spec.steps import QuantizeStep

    torch.manual_seed(0)
    model = real_blocks.se_net(10, (3, 32, 32)).eval()
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    bridged = torch_to_keras(model, (3, 32, 32), x)
    assert bridged.max_abs_diff < 1e-4
    step = QuantizeStep.model_validate({"method": "static"})
    for ptq in (None, step):
        interpreter = tf.lite.Interpreter(model_content=to_tflite(bridged.model, ptq, False, x))
        ops = [op["op_name"] for op in interpreter._get_ops_details()]
        assert ops.count("HARD_SWISH") == 3
        assert "MINIMUM" not in ops and "MAXIMUM" not in ops


def test_tflite_builtin_kernels_predict(tmp_path: Path) -> None:
    """The int8 model through TFLite's builtin kernels (the spread a failed parity is read
    against): the same logits as XNNPACK up to int8 rounding, not the same bits."""
    import real_blocks

    from adapters.tfmot._impl_bridge import torch_to_keras
    from adapters.tfmot._impl_tflite import nhwc, tflite_predict, to_tflite
    from unified.spec.steps import QuantizeStep

    torch.manual_seed(0)
    model = real_blocks.se_net(10, (3, 32, 32)).eval()
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    keras_model = torch_to_keras(model, (3, 32, 32), x).model
    path = tmp_path / "model.tflite"
    path.write_bytes(to_tflite(keras_model, QuantizeStep.model_validate({"method": "static"}),
                               False, x))
    xnnpack = tflite_predict(path, nhwc(x))
    builtin = tflite_predict(path, nhwc(x), builtin_kernels=True)
    assert builtin.shape == xnnpack.shape == (16, 10)
    spread = float(np.abs(builtin - xnnpack).max())
    assert 0 < spread < 0.1 * float(np.abs(xnnpack).max())
