"""Backends are plugins: a package installed on its own adds a backend through the entry-point
group ``squeezelab.backends``, with no edit to this repository."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "fixtures" / "plugin_backend"

SCENARIO = """\
name: plugin
seed: 0
model: {source: builtin:convnet-tiny, weights: train, input_shape: [1, 8, 8]}
data: {source: digits, train: 300, calibration: 32, test: 100}
budget: {train_epochs: 1, batch_size: 32}
evaluate: {latency: {warmup: 1, runs: 3}}
backends: [fp16, onnxruntime]
recipes:
  fp32: []
  half:
    - quantize: {dtype: float16, weights: 16, activations: null}
  int8:
    - quantize: {method: static}
"""


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture package installed with pip into a folder of its own (never into the
    environment running the tests)."""
    work = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, work / "source")  # builds write into the source tree
    target = work / "site"
    isolation = [] if importlib.util.find_spec("setuptools") is None else [
        "--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", *isolation, "--target", str(target),
                    str(source)], check=True, capture_output=True, timeout=300)
    return target


def squeezelab(plugin_path: Path, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "unified.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_list_shows_the_installed_plugin(plugin_path: Path) -> None:
    result = squeezelab(plugin_path, "list")
    assert result.returncode == 0, result.stderr
    assert "fp16" in result.stdout
    assert "onnxruntime float16 converter (out-of-tree plugin)" in result.stdout


def test_validate_and_run_a_job_through_the_plugin(plugin_path: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "plugin.yaml"
    scenario.write_text(SCENARIO)
    checked = squeezelab(plugin_path, "validate", str(scenario))
    assert checked.returncode == 0, checked.stderr
    assert "half @ fp16: ok" in checked.stdout
    assert "int8 @ fp16: unsupported" in checked.stdout

    out = tmp_path / "run"
    ran = squeezelab(plugin_path, "run", str(scenario), "--out", str(out), "--cache-dir",
                     str(tmp_path / "cache"), "--backend", "fp16")
    assert ran.returncode == 0, ran.stderr
    rows = {r["recipe"]: r for r in map(json.loads, (out / "results.jsonl").open())}
    half = rows["half"]
    assert half["status"] == "ok", half["reason"]
    assert half["backend"] == "fp16" and half["accuracy"] is not None
    assert half["agreement"] > 0.95
    assert 1.7 < half["size_ratio"] < 2.1  # float16 weights: about half the fp32 bytes
    assert rows["int8"]["status"] == "unsupported"
    assert "only converts weights and compute to float16" in rows["int8"]["reason"]


def test_the_cache_key_hashes_the_plugin_package_where_it_is_installed(
        plugin_path: Path, tmp_path: Path) -> None:
    code = "from adapters.registry import adapter_digest; print(adapter_digest('fp16'))"
    before = squeezelab_python(plugin_path, code)
    copy = tmp_path / "site"
    shutil.copytree(plugin_path, copy)
    init = copy / "squeezelab_fp16" / "__init__.py"
    init.write_text(init.read_text() + "\n# a change to the plugin's code\n")
    assert squeezelab_python(copy, code) != before


def squeezelab_python(plugin_path: Path, code: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip()
