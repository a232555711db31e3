"""The checks a scenario passes before any job (unified.load.checks): what they accept, what
they refuse, and the parts the bad-input corpus does not reach."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unified.load.checks import tolerance_problems
from unified.load.model_checks import model_problem, state_dict_mismatch
from unified.load.scenario_file import load_scenario
from unified.spec.errors import SpecError
from unified.spec.tolerances import TOLERANCES
from unified.torchkit.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BASE = """\
name: t
seed: {seed}
model: {{source: builtin:convnet-tiny, weights: {weights}, input_shape: [1, 8, 8]}}
data: {{source: digits, train: 500, calibration: 32, test: 100}}
backends: [pytorch]
recipes:
  fp32: []
"""


def scenario(tmp_path: Path, seed: int = 0, weights: str = "train") -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(BASE.format(seed=seed, weights=weights))
    return path


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_the_seed_range_is_inclusive(tmp_path: Path, seed: int) -> None:
    assert load_scenario(scenario(tmp_path, seed)).seed == seed


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_a_seed_outside_numpys_range_is_refused(tmp_path: Path, seed: int) -> None:
    with pytest.raises(SpecError, match=r":2: seed: must be between 0 and 4294967295"):
        load_scenario(scenario(tmp_path, seed))


def test_tolerances_are_the_metrics_regress_compares() -> None:
    from unified.report import regress

    assert regress.TOLERANCES is TOLERANCES  # one list, read by both
    assert tolerance_problems({"accuracy": 0.0, "latency": 2}) == []
    ((metric, problem),) = tolerance_problems({"acuracy": 0.01})
    assert metric == "acuracy" and problem.endswith("did you mean 'accuracy'?")
    ((_, problem),) = tolerance_problems({"agreement": float("nan")})
    assert "must be a number >= 0. Got nan instead" in problem


@pytest.mark.parametrize("form", ["pt", "safetensors", "wrapped"])
def test_a_matching_state_dict_passes(tmp_path: Path, form: str) -> None:
    state = build_model("builtin:convnet-tiny", 10, (1, 8, 8)).state_dict()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "epoch": 3} if form == "wrapped" else state, path)
    assert load_scenario(scenario(tmp_path, weights=path.name)).model.weights == str(path)


def test_state_dict_mismatch_names_the_first_key() -> None:
    model = {"a.weight": (4, 2), "a.bias": (4,), "b.weight": (2, 4)}
    assert state_dict_mismatch(model, dict(model)) is None
    assert state_dict_mismatch(model, {"a.weight": (4, 2)}) == (
        "key 'a.bias' is missing from the file (and 1 more)")
    assert state_dict_mismatch(model, {**model, "c": (1,)}) == (
        "key 'c' is in the file but not in the model")
    assert state_dict_mismatch(model, {**model, "a.bias": (5,)}) == (
        "key 'a.bias' has shape [5] in the file, [4] in the model")


def test_a_model_that_branches_on_values(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Small inputs run on the CPU, so such a model is checked fully; on the meta device
    (large inputs) it cannot run, and is not refused for that."""
    (tmp_path / "branchy_model_x.py").write_text(
        "from torch import nn\n\n"
        "class Branchy(nn.Module):\n"
        "    def __init__(self, n, features):\n        super().__init__()\n"
        "        self.fc = nn.Linear(features, n)\n\n"
        "    def forward(self, x):\n"
        "        if x.sum() > 0:\n            x = x * 2\n"
        "        return self.fc(x.flatten(1))\n\n"
        "def small(num_classes=10):\n    return Branchy(num_classes, 64)\n\n"
        "def large(num_classes=10):\n    return Branchy(num_classes, 3 * 600 * 600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert model_problem("python:branchy_model_x:small", 10, (1, 8, 8)) is None
    problem = model_problem("python:branchy_model_x:small", 10, (1, 9, 9))
    assert problem is not None and problem.field == "input_shape"
    assert "does not accept an input of shape [1, 1, 9, 9]" in problem.message
    assert model_problem("python:branchy_model_x:large", 10, (3, 600, 600)) is None


def test_a_large_input_is_checked_on_the_meta_device() -> None:
    assert model_problem("torchvision:resnet18", 10, (3, 600, 600)) is None
    problem = model_problem("torchvision:vit_b_16", 10, (3, 608, 640))  # ViT: square only
    assert problem is not None and problem.field == "input_shape"
    assert "Wrong image width! Expected 608 but got 640" in problem.message


def test_a_good_image_folder_passes_and_is_counted(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img" / cls / f"{i}.png")
    text = BASE.format(seed=0, weights="train").replace(
        "source: digits, train: 500, calibration: 32, test: 100",
        "source: 'imagefolder:img', train: 6, calibration: 2, test: 2").replace(
        "input_shape: [1, 8, 8]", "input_shape: [3, 8, 8]")
    (tmp_path / "s.yaml").write_text(text)
    assert load_scenario(tmp_path / "s.yaml").data.train == 6
    (tmp_path / "s.yaml").write_text(text.replace("train: 6", "train: 7"))
    with pytest.raises(SpecError, match=r"= 9 exceeds the 8 samples"):
        load_scenario(tmp_path / "s.yaml")


def test_tolerance_flag_is_checked_before_the_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unified.cli", "regress", str(ROOT / "scenarios/regression.yaml"),
         "--tolerance", "acuracy=0.1", "--out", str(tmp_path / "out"),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line == ("squeezelab: error: --tolerance 'acuracy=0.1': unknown metric 'acuracy' "
                    "(regress compares accuracy, agreement, size_ratio, latency); did you mean "
                    "'accuracy'?")
    assert not (tmp_path / "out").exists()


def test_a_run_imports_python_models_from_the_scenarios_folder(tmp_path: Path) -> None:
    """validate finds python: modules in the scenario's folder; so must the run's workers."""
    folder = tmp_path / "scenario"
    folder.mkdir()
    (folder / "folder_model_x.py").write_text(
        "from torch import nn\n\n\ndef build(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    (folder / "s.yaml").write_text(
        "name: folder\n"
        "model: {source: 'python:folder_model_x:build', weights: random, input_shape: [1, 8, 8]}\n"
        "data: {source: synthetic, train: 16, calibration: 8, test: 8}\n"
        "evaluate: {latency: {warmup: 1, runs: 2, threads: 1}, timeout: 600}\n"
        "backends: [pytorch]\nrecipes:\n  dyn: [{quantize: {method: dynamic}}]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "unified.cli", "run", str(folder / "s.yaml"), "--out",
         str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
        cwd=elsewhere, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr
    import json

    (record,) = [json.loads(line) for line in (tmp_path / "out/results.jsonl").open()]
    assert record["status"] in ("ok", "approximated"), record.get("reason")


def test_every_data_source_kind_declares_its_size() -> None:
    """A new source kind (accepted by the scenario's pattern) needs its SOURCE_SIZES entry,
    or its size would go unchecked."""
    from unified.data.sources import SOURCE_SIZES
    from unified.spec.scenario import DATA_SOURCE, DATA_SOURCE_KINDS

    kinds = {alt.split(":")[0] for alt in DATA_SOURCE.pattern.strip("^$()").split("|")}
    assert kinds == set(SOURCE_SIZES) == set(DATA_SOURCE_KINDS)
