"""Backend name → adapter, found through the entry-point group ``squeezelab.backends``.

This repository declares its five adapters in ``pyproject.toml``; another installed package
adds a backend by declaring one more entry point. Loading an adapter imports only its light
module (capabilities as data); its toolkit is imported when a job runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

from adapters.base import Adapter, Capabilities
from unified.spec.backends import backend_entry_points, backend_names
from unified.spec.errors import SqueezelabError


def backends() -> list[str]:
    """Every registered backend name, in declaration order."""
    return backend_names()


@cache
def get_adapter(backend: str) -> Adapter:
    """The adapter instance registered as ``backend``."""
    points = backend_entry_points()
    if backend not in points:
        raise SqueezelabError(f"unknown backend {backend!r}; allowed: {', '.join(points)}")
    adapter = points[backend].load()
    if not isinstance(adapter, Adapter):
        raise SqueezelabError(f"backend {backend!r}: entry point {points[backend].value} is "
                              f"a {type(adapter).__name__}, not an adapters.base.Adapter")
    if adapter.capabilities.backend != backend:
        raise SqueezelabError(f"backend {backend!r}: its adapter calls itself "
                              f"{adapter.capabilities.backend!r}")
    return adapter


def capabilities(backend: str) -> Capabilities:
    return get_adapter(backend).capabilities


def adapter_files(backend: str) -> list[Path]:
    """The source files of the adapter's own package (or module), wherever it is installed."""
    module = backend_entry_points()[backend].module
    package = module.split(".")[0] if module.split(".")[0] != "adapters" else module
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SqueezelabError(f"backend {backend!r}: cannot find module {package!r}")
    if spec.submodule_search_locations:
        return sorted(p for folder in spec.submodule_search_locations
                      for p in Path(folder).rglob("*.py"))
    return [Path(spec.origin)]


@cache
def adapter_digest(backend: str) -> str:
    """Hash of the adapter's source files: part of every job's cache key."""
    h = hashlib.sha256()
    for path in adapter_files(backend):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
