"""The command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def squeezelab(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unified.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_validate_misspelt_step_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text((ROOT / "scenarios" / "quickstart.yaml").read_text().replace(
        "- quantize: {method: static", "- quantise: {method: static", 1))
    result = squeezelab("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{path}:" in lines[0] and "unknown step 'quantise'" in lines[0]
    assert "binarize, cluster, distill, finetune, prune, quantize" in lines[0]
    assert "Traceback" not in result.stderr


def test_validate_good_scenario_prints_plans() -> None:
    result = squeezelab("validate", "scenarios/quickstart.yaml")
    assert result.returncode == 0, result.stderr
    assert "channels30 @ pytorch: approximated" in result.stdout


def test_usage_errors_are_one_line_exit_2() -> None:
    result = squeezelab("run")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = squeezelab("run", "scenarios/quickstart.yaml", "--backend", "tensorrt")
    assert result.returncode == 2 and "--backend 'tensorrt'" in result.stderr


def test_schema_is_json_schema() -> None:
    result = squeezelab("schema")
    schema = json.loads(result.stdout)
    assert "recipes" in schema["properties"] and "model" in schema["required"]


def test_list_shows_every_backend() -> None:
    from adapters.registry import backends

    result = squeezelab("list")
    assert result.returncode == 0, result.stderr
    assert {"pytorch", "onnxruntime", "nni", "tfmot", "coreml"} <= set(backends())
    for backend in backends():
        assert backend in result.stdout


def test_importing_the_core_imports_no_toolkit() -> None:
    code = (
        "import sys, unified.cli, unified.spec.scenario, unified.run.runner, adapters.registry\n"
        "from adapters.registry import backends, get_adapter\n"
        "from unified.spec.steps import Recipe\n"
        "[get_adapter(b).plan(Recipe.model_validate([{'quantize': {}}])) for b in backends()]\n"
        "heavy = {'torch', 'tensorflow', 'nni', 'coremltools', 'onnxruntime', 'tf_keras'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_telemetry_is_disabled_for_every_process() -> None:
    code = "import os, unified; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.stdout.strip() == "1"
    env["ORT_DISABLE_TELEMETRY"] = "0"  # a user's explicit choice wins
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.stdout.strip() == "0"


def test_an_error_only_the_run_finds_names_the_file_on_one_line(tmp_path: Path) -> None:
    """A factory that works for the checks and fails when the reference is built: the run's
    own error is one line naming the scenario, with no progress bar in it."""
    (tmp_path / "flaky_model_x.py").write_text(
        "from torch import nn\n\nCALLS = []\n\n\ndef build(num_classes=10):\n"
        "    CALLS.append(1)\n    if len(CALLS) > 1:\n"
        "        raise RuntimeError('the licence server refused a second model\\nline two')\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n")
    (tmp_path / "s.yaml").write_text(
        "name: flaky\n"
        "model: {source: 'python:flaky_model_x:build', weights: random, input_shape: [1, 8, 8]}\n"
        "data: {source: synthetic, train: 16, calibration: 8, test: 8}\n"
        "backends: [onnxruntime]\nrecipes:\n  fp32: []\n")
    result = squeezelab("run", "s.yaml", "--out", str(tmp_path / "out"), "--cache-dir",
                        str(tmp_path / "cache"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("squeezelab: error: s.yaml: calling flaky_model_x:build() failed: "
                             "RuntimeError: the licence server refused a second model\n")
    # in a log, progress is whole lines, one per stage: no bar debris, nothing on stderr
    assert all(line.startswith("-- ") for line in result.stdout.splitlines() if line.strip())
