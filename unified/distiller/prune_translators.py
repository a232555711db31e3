"""How each kind of Distiller pruner becomes unified ``prune`` steps: policy arguments and
schedules, structured (ranked filters / channels) and element-wise (AGP, sparsity levels,
sensitivities) pruners. Which class uses which translator is the table in ``pruners``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

from pydantic import ValidationError

from unified.distiller.parse import (
    Builder,
    Component,
    Policy,
    StepWeights,
    is_pattern,
    module_pattern,
    param_suffix,
)
from unified.spec.schedules import agp_span
from unified.spec.steps import (
    PruneCriterion,
    PruneStep,
    PruneStructure,
    Schedule,
    ScheduleCurve,
    Targets,
)

# PruningPolicy reads these from the policy's `args` (distiller/policy.py).
POLICY_ARGS = (
    "levels", "keep_mask", "mini_batch_pruning_frequency", "mask_on_forward_only",
    "mask_gradients", "use_double_copies", "discard_masks_at_minibatch_end",
    "skip_first_minibatch", "fold_batchnorm",
)
FILTER_GROUPS = ("3D", "Filters")
LP_GROUPS = ("3D", "Filters", "Channels", "Rows", "Blocks")


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def policy_args_ok(b: Builder, comp: Component, policy: Policy) -> bool:
    """Notes for PruningPolicy arguments; False when the policy cannot be carried out."""
    args = policy.args
    where = f"policy {policy.index}"
    args_path = (*policy.path, policy.kind, "args")
    if args.get("mask_gradients") and not args.get("mask_on_forward_only"):
        b.problem(args_path, "mask_gradients needs mask_on_forward_only: True (Distiller "
                  "rejects the combination)")
        return False
    if args.get("discard_masks_at_minibatch_end"):
        b.unsupport(comp, f"{where} discards its masks after every mini-batch (DropFilter-style "
                    "regularization: nothing stays pruned); the unified spec has no such step")
        return False
    if args.get("mini_batch_pruning_frequency"):
        b.note(comp, f"{where} re-prunes every {args['mini_batch_pruning_frequency']} "
               "mini-batches; the unified schedule updates masks once per pruning epoch")
    if args.get("mask_on_forward_only") or args.get("use_double_copies"):
        b.note(comp, f"{where} lets masked weights keep training (mask_on_forward_only / "
               "use_double_copies); unified masks are hard")
    if args.get("fold_batchnorm"):
        b.note(comp, f"{where} ranks batch-norm-folded weights (fold_batchnorm); the unified "
               "step ranks the raw weights")
    if args.get("levels") is not None and comp.class_name != "SparsityLevelParameterPruner":
        b.note(comp, f"{where}: 'levels' ignored (only SparsityLevelParameterPruner reads it)")
    for key in args:
        if key not in POLICY_ARGS:
            b.note(comp, f"{where}: argument '{key}' ignored (PruningPolicy does not read it)")
    return True


def policy_schedule(
    b: Builder, comp: Component, policy: Policy, *, agp: bool, initial: float = 0.0
) -> Schedule | None:
    """The unified schedule of one policy: AGP needs a range, one-shot pruners any epochs."""
    when = policy.when
    if agp:
        if when.explicit or when.frequency is None:
            b.problem((*policy.path, "epochs"), f"AGP pruner '{comp.name}' needs starting_epoch, "
                      "ending_epoch and frequency: Distiller computes the AGP span from the "
                      "frequency, which an 'epochs' list leaves undefined")
            return None
        span = agp_span(start=when.start, end=when.end, frequency=when.frequency)
        if span <= 0:
            b.problem(policy.path, f"AGP span ((ending_epoch - starting_epoch - 1) // frequency) "
                      f"* frequency is {span}: Distiller asserts span > 0 (the policy needs at "
                      "least two pruning epochs)")
            return None
        return Schedule(initial_sparsity=initial, start_epoch=when.start, end_epoch=when.end,
                        frequency=when.frequency, curve=ScheduleCurve.agp)
    epochs = sorted(set(when.epochs))
    if epochs != when.epochs:
        b.note(comp, f"policy {policy.index}: epochs {when.epochs} read as {epochs}")
    gaps = {later - earlier for earlier, later in itertools.pairwise(epochs)}
    frequency = gaps.pop() if len(gaps) == 1 else 1
    if gaps:  # more than one distinct gap
        b.note(comp, f"policy {policy.index}: irregular epochs {epochs} approximated by every "
               f"epoch from {epochs[0]} to {epochs[-1]} (same sparsity each time)")
    return Schedule(initial_sparsity=0.0, start_epoch=epochs[0], end_epoch=epochs[-1] + 1,
                    frequency=frequency, curve=ScheduleCurve.constant)


def _is_layer_weight(name: str) -> bool:
    """``<layer>.weight`` (or a pattern, which Distiller would read literally)."""
    return is_pattern(name) or ("." in name and param_suffix(name) == "weight")


def _prunable(b: Builder, comp: Component, names: list[str]) -> list[str]:
    """The names a unified prune step can carry: the ``weight`` of a layer (or a pattern).

    Biases, recurrent-layer tensors (``rnn.weight_ih_l0``) and parameters held by the model
    itself (``fc_weight``) are not a conv/linear layer's weight: they are reported unsupported
    instead of being read as the layer's weight.
    """
    odd = [n for n in names if n != "*" and not _is_layer_weight(n)]
    if odd:
        b.unsupport(comp, f"cannot prune {', '.join(odd)}: unified prune steps prune the "
                    "'weight' of conv/linear layers only (not biases, recurrent-layer "
                    "weight_ih / weight_hh tensors or other parameters)")
    return [n for n in names if n not in odd]


def _emit(
    b: Builder, comp: Component, policy: Policy, fields: dict[str, object], weights: StepWeights
) -> None:
    targets = Targets(
        include=_dedupe([module_pattern(n) for n in weights.include]),
        exclude=_dedupe([module_pattern(n) for n in weights.exclude]),
    )
    try:
        step = PruneStep.model_validate({**fields, "targets": targets})
    except ValidationError as exc:
        b.validation_problem(comp.path, exc)
        return
    b.add_step((policy.index,), step, weights)


def _fraction(b: Builder, comp: Component, key: str, *, allow_zero: bool) -> float | None:
    value = b.number(comp, key)
    if value is None:
        return None
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "0 <= x < 1" if allow_zero else "0 < x < 1"
        b.problem(comp.arg_path(key), f"must be a sparsity fraction ({bound}). Got {value}")
        return None
    return value


# --- structured pruners --------------------------------------------------------------------


def _structure(
    b: Builder, comp: Component, groups: tuple[str, ...], *, checked: bool = True
) -> tuple[PruneStructure, tuple[int, int] | None] | None:
    group = comp.args.get("group_type")
    if not checked and group not in groups:
        # the one-shot activation / gradient / random filter pruners never read group_type
        b.note(comp, f"group_type {group!r} is not read by Distiller's {comp.class_name}, which "
               "ranks filters whatever it says: filters are pruned")
        return PruneStructure.channel, None
    if group not in groups:
        b.problem(comp.arg_path("group_type"), f"{comp.class_name} ranks {', '.join(groups)} "
                  f"structures. Got {group!r} instead")
        return None
    if group in FILTER_GROUPS:
        return PruneStructure.channel, None
    if group in ("Channels", "Rows"):
        # Distiller ranks weight[:, c] for both (rank_and_prune_channels): conv input channels,
        # linear input features
        return PruneStructure.input_channel, None
    kwargs = comp.args.get("kwargs")
    shape = kwargs.get("block_shape") if isinstance(kwargs, dict) else None
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        or shape[2:] != [1, 1]
    ):
        b.problem(comp.arg_path("kwargs"), "group_type Blocks needs kwargs: {block_shape: "
                  f"[repetitions, depth, 1, 1]}} (Distiller's only block form). Got {shape!r}")
        return None
    b.note(comp, f"block_shape {shape}: {shape[0]} filter(s) x {shape[1]} input channel(s) per "
           f"kernel position, mapped to block [{shape[0]}, {shape[1]}]")
    return PruneStructure.block, (shape[0], shape[1])


def _structured_notes(b: Builder, comp: Component) -> None:
    args = comp.args
    if args.get("group_dependency") is not None:
        b.note(comp, f"group_dependency {args['group_dependency']!r} (all tensors follow the "
               "first one's ranking) is not expressible; each layer is ranked on its own")
    if args.get("noise"):
        b.note(comp, f"ranking noise {args['noise']} ignored")
    if args.get("group_size", 1) != 1:
        b.note(comp, f"group_size {args['group_size']} ignored (structures pruned one by one)")
    if "rounding_fn" in args:
        b.note(comp, "rounding_fn ignored (backends round the number of pruned structures)")


def structured(
    criterion: PruneCriterion, *, agp: bool, groups: tuple[str, ...], approx: str | None = None,
    checks_group: bool = True,
) -> Callable[[Builder, Component], None]:
    """Translator for the ranked structure pruners and their AGP variants."""

    def translate(b: Builder, comp: Component) -> None:
        names = b.names(comp)
        shape = _structure(b, comp, groups, checked=checks_group)
        if agp:
            initial = _fraction(b, comp, "initial_sparsity", allow_zero=True)
            final = _fraction(b, comp, "final_sparsity", allow_zero=False)
            if initial is not None and final is not None and not final > initial:
                b.problem(comp.arg_path("final_sparsity"), f"must exceed initial_sparsity "
                          f"({initial}); Distiller asserts it. Got {final}")
                return
        else:
            final = _fraction(b, comp, "desired_sparsity", allow_zero=True)
            initial = 0.0
            if final == 0:
                b.note(comp, "desired_sparsity 0 prunes nothing (as in Distiller): no step")
                return
        if names is None or shape is None or initial is None or final is None:
            return
        names = _prunable(b, comp, names)
        if not names:
            return
        if approx:
            b.note(comp, approx)
        _structured_notes(b, comp)
        structure, block = shape
        for policy in comp.policies:
            if not policy_args_ok(b, comp, policy):
                continue
            schedule = policy_schedule(b, comp, policy, agp=agp, initial=initial)
            if schedule is None:
                continue
            fields = {"sparsity": final, "structure": structure, "criterion": criterion,
                      "block": block, "schedule": schedule}
            _emit(b, comp, policy, fields, StepWeights(include=tuple(names)))

    return translate


# --- element-wise pruners ------------------------------------------------------------------


def agp_fine(b: Builder, comp: Component) -> None:
    """AutomatedGradualPruner: magnitude (element-wise) pruning on the AGP curve."""
    names = b.names(comp)
    initial = _fraction(b, comp, "initial_sparsity", allow_zero=True)
    final = _fraction(b, comp, "final_sparsity", allow_zero=False)
    if names is None or initial is None or final is None:
        return
    if not final > initial:
        b.problem(comp.arg_path("final_sparsity"), f"must exceed initial_sparsity ({initial}); "
                  f"Distiller asserts it. Got {final}")
        return
    names = _prunable(b, comp, names)
    if not names:
        return
    if "rate_scheduler_factory" in comp.args:
        b.note(comp, "rate_scheduler_factory ignored: the AGP rate is used")
    for policy in comp.policies:
        if not policy_args_ok(b, comp, policy):
            continue
        schedule = policy_schedule(b, comp, policy, agp=True, initial=initial)
        if schedule is None:
            continue
        fields = {"sparsity": final, "structure": PruneStructure.unstructured,
                  "criterion": PruneCriterion.l1, "schedule": schedule}
        _emit(b, comp, policy, fields, StepWeights(include=tuple(names)))


def _per_name_levels(
    b: Builder, comp: Component, policy: Policy, table: dict[str, object], key: str,
    to_sparsity: Callable[[float], float],
) -> None:
    """One constant-curve step per distinct level; '*' is the default for unnamed tensors."""
    numbers: dict[str, float] = {}
    for name, raw in table.items():
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            b.problem(comp.arg_path(key), f"'{name}': must be a number. Got {raw!r} instead")
            return
        numbers[name] = float(raw)
    named = [n for n in numbers if n != "*"]
    prunable = _prunable(b, comp, [n for n in named if numbers[n] > 0])
    # named tensors keep their own level (<= 0: Distiller leaves them alone), not the default
    explicit = [n for n in named if n in prunable or (numbers[n] <= 0 and _is_layer_weight(n))]
    levels: dict[float, list[str]] = {}
    for name, level in numbers.items():
        if level > 0 and (name == "*" or name in prunable):
            levels.setdefault(level, []).append(name)
    schedule = policy_schedule(b, comp, policy, agp=False)
    if schedule is None:
        return
    for level, names in levels.items():
        sparsity = to_sparsity(level)
        if not 0 < sparsity < 1:
            b.problem(comp.arg_path(key), f"level {level} is not a sparsity fraction (0 < x < 1)")
            continue
        fields = {"sparsity": sparsity, "structure": PruneStructure.unstructured,
                  "criterion": PruneCriterion.l1, "schedule": schedule}
        if names == ["*"]:
            b.note(comp, "'*' prunes every other parameter in Distiller (biases and batch-norm "
                   "included); the unified step prunes conv/linear weights not named elsewhere")
            weights = StepWeights(exclude=tuple(explicit))
        else:
            weights = StepWeights(include=tuple(n for n in names if n != "*"))
            if "*" in names:
                b.note(comp, f"'*' shares level {level} with named tensors: the default level is "
                       "applied to the named tensors only")
        _emit(b, comp, policy, fields, weights)


def sparsity_levels(b: Builder, comp: Component) -> None:
    """SparsityLevelParameterPruner: exact per-tensor magnitude levels, one-shot."""
    for policy in comp.policies:
        if not policy_args_ok(b, comp, policy):
            continue
        override = policy.args.get("levels")
        table = b.name_map(comp, "levels") if override is None else override
        if not isinstance(table, dict) or not table:
            b.problem(comp.arg_path("levels"), "must be a mapping of parameter names to levels")
            continue
        _per_name_levels(b, comp, policy, {str(k): v for k, v in table.items()}, "levels",
                         lambda level: level)


def sensitivity(b: Builder, comp: Component) -> None:
    """SensitivityPruner: threshold = sensitivity x std; approximated by the Gaussian level."""
    table = b.name_map(comp, "sensitivities")
    if table is None:
        return

    def to_sparsity(s: float) -> float:
        return min(round(math.erf(s / math.sqrt(2.0)), 4), 0.9999)

    examples = ", ".join(f"{s:g} -> {to_sparsity(s):g}" for s in
                         sorted({float(v) for v in table.values()
                                 if isinstance(v, int | float) and not isinstance(v, bool)
                                 and v > 0})[:4])
    b.note(comp, "approximated: Distiller prunes |w| <= sensitivity x std(w) per tensor; mapped "
           "to the sparsity that threshold gives for zero-mean normal weights, erf(s/sqrt 2) "
           f"({examples}); Distiller's fixed threshold also traps more weights as training "
           "shrinks them")
    for policy in comp.policies:
        if policy_args_ok(b, comp, policy):
            _per_name_levels(b, comp, policy, table, "sensitivities", to_sparsity)


def unsupported(reason: str) -> Callable[[Builder, Component], None]:
    def translate(b: Builder, comp: Component) -> None:
        b.unsupport(comp, reason)

    return translate
