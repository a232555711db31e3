"""The cache key: one test per input it covers, each changing that input for real (a source
file, an installed package's version, a model module, an image, the reference's files) and
seeing the key change, and one run showing that a changed key is a recompute, not a hit
(docs/architecture.md, "The cache key")."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny import TINY_SCENARIO, tiny_scenario

from adapters.registry import get_adapter
from unified.context import ReferenceArtifacts
from unified.run.cache import (
    CORE_LIBRARIES,
    job_key,
    reference_identity,
    reference_key,
)
from unified.run.options import RunOptions, threads_per_job
from unified.run.runner import Runner
from unified.run.threads import JOB_THREADS
from unified.spec.scenario import Scenario

ROOT = Path(__file__).resolve().parents[1]
INT8 = {"int8": [{"quantize": {"method": "static"}}]}


def _key(scenario: Scenario, reference: Path, recipe: str = "int8",
         backend: str = "onnxruntime") -> str:
    return job_key(scenario, recipe, backend, reference_identity(scenario, reference),
                   get_adapter(backend).capabilities.versions())


@pytest.fixture
def fake_version(tmp_path: Path) -> Iterator[Any]:
    """Install a package's metadata with another version ahead of the real one on sys.path:
    importlib.metadata (what the key reads) then reports that version."""
    site = tmp_path / "site"
    site.mkdir()
    sys.path.insert(0, str(site))

    def install(package: str, version: str = "999.0") -> None:
        info = site / f"{package.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\n"
                                       f"Version: {version}\n")
        importlib.invalidate_caches()

    yield install
    sys.path.remove(str(site))
    importlib.invalidate_caches()


@pytest.mark.parametrize("package", ["torch", "onnx", "onnxruntime", "numpy"])
def test_a_core_library_version_keys_reference_and_rows(
        package: str, fake_version: Any, tiny_reference: ReferenceArtifacts) -> None:
    assert package in CORE_LIBRARIES
    scenario = tiny_scenario({"fp32": [], **INT8}, ["onnxruntime"])
    before = reference_key(scenario), _key(scenario, tiny_reference.folder)
    fake_version(package)
    after = reference_key(scenario), _key(scenario, tiny_reference.folder)
    assert before[0] != after[0] and before[1] != after[1]


def test_the_toolkit_version_keys_its_rows_only(fake_version: Any,
                                                tiny_reference: ReferenceArtifacts) -> None:
    scenario = tiny_scenario(INT8, ["pytorch", "nni"])
    before = {b: _key(scenario, tiny_reference.folder, backend=b) for b in ("pytorch", "nni")}
    reference = reference_key(scenario)
    fake_version("nni")
    assert _key(scenario, tiny_reference.folder, backend="nni") != before["nni"]
    assert _key(scenario, tiny_reference.folder, backend="pytorch") == before["pytorch"]
    assert reference_key(scenario) == reference  # the reference never runs NNI


def test_the_dataset_package_version_keys_the_reference(fake_version: Any) -> None:
    from unified.data.sources import data_packages

    scenario = tiny_scenario({"fp32": []}, ["pytorch"])
    (package, *_) = data_packages(scenario.data)  # digits: scikit-learn
    before = reference_key(scenario)
    fake_version(package)
    assert reference_key(scenario) != before


def test_a_python_model_module_and_its_package_key_the_reference(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "mynets"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("WIDTH = 8\n")
    (package / "build.py").write_text("from mynets.layers import WIDTH\n\n\n"
                                      "def net(num_classes, input_shape):\n    ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = {**TINY_SCENARIO["model"], "source": "python:mynets.build:net"}
    scenario = tiny_scenario({"fp32": []}, ["pytorch"], model=model)
    keys = [reference_key(scenario)]
    (package / "build.py").write_text((package / "build.py").read_text() + "# edited\n")
    keys.append(reference_key(scenario))
    (package / "layers.py").write_text("WIDTH = 16\n")  # a module the factory imports
    keys.append(reference_key(scenario))
    assert len(set(keys)) == 3


def test_a_distillation_students_source_keys_the_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tiny_reference: ReferenceArtifacts) -> None:
    (tmp_path / "students.py").write_text("def student(num_classes, input_shape):\n    ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipes = {"kd": [{"distill": {"student": "python:students:student", "epochs": 1}}]}
    scenario = tiny_scenario(recipes, ["pytorch"])
    before = _key(scenario, tiny_reference.folder, "kd", "pytorch")
    (tmp_path / "students.py").write_text("def student(num_classes, input_shape):\n"
                                          "    return None\n")
    assert _key(scenario, tiny_reference.folder, "kd", "pytorch") != before


def test_an_image_folders_files_key_the_reference(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / label / f"{i}.png")
    data = {"source": f"imagefolder:{folder}", "train": 2, "calibration": 1, "test": 1}
    scenario = tiny_scenario({"fp32": []}, ["pytorch"], data=data)
    keys = [reference_key(scenario)]
    Image.fromarray(np.full((8, 8), 99, np.uint8)).save(folder / "a" / "0.png")  # new pixels
    keys.append(reference_key(scenario))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "b" / "2.png")  # one more image
    keys.append(reference_key(scenario))
    assert len(set(keys)) == 3


@pytest.mark.parametrize("name", ["model.onnx", "weights.pt", "data.npz"])
def test_the_references_content_keys_the_rows(name: str, tmp_path: Path,
                                              tiny_reference: ReferenceArtifacts) -> None:
    folder = tmp_path / "reference"
    shutil.copytree(tiny_reference.folder, folder)
    scenario = tiny_scenario(INT8, ["onnxruntime"])
    before = _key(scenario, folder)
    assert _key(scenario, folder) == before  # nothing changed: the same key
    files = {p.name: p for p in folder.rglob("*") if p.is_file()}
    target = files.get(name) or next(p for p in files.values() if p.suffix == Path(name).suffix)
    target.write_bytes(target.read_bytes() + b"\0")  # same inputs, other content
    (folder / "content.digest").unlink()  # as a rebuild of the reference writes it anew
    assert _key(scenario, folder) != before


def test_the_seed_budget_and_recipe_key_the_row(tiny_reference: ReferenceArtifacts) -> None:
    scenario = tiny_scenario(INT8, ["onnxruntime"])
    before = _key(scenario, tiny_reference.folder)
    variants = [
        tiny_scenario(INT8, ["onnxruntime"], seed=1),
        tiny_scenario(INT8, ["onnxruntime"], budget={**TINY_SCENARIO["budget"],
                                                      "batch_size": 16}),
        tiny_scenario({"int8": [{"quantize": {"method": "static",
                                              "granularity": "per_tensor"}}]},
                      ["onnxruntime"]),
    ]
    assert len({before, *(_key(v, tiny_reference.folder) for v in variants)}) == 4
    # what never changes a row: the latency settings and the number of repeats
    same = tiny_scenario(INT8, ["onnxruntime"],
                         evaluate={"latency": {"warmup": 9, "runs": 99}, "repeats": 3})
    assert _key(same, tiny_reference.folder) == before


def test_jobs_train_with_one_fixed_thread_count(tmp_path: Path) -> None:
    """The thread count is a decision, not an input: whatever --jobs or the executor, every
    job gets JOB_THREADS, so the key need not vary with them (unified/run/threads.py)."""
    counts = {threads_per_job(RunOptions(out=tmp_path, jobs=jobs, executor=executor))
              for jobs in (None, 1, 2, 8) for executor in ("local", "ray")}
    assert counts == {JOB_THREADS}


CODE_PROBE = """
import json, sys
from pathlib import Path
from unified.run.cache import core_digest
from adapters.registry import adapter_digest

def digests():
    core_digest.cache_clear(); adapter_digest.cache_clear()
    return core_digest(), adapter_digest("onnxruntime"), adapter_digest("pytorch")

out = {}
before = digests()
for name in sys.argv[1:]:
    path = Path(name)
    text = path.read_text()
    path.write_text(text + "\\n# edited\\n")
    out[name] = [a != b for a, b in zip(before, digests())]
    path.write_text(text)
print(json.dumps(out))
"""


def test_every_source_file_that_computes_a_row_keys_it(tmp_path: Path) -> None:
    """A copy of the code: one file of each core package, the core modules and an adapter's
    files change the digests of the rows they compute; the report, the CLI and another
    adapter's files do not."""
    src = tmp_path / "src"
    for package in ("unified", "adapters"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    files = {  # file → (core, onnxruntime adapter, pytorch adapter) digest changes
        "unified/spec/schedules.py": [True, False, False],
        "unified/data/sources.py": [True, False, False],
        "unified/distiller/parse.py": [True, False, False],
        "unified/torchkit/training.py": [True, False, False],
        "unified/measure/macs.py": [True, False, False],
        "unified/run/job.py": [True, False, False],
        "unified/load/scenario_file.py": [True, False, False],
        "unified/context.py": [True, False, False],
        "unified/__init__.py": [True, False, False],
        "adapters/base.py": [True, False, False],
        "adapters/registry.py": [True, False, False],
        "adapters/onnxruntime/_impl.py": [False, True, False],
        "adapters/pytorch/_impl.py": [False, False, True],
        "unified/report/table.py": [False, False, False],
        "unified/cli.py": [False, False, False],
    }
    missing = [f for f in files if not (src / f).is_file()]
    assert not missing, missing
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(src)}
    result = subprocess.run([sys.executable, "-c", CODE_PROBE, *files], cwd=src, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == files


@pytest.mark.slow
def test_a_changed_input_is_a_recompute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: the same scenario comes from the cache; after a python: model module
    changes (here: a comment), the reference and the row are computed again."""
    (tmp_path / "mynet.py").write_text(
        "from unified.torchkit.nets import ConvNet\n\n\n"
        "def net(num_classes, input_shape):\n"
        "    return ConvNet(num_classes, input_shape, width=8, residual=False)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers build it too
    model = {**TINY_SCENARIO["model"], "source": "python:mynet:net", "weights": "random"}
    scenario = tiny_scenario({"fp32": []}, ["onnxruntime"], model=model)
    cache = tmp_path / "cache"

    def run(out: str) -> dict[str, Any]:
        (record,) = Runner(scenario, RunOptions(out=tmp_path / out, cache_dir=cache)).run()
        assert record["status"] == "ok", record
        return record

    first = run("a")
    assert not first.get("cached") and run("b").get("cached")
    (tmp_path / "mynet.py").write_text((tmp_path / "mynet.py").read_text() + "# edited\n")
    third = run("c")
    assert not third.get("cached") and third["job_key"] != first["job_key"]
    assert len(list((cache / "reference").iterdir())) == 2  # a second reference was built
