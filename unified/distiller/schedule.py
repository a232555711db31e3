"""Distiller compression schedules -> unified recipes.

Reads a Distiller schedule YAML the way ``distiller/config.py`` (``dict_config``) does:
sections ``pruners``, ``quantizers`` (at most one), ``regularizers``, ``lr_schedulers``,
``extensions`` map instance names to ``{class: <Distiller class>, <constructor args>}``;
``policies`` schedule them (``- pruner: {instance_name: x, args: {...}}`` with
``epochs: [...]`` or ``starting_epoch`` / ``ending_epoch`` (exclusive) / ``frequency``).

The result is honest about what it could not carry over: ``notes`` say what was
approximated, ``unsupported`` lists what cannot be carried out ("name (Class): reason").
Weight names stay Distiller's (its model zoo, DataParallel ``module.`` prefix): bind them to
a model with :func:`match_weight_names` / :func:`bind_to_model`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from unified.distiller.extensions import (
    EXTENSIONS,
    REGULARIZERS,
    translate_extension,
    translate_regularizer,
)
from unified.distiller.parse import (
    SECTIONS,
    Builder,
    Component,
    LRSchedulerSpec,
    StepWeights,
    check_args,
    is_pattern,
    non_schedule_reason,
    normalize_name,
    parse_components,
    parse_policies,
)
from unified.distiller.pruners import PRUNERS, translate_pruner
from unified.distiller.quant import QUANTIZERS, translate_quantizer
from unified.distiller.schedulers import (
    LR_DISTILLER,
    LR_NOT_FROM_YAML,
    LR_SCHEDULERS,
    is_lr_scheduler,
    translate_lr,
)
from unified.spec.errors import SpecError, closest, did_you_mean
from unified.spec.steps import PruneStep, PruneStructure, Recipe, Step, Targets
from unified.spec.yamlio import read_yaml

__all__ = [
    "DistillerRecipe",
    "LRSchedulerSpec",
    "StepWeights",
    "bind_to_model",
    "load_distiller_schedule",
    "match_weight_names",
    "parse_distiller_schedule",
    "render_import",
    "to_yaml_recipe",
]

TOP_LEVEL = ("version", *SECTIONS, "policies")
_KNOWN: dict[str, Callable[[str], bool]] = {
    "pruners": lambda name: name in PRUNERS,
    "quantizers": lambda name: name in QUANTIZERS,
    "regularizers": lambda name: name in REGULARIZERS,
    "lr_schedulers": is_lr_scheduler,
    "extensions": lambda name: name in EXTENSIONS,
}
# Every class name Distiller defines per section, for "did you mean" on a misspelt one.
_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "pruners": tuple(PRUNERS),
    "quantizers": tuple(QUANTIZERS),
    "regularizers": tuple(REGULARIZERS),
    "lr_schedulers": (*LR_SCHEDULERS, *LR_NOT_FROM_YAML, *LR_DISTILLER),
    "extensions": tuple(EXTENSIONS),
}
_TRANSLATE: dict[str, Callable[[Builder, Component], None]] = {
    "pruners": translate_pruner,
    "quantizers": translate_quantizer,
    "regularizers": translate_regularizer,
    "lr_schedulers": translate_lr,
    "extensions": translate_extension,
}


@dataclass
class DistillerRecipe:
    """A Distiller schedule translated into unified steps (weight names not yet bound)."""

    source: str
    steps: list[Step]
    lr_schedulers: list[LRSchedulerSpec] = field(default_factory=list)
    thinning: list[str] = field(default_factory=list)  # "filters" / "channels" to remove
    notes: list[str] = field(default_factory=list)  # what was approximated, and how
    unsupported: list[str] = field(default_factory=list)  # "name (Class): reason"
    weight_names: list[str] = field(default_factory=list)  # Distiller names the steps target
    # parallel to steps: the Distiller weight names behind each step's targets
    step_weights: list[StepWeights] = field(default_factory=list)

    def to_recipe(self) -> Recipe:
        """The steps as a validated unified :class:`~unified.spec.steps.Recipe`."""
        return Recipe.model_validate(to_yaml_recipe(self))


# --- loading -------------------------------------------------------------------------------


def load_distiller_schedule(path: str | Path) -> DistillerRecipe:
    """Read and translate a Distiller schedule file; SpecError lists every problem
    (``file:line: field: message``)."""
    path = Path(path)
    data, lines = read_yaml(path)
    return parse_distiller_schedule(data, source=str(path), lines=lines)


def parse_distiller_schedule(
    data: Any, *, source: str = "<schedule>", lines: dict[Any, int] | None = None
) -> DistillerRecipe:
    """Translate an already loaded schedule (``dict``), e.g. ``yaml.safe_load`` output."""
    b = Builder(source, lines or {})
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"{type(data).__name__} {data!r:.60}"
        b.problem((), "a Distiller schedule is a mapping (pruners, quantizers, ..., policies). "
                  f"Got {got} instead")
        raise SpecError(b.problems)
    reason = non_schedule_reason(data)
    if reason:
        b.problem((), reason)
        raise SpecError(b.problems)
    for key in data:
        if key not in TOP_LEVEL:
            b.note(None, f"top-level key '{key}' ignored (Distiller reads only "
                   f"{', '.join(TOP_LEVEL)})")
    sections = {section: parse_components(b, data, section) for section in SECTIONS}
    if len(sections["quantizers"]) > 1:
        b.problem(("quantizers",), "Distiller supports one quantizer per schedule; found "
                  f"{len(sections['quantizers'])}")
    instances = {s: {c.name: c for c in comps} for s, comps in sections.items()}
    parse_policies(b, data, instances)
    for section, comps in sections.items():
        for comp in comps:
            _translate(b, section, comp)
    if b.problems:
        raise SpecError(b.problems)
    ordered = _compound_after_thinning(b, b.ordered_steps())
    if any(s.kind == "prune" for s, _ in ordered) and any(s.kind == "quantize" for s, _ in ordered):
        b.note(None, "Distiller runs pruning and quantization policies together; the unified "
               "recipe runs the prune steps, then the quantize step")
    weight_names: list[str] = []
    for _, weights in ordered:
        for name in (*weights.include, *weights.exclude):
            if name not in weight_names:
                weight_names.append(name)
    return DistillerRecipe(
        source=source,
        steps=[s for s, _ in ordered],
        lr_schedulers=b.lr_schedulers,
        thinning=b.thinning,
        notes=b.notes,
        unsupported=b.unsupported,
        weight_names=weight_names,
        step_weights=[w for _, w in ordered],
    )


def _compound_after_thinning(b: Builder, ordered: list[tuple[Step, StepWeights]]
                             ) -> list[tuple[Step, StepWeights]]:
    """A one-shot structured prune that runs again on the same weights after a thinning
    epoch prunes its fraction of what thinning LEFT (Distiller ranks the smaller layer), so
    ``k`` runs of ``s`` remove ``1 - (1 - s)^k`` of the original structures. Without thinning
    the second run finds its fraction already zero and does nothing, as in Distiller."""
    out: list[tuple[Step, StepWeights]] = []
    removed: dict[tuple[Any, ...], tuple[float, int]] = {}  # key -> (fraction, last epoch)
    for step, weights in ordered:
        schedule = getattr(step, "schedule", None)
        if (not isinstance(step, PruneStep) or schedule is None or schedule.curve != "constant"
                or step.structure not in (PruneStructure.channel, PruneStructure.input_channel)):
            out.append((step, weights))
            continue
        key = (weights, step.structure, step.criterion)
        start = schedule.start_epoch
        earlier = removed.get(key)
        if earlier is not None and any(earlier[1] <= t < start for t in b.thinning_epochs):
            total = 1 - (1 - earlier[0]) * (1 - step.sparsity)
            names = ", ".join(weights.include[:2]) + (
                f" … ({len(weights.include)} weights)" if len(weights.include) > 2 else "")
            b.note(None, f"the {step.structure} prune of {names} at epoch "
                   f"{start} runs again after thinning: {step.sparsity:g} of the remaining "
                   f"structures, {total:.4g} of the original in all")
            step = step.model_copy(update={"sparsity": round(total, 6)})
        removed[key] = (step.sparsity, start)
        out.append((step, weights))
    return out


def _translate(b: Builder, section: str, comp: Component) -> None:
    if not _KNOWN[section](comp.class_name):
        other = [s for s, known in _KNOWN.items() if s != section and known(comp.class_name)]
        # long CamelCase names share many letters: only a near-identical one is a typo
        near = closest(comp.class_name, _CLASS_NAMES[section], cutoff=0.85)
        if not other and near is not None:
            # a misspelt Distiller class: Distiller itself would fail to build it
            b.problem((*comp.path, "class"), f"unknown Distiller class '{comp.class_name}'; "
                      f"did you mean '{near}'?")
            return
        reason = (f"'{comp.class_name}' is a Distiller {other[0]} class, listed under {section}"
                  if other else f"unknown Distiller class '{comp.class_name}' (section {section})")
        b.unsupport(comp, reason)
        return
    unscheduled = not comp.policies and section in ("pruners", "regularizers", "extensions")
    if unscheduled:
        if section == "pruners":
            check_args(b, comp, PRUNERS[comp.class_name])
        b.note(comp, "defined but no policy schedules it: Distiller never runs it")
        return
    if section == "quantizers" and not comp.policies and comp.class_name != (
        "PostTrainLinearQuantizer"
    ):
        b.note(comp, "no policy schedules it; translated as if the quantizer applied to the "
               "whole run")
    _TRANSLATE[section](b, comp)


# --- weight names --------------------------------------------------------------------------


def match_weight_names(
    names: list[str], model_param_names: list[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """Map Distiller parameter names onto a model's ``named_parameters()`` names.

    A name matches a parameter when equal, equal after dropping DataParallel's ``module``
    component (on either side, as Distiller's ``normalize_module_name`` does), or — for
    names with regex syntax — when it fully matches. Returns ({name: [parameter names]},
    names matching nothing); ``'*'`` (Distiller's "every other tensor") is skipped.
    """
    normalized = {p: normalize_name(p) for p in model_param_names}
    mapping: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for name in names:
        if name == "*" or name in mapping:
            continue
        found = [p for p in model_param_names if p == name]
        if not found:
            target = normalize_name(name)
            found = [p for p, norm in normalized.items() if norm == target]
        if not found and is_pattern(name):
            found = _regex_matches(name, normalized)
        if found:
            mapping[name] = found
        else:
            unmatched.append(name)
    return mapping, unmatched


def _regex_matches(name: str, normalized: dict[str, str]) -> list[str]:
    bare = re.sub(r"^\^?module\\?\.", "", name)
    try:
        patterns = [re.compile(name), re.compile(bare)]
    except re.error:
        return []
    return [
        p for p, norm in normalized.items()
        if any(rx.fullmatch(p) or rx.fullmatch(norm) for rx in patterns)
    ]


def bind_to_model(recipe: DistillerRecipe, model_param_names: list[str],
                  module_kinds: Mapping[str, tuple[str | None, str]] | None = None
                  ) -> DistillerRecipe:
    """The recipe with every step's name targets rewritten to the model's module names.

    ``module_kinds`` (module name -> (unified op type or None, torch class name)) lets the
    binding narrow each step's ``op_types`` to the kinds it names and report, by name, the
    weights of layers no backend compresses (embeddings, norms, grouped convs): Distiller
    prunes any parameter, the unified steps only conv / depthwise / linear weights.
    Raises ONE SpecError naming every Distiller weight name that matches no parameter.
    """
    mapping, unmatched = match_weight_names(recipe.weight_names, model_param_names)
    if unmatched:
        sample = ", ".join(model_param_names[:6]) + (" ..." if len(model_param_names) > 6 else "")
        raise SpecError([
            f"{recipe.source}: {len(unmatched)} Distiller weight name(s) match no parameter of "
            f"the model: {', '.join(unmatched)} (the model's parameters: {sample or 'none'})"
            + did_you_mean(unmatched[0], model_param_names)
        ])

    def modules(names: tuple[str, ...]) -> tuple[str, ...]:
        out = [p.rpartition(".")[0] or p for n in names if n != "*" for p in mapping[n]]
        return tuple(dict.fromkeys(out))

    steps: list[Step] = []
    unsupported = list(recipe.unsupported)
    for number, (step, weights) in enumerate(zip(recipe.steps, recipe.step_weights,
                                                 strict=True), start=1):
        if weights.include or weights.exclude:
            targets: Targets = step.targets  # type: ignore[union-attr]
            fields = step.model_dump()
            include = modules(weights.include) if weights.include else targets.include
            op_types = targets.op_types
            if weights.include and module_kinds is not None and step.kind == "prune":
                other = [m for m in include if module_kinds.get(m, (None, ""))[0] is None]
                if other:
                    layers = ", ".join(f"{m} ({module_kinds.get(m, (None, '?'))[1]})"
                                       for m in other)
                    unsupported.append(f"{step.kind} step {number} on {layers}: not a conv, "
                                       "depthwise conv or linear layer; no backend compresses "
                                       "its weight")
                include = tuple(m for m in include if m not in other)
                if not include:
                    continue
                kinds = {module_kinds[m][0] for m in include}
                # the kinds it names (an empty overlap is left for the backends to report)
                op_types = tuple(t for t in op_types if t.value in kinds) or op_types
            fields["targets"] = {
                **targets.model_dump(),
                "op_types": op_types,
                "include": include,
                "exclude": modules(weights.exclude) if weights.exclude else targets.exclude,
            }
            step = type(step).model_validate(fields)
        steps.append(step)
    return replace(recipe, steps=steps, unsupported=unsupported)


def module_kinds(model: Any) -> dict[str, tuple[str | None, str]]:
    """Module name -> (unified op type or None, class name) of a torch model, for
    :func:`bind_to_model`."""
    from unified.torchkit.targets import op_type

    out: dict[str, tuple[str | None, str]] = {}
    for name, module in model.named_modules():
        kind = op_type(module)
        out[name] = (kind.value if kind is not None else None, type(module).__name__)
    return out


# --- output --------------------------------------------------------------------------------


def to_yaml_recipe(result: DistillerRecipe) -> list[dict[str, Any]]:
    """The unified recipe in scenario-file form: ``[{"prune": {...}}, ...]``."""
    return [
        {step.kind: step.model_dump(mode="json", exclude_defaults=True)} for step in result.steps
    ]


def render_import(result: DistillerRecipe) -> str:
    """YAML text for ``squeezelab import-distiller FILE``: the recipe, with comments saying
    what was approximated, what is unsupported, thinning and LR schedulers."""
    lines = [f"# translated from Distiller schedule {result.source}"]
    for title, items in (("approximated / notes", result.notes),
                         ("unsupported", result.unsupported)):
        if items:
            lines.append(f"# {title}:")
            lines.extend(f"#   - {item}" for item in items)
    if result.thinning:
        lines.append(f"# thinning requested (real removal of {', '.join(result.thinning)})")
    for lr in result.lr_schedulers:
        lines.append(f"# lr scheduler {lr.name}: {lr.torch_class}({_kwargs(lr.args)})"
                     f"{' at epochs ' + _epochs(lr.epochs) if lr.epochs else ''}")
    if result.weight_names:
        lines.append(f"# weight names are Distiller's ({len(result.weight_names)}); they are "
                     "matched to the model's parameters when the recipe runs")
    body = yaml.safe_dump(to_yaml_recipe(result), sort_keys=False, default_flow_style=None,
                          width=100)
    return "\n".join(lines) + "\n" + body


def _kwargs(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _epochs(epochs: list[int]) -> str:
    if len(epochs) > 2 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return str(epochs)
