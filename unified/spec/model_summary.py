"""What planning may know about a model before any toolkit runs: its layer types, the torch
functions its forward calls, its parameter count.

Computed once per reference model (``unified.torchkit.summary``), stored next to it as
``model_summary.json`` and handed to ``Adapter.plan`` so a backend can refuse, at plan time and
with the toolkit's documented reason, a model it cannot handle instead of failing minutes
into a job. Plain data: importing this module imports no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelSummary:
    """A model's structure, as a plan reads it."""

    parameters: int
    # module class name → count (every submodule, containers included)
    layer_types: Mapping[str, int] = field(default_factory=dict)
    # a class defined outside torch → the torch.nn class it extends (e.g.
    # Conv2dStaticSamePadding → Conv2d)
    base_types: Mapping[str, str] = field(default_factory=dict)
    # torch functions and tensor methods the forward calls, from a torch.fx trace
    functions: tuple[str, ...] = ()
    fx_error: str | None = None  # why torch.fx could not trace the model (None: it could)

    def count(self, *types: str) -> int:
        """How many modules are of these classes (or extend them)."""
        direct = sum(self.layer_types.get(t, 0) for t in types)
        derived = sum(self.layer_types.get(cls, 0) for cls, base in self.base_types.items()
                      if base in types and cls not in types)
        return direct + derived

    def calls(self, *names: str) -> bool:
        """Does the forward call any of these functions / methods?"""
        return any(name in self.functions for name in names)

    def to_json(self) -> dict[str, Any]:
        return {"parameters": self.parameters, "layer_types": dict(self.layer_types),
                "base_types": dict(self.base_types), "functions": list(self.functions),
                "fx_error": self.fx_error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelSummary:
        return cls(parameters=int(data["parameters"]),
                   layer_types={str(k): int(v) for k, v in data.get("layer_types", {}).items()},
                   base_types={str(k): str(v) for k, v in data.get("base_types", {}).items()},
                   functions=tuple(data.get("functions", ())),
                   fx_error=data.get("fx_error"))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")  # concurrent writers
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        tmp.replace(path)


def read_summary(path: Path) -> ModelSummary | None:
    """The summary stored at ``path``; None when there is none (or it is unreadable)."""
    try:
        return ModelSummary.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
