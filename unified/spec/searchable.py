"""Searchable values: a step parameter given as a set of values instead of one value.

In a scenario file any scalar parameter of a recipe step (a number, an enumerated name, a
flag) may be written as

- ``{choice: [v1, v2, ...]}``: one of these values;
- ``{range: [low, high]}``: a float between low and high (searched at 4 significant digits);
- ``{range: [low, high], step: s}``: low, low + s, ... high (ints when all three are ints).

This module is the format only: what a searchable value is, where it may stand, which
concrete values it stands for, and how a recipe is named once its values are fixed. Which
values are valid for the step is :mod:`unified.spec.search_space`; which a backend supports is
the search layer's planning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from unified.spec.errors import closest

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
MARKER_KEYS = frozenset({"choice", "range"})
# a stepped range with more points than this is checked at its ends only
MAX_CHECKED_POINTS = 1000
FLOAT_DIGITS = 4  # a continuous float range is searched at this many significant digits


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Choice(_Strict):
    """``{choice: [...]}``: one of these values."""

    choice: tuple[Scalar, ...] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        seen: list[Any] = []
        for value in self.choice:
            if any(type(value) is type(s) and value == s for s in seen):
                raise ValueError(f"choice lists {value!r} twice")
            seen.append(value)
        return self

    def points(self) -> list[Any]:
        return list(self.choice)

    def test_values(self) -> list[Any]:
        return list(self.choice)

    def describe(self) -> str:
        return "{" + ", ".join(map(_show, self.choice)) + "}"


class Range(_Strict):
    """``{range: [low, high]}`` (continuous float) or ``{range: [low, high], step: s}``."""

    range: tuple[StrictInt | StrictFloat, StrictInt | StrictFloat]
    step: StrictInt | StrictFloat | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Range:
        low, high = self.range
        if not low < high:
            raise ValueError(f"range must be [low, high] with low < high. Got {list(self.range)}"
                             " instead")
        if self.step is not None:
            if self.step <= 0:
                raise ValueError(f"step must be positive. Got {self.step!r} instead")
            count = (high - low) / self.step
            if abs(count - round(count)) > 1e-9:
                raise ValueError(f"range [{low}, {high}] is not a whole number of steps of "
                                 f"{self.step} (high - low must be a multiple of step)")
        return self

    @property
    def low(self) -> int | float:
        return self.range[0]

    @property
    def high(self) -> int | float:
        return self.range[1]

    @property
    def is_int(self) -> bool:
        """All of low, high and step are ints: the values are ints."""
        return self.step is not None and all(
            isinstance(v, int) for v in (self.low, self.high, self.step))

    @property
    def continuous(self) -> bool:
        return self.step is None

    def points(self) -> list[Any]:
        """Every value of a stepped range (a continuous range has none)."""
        if self.step is None:
            return []
        count = round((self.high - self.low) / self.step)
        if self.is_int:
            return [int(self.low) + i * int(self.step) for i in range(count + 1)]
        return [round(self.low + i * self.step, 10) for i in range(count + 1)]

    def test_values(self) -> list[Any]:
        """The values every check (spec, backends) looks at: each point of a stepped range
        (its ends when there are too many), the ends and the middle of a continuous one."""
        points = self.points()
        if points and len(points) <= MAX_CHECKED_POINTS:
            return points
        if points:
            return [points[0], points[-1]]
        return [self.low, snap_float((self.low + self.high) / 2), self.high]

    def snap(self, value: float) -> int | float:
        """A sampled value as the search uses it: the nearest point of a stepped range, a
        continuous one's at FLOAT_DIGITS significant digits (so equal settings are equal)."""
        if self.step is None:
            return min(max(snap_float(value), self.low), self.high)
        points = self.points()
        return min(points, key=lambda p: abs(p - value))

    def describe(self) -> str:
        step = f" step {_show(self.step)}" if self.step is not None else ""
        return f"[{_show(self.low)}, {_show(self.high)}]{step}"


Domain = Choice | Range


def snap_float(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{FLOAT_DIGITS}g}")


def is_marker(value: Any, in_recipe: bool = True) -> bool:
    """Is ``value`` written as a searchable value? In a recipe: a mapping with choice or
    range (other keys are then reported as mistakes). Elsewhere only a mapping of choice /
    range / step alone with choice or step: a field may be a plain mapping with a range key
    (data.preprocess)."""
    if not isinstance(value, dict):
        return False
    keys = set(value)
    if in_recipe:
        return bool(MARKER_KEYS & keys)
    return keys <= MARKER_KEYS | {"step"} and bool(keys & {"choice", "step"})


def parse_domain(value: dict[str, Any]) -> Domain:
    """The domain a marker stands for; ValueError (one line) when it is malformed."""
    from pydantic import ValidationError

    if "choice" in value and "range" in value:
        raise ValueError("invalid searchable value: give choice or range, not both")
    shape = _shape_problem(value)
    if shape is not None:
        raise ValueError(f"invalid searchable value: {shape}")
    model: type[Choice] | type[Range] = Choice if "choice" in value else Range
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        msg = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            allowed = ["choice"] if model is Choice else ["range", "step"]
            guess = closest(where, allowed)
            msg = f"unknown key {where!r}" + (f"; did you mean {guess!r}?" if guess else "") \
                + f" (a searchable value takes: {', '.join(allowed)})"
        elif where and where not in msg:
            msg = f"{where}: {msg}"
        raise ValueError(f"invalid searchable value: {msg}") from None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _shape_problem(value: dict[str, Any]) -> str | None:
    """What is wrong with the value types of a marker, in words a user reads."""
    if "choice" in value:
        items = value["choice"]
        if not isinstance(items, list) or not items:
            return f"choice must be a non-empty list. Got {items!r} instead"
        bad = [v for v in items if not isinstance(v, bool | int | float | str)]
        if bad:
            return f"choice values must be numbers, names or true/false. Got {bad[0]!r} instead"
        return None
    bounds = value["range"]
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(map(_number, bounds)):
        return f"range must be [low, high], two numbers. Got {bounds!r} instead"
    step = value.get("step")
    if step is not None and not _number(step):
        return f"step must be a number. Got {step!r} instead"
    return None


# --- where markers stand --------------------------------------------------------------------


YPath = tuple[str | int, ...]


def find_markers(data: Any, path: YPath = ()) -> Iterator[YPath]:
    """Paths of every searchable value in a loaded YAML document, in document order."""
    if is_marker(data, in_recipe=bool(path) and path[0] == "recipes"):
        yield path
        return
    if isinstance(data, dict):
        for key, value in data.items():
            yield from find_markers(value, (*path, str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from find_markers(value, (*path, index))


def step_field(path: YPath) -> tuple[str, int, str, tuple[str, ...]] | None:
    """(recipe, step index, step kind, field path) of a marker that stands for a step
    parameter: ``recipes.<name>[i].<kind>.<field>...`` with no list on the way; else None."""
    if len(path) < 5 or path[0] != "recipes" or not isinstance(path[2], int):
        return None
    rest = path[4:]
    if any(isinstance(part, int) for part in rest) or not isinstance(path[3], str):
        return None
    return str(path[1]), path[2], path[3], tuple(str(p) for p in rest)


@dataclass(frozen=True)
class Param:
    """One searchable step parameter of a recipe."""

    recipe: str
    index: int  # the step's position in the recipe
    kind: str  # the step kind: quantize, prune ...
    field: tuple[str, ...]  # inside the step: ("bits",), ("schedule", "end_epoch")
    domain: Domain
    name: str  # unique within the recipe: "bits", or "s2.epochs" when two steps share it

    @property
    def path(self) -> YPath:
        """Where it stands in the scenario file."""
        return ("recipes", self.recipe, self.index, self.kind, *self.field)

    @property
    def label(self) -> str:
        return ".".join(self.field)


def param_names(fields: list[tuple[int, tuple[str, ...]]]) -> list[str]:
    """Short names of a recipe's searchable parameters: the field path, prefixed with the
    step's position (``s2.epochs``) where two steps search a field of that name."""
    plain = [".".join(field) for _, field in fields]
    return [f"s{index + 1}.{name}" if plain.count(name) > 1 else name
            for (index, _), name in zip(fields, plain, strict=True)]


# --- naming a concrete setting --------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def value_text(value: Any) -> str:
    """A value as it appears in a recipe name: letters, digits, '.', '_', '+', '-' only."""
    text = _show(value)
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in text)


def setting_name(recipe: str, values: dict[str, Any]) -> str:
    """The name of ``recipe`` with its searchable parameters set to ``values`` (in the
    recipe's parameter order): ``quant.weights-4.method-qat``; the recipe's own name when it
    has none."""
    if not values:
        return recipe
    return recipe + "".join(f".{name}-{value_text(v)}" for name, v in values.items())
