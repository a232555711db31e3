"""Everything about a scenario that can be known without running a toolkit, checked before
any job starts (``validate``, ``run`` and ``regress`` alike):

- the seed fits numpy's generators (0 … 2**32 - 1);
- ``regress.tolerance`` names metrics ``regress`` compares, with values >= 0;
- every model source exists, builds for its input shape and class count, takes one input of
  that shape and returns ``num_classes`` logits; a weights file is a plain state_dict whose
  keys and shapes are the model's (:mod:`unified.load.model_checks`);
- every data source is present and holds train + test samples, its classes fit the model's
  ``num_classes`` and its images the input's channels (sizes come from
  :data:`unified.data.sources.SOURCE_SIZES`: a new source declares its own there);
- the students and teachers of ``distill`` steps are model sources like the model.

Each problem is one line ``file:line: field: what is wrong``.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unified.spec.errors import SpecError, SqueezelabError, did_you_mean
from unified.spec.scenario import DataSpec, ModelSpec, Scenario
from unified.spec.steps import DistillStep
from unified.spec.tolerances import TOLERANCES
from unified.spec.yamlio import YPath, field_name

SEED_MAX = 2**32 - 1  # numpy's SeedSequence / legacy seeding limit


@dataclass(frozen=True)
class Where:
    """Turns a field path into ``file:line: field: message`` for one scenario file."""

    file: Path
    lines: Mapping[YPath, int]

    def __call__(self, path: YPath, message: str) -> str:
        line = None
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                break
        where = f"{self.file}:{line}" if line is not None else str(self.file)
        return f"{where}: {field_name(path)}: {message}"


def _model_folders(scenario_dir: Path) -> list[str]:
    return list(dict.fromkeys((str(Path.cwd()), str(scenario_dir.resolve()))))


@contextlib.contextmanager
def model_import_path(scenario_dir: Path) -> Iterator[None]:
    """``python:`` model modules are found in the current folder and the scenario's folder,
    as in a run (:func:`export_model_import_path`)."""
    added = [p for p in _model_folders(scenario_dir) if p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def export_model_import_path(scenario: Scenario, scenario_dir: Path) -> None:
    """For a run of a scenario with ``python:`` sources: put the current folder and the
    scenario's folder on this process's path and on ``PYTHONPATH``, which every worker
    process inherits, so that a run imports what the checks imported."""
    sources = [view.model.source for _, view in _views(scenario)]
    sources += [getattr(step, role) or "" for _, v in _views(scenario)
                for recipe in v.recipes.values() for step in recipe.steps
                if isinstance(step, DistillStep) for role in ("student", "teacher")]
    if not any(s.startswith("python:") for s in sources):
        return
    folders = _model_folders(scenario_dir)
    sys.path[:0] = [p for p in folders if p not in sys.path]
    current = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([*folders, *([current] if current else [])])


def check_scenario(scenario: Scenario, where: Where) -> None:
    """Raise :class:`SpecError` with one line per problem; return when a run can start."""
    problems = [*_seed(scenario, where)]
    problems += [where(("regress", "tolerance", key), msg)
                 for key, msg in tolerance_problems(scenario.regress.tolerance)]
    with model_import_path(where.file.parent):
        for path, view in _views(scenario):
            # the data and the students are checked against the model: the first problem
            # of a model is its only one (a wrong input shape is not also a data problem)
            data_path = (*path, "data") if path[0] == "models" and view.model.data else ("data",)
            problems += (_model(view.model, path, where)
                         or _data(view.data, view.model, data_path, path, where)
                         or _students(view, where))
    problems = list(dict.fromkeys(problems))  # one line per problem, however many views
    if problems:
        raise SpecError(problems)


def tolerance_problems(tolerance: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(metric, what is wrong) for each tolerance that ``regress`` cannot apply."""
    problems = []
    for metric, value in tolerance.items():
        if metric not in TOLERANCES:
            problems.append((metric, f"unknown metric {metric!r} (regress compares "
                                     f"{', '.join(TOLERANCES)}){did_you_mean(metric, TOLERANCES)}"))
        elif not isinstance(value, int | float) or math.isnan(value) or value < 0:
            problems.append((metric, f"the tolerance of {metric!r} must be a number >= 0. "
                                     f"Got {value!r} instead"))
    return problems


def _seed(scenario: Scenario, where: Where) -> list[str]:
    if 0 <= scenario.seed <= SEED_MAX:
        return []
    return [where(("seed",), f"must be between 0 and {SEED_MAX} (2**32 - 1). "
                             f"Got {scenario.seed} instead")]


def _views(scenario: Scenario) -> list[tuple[YPath, Scenario]]:
    """(field path of the model, the single-model view) for each model."""
    views = scenario.views()
    if not scenario.models:
        return [(("model",), views[0])]
    return [(("models", key), view) for key, view in zip(scenario.models, views, strict=True)]


def _model(spec: ModelSpec, path: YPath, where: Where) -> list[str]:
    from unified.load.model_checks import model_problem

    problem = model_problem(spec.source, spec.num_classes, spec.input_shape, spec.weights_path)
    return [] if problem is None else [where((*path, problem.field), problem.message)]


def _data(data: DataSpec, model: ModelSpec, path: YPath, model_path: YPath,
          where: Where) -> list[str]:
    from unified.data.sources import source_size

    try:
        size = source_size(data)
    except SqueezelabError as exc:
        return [where((*path, "source"), exc.message.removeprefix("data.source: "))]
    if size is None:
        return []
    need = data.train + data.test
    if size.samples is not None and need > size.samples:
        return [where((*path, "train"), f"train ({data.train}) + test ({data.test}) = {need} "
                      f"exceeds the {size.samples} samples of {data.source!r}")]
    if size.classes is not None and size.classes > model.num_classes:
        return [where((*model_path, "num_classes"), f"data {data.source!r} has {size.classes} "
                      f"classes; num_classes is {model.num_classes}")]
    channels = model.input_shape[0]
    if size.channels not in (None, 1, channels) and channels != 1:
        return [where((*model_path, "input_shape"), f"data {data.source!r} has "
                      f"{size.channels}-channel images: input_shape needs {size.channels} or 1 "
                      f"channels. Got {channels} instead")]
    return _memory(data, model, path, where)


def _memory(data: DataSpec, model: ModelSpec, path: YPath, where: Where) -> list[str]:
    """The splits are float32 arrays held in memory: refuse what this machine cannot hold."""
    need = (data.train + data.test) * math.prod(model.input_shape) * 4
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return []
    if need <= total:
        return []
    return [where(path, f"train + test at input_shape {list(model.input_shape)} need "
                  f"{need / 2**30:.1f} GiB as float32; this machine has {total / 2**30:.1f} GiB")]


def _students(view: Scenario, where: Where) -> list[str]:
    """The ``student`` / ``teacher`` of each distill step, built for the view's model."""
    from unified.load.model_checks import model_problem

    problems = []
    for name, recipe in view.recipes.items():
        for index, step in enumerate(recipe.steps):
            if not isinstance(step, DistillStep):
                continue
            for role in ("student", "teacher"):
                source = getattr(step, role)
                if source is None:
                    continue
                problem = model_problem(source, view.model.num_classes, view.model.input_shape)
                if problem is not None:
                    problems.append(where(("recipes", name, index, "distill", role),
                                          problem.message))
    return problems
