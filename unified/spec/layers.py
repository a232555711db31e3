"""The layers of a model and the ones each recipe step targets, resolved once for every backend.

The reference stage writes the model's layer inventory (``layers.json`` next to the reference:
every conv / linear module in execution order, with its kind, weight shape and the node of the
fp32 ONNX it became). :func:`resolve_recipe` turns each step's ``targets`` into a concrete list
of torch module names against that inventory, applying the defaults below, so every backend
gets the same list (docs/architecture.md, "Targets").

Defaults (a layer a default leaves out is listed with the reason):

- channel pruning never prunes the output layer (the last layer executed): its output
  channels are the model's outputs, the classes;
- input-channel pruning never prunes the input layer (the first layer executed: its input
  channels are the image's), depthwise convs (one input channel per filter: pruning it drops
  the filter) or grouped convs (an input channel feeds only its own group's filters);
- an ``include`` pattern that names the input or output layer exactly (no wildcard) overrides
  its default: the user asked for it by name.

Only ``nn.Conv*d`` and ``nn.Linear`` modules (and subclasses) are layers: embeddings, norms
and attention projections that are not ``nn.Linear`` are never targeted. A grouped conv
(1 < groups < in_channels) is a ``conv``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified.spec.names import REGEX_PREFIX
from unified.spec.steps import (
    DistillStep,
    OpType,
    PruneStep,
    PruneStructure,
    Step,
    TargetedStep,
)

WILDCARDS = frozenset("*?[")


@dataclass(frozen=True)
class LayerInfo:
    """One conv / linear layer of a model, as the reference stage found it."""

    name: str  # torch module name, e.g. "features.0.0"
    op_type: OpType  # conv (grouped convs too), depthwise, linear
    weight_shape: tuple[int, ...]  # torch layout: conv (out, in / groups, kh, kw), linear (out, in)
    groups: int = 1
    onnx_node: str | None = None  # the node of the fp32 reference ONNX that computes it

    @property
    def signature(self) -> tuple[str, tuple[int, ...]]:
        """(conv | linear, weight shape): what an ONNX layer is matched by."""
        return ("linear" if self.op_type is OpType.linear else "conv"), self.weight_shape

    @property
    def grouped(self) -> bool:
        """A grouped conv that is not depthwise."""
        return self.op_type is OpType.conv and self.groups > 1

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type.value,
                "weight_shape": list(self.weight_shape), "groups": self.groups,
                "onnx_node": self.onnx_node}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerInfo:
        return cls(name=str(data["name"]), op_type=OpType(data["op_type"]),
                   weight_shape=tuple(int(d) for d in data["weight_shape"]),
                   groups=int(data.get("groups", 1)), onnx_node=data.get("onnx_node"))


@dataclass(frozen=True)
class StepTargets:
    """The concrete layers one recipe step acts on."""

    index: int  # the step's position in the recipe, from 0
    kind: str  # prune, quantize, cluster, binarize
    layers: tuple[str, ...]  # torch module names, in execution order
    # layers the patterns selected but a default left out: name -> why
    left_out: dict[str, str] = field(default_factory=dict)
    # True when the layers are the student's (the step follows a distill step)
    student: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"step": self.index + 1, "kind": self.kind, "layers": list(self.layers),
                "left_out": dict(self.left_out), "student": self.student}


def _named_exactly(name: str, patterns: Sequence[str]) -> bool:
    """Does an include pattern name the layer literally (no glob wildcard, no regex)?"""
    return any(p == name and not p.startswith(REGEX_PREFIX) and not WILDCARDS & set(p)
               for p in patterns)


def default_exclusions(step: Step, layers: Sequence[LayerInfo]) -> dict[str, str]:
    """The layers a step's defaults leave out, whatever its patterns: name -> why."""
    if not isinstance(step, PruneStep) or not layers:
        return {}
    out: dict[str, str] = {}
    include = step.targets.include
    if step.structure is PruneStructure.channel:
        last = layers[-1].name
        if not _named_exactly(last, include):
            out[last] = ("the output layer: its output channels are the model's outputs "
                         "(the classes)")
    elif step.structure is PruneStructure.input_channel:
        first = layers[0].name
        if not _named_exactly(first, include):
            out[first] = "the input layer: its input channels are the image's"
        for layer in layers:
            if layer.op_type is OpType.depthwise:
                out[layer.name] = ("a depthwise conv: one input channel per filter (pruning "
                                   "it drops the filter)")
            elif layer.grouped:
                out[layer.name] = ("a grouped conv: an input channel feeds only its own "
                                   "group's filters")
    return out


def resolve_step(index: int, step: Step, layers: Sequence[LayerInfo],
                 student: bool = False) -> StepTargets | None:
    """The layers ``step`` targets among ``layers`` (None for steps without targets:
    distill and finetune train the whole model)."""
    if not isinstance(step, TargetedStep):
        return None
    targets = step.targets
    matched = [layer for layer in layers if targets.selects(layer.op_type, layer.name)]
    defaults = default_exclusions(step, layers)
    left_out = {layer.name: defaults[layer.name] for layer in matched if layer.name in defaults}
    chosen = tuple(layer.name for layer in matched if layer.name not in left_out)
    return StepTargets(index, step.kind, chosen, left_out, student)


def resolve_recipe(steps: Sequence[Step], reference: Sequence[LayerInfo],
                   student: Sequence[LayerInfo] | None = None) -> list[StepTargets | None]:
    """Every step's targets: against the reference's layers, or, after a distill step, the
    student's (``student``; None when no targeted step follows a distill step)."""
    out: list[StepTargets | None] = []
    after_distill = False
    for index, step in enumerate(steps):
        if isinstance(step, DistillStep):
            after_distill = True
        if after_distill and student is not None:
            out.append(resolve_step(index, step, student, student=True))
        else:
            out.append(resolve_step(index, step, reference))
    return out


def student_source(steps: Sequence[Step]) -> str | None:
    """The model source a targeted step after a distill step acts on, or None."""
    source = None
    for step in steps:
        if isinstance(step, DistillStep):
            source = step.student
        elif source is not None and isinstance(step, TargetedStep):
            return source
    return None


def save_inventory(path: Path, layers: Sequence[LayerInfo]) -> None:
    """Write a model's layers (the reference's ``layers.json``)."""
    path.write_text(json.dumps({"layers": [layer.as_json() for layer in layers]}, indent=1))


def load_inventory(path: Path) -> list[LayerInfo]:
    """Read the layers ``save_inventory`` wrote."""
    return [LayerInfo.from_json(item) for item in json.loads(path.read_text())["layers"]]
