"""Read a scenario file into a :class:`Scenario`: YAML with line numbers, Distiller recipes
translated, paths made relative to the file. Errors name ``file:line: field: what is wrong``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from unified.load.checks import Where, check_scenario, model_import_path
from unified.spec.errors import SpecError
from unified.spec.scenario import DataSpec, ModelSpec, Scenario
from unified.spec.search_space import SearchScenario, split_search
from unified.spec.searchable import find_markers
from unified.spec.validation import format_validation_error
from unified.spec.yamlio import field_name, read_yaml


def _read(path: Path) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise SpecError([f"{path}:1: a scenario is a mapping (name, model, recipes, ...). "
                         f"Got {got} instead"])
    return data, lines


def has_searchable_values(path: str | Path) -> bool:
    """Does the file give a step parameter as {choice: ...} or {range: ...}?"""
    data, _ = _read(Path(path))
    return next(find_markers(data), None) is not None


def load_scenario(path: str | Path, *, check: bool = True) -> Scenario:
    """Read and validate a scenario file; raise :class:`SpecError` with every problem.

    With ``check`` (the default) everything knowable without running a toolkit is checked
    too (:mod:`unified.load.checks`): a scenario that loads can start its run. A file with
    searchable values is refused (one line): it is for ``squeezelab search``.
    """
    path = Path(path)
    data, lines = _read(path)
    marker = next(find_markers(data), None)
    if marker is not None:
        raise SpecError([f"{path}:{lines.get(marker, '?')}: {field_name(marker)}: a searchable "
                         "value ({choice: ...} / {range: ...}); run takes plain values only: "
                         f"use `squeezelab search {path}`"])
    return _validated(data, path, lines, check)


def load_search_scenario(path: str | Path, *, check: bool = True) -> SearchScenario:
    """Read a scenario file whose recipes may have searchable values: every value checked
    against its step's rules, the base scenario validated as usual (:class:`SpecError`)."""
    path = Path(path)
    data, lines = _read(path)
    plain, spaces = split_search(data, str(path), lines)
    base = _validated(plain, path, lines, check)
    search = SearchScenario(base, spaces)
    problems = []
    for space in spaces.values():  # rules of the scenario's about a recipe (labels ...)
        first = {p.name: p.domain.test_values()[0] for p in space.params}
        for param in space.params:
            for value in param.domain.test_values():
                recipe = space.recipe({**first, param.name: value})
                try:
                    base.model_copy(update={"recipes": {space.name: recipe}}).check_labels()
                except ValueError as exc:
                    problems.append(f"{path}:{lines.get(param.path, '?')}: "
                                    f"{field_name(param.path)}: value {value!r}: {exc}")
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return search


def _validated(data: dict[str, Any], path: Path, lines: dict[tuple[Any, ...], int],
               check: bool) -> Scenario:
    data = _expand_distiller_recipes(data, path, lines)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, str(path), lines)) from None
    scenario = _resolve_paths(scenario, path, lines)
    if check:
        check_scenario(scenario, Where(path, lines))
    return scenario


def _resolve_paths(scenario: Scenario, path: Path, lines: dict[tuple[Any, ...], int]) -> Scenario:
    """Paths inside a scenario are relative to the scenario file."""
    base = path.parent

    def data_paths(data: DataSpec) -> DataSpec:
        if data.source.startswith("imagefolder:"):
            folder = Path(data.source.partition(":")[2])
            if not folder.is_absolute():
                return data.model_copy(
                    update={"source": f"imagefolder:{(base / folder).resolve()}"})
        return data

    def model_paths(model: ModelSpec, where: tuple[str, ...]) -> ModelSpec:
        if model.weights == "pretrained":
            from unified.torchkit.catalog import pretrained_problem

            problem = pretrained_problem(model.source, model.num_classes, model.input_shape[0])
            if problem:
                raise SpecError([Where(path, lines)((*where, "weights"), problem)])
        weights = model.weights_path
        if weights is not None and not weights.is_absolute():
            model = model.model_copy(update={"weights": str((base / weights).resolve())})
        if weights is not None and not Path(model.weights).is_file():
            what = "is a folder, not a file" if Path(model.weights).is_dir() else "file not found"
            raise SpecError([Where(path, lines)((*where, "weights"),
                                                f"{what}: {model.weights}")])
        if model.data is not None:
            model = model.model_copy(update={"data": data_paths(model.data)})
        return model

    models = {k: model_paths(m, ("models", k)) for k, m in scenario.models.items()}
    model = next(iter(models.values())) if models else model_paths(scenario.model, ("model",))
    return scenario.model_copy(
        update={"model": model, "models": models, "data": data_paths(scenario.data)})


# --- recipes given as Distiller schedules ---------------------------------------------------


def _distiller_ref(entry: Any) -> str | None:
    if isinstance(entry, dict) and set(entry) == {"distiller"}:
        return str(entry["distiller"])
    return None


def _expand_distiller_recipes(data: dict[str, Any], path: Path,
                              lines: dict[tuple[Any, ...], int]) -> dict[str, Any]:
    """Replace ``{distiller: FILE}`` (a whole recipe, or one entry of a recipe list) by the
    translated unified steps; record what was approximated or cannot be carried out."""
    recipes = data.get("recipes")
    if not isinstance(recipes, dict):
        return data
    expanded: dict[str, Any] = {}
    imported: dict[str, Any] = {}
    for name, value in recipes.items():
        entries = [value] if _distiller_ref(value) else value
        if not isinstance(entries, list) or not any(_distiller_ref(e) for e in entries):
            expanded[name] = value
            continue
        steps: list[Any] = []
        for index, entry in enumerate(entries):
            ref = _distiller_ref(entry)
            if ref is None:
                steps.append(entry)
                continue
            model = _model_for_recipe(data, path, lines, name)
            schedule, info = _import_schedule(path, ref, model,
                                              lines.get(("recipes", name, index))
                                              or lines.get(("recipes", name)))
            steps.extend(schedule)
            imported[name] = info
        expanded[name] = steps
    if not imported:
        return data
    return {**data, "recipes": expanded, "imported": imported}


def _import_schedule(path: Path, ref: str, model: Any,
                     line: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from unified.distiller.schedule import (
        bind_to_model,
        load_distiller_schedule,
        module_kinds,
        to_yaml_recipe,
    )

    file = Path(ref) if Path(ref).is_absolute() else path.parent / ref
    if not file.is_file():
        where = f"{path}:{line}" if line is not None else str(path)
        raise SpecError([f"{where}: distiller: schedule file not found: {file}"])
    param_names = [name for name, _ in model.named_parameters()]
    schedule = bind_to_model(load_distiller_schedule(file), param_names, module_kinds(model))
    info = {
        "source": str(file),
        "notes": schedule.notes,
        "unsupported": schedule.unsupported,
        "thinning": schedule.thinning,
        "lr_schedulers": [{"name": lr.name, "torch_class": lr.torch_class, "args": lr.args,
                           "epochs": lr.epochs} for lr in schedule.lr_schedulers],
    }
    return to_yaml_recipe(schedule), info


def _model_for_recipe(data: dict[str, Any], path: Path,
                      lines: dict[tuple[Any, ...], int], recipe: str) -> Any:
    """The (untrained) torch model that runs ``recipe`` (the first model that lists it, else
    the first model), to bind Distiller weight names to."""
    spec = data.get("model")
    models = data.get("models")
    if spec is None and isinstance(models, dict) and models:
        listing = [m for m in models.values()
                   if isinstance(m, dict) and recipe in (m.get("recipes") or ())]
        spec = listing[0] if listing else next(iter(models.values()))
    if spec is None:
        raise SpecError([Where(path, lines)(("model",), "required field is missing (a recipe "
                                            "from a Distiller schedule binds to the model)")])
    named = models if isinstance(models, dict) else {}
    key: tuple[str, ...] = next((("models", str(k)) for k, m in named.items() if m is spec),
                                ("model",))
    try:
        model = ModelSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, str(path), lines, prefix=key)) from None
    from unified.load.model_checks import model_problem
    from unified.torchkit.models import build_model

    with model_import_path(path.parent):
        # the same checks as every model's, before the schedule is bound to it
        problem = model_problem(model.source, model.num_classes, model.input_shape)
        if problem is not None:
            raise SpecError([Where(path, lines)((*key, problem.field), problem.message)])
        return build_model(model.source, model.num_classes, model.input_shape)
