"""Data as pretrained models need it: the photos source, the preprocess pipeline, and the
checks that keep a pipeline from feeding a model the wrong input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unified.data.sources import load_splits
from unified.load.scenario_file import load_scenario
from unified.run.cache import data_digest, reference_key
from unified.spec.errors import SpecError, SqueezelabError
from unified.spec.scenario import DataSpec, Scenario

IMAGENET = {"resize": 64, "center_crop": 56, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}


def splits(source: str, shape: tuple[int, int, int], seed: int = 0, **spec: object):
    data = DataSpec.model_validate({"source": source, "train": 40, "calibration": 8,
                                    "test": 30, **spec})
    return load_splits(data, shape, seed)


def test_photos_are_natural_deterministic_unlabelled_crops() -> None:
    a = splits("photos", (3, 48, 48), preprocess={"range": [0, 1]})
    b = splits("photos", (3, 48, 48), preprocess={"range": [0, 1]})
    other = splits("photos", (3, 48, 48), seed=1, preprocess={"range": [0, 1]})
    assert a.train_x.shape == (40, 3, 48, 48) and a.test_x.shape == (30, 3, 48, 48)
    assert a.train_y is None and a.test_y is None
    assert np.array_equal(a.test_x, b.test_x)  # the seed decides every crop
    assert not np.array_equal(a.test_x, other.test_x)
    assert a.test_x.min() >= 0.0 and a.test_x.max() <= 1.0
    # different crops, not one image repeated; colour, not grey only
    assert len({x.tobytes() for x in a.test_x}) == 30
    assert np.abs(a.test_x[:, 0] - a.test_x[:, 2]).mean() > 0.02
    assert np.array_equal(a.calib_x, a.train_x[:8])


def test_preprocess_range_channel_order_and_mean_std() -> None:
    rgb = splits("photos", (3, 32, 32), preprocess={"range": [-1, 1]})
    bgr = splits("photos", (3, 32, 32), preprocess={"range": [-1, 1], "channel_order": "bgr"})
    assert rgb.test_x.min() >= -1 and rgb.test_x.max() <= 1 and rgb.test_x.min() < -0.5
    assert np.array_equal(bgr.test_x, rgb.test_x[:, ::-1])
    norm = splits("photos", (3, 32, 32), preprocess={"mean": [0.5, 0.4, 0.3],
                                                    "std": [0.5, 0.25, 0.2]})
    plain = splits("photos", (3, 32, 32), preprocess={})
    expected = (plain.test_x - np.array([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)) / \
        np.array([0.5, 0.25, 0.2]).reshape(1, 3, 1, 1)
    assert np.allclose(norm.test_x, expected, atol=1e-6)


def test_without_preprocess_digits_keep_the_train_split_standardization() -> None:
    data = splits("digits", (3, 16, 16))
    assert abs(float(data.train_x.mean())) < 1e-5 and abs(float(data.train_x.std()) - 1) < 1e-4
    given = splits("digits", (3, 16, 16), preprocess={"range": [0, 1]})
    assert given.train_x.min() >= 0 and given.train_x.max() <= 1  # no standardization
    # the same samples in the same order, only preprocessed differently
    assert np.array_equal(given.test_y, data.test_y)


def test_resize_shorter_side_then_center_crop_on_mixed_image_sizes(tmp_path: Path) -> None:
    from PIL import Image

    for label, sizes in (("a", [(60, 40), (50, 80)]), ("b", [(64, 64), (90, 45)])):
        (tmp_path / label).mkdir()
        for i, (w, h) in enumerate(sizes):
            pixels = np.full((h, w, 3), 40 * i + (100 if label == "b" else 0), dtype=np.uint8)
            pixels[h // 2, :, 0] = 255  # a red line through the centre survives the crop
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    data = DataSpec.model_validate({"source": f"imagefolder:{tmp_path}", "train": 2,
                                    "calibration": 1, "test": 2,
                                    "preprocess": {"resize": 36, "center_crop": 32}})
    out = load_splits(data, (3, 32, 32), 0)
    assert out.train_x.shape == (2, 3, 32, 32) and sorted([*out.train_y, *out.test_y]) == \
        [0, 0, 1, 1]
    both = np.concatenate([out.train_x, out.test_x])
    assert (both[:, 0, 15:17].max(axis=(1, 2)) > 0.5).all()  # the centre line is kept
    no_crop = data.model_copy(update={"preprocess": data.preprocess.model_copy(
        update={"center_crop": None})})
    with pytest.raises(SqueezelabError, match="add a center_crop"):
        load_splits(no_crop, (3, 36, 36), 0)


def test_photos_are_keyed_by_their_packages_and_the_pipeline() -> None:
    photos = DataSpec.model_validate({"source": "photos", "preprocess": {"range": [-1, 1]}})
    assert {"scikit-image", "scikit-learn"} <= set(data_digest(photos)["versions"])
    base = {"name": "k", "model": {"source": "builtin:convnet-tiny", "weights": "random",
                                   "input_shape": [3, 32, 32]},
            "data": photos.model_dump(), "backends": ["pytorch"], "recipes": {"fp32": []}}
    other = {**base, "data": {**base["data"], "preprocess": {"range": [0, 1]}}}
    assert reference_key(Scenario.model_validate(base)) != \
        reference_key(Scenario.model_validate(other))


SCENARIO = """\
name: t
model: {{source: {source}, weights: {weights}, input_shape: [3, 32, 32], num_classes: {classes}}}
data: {{source: {data}, train: 10, calibration: 4, test: 10{preprocess}}}
backends: [pytorch]
recipes:
  fp32: []
"""


def problem(tmp_path: Path, source: str = "builtin:convnet", weights: str = "random",
            classes: int = 10, data: str = "photos", preprocess: str = "") -> str:
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO.format(source=source, weights=weights, classes=classes, data=data,
                                    preprocess=preprocess))
    with pytest.raises(SpecError) as info:
        load_scenario(path)
    (line,) = info.value.lines()
    assert line.startswith(f"{path}:")
    return line


def test_checks_name_the_field_and_the_problem(tmp_path: Path) -> None:
    assert "has no labels" in problem(tmp_path, weights="train")
    assert "yields 56×56 images but the model's input_shape is 32×32" in problem(
        tmp_path, preprocess=", preprocess: {resize: 64, center_crop: 56}")
    assert "mean needs 1 or 3 values" in problem(
        tmp_path, preprocess=", preprocess: {mean: [0.5, 0.5], std: [1, 1]}")
    assert "give mean and std together" in problem(tmp_path, preprocess=", preprocess: {mean: [0]}")
    assert "no pixels to preprocess" in problem(tmp_path, data="synthetic",
                                                preprocess=", preprocess: {}")
    line = problem(tmp_path, source="torchvision:resnet18", weights="pretrained")
    assert "model.weights: torchvision downloads its pretrained weights" in line
    assert "ships no pretrained weights" in problem(tmp_path, weights="pretrained")
    assert "need num_classes 1000" in problem(tmp_path, source="builtin:efficientnet-lite0",
                                              weights="pretrained")


def test_unlabelled_photos_give_agreement_and_rel_l2_but_no_accuracy(
        cache_dir: Path, tmp_path: Path) -> None:
    from unified.run.job import Job, execute
    from unified.run.reference import load_summary, prepare_reference

    scenario = Scenario.model_validate({
        "name": "photos", "seed": 0,
        "model": {"source": "builtin:convnet-tiny", "weights": "random",
                  "input_shape": [3, 32, 32], "num_classes": 10},
        "data": {"source": "photos", "train": 32, "calibration": 32, "test": 48,
                 "preprocess": {"resize": 36, "center_crop": 32, "range": [-1, 1]}},
        "evaluate": {"latency": {"warmup": 1, "runs": 3}},
        "backends": ["onnxruntime"],
        "recipes": {"int8": [{"quantize": {"method": "static"}}]},
    })
    ref = prepare_reference(scenario, cache_dir)
    assert load_summary(ref)["accuracy"] is None
    record = execute(scenario, Job("int8", "onnxruntime"), tmp_path / "job", ref)
    assert record["status"] == "ok" and record["accuracy"] is None
    assert record["accuracy_drop"] is None
    assert 0.0 <= record["agreement"] <= 1.0 and record["rel_l2"] > 0.0
