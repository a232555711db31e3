"""Cache keys: a cached reference or row is reused only when everything that computed it is
the same (docs/architecture.md, "The cache key").

The reference key covers the model (its spec, the weights file's content, a ``python:``
module's source), the data (its spec, an image folder's content, the dataset package's
version), the seed, the budget, the library versions, the interpreter and squeezelab's own
code. A job key covers the reference's key *and* its content, the recipe (and the source of
a ``python:`` student or teacher it names), the backend, the budget, the harness threads,
the seed (a repeat's own), the versions of every library on the path, the interpreter and
the code of the core and of that adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import platform
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import unified
from unified.run.threads import JOB_THREADS
from unified.spec.scenario import DataSpec, ModelSpec, Scenario
from unified.spec.steps import DistillStep, Recipe, stable_hash

# The packages whose code computes a row; not the CLI, the report or the search.
CORE_PACKAGES = ("spec", "distiller", "data", "torchkit", "measure", "run", "load")
CORE_MODULES = ("__init__.py", "context.py")
# Libraries every row goes through (the reference is torch; every row is measured by ORT).
CORE_LIBRARIES = ("numpy", "torch", "torchvision", "onnx", "onnxruntime", "onnxscript")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def files_digest(files: Iterable[Path], root: Path | None = None) -> str:
    """Digest of several files' names (relative to ``root``) and contents."""
    h = hashlib.sha256()
    for path in sorted(files):
        name = str(path.relative_to(root)) if root is not None else path.name
        h.update(name.encode() + b"\0" + file_digest(path).encode())
    return h.hexdigest()[:16]


@cache
def core_digest() -> str:
    """Hash of squeezelab's own code that the reference and every row depend on."""
    import adapters.base
    import adapters.registry

    root = Path(unified.__file__).parent
    files = [root / m for m in CORE_MODULES]
    files += [f for package in CORE_PACKAGES for f in (root / package).rglob("*.py")]
    files += [Path(adapters.base.__file__), Path(adapters.registry.__file__)]
    return files_digest(files, root.parent)


def versions(packages: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for package in packages:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


def interpreter() -> dict[str, str]:
    """The Python version and the machine: float results may differ across either."""
    return {"python": platform.python_version(), "machine": platform.machine(),
            "implementation": sys.implementation.name}


def source_digest(source: str) -> str | None:
    """Content digest of a ``python:<module>:<factory>`` source's module (its whole top-level
    package when it is one), found without importing it, on the path a worker gets (this
    process's, then the working folder); None for builtin / torchvision sources."""
    kind, _, rest = source.partition(":")
    if kind != "python":
        return None
    module = rest.rpartition(":")[0]
    top = module.split(".")[0]
    try:
        spec = importlib.machinery.PathFinder.find_spec(top, [*sys.path, os.getcwd()])
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return None  # the loader's checks report it
    if spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
        return files_digest([f for d in folders for f in d.rglob("*.py")], folders[0].parent)
    return file_digest(Path(spec.origin))


def model_source_digest(model: ModelSpec) -> str | None:
    """Content digest of a ``python:`` model's module (see :func:`source_digest`)."""
    return source_digest(model.source)


def recipe_sources(recipe: Recipe) -> dict[str, str | None]:
    """The content digests of the ``python:`` models a recipe names (a distillation's student
    or teacher): they are built in the job, so their source keys it."""
    out: dict[str, str | None] = {}
    for step in recipe.steps:
        if isinstance(step, DistillStep):
            for source in (step.student, step.teacher):
                if source is not None and source.startswith("python:"):
                    out[source] = source_digest(source)
    return out


def _model_versions(model: ModelSpec) -> dict[str, str | None] | None:
    """Versions of the packages a builtin's architecture or shipped weights come from."""
    from unified.torchkit.catalog import model_packages

    packages = model_packages(model.source, model.weights)
    return versions(packages) if packages else None


def data_digest(data: DataSpec) -> dict[str, Any]:
    """The data spec, the content of an image folder and the dataset packages' versions."""
    from unified.data.sources import data_packages, source_files

    files = source_files(data)
    return {
        "spec": data.model_dump(mode="json"),
        "files": files_digest(files[1], files[0]) if files is not None else None,
        "versions": versions(data_packages(data)),
    }


def reference_key(scenario: Scenario) -> str:
    """Cache key of the reference model: everything its weights and figures depend on."""
    model = scenario.model
    weights = model.weights_path
    return stable_hash({
        "code": core_digest(),
        "model": model.model_dump(mode="json", exclude={"name", "data"}),
        "weights_digest": file_digest(weights) if weights is not None and weights.is_file()
        else None,
        "model_source": model_source_digest(model),
        "model_packages": _model_versions(model),
        "data": data_digest(scenario.data),
        "seed": scenario.seed,
        "budget": scenario.budget.model_dump(mode="json") if model.weights == "train" else None,
        # no latency settings: the reference's latency is timed by every run, never cached
        "versions": versions(CORE_LIBRARIES),
        "interpreter": interpreter(),
        "squeezelab": unified.__version__,
    })


def reference_content_digest(folder: Path) -> str:
    """Digest of a built reference's own files (weights, data, ONNX), stored beside them."""
    stored = folder / "content.digest"
    if stored.is_file():
        return stored.read_text().strip()
    names = ("weights.pt", "data.npz", "model.onnx")
    digest = files_digest([folder / n for n in names if (folder / n).is_file()], folder)
    with contextlib.suppress(OSError):  # a read-only cache still gives the digest
        stored.write_text(digest)
    return digest


def reference_identity(scenario: Scenario, folder: Path) -> str:
    """What a job knows of its reference: the reference's key (every input that built it,
    e.g. the dataset package's version) and its content digest (what was built: weights,
    data, ONNX)."""
    return stable_hash([reference_key(scenario), reference_content_digest(folder)])


def job_key(scenario: Scenario, recipe: str, backend: str, reference_digest: str,
            backend_versions: dict[str, str | None], repeat: int = 0) -> str:
    """Cache key of one job (recipe × backend on a built reference; ``reference_digest``:
    :func:`reference_identity`). ``scenario`` is the job's own: its seed is the repeat's."""
    from adapters.registry import adapter_digest

    imported = scenario.imported.get(recipe)  # e.g. its LR schedulers
    chosen = scenario.recipes[recipe]
    return stable_hash({
        "code": [core_digest(), adapter_digest(backend)],
        "reference": reference_digest,
        "recipe": chosen.canonical(),
        "sources": recipe_sources(chosen),
        "imported": imported.model_dump(mode="json") if imported else None,
        "backend": backend,
        "budget": scenario.budget.model_dump(mode="json"),
        # latency warm-up and runs only steer the driver's latency pass, never a cached figure;
        # repeats only say how many seeds run: each seed's job has its own key
        "evaluate": scenario.evaluate.model_dump(
            mode="json", exclude={"timeout": True, "repeats": True,
                                  "latency": {"warmup", "runs"}}),
        "seed": scenario.seed,
        "job_threads": JOB_THREADS,  # fixed (unified.run.threads); keyed to be explicit
        # a repeat also draws its own calibration sample (unified.run.job.execute)
        **({"repeat": repeat} if repeat else {}),
        "versions": {**versions(CORE_LIBRARIES), **backend_versions},
        "interpreter": interpreter(),
        "squeezelab": unified.__version__,
    })
