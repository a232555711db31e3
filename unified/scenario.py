"""Scenario files: the user-facing contract (see DESIGN.md), loaded with line numbers.

Errors name ``file:line: field: what is wrong`` on one line each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from unified.errors import SpecError
from unified.spec import TRAINING_STEPS, Recipe, stable_hash
from unified.yamlio import field_name, read_yaml

SCENARIO_VERSION = 1
MODEL_SOURCE = re.compile(r"^(builtin:[\w.-]+|torchvision:\w+|python:[\w.]+:\w+)$")
DATA_SOURCE = re.compile(r"^(mnist|digits|synthetic|imagefolder:.+)$")
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Strict):
    source: str = Field("mnist", description="mnist | digits | synthetic | imagefolder:<dir>")
    train: int = Field(4000, ge=1)
    calibration: int = Field(256, ge=1)
    test: int = Field(1000, ge=1)

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if not DATA_SOURCE.match(value):
            raise ValueError(
                "data source must be one of mnist, digits, synthetic, imagefolder:<dir>. "
                f"Got {value!r} instead"
            )
        return value

    @model_validator(mode="after")
    def _calibration_from_train(self) -> DataSpec:
        if self.calibration > self.train:
            raise ValueError(
                f"calibration ({self.calibration}) is drawn from the train split and cannot "
                f"exceed train ({self.train})"
            )
        return self

    @property
    def labelled(self) -> bool:
        return self.source != "synthetic"


class ModelSpec(_Strict):
    source: str = Field(
        ..., description="builtin:<name> | torchvision:<name> | python:<module>:<factory>"
    )
    weights: str = Field(
        "train", description="train | random | path to a state_dict (.pt, .pth, .safetensors)"
    )
    input_shape: tuple[int, int, int] = Field(..., description="C, H, W")
    num_classes: int = Field(10, ge=2)
    name: str | None = Field(None, description="label in the results (default: the source)")
    data: DataSpec | None = Field(None, description="this model's own data (default: data)")
    recipes: tuple[str, ...] | None = Field(
        None, description="only these recipes for this model (default: every recipe)"
    )

    @property
    def label(self) -> str:
        return self.name or self.source

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if not MODEL_SOURCE.match(value):
            raise ValueError(
                f"model source must be builtin:<name>, torchvision:<name> or "
                f"python:<module>:<factory>. Got {value!r} instead"
            )
        return value

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError(f"input_shape entries must be positive. Got {list(value)} instead")
        return value

    @property
    def weights_path(self) -> Path | None:
        return None if self.weights in ("train", "random") else Path(self.weights)


class Optimizer(StrEnum):
    sgd = "sgd"
    adam = "adam"


class Budget(_Strict):
    """The training budget every backend gets (fairness rule)."""

    train_epochs: int = Field(3, ge=0, description="reference training, when weights: train")
    finetune_epochs: int = Field(1, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    finetune_lr: float | None = Field(None, gt=0, description="default: lr / 10")
    optimizer: Optimizer = Optimizer.sgd
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)

    @property
    def effective_finetune_lr(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.lr / 10


class LatencySettings(_Strict):
    warmup: int = Field(10, ge=0)
    runs: int = Field(50, ge=1)
    threads: int = Field(1, ge=1)


class EvaluateSpec(_Strict):
    latency: LatencySettings = LatencySettings()
    timeout: float = Field(1800, gt=0, description="seconds one job may take")


class SelectSpec(_Strict):
    max_accuracy_drop: float | None = Field(None, ge=0)
    min_agreement: float | None = Field(None, ge=0, le=1)
    max_onnx_bytes: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0)
    minimize: tuple[str, ...] = ("size", "latency")

    @field_validator("minimize")
    @classmethod
    def _objectives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = {"size", "latency", "native_size", "accuracy_drop"}
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ValueError(
                f"minimize must be among {sorted(allowed)}. Got {bad} instead"
            )
        return value


class RegressSpec(_Strict):
    baseline: str | None = None
    tolerance: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.01, "size_ratio": 0.05, "latency": 0.3}
    )


class ImportedLRScheduler(_Strict):
    """A Distiller LR scheduler mapped to torch: ``torch_class(optimizer, **args)``, stepped at
    the end of each epoch in ``epochs`` (Distiller's LRPolicy)."""

    name: str
    torch_class: str
    args: dict[str, Any] = {}
    epochs: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.args.items())
        return f"{self.name}: {self.torch_class.rpartition('.')[2]}({args})"


class ImportedSchedule(_Strict):
    """What the loader took from a Distiller schedule (``distiller: FILE`` in a recipe)."""

    source: str
    notes: tuple[str, ...] = ()  # approximated parts, and how
    unsupported: tuple[str, ...] = ()  # parts no backend carries out: "name (Class): reason"
    thinning: tuple[str, ...] = ()  # "filters" / "channels": real removal was requested
    lr_schedulers: tuple[ImportedLRScheduler, ...] = ()


class Scenario(_Strict):
    version: int = Field(SCENARIO_VERSION, description="scenario format version")
    name: str = Field(..., pattern=r"^[\w.-]+$")
    seed: int = 0
    model: ModelSpec = Field(..., description="the model (or give models: instead)")
    models: dict[str, ModelSpec] = Field(
        default_factory=dict,
        description="several named models, each run with every recipe on every backend",
    )
    data: DataSpec = DataSpec()
    budget: Budget = Budget()
    evaluate: EvaluateSpec = EvaluateSpec()
    backends: tuple[str, ...] = Field(..., min_length=1)
    recipes: dict[str, Recipe] = Field(..., min_length=1)
    select: SelectSpec = SelectSpec()
    regress: RegressSpec = RegressSpec()
    imported: dict[str, ImportedSchedule] = Field(
        default_factory=dict,
        description="filled by the loader from recipes given as Distiller schedules",
    )

    @model_validator(mode="before")
    @classmethod
    def _model_or_models(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("models") and "model" not in data:
            models = data["models"]
            if isinstance(models, dict):
                return {**data, "model": next(iter(models.values()))}
        if isinstance(data, dict) and data.get("models") and "model" in data:
            raise ValueError("give either model or models, not both")
        return data

    def views(self) -> list[Scenario]:
        """One single-model scenario per model (itself when there is one model)."""
        if not self.models:
            return [self]
        return [
            self.model_copy(update={
                "model": spec.model_copy(update={"name": spec.name or key, "recipes": None}),
                "models": {},
                "data": spec.data or self.data,
                "recipes": {name: recipe for name, recipe in self.recipes.items()
                            if spec.recipes is None or name in spec.recipes},
            })
            for key, spec in self.models.items()
        ]

    @model_validator(mode="after")
    def _model_recipes_exist(self) -> Scenario:
        for key, spec in self.models.items():
            unknown = [r for r in spec.recipes or () if r not in self.recipes]
            if unknown:
                raise ValueError(f"models.{key}.recipes: unknown recipe {unknown[0]!r}; "
                                 f"recipes are: {', '.join(self.recipes)}")
        return self

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCENARIO_VERSION:
            raise ValueError(
                f"scenario format version must be {SCENARIO_VERSION}. Got {value} instead"
            )
        return value

    @field_validator("backends")
    @classmethod
    def _known_backends(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from adapters.registry import BACKENDS

        bad = [b for b in value if b not in BACKENDS]
        if bad:
            raise ValueError(
                f"unknown backend {bad[0]!r}; allowed backends: {', '.join(BACKENDS)}"
            )
        if len(set(value)) != len(value):
            raise ValueError("a backend is listed twice")
        return value

    @field_validator("recipes")
    @classmethod
    def _recipe_names(cls, value: dict[str, Recipe]) -> dict[str, Recipe]:
        for name in value:
            if not RECIPE_NAME.match(str(name)):
                raise ValueError(
                    f"recipe name {name!r} must start with a letter or digit and use only "
                    "letters, digits, '.', '_', '+', '-'"
                )
        return value

    @model_validator(mode="after")
    def _labels_for_training(self) -> Scenario:
        for view in self.views():
            view.check_labels()
        return self

    def check_labels(self) -> None:
        """Training (reference or recipe steps) needs labelled data."""
        if self.data.labelled:
            return
        who = f"model {self.model.label!r}: " if self.model.name else ""
        if self.model.weights == "train":
            raise ValueError(
                f"{who}weights: train needs labelled data; data source 'synthetic' has no "
                "labels (use weights: random or a labelled source)"
            )
        for name, recipe in self.recipes.items():
            for step in recipe.steps:
                if step.kind in TRAINING_STEPS or getattr(step, "method", None) == "qat":
                    raise ValueError(
                        f"{who}recipe {name!r}: step {step.kind!r} trains and needs labelled "
                        "data; data source 'synthetic' has no labels"
                    )

    def reference_key(self, weights_digest: str | None) -> str:
        """Cache key of the reference model: everything its weights depend on."""
        from unified.job import core_digest

        return stable_hash(
            {
                "code": core_digest(),
                "model": self.model.model_dump(mode="json", exclude={"name", "data"}),
                "weights_digest": weights_digest,
                "data": self.data.model_dump(mode="json"),
                "seed": self.seed,
                "budget": self.budget.model_dump(mode="json")
                if self.model.weights == "train"
                else None,
            }
        )


# --- loading with line numbers -------------------------------------------------------------


def _normalize_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts union/root names into loc; map back to the YAML path.
    return tuple(part for part in loc if part not in ("root",) and not str(part).startswith(
        "function-"))


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        prefix = tuple(str(p) if not isinstance(p, int) else p for p in loc[:end])
        if prefix in lines:
            return lines[prefix]
    return None


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (best effort)."""
    current: Any = Scenario
    for part in loc:
        if isinstance(current, type) and issubclass(current, RootModel):
            current = current.model_fields["root"].annotation
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(str(part))
            if info is None:
                return None
            current = info.annotation
        else:  # dict[str, X], tuple[X, ...], X | None
            args = [a for a in get_args(current) if a is not type(None) and a is not Ellipsis]
            if not args:
                return None
            current = args[-1]
        while get_args(current) and not (isinstance(current, type)):
            args = [a for a in get_args(current) if a is not type(None)]
            if len(args) != 1:
                break
            current = args[0]
    if isinstance(current, type) and issubclass(current, BaseModel):
        return current
    return None


def _message(error: Mapping[str, Any], loc: tuple[Any, ...]) -> str:
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if error["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = f"; allowed: {', '.join(model.model_fields)}" if model else ""
        return f"unknown field {loc[-1]!r}{allowed}"
    value = error.get("input")
    scalar = isinstance(value, str | int | float | bool) or value is None
    if error["type"] != "missing" and scalar and "Got " not in msg and "input" in error:
        msg = f"{msg}. Got {value!r} instead"
    return msg


def format_validation_error(
    exc: ValidationError, file: str, lines: dict[tuple[Any, ...], int]
) -> list[str]:
    """One line per problem: ``file:line: field: message``."""
    problems = []
    for error in exc.errors():
        loc = _normalize_loc(tuple(error["loc"]))
        # An unknown key inside a model: point at the key itself and name the allowed ones.
        line = _line_for(loc, lines)
        where = f"{file}:{line}" if line else file
        problems.append(f"{where}: {field_name(loc)}: {_message(error, loc)}")
    return problems


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raise :class:`SpecError` with every problem."""
    path = Path(path)
    data, lines = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: a scenario is a mapping (name, model, recipes, ...)"])
    data = _expand_distiller_recipes(data, path, lines)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, str(path), lines)) from None
    return _resolve_paths(scenario, path, lines)


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
        weights = model.weights_path
        if weights is not None and not weights.is_absolute():
            model = model.model_copy(update={"weights": str((base / weights).resolve())})
        if weights is not None and not Path(model.weights).is_file():
            line = lines.get((*where, "weights"))
            field = ".".join(where)
            raise SpecError([f"{path}:{line}: {field}.weights: file not found: {model.weights}"])
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
    from unified.distiller import (
        bind_to_model,
        load_distiller_schedule,
        module_kinds,
        to_yaml_recipe,
    )

    file = Path(ref) if Path(ref).is_absolute() else path.parent / ref
    if not file.is_file():
        raise SpecError([f"{path}:{line}: distiller: schedule file not found: {file}"])
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
    try:
        model = ModelSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, str(path), lines)) from None
    from unified.torchkit.models import build_model

    return build_model(model.source, model.num_classes, model.input_shape)
