"""The search space planned on the adapters before anything runs.

For every recipe × backend, every value (and, while there are few enough, every combination
of values) of the recipe's searchable parameters is planned on the backend's adapter
(:meth:`adapters.base.Adapter.plan`: capabilities as data, no toolkit import). A backend is
then offered only the values it supports; when support depends on a combination of values,
the backend is offered exactly its supported combinations. A continuous range is offered only
where its ends and middle are all supported. So a search never samples a row that would be
``unsupported``.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.base import Plan
from adapters.registry import get_adapter
from unified.spec.errors import SqueezelabError
from unified.spec.search_space import SearchScenario
from unified.spec.searchable import Param, Range

MAX_PLANNED = 4096  # combinations planned per recipe × backend; beyond, value by value


@dataclass(frozen=True)
class Setting:
    """One point of the space: a recipe, a backend, a value per searchable parameter."""

    recipe: str
    backend: str
    values: tuple[tuple[str, Any], ...] = ()
    name: str = ""  # the concrete recipe's name (unified.spec.searchable.setting_name)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.backend}"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)


@dataclass(frozen=True)
class Candidate:
    """A recipe on a backend, with the values the backend supports."""

    recipe: str
    backend: str
    params: tuple[Param, ...]
    allowed: dict[str, tuple[Any, ...]]  # param → supported values (a range: its test values)
    combos: tuple[tuple[Any, ...], ...] | None  # discrete params' combinations, when support
    #                                             is not value by value
    status: str  # ok | approximated (the worst over its supported settings)
    unsupported: dict[str, dict[Any, str]] = field(default_factory=dict)  # param → value → why
    notes: tuple[str, ...] = ()

    def full(self, param: Param) -> bool:
        """Does the backend take every value of ``param``?"""
        return list(self.allowed[param.name]) == param.domain.test_values()

    def discrete(self) -> list[Param]:
        return [p for p in self.params if not (isinstance(p.domain, Range) and
                                               p.domain.continuous)]

    def size(self) -> int | None:
        if len(self.discrete()) < len(self.params):
            return None
        if self.combos is not None:
            return len(self.combos)
        return math.prod(len(self.allowed[p.name]) for p in self.params)

    def settings(self) -> Iterator[tuple[Any, ...]]:
        """Every supported combination of values (discrete parameters only)."""
        if self.combos is not None:
            yield from self.combos
        else:
            yield from itertools.product(*(self.allowed[p.name] for p in self.params))


@dataclass
class SpacePlan:
    search: SearchScenario
    candidates: list[Candidate]
    excluded: list[tuple[str, str, str]]  # (recipe, backend, why) never offered

    def recipes(self) -> list[str]:
        return list(dict.fromkeys(c.recipe for c in self.candidates))

    def backends(self, recipe: str) -> list[str]:
        return [c.backend for c in self.candidates if c.recipe == recipe]

    def candidate(self, recipe: str, backend: str) -> Candidate:
        return next(c for c in self.candidates if c.recipe == recipe and c.backend == backend)

    def size(self) -> int | None:
        """Settings in the space (None when a continuous range makes it uncountable)."""
        sizes = [c.size() for c in self.candidates]
        return None if None in sizes else sum(s for s in sizes if s is not None)

    def setting(self, recipe: str, backend: str, values: dict[str, Any]) -> Setting:
        space = self.search.spaces[recipe]
        ordered = tuple((p.name, values[p.name]) for p in space.params)
        return Setting(recipe, backend, ordered, space.name_for(values))

    def settings(self) -> Iterator[Setting]:
        """Every setting of a countable space, candidate by candidate."""
        for cand in self.candidates:
            names = [p.name for p in cand.params]
            for combo in cand.settings():
                yield self.setting(cand.recipe, cand.backend, dict(zip(names, combo,
                                                                       strict=True)))

    def random_setting(self, rng: random.Random) -> Setting:
        cand = rng.choice(self.candidates)
        values: dict[str, Any] = {}
        if cand.combos is not None:
            discrete = cand.discrete()
            values.update(zip((p.name for p in discrete), rng.choice(cand.combos),
                              strict=True))
        for param in cand.params:
            domain = param.domain
            if param.name in values:
                continue
            if isinstance(domain, Range) and domain.continuous:
                values[param.name] = domain.snap(rng.uniform(domain.low, domain.high))
            else:
                values[param.name] = rng.choice(cand.allowed[param.name])
        return self.setting(cand.recipe, cand.backend, values)


def plan_space(search: SearchScenario) -> SpacePlan:
    """Plan every recipe × backend of ``search`` (see the module docstring)."""
    candidates: list[Candidate] = []
    excluded: list[tuple[str, str, str]] = []
    for recipe in search.spaces:
        for backend in search.scenario.backends:
            caps = get_adapter(backend).capabilities
            if caps.missing():
                excluded.append((recipe, backend, f"backend unavailable: "
                                 f"{', '.join(caps.missing())} not installed; "
                                 f"{caps.install_hint}"))
                continue
            cand, why = _plan_pair(search, recipe, backend)
            if cand is None:
                excluded.append((recipe, backend, why))
            else:
                candidates.append(cand)
    return SpacePlan(search, candidates, excluded)


def _combinations(params: tuple[Param, ...]) -> list[tuple[Any, ...]]:
    """Every combination of test values, or (too many) each value with the others at
    their first value."""
    grids = [p.domain.test_values() for p in params]
    if math.prod(len(g) for g in grids) <= MAX_PLANNED:
        return list(itertools.product(*grids))
    first = tuple(g[0] for g in grids)
    out = {first}
    for i, grid in enumerate(grids):
        out.update((*first[:i], v, *first[i + 1:]) for v in grid)
    return sorted(out, key=lambda c: [grids[i].index(v) for i, v in enumerate(c)])


def _continuous(param: Param) -> bool:
    return isinstance(param.domain, Range) and param.domain.continuous


def _plan_pair(search: SearchScenario, recipe: str,
               backend: str) -> tuple[Candidate | None, str]:
    adapter = get_adapter(backend)
    params = search.spaces[recipe].params
    names = [p.name for p in params]
    grids = [p.domain.test_values() for p in params]
    plans: dict[tuple[Any, ...], Plan] = {
        combo: adapter.plan(search.recipe(recipe, dict(zip(names, combo, strict=True))))
        for combo in _combinations(params)}
    good = [c for c, plan in plans.items() if plan.status != "unsupported"]
    complete = len(plans) == math.prod(len(g) for g in grids)
    keep = _kept(params, good) if complete else None
    if not good or keep == []:
        reasons = list(dict.fromkeys(p.reason or "" for p in plans.values()))
        return None, "; ".join(r for r in reasons[:3] if r)
    allowed: dict[str, tuple[Any, ...]] = {}
    why: dict[str, dict[Any, str]] = {}
    discrete = [i for i, p in enumerate(params) if not _continuous(p)]
    for i, param in enumerate(params):
        if keep is not None and i in discrete:
            j = discrete.index(i)
            ok = [v for v in grids[i] if any(k[j] == v for k in keep)]
        else:
            ok = [v for v in grids[i] if any(c[i] == v for c in good)]
        allowed[param.name] = tuple(ok)
        why[param.name] = {v: next((p.reason for c, p in plans.items()
                                    if c[i] == v and p.reason), "no supported combination")
                           for v in grids[i] if v not in ok}
        if _continuous(param) and why[param.name]:
            bad = ", ".join(f"{v!r}: {r}" for v, r in why[param.name].items())
            return None, (f"{param.label} {param.domain.describe()} is supported only in part "
                          f"({bad})")
    combos = None
    if keep is not None and set(keep) != set(itertools.product(
            *(allowed[params[i].name] for i in discrete))):
        combos = tuple(sorted(keep, key=lambda k: [grids[i].index(v)
                                                   for i, v in zip(discrete, k, strict=True)]))
    status = "approximated" if any(plans[c].status == "approximated" for c in good) else "ok"
    notes = tuple(dict.fromkeys(n for c in good for n in plans[c].notes))
    return Candidate(recipe, backend, params, allowed, combos, status,
                     {k: v for k, v in why.items() if v}, notes), ""


def _kept(params: tuple[Param, ...], good: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The combinations of the discrete parameters that are supported at every test value of
    the continuous ones (all planned)."""
    discrete = [i for i, p in enumerate(params) if not _continuous(p)]
    continuous = [i for i, p in enumerate(params) if _continuous(p)]
    every = set(itertools.product(*(params[i].domain.test_values() for i in continuous)))
    seen: dict[tuple[Any, ...], set[tuple[Any, ...]]] = {}
    for combo in good:
        seen.setdefault(tuple(combo[i] for i in discrete), set()).add(
            tuple(combo[i] for i in continuous))
    return [key for key, points in seen.items() if points == every]


def describe(plan: SpacePlan) -> list[str]:
    """Per recipe and backend: what the backend takes of the recipe's searchable values
    (``squeezelab validate`` on a search scenario)."""
    out = []
    for name, space in plan.search.spaces.items():
        params = ", ".join(f"{p.label} {p.domain.describe()}" for p in space.params)
        out.append(f"  {name}" + (f": {params}" if params else " (no searchable values)"))
        for backend in plan.search.scenario.backends:
            why = next((w for r, b, w in plan.excluded if r == name and b == backend), None)
            if why is not None:
                out.append(f"    @ {backend}: unsupported ({why})")
                continue
            cand = plan.candidate(name, backend)
            line = f"    @ {backend}: {cand.status}"
            gaps = [f"{p.label} " + ", ".join(map(repr, cand.unsupported[p.name])) +
                    f" unsupported ({next(iter(cand.unsupported[p.name].values()))})"
                    for p in cand.params if p.name in cand.unsupported]
            if gaps:
                line += "; " + "; ".join(gaps)
            elif cand.params:
                line += ", every value"
            if cand.combos is not None:
                line += (f"; only {len(cand.combos)} combinations: "
                         + "; ".join(", ".join(map(repr, c)) for c in cand.combos[:6])
                         + (" ..." if len(cand.combos) > 6 else ""))
            if cand.notes:
                line += f" ({cand.notes[0]}" + (" ..." if len(cand.notes) > 1 else "") + ")"
            out.append(line)
    return out


def validation_lines(scenario_file: Path) -> list[str]:
    """``squeezelab validate`` on a scenario with searchable values: every value of every
    recipe against every backend (SpecError / SqueezelabError when there is nothing to run)."""
    from unified.load.scenario_file import load_search_scenario

    search = load_search_scenario(scenario_file)
    plan = plan_space(search)
    if not plan.candidates:
        raise SqueezelabError(f"{scenario_file}: no recipe runs on any backend: nothing to "
                              "search")
    size = plan.size()
    return [f"{scenario_file}: valid search scenario '{search.scenario.name}' "
            f"({len(search.spaces)} recipes × {len(search.scenario.backends)} backends, "
            f"{len(search.params)} searchable parameters; "
            f"{size if size is not None else 'uncountably many'} supported settings)",
            *describe(plan)]
