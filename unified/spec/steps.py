"""The unified compression spec: one typed class per step, enums for closed sets.

A recipe is an ordered list of steps. In YAML each step is a one-key mapping
(``- quantize: {method: static}``); :class:`StepEntry` validates that shape and
:func:`Recipe.steps` gives the typed steps in order. Names here are the contract
that every adapter maps onto native calls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from unified.spec.errors import did_you_mean
from unified.spec.names import matches_any, pattern_problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


# --- closed vocabularies -------------------------------------------------------------------


class OpType(StrEnum):
    conv = "conv"
    depthwise = "depthwise"
    linear = "linear"


class PruneStructure(StrEnum):
    unstructured = "unstructured"
    channel = "channel"  # whole output channels / filters
    # whole input channels (weight dim 1): conv input channels, linear input features;
    # Distiller's group_type Channels / Rows, which ChannelRemover thins
    input_channel = "input_channel"
    n_m = "n:m"
    block = "block"


class PruneScope(StrEnum):
    local = "local"
    global_ = "global"


class PruneCriterion(StrEnum):
    l1 = "l1"
    l2 = "l2"
    level = "level"  # magnitude, NNI's name for it
    fpgm = "fpgm"
    taylor = "taylor"
    random = "random"


class QuantMethod(StrEnum):
    dynamic = "dynamic"
    static = "static"
    qat = "qat"


class QuantAlgorithm(StrEnum):
    """How a QAT quantizer learns its ranges (plain = fake-quant with observers)."""

    plain = "plain"
    lsq = "lsq"
    dorefa = "dorefa"
    pact = "pact"


class Granularity(StrEnum):
    per_tensor = "per_tensor"
    per_channel = "per_channel"
    per_block = "per_block"


class QuantDType(StrEnum):
    int = "int"
    float16 = "float16"


class ClusterInit(StrEnum):
    kmeans_pp = "kmeans++"
    linear = "linear"
    random = "random"
    density = "density"


class BinarizeStyle(StrEnum):
    bnn = "bnn"  # sign(w), straight-through estimator
    dorefa = "dorefa"  # DoReFa 1-bit: E|w| * sign(w)
    xnor = "xnor"  # per-channel scaled sign


class ScheduleCurve(StrEnum):
    agp = "agp"  # Distiller's cubic: AutomatedGradualPruner
    linear = "linear"
    constant = "constant"


# --- shared step parts ---------------------------------------------------------------------


class Targets(_Strict):
    """Which layers a step touches. Name patterns are fnmatch globs or ``re:`` regexes
    matched against the torch module name (``features.0``, ``classifier``)."""

    op_types: tuple[OpType, ...] = (OpType.conv, OpType.depthwise, OpType.linear)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_patterns(self) -> Targets:
        for pattern in (*self.include, *self.exclude):
            problem = pattern_problem(pattern)
            if problem is not None:
                raise ValueError(problem)
        return self

    def selects_name(self, name: str) -> bool:
        """Do the include / exclude patterns keep the layer called ``name``?"""
        if self.include and not matches_any(name, self.include):
            return False
        return not matches_any(name, self.exclude)

    def selects(self, kind: OpType | None, name: str) -> bool:
        """Is a layer of op type ``kind`` (None: none of the unified op types) called
        ``name`` one of these targets?"""
        return kind is not None and kind in self.op_types and self.selects_name(name)


class Schedule(_Strict):
    """Distiller semantics: epochs ``start_epoch`` .. ``end_epoch`` (end exclusive),
    acting every ``frequency`` epochs."""

    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    start_epoch: int = Field(0, ge=0)
    end_epoch: int = Field(..., ge=1)
    frequency: int = Field(1, ge=1)
    curve: ScheduleCurve = ScheduleCurve.agp

    @model_validator(mode="after")
    def _check_span(self) -> Schedule:
        if self.end_epoch <= self.start_epoch:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must be greater than start_epoch "
                f"({self.start_epoch})"
            )
        span = agp_span(start=self.start_epoch, end=self.end_epoch, frequency=self.frequency)
        if self.curve is not ScheduleCurve.constant and span <= 0:
            raise ValueError(
                f"curve {self.curve.value} needs at least two pruning epochs "
                f"(end_epoch - start_epoch - 1 >= frequency); start_epoch {self.start_epoch}, "
                f"end_epoch {self.end_epoch}, frequency {self.frequency} give one"
            )
        return self


def agp_span(*, start: int, end: int, frequency: int) -> int:
    """Distiller's AGP span: epochs from the first to the last pruning epoch."""
    if frequency < 1:
        raise ValueError(f"frequency must be at least 1. Got {frequency} instead")
    return ((end - start - 1) // frequency) * frequency


# --- steps ---------------------------------------------------------------------------------


class PruneStep(_Strict):
    kind: ClassVar[str] = "prune"
    sparsity: float = Field(..., gt=0.0, lt=1.0)
    structure: PruneStructure = PruneStructure.unstructured
    scope: PruneScope = PruneScope.local
    criterion: PruneCriterion = PruneCriterion.l1
    n: int | None = Field(None, ge=1, description="n of n:m (kept weights per block of m)")
    m: int | None = Field(None, ge=2, description="m of n:m")
    block: tuple[int, int] | None = None
    targets: Targets = Targets()
    schedule: Schedule | None = None

    @model_validator(mode="after")
    def _check_structure(self) -> PruneStep:
        if self.structure is PruneStructure.n_m:
            if self.n is None or self.m is None:
                raise ValueError("structure 'n:m' needs both n and m (e.g. n: 2, m: 4)")
            if self.n >= self.m:
                raise ValueError(f"n ({self.n}) must be smaller than m ({self.m})")
        elif self.n is not None or self.m is not None:
            raise ValueError("n and m only apply to structure 'n:m'")
        if self.structure is PruneStructure.block and self.block is None:
            raise ValueError("structure 'block' needs block: [rows, cols]")
        if self.schedule is not None and self.schedule.initial_sparsity >= self.sparsity:
            raise ValueError(
                f"schedule.initial_sparsity ({self.schedule.initial_sparsity}) must be below "
                f"sparsity ({self.sparsity})"
            )
        return self


class QuantizeStep(_Strict):
    kind: ClassVar[str] = "quantize"
    method: QuantMethod = QuantMethod.static
    weights: Literal[16, 8, 7, 6, 5, 4, 3, 2, 1] = 8
    activations: Literal[16, 8, 7, 6, 5, 4, 3, 2] | None = 8
    granularity: Granularity = Granularity.per_channel
    symmetric: bool = Field(
        True, description="symmetric weights; activations keep a calibrated zero point"
    )
    dtype: QuantDType = QuantDType.int
    algorithm: QuantAlgorithm = QuantAlgorithm.plain
    epochs: int | None = Field(
        None, ge=0, description="QAT training epochs; default: the budget's finetune_epochs"
    )
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _check_combination(self) -> QuantizeStep:
        if self.dtype is QuantDType.float16 and self.weights != 16:
            raise ValueError("dtype float16 means weights: 16")
        if self.weights == 16 and self.dtype is not QuantDType.float16:
            raise ValueError("weights: 16 is float16; say dtype: float16")
        if self.method is QuantMethod.dynamic and self.activations != 8:
            raise ValueError("dynamic quantization quantizes activations to 8 bits at run "
                             "time: activations must be 8")
        if self.epochs is not None and self.method is not QuantMethod.qat:
            raise ValueError("epochs only applies to method 'qat'")
        if self.algorithm is not QuantAlgorithm.plain and self.method is not QuantMethod.qat:
            raise ValueError(f"algorithm '{self.algorithm}' is a training method: use method qat")
        return self


class ClusterStep(_Strict):
    kind: ClassVar[str] = "cluster"
    clusters: int | None = Field(None, ge=2, le=65536)
    bits: int | None = Field(None, ge=1, le=8)
    granularity: Granularity = Granularity.per_tensor
    group_size: int | None = Field(None, ge=1, description="channels per group for per_block")
    init: ClusterInit = ClusterInit.kmeans_pp
    targets: Targets = Targets()

    @model_validator(mode="after")
    def _one_size(self) -> ClusterStep:
        if (self.clusters is None) == (self.bits is None):
            raise ValueError("give exactly one of clusters or bits")
        return self

    @property
    def n_clusters(self) -> int:
        return self.clusters if self.clusters is not None else 2 ** (self.bits or 0)


class BinarizeStep(_Strict):
    kind: ClassVar[str] = "binarize"
    style: BinarizeStyle = BinarizeStyle.bnn
    activations: bool = False
    epochs: int | None = Field(None, ge=0, description="training epochs; default finetune_epochs")
    targets: Targets = Targets()


class DistillStep(_Strict):
    kind: ClassVar[str] = "distill"
    student: str = Field(..., description="model source of the student, e.g. builtin:convnet-thin")
    teacher: str | None = Field(None, description="default: the reference model")
    temperature: float = Field(4.0, gt=0.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the soft-target loss")
    epochs: int = Field(2, ge=1)


class FinetuneStep(_Strict):
    kind: ClassVar[str] = "finetune"
    epochs: int | None = Field(None, ge=1, description="default: the budget's finetune_epochs")


Step = PruneStep | QuantizeStep | ClusterStep | BinarizeStep | DistillStep | FinetuneStep
TargetedStep = PruneStep | QuantizeStep | ClusterStep | BinarizeStep


def prune_run(steps: Sequence[Step], index: int) -> list[int]:
    """Indices of the consecutive prune steps around ``index`` (empty if it is no prune):
    the pruning policies Distiller runs together, in one training loop."""
    if not isinstance(steps[index], PruneStep):
        return []
    first, last = index, index
    while first > 0 and isinstance(steps[first - 1], PruneStep):
        first -= 1
    while last + 1 < len(steps) and isinstance(steps[last + 1], PruneStep):
        last += 1
    return list(range(first, last + 1))


def targets_of(step: Step) -> Targets:
    """The layers a step touches (distill and finetune train the whole model)."""
    return step.targets if isinstance(step, TargetedStep) else Targets()
STEP_TYPES: dict[str, type[_Strict]] = {
    cls.kind: cls
    for cls in (PruneStep, QuantizeStep, ClusterStep, BinarizeStep, DistillStep, FinetuneStep)
}
TRAINING_STEPS = ("distill", "finetune")


class StepEntry(_Strict):
    """One YAML list item: a mapping with exactly one key, the step name."""

    prune: PruneStep | None = None
    quantize: QuantizeStep | None = None
    cluster: ClusterStep | None = None
    binarize: BinarizeStep | None = None
    distill: DistillStep | None = None
    finetune: FinetuneStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        allowed = ", ".join(sorted(STEP_TYPES))
        if isinstance(data, str) and data in STEP_TYPES:
            return {data: {}}
        if not isinstance(data, dict) or len(data) != 1:
            raise ValueError(f"a step is a mapping with one key, one of: {allowed}")
        (name,) = data
        if name not in STEP_TYPES:
            raise ValueError(f"unknown step '{name}' (allowed steps: {allowed})"
                             f"{did_you_mean(name, STEP_TYPES)}")
        return {name: data[name] if data[name] is not None else {}}

    @model_serializer(mode="wrap")
    def _only_the_step(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {name: value for name, value in data.items() if value is not None}

    @property
    def step(self) -> Step:
        for name in STEP_TYPES:
            value = getattr(self, name)
            if value is not None:
                return value  # type: ignore[no-any-return]
        raise AssertionError("validated StepEntry without a step")


class Recipe(RootModel[tuple[StepEntry, ...]]):
    """An ordered list of steps; an empty recipe is the fp32 model itself."""

    root: tuple[StepEntry, ...] = ()

    @property
    def steps(self) -> list[Step]:
        return [entry.step for entry in self.root]

    def canonical(self) -> list[dict[str, Any]]:
        """JSON form with every default filled in: what the cache key hashes."""
        return [
            {step.kind: step.model_dump(mode="json")} for step in self.steps
        ]

    def digest(self) -> str:
        return stable_hash(self.canonical())


def stable_hash(obj: object) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
