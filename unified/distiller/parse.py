"""Reading a Distiller schedule the way ``distiller/config.py`` does, with line numbers.

Internal to :mod:`unified.distiller.schedule`: the document model (components, policies and the
epochs they act on), argument checking against the real constructors' signatures, and the
:class:`Builder` that collects steps, notes and one-line problems (``file:line: field: ...``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from unified.spec.errors import closest, did_you_mean
from unified.spec.steps import Step
from unified.spec.yamlio import YPath, field_name

SECTIONS = ("pruners", "quantizers", "regularizers", "lr_schedulers", "extensions")
# dict_config tests the policy kinds in this order; the first one present wins.
POLICY_KINDS = ("pruner", "regularizer", "quantizer", "lr_scheduler", "extension")
SECTION_OF = {
    "pruner": "pruners",
    "regularizer": "regularizers",
    "quantizer": "quantizers",
    "lr_scheduler": "lr_schedulers",
    "extension": "extensions",
}
WHEN_KEYS = ("epochs", "starting_epoch", "ending_epoch", "frequency")
# Arguments build_component injects itself; a user may name them, they are overwritten.
INJECTED = ("name", "model", "optimizer", "last_epoch")
_REGEX_CHARS = re.compile(r"[\\^$*+?{}\[\]|()]")
# Arguments of older Distiller releases that today's constructors reject (as Distiller does).
LEGACY_ARGS = {
    "bits_overrides": "the name used up to Distiller 0.3.1; today's is 'overrides' (keys "
                      "bits_activations / bits_weights / bits_bias instead of acts / wts)",
    "reg_regims": "the pre-2019 form of the ranked structure pruners ({param: [sparsity, "
                  "group]}); today's Distiller takes group_type, desired_sparsity (or "
                  "initial_sparsity / final_sparsity) and weights",
    "no_clip_layers": "from Distiller 0.3.1; today's form is overrides: {<layer>: {clip_acts: "
                      "NONE}}",
    "act_sat_mode": "from Distiller 0.3.1 and older; today's is clip_acts",
    "wts_sat_mode": "from Distiller 0.3.1 and older; weights are no longer clipped",
    "quantize_bias": "from Distiller 0.3.1 and older; today's is bits_bias",
}
# Sections whose presence makes a mapping a compression schedule (dict_config reads them).
SCHEDULE_KEYS = (*SECTIONS, "policies")
_STATS_KEYS = ("inputs", "output", "min", "max", "avg_min", "avg_max", "mean", "std")


# --- document model ------------------------------------------------------------------------


@dataclass
class When:
    """The epochs a policy acts on, with the meta Distiller's scheduler hands its policy."""

    epochs: list[int]
    start: int
    end: int  # exclusive
    frequency: int | None  # None for an explicit `epochs` list, as in Distiller
    explicit: bool

    def describe(self) -> str:
        if self.explicit:
            return f"epochs {self.epochs}"
        return f"epochs {self.start}..{self.end - 1} every {self.frequency}"


@dataclass
class Policy:
    index: int
    kind: str
    instance: str
    args: dict[str, Any]
    when: When
    path: YPath


@dataclass
class Component:
    section: str
    name: str
    class_name: str
    args: dict[str, Any]
    path: YPath
    policies: list[Policy] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.class_name})"

    def arg_path(self, key: str) -> YPath:
        return (*self.path, key)


@dataclass(frozen=True)
class ClassSpec:
    """A Distiller class: the constructor's arguments and how squeezelab translates it."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    translate: Callable[[Builder, Component], None]


@dataclass(frozen=True)
class StepWeights:
    """The Distiller weight names a step's ``targets.include`` / ``exclude`` came from."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass
class LRSchedulerSpec:
    """A learning-rate scheduler as plain data: build it with ``torch_class(optimizer, **args)``
    and step it at the end of each epoch in ``epochs`` (Distiller's LRPolicy)."""

    name: str
    class_name: str  # as written in the Distiller file
    torch_class: str  # e.g. "torch.optim.lr_scheduler.StepLR"
    args: dict[str, Any]
    epochs: list[int]  # empty: defined, but no policy steps it


class Builder:
    """Collects what the translation produces; problems are deduplicated, in order."""

    def __init__(self, source: str, lines: dict[YPath, int]) -> None:
        self.source = source
        self.lines = lines
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.unsupported: list[str] = []
        self.thinning: list[str] = []
        self.thinning_epochs: set[int] = set()  # when a thinning extension runs
        self.lr_schedulers: list[LRSchedulerSpec] = []
        self._steps: list[tuple[tuple[int, ...], Step, StepWeights]] = []

    # messages ----------------------------------------------------------------------------

    def line(self, path: YPath) -> int | None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def problem(self, path: YPath, message: str) -> None:
        line = self.line(path)
        where = f"{self.source}:{line}" if line else self.source
        text = f"{where}: {field_name(path)}: {message}"
        if text not in self.problems:
            self.problems.append(text)

    def note(self, comp: Component | None, message: str) -> None:
        text = f"{comp.label}: {message}" if comp is not None else message
        if text not in self.notes:
            self.notes.append(text)

    def unsupport(self, comp: Component, reason: str) -> None:
        text = f"{comp.label}: {reason}"
        if text not in self.unsupported:
            self.unsupported.append(text)

    def validation_problem(self, path: YPath, exc: ValidationError) -> None:
        for error in exc.errors():
            loc = ".".join(str(p) for p in error["loc"])
            msg = str(error["msg"]).removeprefix("Value error, ")
            self.problem(path, f"cannot be expressed as a unified step: {loc}: {msg}"
                         if loc else f"cannot be expressed as a unified step: {msg}")

    # steps -------------------------------------------------------------------------------

    def add_step(self, order: tuple[int, ...], step: Step, weights: StepWeights) -> None:
        self._steps.append((order, step, weights))

    def ordered_steps(self) -> list[tuple[Step, StepWeights]]:
        ordered = sorted(enumerate(self._steps), key=lambda item: (item[1][0], item[0]))
        return [(step, weights) for _, (_, step, weights) in ordered]

    # typed argument access (a wrong type is a problem; None is returned) ----------------

    def number(self, comp: Component, key: str, default: float | None = None) -> float | None:
        value = comp.args.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(comp.arg_path(key), f"must be a number. Got {value!r} instead")
            return None
        return float(value)

    def integer(self, comp: Component, key: str, default: int | None = None) -> int | None:
        value = comp.args.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(comp.arg_path(key), f"must be an integer. Got {value!r} instead")
            return None
        return value

    def names(self, comp: Component, key: str = "weights") -> list[str] | None:
        value = comp.args.get(key)
        if isinstance(value, str) and value:
            value = [value]  # Distiller tests `name in weights`: a lone string works too
        elif isinstance(value, dict) and value:
            # `name in weights` tests a mapping's keys: Distiller accepts one, values unused
            self.note(comp, f"'{key}' is a mapping: its keys are the parameter names (Distiller "
                      "ignores the values)")
            value = [str(k) for k in value]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v for v in value)
        ):
            self.problem(
                comp.arg_path(key),
                f"must be a non-empty list of parameter names. Got {value!r} instead",
            )
            return None
        return list(value)

    def name_map(self, comp: Component, key: str) -> dict[str, Any] | None:
        value = comp.args.get(key)
        if not isinstance(value, dict) or not value:
            self.problem(
                comp.arg_path(key),
                f"must be a mapping of parameter names to values. Got {value!r} instead",
            )
            return None
        return {str(k): v for k, v in value.items()}


# --- parsing the document ------------------------------------------------------------------


def check_args(b: Builder, comp: Component, spec: ClassSpec) -> bool:
    """Distiller's build_component: unknown arguments and missing required ones fail (a
    misspelt required argument is one problem, on the key, with the name meant)."""
    accepted = set(spec.required) | set(spec.optional) | set(INJECTED)
    unknown = [key for key in comp.args if key not in accepted]
    missing = [key for key in spec.required if key not in comp.args]
    for key in unknown:
        meant = closest(key, missing)
        if meant is None and len(unknown) == 1 and len(missing) == 1:
            meant = missing[0]
        if meant is not None:
            missing.remove(meant)
            b.problem(comp.arg_path(key), f"{comp.class_name} does not accept the argument "
                      f"'{key}'; did you mean '{meant}'?")
            continue
        legacy = LEGACY_ARGS.get(key)
        hint = f"; '{key}' is {legacy}" if legacy else did_you_mean(key, accepted)
        b.problem(comp.arg_path(key), f"{comp.class_name} does not accept the argument "
                  f"'{key}' (it accepts: {', '.join((*spec.required, *spec.optional))}){hint}")
    for key in missing:
        b.problem(comp.path, f"{comp.class_name} needs the argument '{key}'")
    return not unknown and not missing


def non_schedule_reason(data: dict[str, Any]) -> str | None:
    """Why a YAML mapping is not a compression schedule at all (None when it is one).

    Distiller's scheduler reads only the sections and ``policies``: a file with none of them
    (activation statistics, AMC / ptq_greedy_search configurations) is another kind of file.
    """
    if any(key in data for key in SCHEDULE_KEYS):
        return None
    keys = [str(k) for k in data]
    shown = ", ".join(keys[:4]) + (f", ... ({len(keys)} keys)" if len(keys) > 4 else "")
    bodies = [v for v in data.values() if isinstance(v, dict)]
    guess = ""
    if "network" in data:
        guess = "; it looks like an AMC / auto-compression configuration"
    elif bodies and any(k in body for body in bodies for k in _STATS_KEYS):
        guess = ("; it looks like quantization statistics (activation ranges per layer), which "
                 "a PostTrainLinearQuantizer reads through model_activation_stats")
    elif bodies and all(any(str(k).startswith("bits_") for k in body) for body in bodies):
        guess = ("; it looks like per-layer quantizer overrides (e.g. ptq_greedy_search output), "
                 "which belong under quantizers.<name>.overrides")
    return (f"not a Distiller compression schedule: it has none of {', '.join(SCHEDULE_KEYS)} "
            f"(top-level keys: {shown or 'none'}){guess}")


def parse_components(b: Builder, data: dict[str, Any], section: str) -> list[Component]:
    raw = data.get(section)
    if raw is None:
        return []
    if not isinstance(raw, dict):
        b.problem((section,), "must be a mapping of instance names to {class: ..., args}")
        return []
    components = []
    for name, body in raw.items():
        path: YPath = (section, str(name))
        if not isinstance(body, dict):
            b.problem(path, f"must be a mapping with a 'class' key. Got {body!r} instead")
            continue
        class_name = body.get("class")
        if not isinstance(class_name, str) or not class_name:
            b.problem(path, "needs a 'class' naming the Distiller class")
            continue
        args = {str(k): v for k, v in body.items() if k != "class"}
        components.append(Component(section, str(name), class_name, args, path))
    return components


def _epoch_int(b: Builder, path: YPath, value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        b.problem(path, f"must be an integer epoch. Got {value!r} instead")
        return None
    if value < 0:
        b.problem(path, f"epochs start at 0. Got {value} instead")
        return None
    return value


def parse_when(b: Builder, policy: dict[str, Any], path: YPath) -> When | None:
    """``add_policy_to_scheduler`` + ``CompressionScheduler.add_policy``."""
    if "epochs" in policy:
        raw = policy["epochs"]
        if not isinstance(raw, list) or not raw:
            b.problem((*path, "epochs"), f"must be a non-empty list of epochs. Got {raw!r}")
            return None
        epochs = [_epoch_int(b, (*path, "epochs", i), e) for i, e in enumerate(raw)]
        if any(e is None for e in epochs):
            return None
        ints = [e for e in epochs if e is not None]
        ignored = [k for k in ("starting_epoch", "ending_epoch", "frequency") if k in policy]
        if ignored:
            b.note(None, f"{field_name(path)}: {', '.join(ignored)} ignored because 'epochs' "
                   "is given (as in Distiller)")
        # Distiller: starting_epoch = epochs[0], ending_epoch = epochs[-1] + 1
        return When(ints, ints[0], ints[-1] + 1, None, True)
    missing = [k for k in ("starting_epoch", "ending_epoch", "frequency") if k not in policy]
    if missing:
        strays = [str(k) for k in policy if k not in POLICY_KINDS and k not in WHEN_KEYS]
        hint = next((f"; is '{s}' a misspelt '{m}'?" for s in strays
                     for m in [closest(s, missing)] if m is not None), "")
        b.problem(path, "a policy needs 'epochs: [...]' or starting_epoch, ending_epoch and "
                  f"frequency; missing: {', '.join(missing)}{hint}")
        return None
    start = _epoch_int(b, (*path, "starting_epoch"), policy["starting_epoch"])
    end = _epoch_int(b, (*path, "ending_epoch"), policy["ending_epoch"])
    freq = policy["frequency"]
    if isinstance(freq, bool) or not isinstance(freq, int):
        b.problem((*path, "frequency"), f"must be an integer. Got {freq!r} instead")
        return None
    if start is None or end is None:
        return None
    if not start < end:
        b.problem((*path, "ending_epoch"), f"must be greater than starting_epoch ({start}); "
                  f"ending_epoch is exclusive. Got {end}")
        return None
    if not 0 < freq <= end - start:
        b.problem((*path, "frequency"), f"must be between 1 and ending_epoch - starting_epoch "
                  f"({end - start}). Got {freq}")
        return None
    return When(list(range(start, end, freq)), start, end, freq, False)


def parse_policies(
    b: Builder, data: dict[str, Any], instances: dict[str, dict[str, Component]]
) -> list[Policy]:
    """The ``policies`` list, each bound to the instance it names."""
    raw = data.get("policies")
    if raw is None:
        return []
    if not isinstance(raw, list):
        b.problem(("policies",), "must be a list of policies")
        return []
    policies = []
    for index, item in enumerate(raw):
        path: YPath = ("policies", index)
        if not isinstance(item, dict):
            b.problem(path, f"a policy is a mapping. Got {item!r} instead")
            continue
        kinds = [k for k in POLICY_KINDS if k in item]
        if not kinds:
            b.problem(path, f"a policy names one of {', '.join(POLICY_KINDS)}")
            continue
        kind = kinds[0]
        for other in kinds[1:]:
            b.note(None, f"{field_name(path)}: '{other}' ignored: Distiller uses the "
                   f"'{kind}' of a policy that names several")
        for key in item:
            if key not in POLICY_KINDS and key not in WHEN_KEYS:
                b.note(None, f"{field_name(path)}: key '{key}' ignored (Distiller ignores it)")
        ref = item[kind]
        ref_path: YPath = (*path, kind)
        if not isinstance(ref, dict) or not isinstance(ref.get("instance_name"), str):
            b.problem(ref_path, f"must be a mapping with instance_name: <name of a {kind}>. "
                      f"Got {ref!r} instead")
            continue
        instance = ref["instance_name"]
        args = ref.get("args")
        if args is not None and not isinstance(args, dict):
            b.problem((*ref_path, "args"), f"must be a mapping. Got {args!r} instead")
            continue
        for key in ref:
            if key not in ("instance_name", "args"):
                b.note(None, f"{field_name(ref_path)}: key '{key}' ignored (Distiller reads "
                       "only instance_name and args)")
        section = SECTION_OF[kind]
        if instance not in instances[section]:
            raw = data.get(section)
            if isinstance(raw, dict) and instance in raw:
                continue  # defined, but unusable: its own problem is reported already
            defined = ", ".join(instances[section]) or "none"
            hint = did_you_mean(instance, instances[section])
            b.problem((*ref_path, "instance_name"), f"{kind} '{instance}' is not defined under "
                      f"'{section}' (defined: {defined}){hint}")
            continue
        nested = [k for k in WHEN_KEYS if k in ref]
        if nested and not any(k in item for k in WHEN_KEYS):
            b.problem(ref_path, f"{', '.join(nested)} must sit at the policy level, beside "
                      f"'{kind}:', not inside it (Distiller reads them from the policy)")
            continue
        when = parse_when(b, item, path)
        if when is None:
            continue
        policy = Policy(index, kind, instance, dict(args or {}), when, path)
        instances[section][instance].policies.append(policy)
        policies.append(policy)
    return policies


# --- names ---------------------------------------------------------------------------------


def is_pattern(name: str) -> bool:
    """A name with regex syntax beyond '.' (Distiller's names are literal or regexes)."""
    return bool(_REGEX_CHARS.search(name))


def normalize_name(name: str) -> str:
    """Distiller's ``normalize_module_name``: drop the first ``module`` component."""
    parts = name.split(".")
    if "module" in parts:
        parts.remove("module")
    return ".".join(parts)


def module_pattern(weight_name: str) -> str:
    """A unified targets pattern for the module holding a Distiller parameter name."""
    if is_pattern(weight_name):
        pattern = re.sub(r"^\^?module\\?\.", "", weight_name)
        pattern = re.sub(r"\\?\.(weight|bias)\$?$", "", pattern)
        return f"re:^(?:{pattern.removeprefix('^').removesuffix('$')})$"
    module, dot, _ = normalize_name(weight_name).rpartition(".")
    return module if dot else weight_name


def param_suffix(weight_name: str) -> str:
    return weight_name.rpartition(".")[2]
