"""Cache keys: a cached reference or row is reused only when everything that computed it is
the same (docs/architecture.md, "The cache key").

The reference key covers the model (its spec, the weights file's content, a ``python:``
module's source), the data (its spec, an image folder's content, the dataset package's
version), the seed, the budget, the library versions and squeezelab's own code. A job key
covers the reference's *content*, the recipe, the backend, the budget, the harness threads,
the versions of every library on the path and the code of the core and of that adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import unified
from unified.spec.scenario import DataSpec, ModelSpec, Scenario
from unified.spec.steps import stable_hash

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


def model_source_digest(model: ModelSpec) -> str | None:
    """Content digest of a ``python:`` model's module (its whole top-level package when it is
    one), found without importing it; None for builtin / torchvision sources."""
    kind, _, rest = model.source.partition(":")
    if kind != "python":
        return None
    module = rest.rpartition(":")[0]
    top = module.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        return None  # the loader's checks report it
    if spec.submodule_search_locations:
        folders = [Path(p) for p in spec.submodule_search_locations]
        return files_digest([f for d in folders for f in d.rglob("*.py")], folders[0].parent)
    return file_digest(Path(spec.origin))


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


def job_key(scenario: Scenario, recipe: str, backend: str, reference_digest: str,
            backend_versions: dict[str, str | None]) -> str:
    """Cache key of one job (recipe × backend on a built reference)."""
    from adapters.registry import adapter_digest

    imported = scenario.imported.get(recipe)  # e.g. its LR schedulers
    return stable_hash({
        "code": [core_digest(), adapter_digest(backend)],
        "reference": reference_digest,
        "recipe": scenario.recipes[recipe].canonical(),
        "imported": imported.model_dump(mode="json") if imported else None,
        "backend": backend,
        "budget": scenario.budget.model_dump(mode="json"),
        # latency warm-up and runs only steer the driver's latency pass, never a cached figure
        "evaluate": scenario.evaluate.model_dump(
            mode="json", exclude={"timeout": True, "latency": {"warmup", "runs"}}),
        "seed": scenario.seed,
        "versions": {**versions(CORE_LIBRARIES), **backend_versions},
        "squeezelab": unified.__version__,
    })
