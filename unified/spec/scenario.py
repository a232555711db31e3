"""The scenario model: the user-facing contract (docs/architecture.md, "Scenario files").

Pure pydantic: loading a file (YAML, Distiller recipes, paths) is :mod:`unified.load`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from unified.spec.backends import backend_names
from unified.spec.baselines import BASELINE_PREFIX
from unified.spec.errors import closest, did_you_mean
from unified.spec.steps import TRAINING_STEPS, Recipe

SCENARIO_VERSION = 1
MODEL_SOURCE = re.compile(r"^(builtin:[\w.-]+|torchvision:\w+|python:[\w.]+:\w+)$")
DATA_SOURCE = re.compile(r"^(mnist|digits|synthetic|photos|imagefolder:.+)$")
DATA_SOURCE_KINDS = ("mnist", "digits", "synthetic", "photos", "imagefolder")
# sources whose samples carry no class labels (for the model's classes)
UNLABELLED_SOURCES = frozenset({"synthetic", "photos"})
WEIGHTS_KEYWORDS = ("train", "random", "pretrained")
RECIPE_NAME = re.compile(r"^[A-Za-z0-9][\w.+-]*$")
# select's objectives: size = the deployable artifact's ratio to its toolkit's fp32 one
OBJECTIVE_NAMES = ("size", "latency", "native_size", "onnx_size", "accuracy_drop")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelOrder(StrEnum):
    rgb = "rgb"
    bgr = "bgr"


Size = int | tuple[int, int]


class Preprocess(_Strict):
    """What a pretrained model expects of its input, applied to every split in this order:
    resize, center crop, channel order, value range, then ``(x - mean) / std`` per channel.

    Pixels start in [0, 1], RGB. Without ``resize`` and ``center_crop`` images are resized to
    the model's input size. Giving ``preprocess`` replaces the default standardization with
    the train split's mean and std.
    """

    resize: Size | None = Field(
        None, description="an int resizes the shorter side to it (aspect kept); [H, W] exactly")
    center_crop: Size | None = Field(None, description="crop the centre to this size (int: square)")
    channel_order: ChannelOrder = Field(ChannelOrder.rgb, description="rgb | bgr")
    range: tuple[float, float] = Field(
        (0.0, 1.0), description="pixel values are mapped from [0, 1] to [low, high], "
                                "e.g. [0, 255] or [-1, 1]")
    mean: tuple[float, ...] | None = Field(
        None, description="subtracted per channel after the range (one value or one per channel)")
    std: tuple[float, ...] | None = Field(None, description="divides per channel, after mean")

    @field_validator("resize", "center_crop")
    @classmethod
    def _positive_size(cls, value: Size | None) -> Size | None:
        sides = (value,) if isinstance(value, int) else value or ()
        if any(side < 1 for side in sides):
            raise ValueError(f"sizes must be positive. Got {value!r} instead")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Preprocess:
        low, high = self.range
        if not low < high:
            raise ValueError(f"range must be [low, high] with low < high. Got {list(self.range)}"
                             " instead")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give mean and std together (or neither)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be positive. Got {list(self.std)} instead")
        return self

    def output_size(self) -> tuple[int, int] | None:
        """The (H, W) this pipeline yields whatever the image; None when no crop or exact
        resize fixes it (an int resize keeps the aspect; neither means "the model's input")."""
        if isinstance(self.center_crop, int):
            return (self.center_crop, self.center_crop)
        if self.center_crop is not None:
            return self.center_crop
        return self.resize if isinstance(self.resize, tuple) else None

    def check_for(self, input_shape: tuple[int, int, int]) -> None:
        """The pipeline must end at the model's input size and channel count."""
        size = self.output_size()
        if size is not None and size != tuple(input_shape[1:]):
            raise ValueError(
                f"data.preprocess yields {size[0]}×{size[1]} images but the model's input_shape "
                f"is {input_shape[1]}×{input_shape[2]}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) not in (1, input_shape[0]):
                raise ValueError(f"data.preprocess.{name} needs 1 or {input_shape[0]} values (the "
                                 f"model's channels). Got {len(values)} instead")


class DataSpec(_Strict):
    source: str = Field(
        "mnist", description="mnist | digits | synthetic | photos | imagefolder:<dir>")
    train: int = Field(4000, ge=1)
    calibration: int = Field(256, ge=1)
    test: int = Field(1000, ge=1)
    preprocess: Preprocess | None = Field(
        None, description="resize / crop / channel order / range / mean-std for a pretrained "
                          "model (default: resize to the input and standardize with the train "
                          "split's mean and std)")

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if not DATA_SOURCE.match(value):
            raise ValueError(
                "data source must be one of mnist, digits, synthetic, photos, imagefolder:<dir>. "
                f"Got {value!r} instead"
                + did_you_mean(value.partition(":")[0], DATA_SOURCE_KINDS)
            )
        return value

    @model_validator(mode="after")
    def _calibration_from_train(self) -> DataSpec:
        if self.calibration > self.train:
            raise ValueError(
                f"calibration ({self.calibration}) is drawn from the train split and cannot "
                f"exceed train ({self.train})"
            )
        if self.preprocess is not None and self.source == "synthetic":
            raise ValueError("synthetic data has no pixels to preprocess; drop preprocess")
        return self

    @property
    def labelled(self) -> bool:
        """Whether samples carry class labels (accuracy can be measured, training can run)."""
        return self.source not in UNLABELLED_SOURCES


class ModelSpec(_Strict):
    source: str = Field(
        ..., description="builtin:<name> | torchvision:<name> | python:<module>:<factory>"
    )
    weights: str = Field(
        "train", description="train | random | pretrained (the weights the source ships "
        "with) | path to a state_dict (.pt, .pth, .safetensors)"
    )
    input_shape: tuple[int, int, int] = Field(..., description="C, H, W")
    num_classes: int = Field(10, ge=2)
    name: str | None = Field(None, description="label in the results (default: the source)")
    data: DataSpec | None = Field(None, description="this model's own data (default: data)")
    recipes: tuple[str, ...] | None = Field(
        None, description="only these recipes for this model (default: every recipe)"
    )
    recalibrate_batchnorm: bool = Field(
        False, description="after weights: train, re-estimate every BatchNorm's running "
        "statistics on the train split (a short training leaves them lagging behind the "
        "weights, and the eval-mode model then predicts one class)")

    @property
    def label(self) -> str:
        return self.name or self.source

    @field_validator("source")
    @classmethod
    def _source_form(cls, value: str) -> str:
        if not MODEL_SOURCE.match(value):
            kind, sep, rest = value.partition(":")
            near = closest(kind, ("builtin", "torchvision", "python")) if sep else None
            raise ValueError(
                f"model source must be builtin:<name>, torchvision:<name> or "
                f"python:<module>:<factory>. Got {value!r} instead"
                + (f"; did you mean '{near}:{rest}'?" if near and near != kind else "")
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
        return None if self.weights in WEIGHTS_KEYWORDS else Path(self.weights)


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
    repeats: int = Field(
        1, ge=1, le=100,
        description="run each trained or calibrated job (and its matched fp32+ft baseline) "
                    "with this many seeds derived from the scenario's seed; the row reports "
                    "the mean and standard deviation of accuracy and agreement")


class SelectSpec(_Strict):
    max_accuracy_drop: float | None = Field(None, ge=0)
    min_agreement: float | None = Field(None, ge=0, le=1)
    max_onnx_bytes: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0)
    minimize: tuple[str, ...] = ("size", "latency")

    @field_validator("minimize")
    @classmethod
    def _objectives(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        allowed = set(OBJECTIVE_NAMES)
        bad = [v for v in value if v not in allowed]
        if bad:
            raise ValueError(
                f"minimize must be among {sorted(allowed)}. Got {bad} instead"
                + did_you_mean(bad[0], sorted(allowed))
            )
        return value


class RegressSpec(_Strict):
    baseline: str | None = None
    tolerance: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.01, "size_ratio": 0.05, "latency": 0.3}
    )
    spread: float | None = Field(
        None, gt=0,
        description="with repeated rows: an accuracy / agreement change counts as a regression "
                    "only beyond this many standard deviations of the seeds (of the baseline "
                    "and this run combined), when that is more than the tolerance")


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
        names = backend_names()
        bad = [b for b in value if b not in names]
        if bad:
            raise ValueError(
                f"unknown backend {bad[0]!r} (allowed backends: {', '.join(names)})"
                f"{did_you_mean(bad[0], names)}"
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
            if str(name).startswith(BASELINE_PREFIX):
                raise ValueError(
                    f"recipe name {name!r}: names starting with {BASELINE_PREFIX!r} are "
                    "reserved for the baselines squeezelab adds (e.g. fp32+ft1)"
                )
        return value

    @model_validator(mode="after")
    def _labels_for_training(self) -> Scenario:
        for view in self.views():
            view.check_labels()
        return self

    def check_labels(self) -> None:
        """Training (reference or recipe steps) needs labelled data; a preprocess pipeline
        must end at the model's input."""
        who = f"model {self.model.label!r}: " if self.model.name else ""
        if self.data.preprocess is not None:
            try:
                self.data.preprocess.check_for(self.model.input_shape)
            except ValueError as exc:
                raise ValueError(f"{who}{exc}") from None
        if self.data.labelled:
            return
        source = self.data.source
        if self.model.weights == "train":
            raise ValueError(
                f"{who}weights: train needs labelled data; data source {source!r} has no "
                "labels (use weights: random, pretrained or a labelled source)"
            )
        for name, recipe in self.recipes.items():
            for step in recipe.steps:
                if step.kind in TRAINING_STEPS or getattr(step, "method", None) == "qat":
                    raise ValueError(
                        f"{who}recipe {name!r}: step {step.kind!r} trains and needs labelled "
                        f"data; data source {source!r} has no labels"
                    )
