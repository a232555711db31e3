"""A scenario with searchable values (:mod:`unified.spec.searchable`): the recipes' spaces,
every concrete value checked against its step's own field rules, and the concrete recipes
a setting of the values stands for.

A plain scenario never passes through here: it has no searchable value, so its recipes, their
canonical form and its cache keys are exactly what they were.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from unified.spec.errors import SpecError
from unified.spec.scenario import Scenario
from unified.spec.searchable import (
    Choice,
    Param,
    YPath,
    find_markers,
    param_names,
    parse_domain,
    setting_name,
    step_field,
)
from unified.spec.steps import Recipe, StepEntry
from unified.spec.validation import error_message
from unified.spec.yamlio import field_name

MAX_COMBINATIONS_CHECKED = 256  # per step; beyond it each value is checked on its own
MAX_LINES_PER_STEP = 10


@dataclass(frozen=True)
class RecipeSpace:
    """One recipe of a search: its entries as written, with its searchable parameters."""

    name: str
    template: tuple[Any, ...]  # the YAML entries, searchable values in place
    params: tuple[Param, ...]

    def entries(self, values: Mapping[str, Any]) -> list[Any]:
        """The recipe's entries with every parameter set to ``values[param.name]``."""
        entries = copy.deepcopy(list(self.template))
        for param in self.params:
            _set(entries, (param.index, param.kind, *param.field), values[param.name])
        return entries

    def recipe(self, values: Mapping[str, Any]) -> Recipe:
        return Recipe.model_validate(self.entries(values))

    def name_for(self, values: Mapping[str, Any]) -> str:
        return setting_name(self.name, {p.name: values[p.name] for p in self.params})

    def size(self) -> int | None:
        """Settings of this recipe; None when a continuous range makes them uncountable."""
        if any(not p.domain.points() for p in self.params):
            return None
        return math.prod(len(p.domain.points()) for p in self.params)

    def combinations(self) -> Iterator[dict[str, Any]]:
        """Every setting of the values (a continuous range has none: give it a step)."""
        points = [p.domain.points() for p in self.params]
        for values in itertools.product(*points):
            yield dict(zip((p.name for p in self.params), values, strict=True))


@dataclass(frozen=True)
class SearchScenario:
    """A scenario file with searchable values, loaded. ``scenario`` is the base: every
    searchable value at its first value (its model, data, budget, backends, select are the
    file's); ``spaces`` has every recipe, plain ones with no parameters."""

    scenario: Scenario
    spaces: dict[str, RecipeSpace]

    @property
    def params(self) -> list[Param]:
        return [p for space in self.spaces.values() for p in space.params]

    def recipe(self, name: str, values: Mapping[str, Any]) -> Recipe:
        """The concrete recipe ``name`` with ``values``; a plain recipe is the file's own."""
        space = self.spaces[name]
        return space.recipe(values) if space.params else self.scenario.recipes[name]

    def trial_scenario(self, name: str, source: str, recipe: Recipe,
                       backend: str) -> Scenario:
        """The plain, single-job scenario of recipe ``source`` set as ``recipe``, named
        ``name``, on ``backend`` (what a Distiller import added comes along)."""
        imported = self.scenario.imported.get(source)
        return self.scenario.model_copy(update={
            "recipes": {name: recipe}, "backends": (backend,),
            "imported": {name: imported} if imported is not None else {}})

    def grid_size(self) -> int | None:
        sizes = [space.size() for space in self.spaces.values()]
        return None if None in sizes else sum(s for s in sizes if s is not None)


# --- from the YAML document -----------------------------------------------------------------


def _get(data: Any, path: YPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _set(data: Any, path: YPath, value: Any) -> None:
    _get(data, path[:-1])[path[-1]] = value


def split_search(data: dict[str, Any], file: str,
                 lines: dict[YPath, int]) -> tuple[dict[str, Any], dict[str, RecipeSpace]]:
    """Take the searchable values out of a loaded scenario document.

    Returns the document with each searchable value replaced by its first value (a plain
    scenario to validate as usual) and every recipe's space. Raises :class:`SpecError` with
    one ``file:line: field: problem`` line per malformed searchable value, per value a step
    does not accept, and per combination of values in one step it does not accept.
    """
    problems: list[str] = []
    found: dict[str, list[tuple[int, str, tuple[str, ...], Any]]] = {}
    broken: set[str] = set()  # recipes with a malformed searchable value: not checked further
    for path in find_markers(data):
        where = f"{file}:{lines.get(path, '?')}: {field_name(path)}"
        place = step_field(path)
        if place is None:
            problems.append(f"{where}: only a parameter of a recipe step can be searched "
                            "({choice: ...} or {range: ...})")
            continue
        try:
            domain = parse_domain(_get(data, path))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            broken.add(place[0])
            continue
        recipe, index, kind, fields = place
        found.setdefault(recipe, []).append((index, kind, fields, domain))
    recipes = data.get("recipes")
    spaces: dict[str, RecipeSpace] = {}
    plain = copy.deepcopy(data)
    for name, entries in (recipes.items() if isinstance(recipes, dict) else ()):
        marks = found.get(str(name), [])
        template = tuple(copy.deepcopy(entries)) if isinstance(entries, list) else ()
        names = param_names([(index, fields) for index, _, fields, _ in marks])
        params = tuple(Param(str(name), index, kind, fields, domain, short)
                       for (index, kind, fields, domain), short in zip(marks, names, strict=True))
        if params and any(isinstance(e, dict) and "distiller" in e for e in template):
            problems.append(f"{file}:{lines.get(('recipes', name), '?')}: recipes.{name}: a "
                            "recipe with a distiller: entry cannot have searchable values")
            continue
        space = RecipeSpace(str(name), template, params)
        spaces[str(name)] = space
        if params and str(name) not in broken:
            problems += _check_values(space, file, lines)
            plain["recipes"][name] = space.entries(
                {p.name: p.domain.test_values()[0] for p in params})
    if problems:
        raise SpecError(problems)
    return plain, spaces


def _value_line(param: Param, value: Any, lines: dict[YPath, int]) -> int | None:
    domain = param.domain
    if isinstance(domain, Choice):
        index = next(i for i, v in enumerate(domain.choice) if v == value)
        return lines.get((*param.path, "choice", index)) or lines.get(param.path)
    end = 1 if value == domain.high else 0
    return lines.get((*param.path, "range", end)) or lines.get(param.path)


def _step_errors(space: RecipeSpace, index: int,
                 values: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """Why the step at ``index`` refuses ``values`` (its own field rules): (the field inside
    the step, empty for a rule across fields; the message) per problem."""
    entries = space.entries(values)
    try:
        StepEntry.model_validate(entries[index])
    except ValidationError as exc:
        return [(tuple(str(p) for p in error["loc"][1:]),
                 error_message(error, ("recipes", space.name, index, *error["loc"])))
                for error in exc.errors()]
    return []


def _check_values(space: RecipeSpace, file: str, lines: dict[YPath, int]) -> list[str]:
    """Every value of every parameter against its step's rules (the step's other searchable
    values at their first value), then every combination within a step."""
    first = {p.name: p.domain.test_values()[0] for p in space.params}
    problems: list[str] = []
    for index in sorted({p.index for p in space.params}):
        mine = [p for p in space.params if p.index == index]
        found: list[str] = []
        for param in mine:
            label = "choice value" if isinstance(param.domain, Choice) else "range value"
            others = ", ".join(f"{p.label}={first[p.name]!r}" for p in mine if p is not param)
            for value in param.domain.test_values():
                for inner, text in _step_errors(space, index, {**first, param.name: value}):
                    if inner and inner != param.field:
                        text = f"{'.'.join(inner)}: {text}"
                    elif not inner and others:
                        text = f"{text} (with {others})"
                    found.append(f"{file}:{_value_line(param, value, lines) or '?'}: "
                                 f"{field_name(param.path)}: {label} {value!r}: {text}")
        if not found and len(mine) > 1:
            found = _check_combinations(space, mine, first, file, lines)
        problems += found[:MAX_LINES_PER_STEP]
    return problems


def _check_combinations(space: RecipeSpace, mine: list[Param], first: dict[str, Any],
                        file: str, lines: dict[YPath, int]) -> list[str]:
    grids = [p.domain.test_values() for p in mine]
    if math.prod(len(g) for g in grids) > MAX_COMBINATIONS_CHECKED:
        return []
    found = []
    step_path = mine[0].path[:4]
    for combo in itertools.product(*grids):
        values = {**first, **dict(zip((p.name for p in mine), combo, strict=True))}
        for _, text in _step_errors(space, mine[0].index, values):
            setting = ", ".join(f"{p.label}={v!r}" for p, v in zip(mine, combo, strict=True))
            found.append(f"{file}:{lines.get(step_path, '?')}: {field_name(step_path)}: the "
                         f"combination {setting}: {text}")
    return found
