"""A job's layers: each step's targets resolved once before the toolkit runs, and afterwards
what the adapter says it changed set beside what the ONNX shows (the job folder's
``layers.json``; the record's ``layers_targeted`` / ``layers_changed``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified.context import JobContext, ReferenceArtifacts
from unified.spec.layers import LayerInfo, StepTargets, resolve_recipe, student_source
from unified.spec.scenario import Scenario
from unified.spec.steps import DistillStep, Recipe


def reference_layers(scenario: Scenario, ref: ReferenceArtifacts) -> list[LayerInfo]:
    """The reference's layers (its layers.json; rebuilt from the model when missing)."""
    if ref.layers.is_file():
        return ref.layer_inventory()
    import torch

    from unified.torchkit.models import build_model
    from unified.torchkit.targets import layer_inventory

    spec = scenario.model
    model = build_model(spec.source, spec.num_classes, spec.input_shape)
    model.load_state_dict(torch.load(ref.weights, weights_only=True, map_location="cpu"))
    return layer_inventory(model, spec.input_shape)


def resolve_targets(scenario: Scenario, recipe: Recipe,
                    ref: ReferenceArtifacts) -> list[StepTargets | None]:
    """Every step's layers: the reference's, or a distillation student's after a distill."""
    steps = recipe.steps
    student = None
    source = student_source(steps)
    if source is not None:
        from unified.torchkit.models import build_model
        from unified.torchkit.targets import layer_inventory

        spec = scenario.model
        student = layer_inventory(build_model(source, spec.num_classes, spec.input_shape),
                                  spec.input_shape)
    return resolve_recipe(steps, reference_layers(scenario, ref), student)


@dataclass
class LayerReport:
    """Targeted, reported and measured layers of one job."""

    targeted: list[str]  # union over the steps, execution order
    changed: list[str] | None  # measured in the ONNX (None: not comparable)
    notes: list[str] = field(default_factory=list)
    deviations: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # layers.json
    zeroed: list[str] = field(default_factory=list)  # layers with every weight zero


def _targeted(ctx: JobContext) -> list[str]:
    return list(dict.fromkeys(name for t in ctx.targets if t is not None for name in t.layers))


def _reported_gaps(ctx: JobContext) -> list[str]:
    """One deviation per step whose adapter reported fewer changed layers than targeted."""
    out = []
    for resolved in ctx.targets:
        if resolved is None or resolved.index not in ctx.changed:
            continue
        done = set(ctx.changed[resolved.index])
        left = [name for name in resolved.layers if name not in done]
        if left:
            out.append(f"step {resolved.index + 1} ({resolved.kind}): {len(left)} of "
                       f"{len(resolved.layers)} targeted layers left unchanged by the toolkit: "
                       f"{', '.join(left)}")
    return out


def default_notes(targets: list[StepTargets | None]) -> list[str]:
    """One note per step whose patterns selected layers a default leaves out."""
    return [f"step {t.index + 1} ({t.kind}): left out by default: "
            + "; ".join(f"{name} ({why})" for name, why in t.left_out.items())
            for t in targets if t is not None and t.left_out]


def check_layers(ctx: JobContext, onnx_path: Path) -> LayerReport:
    """Set the targets beside what the adapter reported and what the ONNX weights show."""
    targeted = _targeted(ctx)
    report = LayerReport(targeted, None, notes=default_notes(ctx.targets),
                         deviations=_reported_gaps(ctx))
    report.data = {
        "steps": [t.as_json() for t in ctx.targets if t is not None],
        "reported": {str(i + 1): names for i, names in sorted(ctx.changed.items())},
    }
    if any(isinstance(step, DistillStep) for step in ctx.recipe.steps):
        report.data["onnx"] = "not compared: a distillation student replaced the model"
        return report
    inventory = ctx.reference.layer_inventory() if ctx.reference.layers.is_file() else []
    measured = _measured(ctx.reference.onnx, onnx_path, inventory)
    report.changed = sorted(measured["changed"], key=_order(inventory))
    report.data["onnx"] = measured
    missed = [n for n in targeted if n not in measured["changed"]
              and n not in measured["unmatched"]]
    if missed:
        report.notes.append(f"the ONNX weights show no compression of targeted layers: "
                            f"{', '.join(missed)}")
    report.zeroed = [n for n in report.changed if "all zero" in measured["changed"][n]]
    if report.zeroed:
        report.notes.append(f"{len(report.zeroed)} layer(s) pruned entirely (every weight "
                            f"zero in the ONNX): {', '.join(report.zeroed)}")
    if measured["unmatched"]:
        report.notes.append(f"layers of the reference not found in the ONNX by order and "
                            f"shape (not checked): {', '.join(measured['unmatched'])}")
    return report


def _order(inventory: list[LayerInfo]) -> Any:
    position = {layer.name: i for i, layer in enumerate(inventory)}
    return lambda name: (position.get(name, len(position)), name)


def _measured(reference_onnx: Path, onnx_path: Path,
              inventory: list[LayerInfo]) -> dict[str, Any]:
    from unified.measure.onnx_layers import compare_layers, load_layers

    ref = load_layers(reference_onnx)
    comparison = compare_layers(ref, load_layers(onnx_path))
    by_node = {layer.onnx_node: layer.name for layer in inventory if layer.onnx_node}
    names = [by_node.get(layer.node, layer.node) for layer in ref]
    return {
        "changed": {names[i]: how for i, how in sorted(comparison.changed.items())},
        "unchanged": [names[i] for i in comparison.unchanged],
        "unmatched": [names[i] for i in comparison.unmatched],
        "extra_onnx_layers": comparison.extra,
    }
