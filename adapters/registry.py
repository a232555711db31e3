"""Backend name → adapter module. Stores module *names*; importing one is cheap because
adapter packages import their toolkit only inside ``_compress``."""

from __future__ import annotations

import importlib
from functools import cache

from adapters.base import Adapter, Capabilities

BACKENDS: dict[str, str] = {
    "pytorch": "adapters.pytorch",
    "onnxruntime": "adapters.onnxruntime",
    "nni": "adapters.nni",
    "tfmot": "adapters.tfmot",
    "coreml": "adapters.coreml",
}


@cache
def get_adapter(backend: str) -> Adapter:
    """The adapter instance for ``backend`` (its module defines ``ADAPTER``)."""
    if backend not in BACKENDS:
        raise KeyError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    module = importlib.import_module(BACKENDS[backend])
    adapter: Adapter = module.ADAPTER
    return adapter


def registered() -> list[str]:
    """Backends whose adapter module exists in this installation."""
    out = []
    for name, module in BACKENDS.items():
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def capabilities(backend: str) -> Capabilities:
    return get_adapter(backend).capabilities
