"""Distiller quantizers (internal to :mod:`unified.distiller.schedule`): each becomes a
quantize step, with per-layer overrides as separate steps. Argument lists are those of the
Distiller constructors. LR schedulers are in ``schedulers``, regularizers and extensions in
``extensions``."""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from unified.distiller.parse import (
    Builder,
    ClassSpec,
    Component,
    StepWeights,
    check_args,
    is_pattern,
)
from unified.spec.steps import (
    Granularity,
    QuantAlgorithm,
    QuantDType,
    QuantizeStep,
    QuantMethod,
    Targets,
)

QUANT_ORDER = (1 << 30,)  # Distiller runs quantization alongside pruning; we put it last
MODES = ("SYMMETRIC", "SYMMETRIC_RESTRICTED", "ASYMMETRIC_UNSIGNED", "ASYMMETRIC_SIGNED")
CLIP_MODES = ("NONE", "AVG", "N_STD", "GAUSS", "LAPLACE")
_BASE = ("bits_activations", "bits_weights", "bits_bias", "overrides")


def _allowed_bits(name: str) -> tuple[int, ...]:
    """The bit widths unified.spec.steps accepts for QuantizeStep.<name> (read from its Literal)."""
    found: list[int] = []

    def walk(tp: Any) -> None:
        for arg in typing.get_args(tp):
            if isinstance(arg, int) and not isinstance(arg, bool):
                found.append(arg)
            else:
                walk(arg)

    walk(QuantizeStep.model_fields[name].annotation)
    return tuple(sorted(set(found)))


def fit_bits(bits: int | None, allowed: tuple[int, ...]) -> tuple[int | None, str | None]:
    """Distiller bits -> a width the unified spec allows (None = float), with a note if changed.

    32 bits or more (Distiller's default for its training quantizers) means float.
    Widths the spec lacks are rounded up: never claim more compression than Distiller.
    """
    if bits is None or bits >= 32:
        return None, None
    if bits in allowed:
        return bits, None
    above = [a for a in allowed if a >= bits and (a != 16 or bits > 8)]
    if not above:
        return None, f"{bits} bits has no unified equivalent: kept in float"
    return above[0], f"{bits} bits is not a unified width ({allowed}): rounded up to {above[0]}"


# --- quantizers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _QuantKind:
    method: QuantMethod
    algorithm: QuantAlgorithm
    weights_key: str  # PostTrainLinearQuantizer says bits_parameters
    default_bits: int  # default of bits_activations / bits_weights
    has_mode: bool
    note: str | None = None


def _mode_symmetric(b: Builder, comp: Component) -> bool:
    """Distiller's mode: one LinearQuantMode name, or {activations: ..., weights: ...}."""
    mode = comp.args.get("mode", "SYMMETRIC")
    if isinstance(mode, dict):
        acts, wts = mode.get("activations"), mode.get("weights")
    else:
        acts = wts = mode
    for value in (acts, wts):
        if value not in MODES:
            b.problem(comp.arg_path("mode"), f"must be one of {', '.join(MODES)} (or a mapping "
                      f"with activations and weights). Got {mode!r} instead")
            return True
    if acts != wts:
        b.note(comp, f"mode: weights {wts}, activations {acts}; the unified step has one "
               f"'symmetric' flag, taken from the weights ({wts})")
    if wts == "SYMMETRIC_RESTRICTED":
        b.note(comp, "SYMMETRIC_RESTRICTED (range [-127, 127]) mapped to symmetric")
    return str(wts).startswith("SYMMETRIC")


def _bits(b: Builder, comp: Component, key: str, default: int | None) -> int | None:
    value = comp.args.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        b.problem(comp.arg_path(key), f"must be a positive number of bits or null. Got {value!r}")
        return None
    return value


def _override_pattern(key: str, blockers: list[str], literals: list[str]) -> str:
    """A targets pattern for the modules whose FIRST matching override is ``key``.

    Distiller looks a module name up literally first, then in the ordered regexes
    (``^key$``, first match wins); ``blockers`` are earlier regexes and ``literals`` other
    keys with a different outcome.
    """
    if not blockers and not literals and not is_pattern(key):
        return key
    guard = "".join(f"(?!(?:{e})$)" for e in blockers)
    guard += "".join(f"(?!{re.escape(lit)}$)" for lit in literals)
    if is_pattern(key):
        return f"re:^{guard}(?:{key})$"
    # a plain name is also looked up literally first, before any regex
    return f"re:^(?:{re.escape(key)}|{guard}(?:{key}))$"


def _override_bits(b: Builder, path: tuple[Any, ...], body: dict[str, Any], key: str,
                   default: int | None) -> tuple[bool, int | None]:
    value = body.get(key, default)
    if value is None:
        return True, None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        b.problem((*path, key), f"must be a positive number of bits or null. Got {value!r}")
        return False, None
    return True, None if value >= 32 else value


_Override = tuple[str, int | None, int | None, dict[str, Any]]  # key, weight/act bits, body


def _overrides(
    b: Builder, comp: Component, default_w: int | None, default_a: int | None
) -> tuple[list[str], list[str], int | None, int | None] | None:
    """(include, exclude, weight bits, activation bits of the step) from ``overrides``.

    Layers an override leaves with float weights are excluded; other per-layer settings
    cannot be expressed by one step and become notes. When the quantizer's own weights are
    float, only the overridden layers are quantized: they become ``include``, and the step
    takes the bit widths of the first of them.
    """
    raw = comp.args.get("overrides")
    if raw is None:
        return [], [], default_w, default_a
    if not isinstance(raw, dict):
        b.problem(comp.arg_path("overrides"), "must be an ordered mapping of module-name "
                  f"regexes to settings. Got {raw!r} instead")
        return None
    parsed = _parse_overrides(b, comp, raw, default_w, default_a)
    if parsed is None:
        return None
    first = next(((w, a) for _, w, a, _ in parsed if w is not None), (None, None))
    step_w, step_a = (default_w, default_a) if default_w is not None else first
    _note_overrides(b, comp, parsed, step_w, step_a)
    include, exclude = _override_targets(parsed)
    if default_w is not None:
        return [], exclude, step_w, step_a
    return include, [], step_w, step_a


def _parse_overrides(b: Builder, comp: Component, raw: dict[Any, Any], default_w: int | None,
                     default_a: int | None) -> list[_Override] | None:
    """Each override's key and bit widths (None: float), in order; None after a problem."""
    parsed: list[_Override] = []
    for key, body in raw.items():
        path = (*comp.arg_path("overrides"), str(key))
        if not isinstance(body, dict):
            b.problem(path, f"must be a mapping of settings. Got {body!r} instead")
            return None
        if any(old in body for old in ("acts", "wts", "bias")):
            b.problem(path, "'acts' / 'wts' / 'bias' are deprecated in Distiller: use "
                      "bits_activations / bits_weights / bits_bias")
            return None
        try:
            re.compile(str(key))
        except re.error as exc:
            b.problem(path, f"is not a valid regular expression: {exc}")
            return None
        ok_w, w = _override_bits(b, path, body, "bits_weights", default_w)
        ok_a, a = _override_bits(b, path, body, "bits_activations", default_a)
        if not (ok_w and ok_a):
            return None
        parsed.append((str(key), w, a, body))
    return parsed


def _note_overrides(b: Builder, comp: Component, parsed: list[_Override],
                    step_w: int | None, step_a: int | None) -> None:
    """Notes on the per-layer settings one quantize step cannot express."""
    for key, w, a, body in parsed:
        if w is None and a is not None:
            b.note(comp, f"override '{key}': float weights but {a}-bit activations in Distiller; "
                   "the step leaves these layers out")
        elif w is not None and a is None and step_a is not None:
            b.note(comp, f"override '{key}': float activations in Distiller; the step quantizes "
                   "their activations too")
        if w is not None and (w != step_w or (a is not None and a != step_a)):
            b.note(comp, f"override '{key}': bits_weights={w}, bits_activations={a} cannot be "
                   f"expressed (one quantize step has one bit width); the step's are used")
        for extra in body:
            if extra not in ("bits_weights", "bits_activations", "bits_bias"):
                b.note(comp, f"override '{key}': {extra}={body[extra]!r} not expressible; "
                       "ignored")


def _override_targets(parsed: list[_Override]) -> tuple[list[str], list[str]]:
    """(include, exclude) patterns: the layers whose first matching override quantizes their
    weights, and those whose first matching override leaves them float."""
    entries = [(key, w is None) for key, w, _, _ in parsed]  # (key, float weights?)
    include: list[str] = []
    exclude: list[str] = []
    for index, (key, floats) in enumerate(entries):
        blockers = [k for k, f in entries[:index] if f != floats]
        literals = [k for k, f in entries if f != floats and k != key and not is_pattern(k)]
        pattern = _override_pattern(key, blockers, literals)
        (exclude if floats else include).append(pattern)
    return include, exclude


def quantizer(kind: _QuantKind) -> Any:
    def translate(b: Builder, comp: Component) -> None:
        args = comp.args
        problems_before = len(b.problems)
        w_raw = _bits(b, comp, kind.weights_key, kind.default_bits)
        a_raw = _bits(b, comp, "bits_activations", kind.default_bits)
        w_raw = None if w_raw is not None and w_raw >= 32 else w_raw
        a_raw = None if a_raw is not None and a_raw >= 32 else a_raw
        symmetric = _mode_symmetric(b, comp) if kind.has_mode else True
        if kind.note:
            b.note(comp, kind.note)
        _quant_notes(b, comp, kind)
        targets = _overrides(b, comp, w_raw, a_raw)
        if targets is None or len(b.problems) > problems_before:
            return
        include, exclude, step_w, step_a = targets
        if str(args.get("fpq_module")) in ("32", "64"):
            b.unsupport(comp, f"fpq_module={args['fpq_module']}: layers run in floating point "
                        "and only their outputs are fake-quantized; no unified equivalent")
            return
        if w_raw is None and not include:
            overrides = args.get("overrides") or {}
            if a_raw is None and not any(isinstance(body, dict) and body.get("bits_activations")
                                         for body in overrides.values()):
                b.note(comp, "quantizes nothing (weights and activations stay in float): no step")
            else:
                b.unsupport(comp, "quantizes activations only; a unified quantize step always "
                            "quantizes weights")
            return
        weights, w_note = fit_bits(step_w, _allowed_bits("weights"))
        activations, a_note = fit_bits(step_a, _allowed_bits("activations"))
        for what, note in (("weights", w_note), ("activations", a_note)):
            if note:
                b.note(comp, f"approximated: {what}: {note}")
        fields: dict[str, Any] = {
            "method": kind.method, "algorithm": kind.algorithm, "weights": weights,
            "activations": activations, "symmetric": symmetric,
            "granularity": Granularity.per_channel if args.get("per_channel_wts")
            else Granularity.per_tensor,
            "targets": Targets(include=tuple(include), exclude=tuple(exclude)),
        }
        if weights == 16 or args.get("fp16") or str(args.get("fpq_module")) == "16":
            b.note(comp, "16-bit: mapped to float16 weights, float activations")
            fields.update(weights=16, activations=None, dtype=QuantDType.float16,
                          granularity=Granularity.per_tensor)
        try:
            step = QuantizeStep.model_validate(fields)
        except ValidationError as exc:
            b.validation_problem(comp.path, exc)
            return
        b.add_step(QUANT_ORDER, step, StepWeights())

    return translate


def _quant_notes(b: Builder, comp: Component, kind: _QuantKind) -> None:
    args = comp.args
    clip = args.get("clip_acts", "NONE")
    if clip not in CLIP_MODES:
        b.problem(comp.arg_path("clip_acts"), f"must be one of {', '.join(CLIP_MODES)}. "
                  f"Got {clip!r} instead")
    elif clip == "N_STD" and args.get("clip_n_stds") is None:
        b.problem(comp.arg_path("clip_acts"), "N_STD needs clip_n_stds (Distiller rejects it)")
    elif clip != "NONE":
        b.note(comp, f"approximated: activation clipping clip_acts={clip} is not expressible; "
               "each backend calibrates activation ranges its own way")
    if kind.method is QuantMethod.static and args.get("model_activation_stats") is not None:
        b.note(comp, "model_activation_stats not read: activation ranges come from the "
               "scenario's calibration split")
    elif kind.method is QuantMethod.static:
        b.note(comp, "approximated: without model_activation_stats Distiller computes activation "
               "ranges per batch at run time; the step calibrates them (static)")
    if kind.method is QuantMethod.qat:
        spans = [p.when.describe() for p in comp.policies]
        b.note(comp, "QAT epochs: the scenario budget's finetune_epochs (Distiller quantizes "
               f"throughout training; its policy covers {', '.join(spans) or 'no epochs'})")
    defaults = {"bits_accum": 32, "ema_decay": 0.999, "quantize_inputs": True,
                "num_bits_inputs": None, "clip_half_range": False, "also_clip_weights": False,
                "scale_approx_mult_bits": None, "inputs_quant_auto_fallback": True,
                "save_fp_weights": False, "act_clip_init_val": 8.0, "act_clip_decay": None,
                "clip_n_stds": None, "fpq_module": None, "fp16": False}
    for key, default in defaults.items():
        if key in args and args[key] != default and key not in ("fp16", "fpq_module"):
            b.note(comp, f"{key}={args[key]!r} not expressible; ignored")
    if args.get("bits_bias") not in (None, 32):
        b.note(comp, f"bits_bias={args['bits_bias']!r} not expressible; backends choose the "
               "bias precision")


_RANGE = (*_BASE, "mode", "ema_decay", "per_channel_wts")
QUANTIZERS: dict[str, ClassSpec] = {
    "QuantAwareTrainRangeLinearQuantizer": ClassSpec((), (*_RANGE, "quantize_inputs",
                                                          "num_bits_inputs"), quantizer(
        _QuantKind(QuantMethod.qat, QuantAlgorithm.plain, "bits_weights", 32, True))),
    "NCFQuantAwareTrainQuantizer": ClassSpec((), _RANGE, quantizer(_QuantKind(
        QuantMethod.qat, QuantAlgorithm.plain, "bits_weights", 32, True,
        "approximated: NCF-specific fake-quantization points are not reproduced")),),
    "PostTrainLinearQuantizer": ClassSpec((), (
        "bits_activations", "bits_parameters", "bits_accum", "overrides", "mode", "clip_acts",
        "per_channel_wts", "model_activation_stats", "fp16", "clip_n_stds", "clip_half_range",
        "scale_approx_mult_bits", "inputs_quant_auto_fallback", "fpq_module", "save_fp_weights",
        "also_clip_weights"), quantizer(
        _QuantKind(QuantMethod.static, QuantAlgorithm.plain, "bits_parameters", 8, True))),
    "DorefaQuantizer": ClassSpec((), _BASE, quantizer(
        _QuantKind(QuantMethod.qat, QuantAlgorithm.dorefa, "bits_weights", 32, False))),
    "PACTQuantizer": ClassSpec((), (*_BASE, "act_clip_init_val", "act_clip_decay"), quantizer(
        _QuantKind(QuantMethod.qat, QuantAlgorithm.pact, "bits_weights", 32, False,
                   "Distiller's PACT quantizes weights DoReFa-style; the backend's PACT decides"))),
    "WRPNQuantizer": ClassSpec((), _BASE, quantizer(_QuantKind(
        QuantMethod.qat, QuantAlgorithm.plain, "bits_weights", 32, False,
        "approximated: WRPN's fixed clipping (weights to [-1, 1], activations to [0, 1]) is "
        "replaced by plain fake-quant QAT; layer widening is not done (nor by Distiller)"))),
}


def translate_quantizer(b: Builder, comp: Component) -> None:
    spec = QUANTIZERS[comp.class_name]
    if check_args(b, comp, spec):
        spec.translate(b, comp)
