"""The adapter contract: capabilities as data, a plan before running, a template method.

An adapter module (``adapters/<backend>/__init__.py``) must import nothing heavy: it
declares ``CAPABILITIES`` and an :class:`Adapter` subclass whose ``_compress`` imports
the toolkit (usually from ``adapters/<backend>/_impl.py``) only when a job runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from unified.measure.native import NativeFiles
from unified.spec.errors import ExportMismatch, MissingToolkit
from unified.spec.model_summary import ModelSummary
from unified.spec.steps import Recipe, Step

if TYPE_CHECKING:
    from unified.context import JobContext


class Support(StrEnum):
    native = "native"
    approximated = "approximated"
    unsupported = "unsupported"


@dataclass(frozen=True)
class Verdict:
    support: Support
    note: str = ""

    def __str__(self) -> str:
        return f"{self.support}: {self.note}" if self.note else str(self.support)


NATIVE = Verdict(Support.native)


def approximated(note: str) -> Verdict:
    return Verdict(Support.approximated, note)


def unsupported(reason: str) -> Verdict:
    return Verdict(Support.unsupported, reason)


@dataclass(frozen=True)
class StepCapability:
    """What a backend does with one step kind.

    ``options`` maps an option name to {value: verdict}. A value missing from a listed
    option is unsupported (the message lists what is supported); options not listed take
    any value natively. ``verdict`` applies to the step as a whole.
    """

    verdict: Verdict = NATIVE
    options: Mapping[str, Mapping[Any, Verdict]] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    backend: str
    toolkit: str  # human-readable toolkit name
    input_framework: str  # what the toolkit consumes: pytorch | onnx | keras | coreml
    packages: tuple[str, ...]  # distributions whose versions key the cache
    modules: tuple[str, ...]  # importable modules that must be present
    install_hint: str
    artifact: str  # native artifact kind, e.g. ".pt", ".onnx", ".tflite", ".mlpackage"
    steps: Mapping[str, StepCapability]
    # per-process set-up, applied by prepare_process before the toolkit is first imported:
    # environment variables the toolkit reads at import (a user's explicit value wins) ...
    environment: Mapping[str, str] = field(default_factory=dict)
    # ... and modules to import first (e.g. torch._dynamo: triton segfaults when TF's
    # libraries were loaded before it, and NNI and coremltools import TF)
    preload: tuple[str, ...] = ()

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def versions(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for package in self.packages:
            try:
                out[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                out[package] = None
        return out

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


# the step index of a verdict on the model as a whole (any recipe, fp32 included)
MODEL = -1


@dataclass(frozen=True)
class StepPlan:
    index: int
    kind: str
    verdict: Verdict

    def describe(self) -> str:
        if self.index == MODEL:
            return f"model: {self.verdict.note}"
        return f"step {self.index + 1} ({self.kind}): {self.verdict.note}"


@dataclass(frozen=True)
class Plan:
    backend: str
    steps: tuple[StepPlan, ...]

    @property
    def status(self) -> str:
        supports = {s.verdict.support for s in self.steps}
        if Support.unsupported in supports:
            return "unsupported"
        if Support.approximated in supports:
            return "approximated"
        return "ok"

    @property
    def reason(self) -> str | None:
        """Every unsupported step at once, or None."""
        bad = [s.describe() for s in self.steps if s.verdict.support is Support.unsupported]
        return "; ".join(bad) or None

    @property
    def notes(self) -> list[str]:
        return [s.describe() for s in self.steps if s.verdict.support is Support.approximated]


@dataclass
class Artifacts:
    """What ``_compress`` returns: the ONNX to measure, the native artifact, what was done.

    ``native_path`` is the toolkit's own artifact in the one format the backend always
    writes (its ``native_ratio`` divides the backend's fp32 artifact of the same format by
    it); ``deploy_path`` is the file (or package folder) a user would ship from this toolkit,
    when that is not the native artifact itself (Core ML: the whole .mlpackage, while its
    native artifact is the weight file).
    """

    onnx_path: Path
    native_path: Path | None = None
    deploy_path: Path | None = None  # None: the native artifact is what a user ships
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    # the native model and its runtime's fp32 baseline, where that runtime runs here: the
    # latency pass times them (native_latency_ms, native_speedup)
    native_timing: NativeFiles | None = None


@dataclass
class CompressResult:
    artifacts: Artifacts
    plan: Plan
    compress_seconds: float


RecipeCheck = Callable[[list[Step]], list[tuple[int, Verdict]]]


def _display(value: Any) -> str:
    return str(value.value) if isinstance(value, StrEnum) else str(value)


def plan_step(capabilities: Capabilities, index: int, step: Step) -> StepPlan:
    """Check one step against the capability table; collect every mismatch of the step."""
    cap = capabilities.steps.get(step.kind)
    if cap is None:
        return StepPlan(
            index,
            step.kind,
            unsupported(f"{capabilities.toolkit} has no {step.kind} step"),
        )
    problems: list[str] = []
    notes: list[str] = []
    if cap.verdict.support is Support.unsupported:
        problems.append(cap.verdict.note)
    elif cap.verdict.support is Support.approximated:
        notes.append(cap.verdict.note)
    for option, table in cap.options.items():
        value = getattr(step, option)
        # a tuple (e.g. targets.op_types) is checked entry by entry
        values = list(value) if isinstance(value, tuple) else [value]
        for item in values:
            key = item.value if isinstance(item, StrEnum) else item
            verdict = table.get(key)
            if verdict is None:
                verdict = table.get(item)
            if verdict is None:
                supported = [_display(v) for v, ver in table.items()
                             if ver.support is not Support.unsupported]
                problems.append(
                    f"{option}={_display(item)!s} is not supported by {capabilities.toolkit} "
                    f"(supported: {', '.join(map(str, supported)) or 'none'})"
                )
            elif verdict.support is Support.unsupported:
                problems.append(f"{option}={_display(item)}: {verdict.note}")
            elif verdict.support is Support.approximated:
                notes.append(verdict.note)
    if problems:
        return StepPlan(index, step.kind, unsupported("; ".join(problems)))
    if notes:
        return StepPlan(index, step.kind, approximated("; ".join(notes)))
    return StepPlan(index, step.kind, NATIVE)


class Adapter(ABC):
    """Base class: plans a recipe, owns the working folder, timing and the ONNX check."""

    capabilities: ClassVar[Capabilities]

    @property
    def name(self) -> str:
        return self.capabilities.backend

    def check_recipe(self, steps: list[Step]) -> list[tuple[int, Verdict]]:
        """Cross-step rules beyond the table (e.g. nothing may follow static quantization).

        Return (step index, verdict) pairs that override the table's verdict for that
        step when they are worse. Default: none.
        """
        return []

    def check_model(self, steps: list[Step], model: ModelSummary) -> list[tuple[int, Verdict]]:
        """Rules on the model itself (its layer types, size), for what the toolkit documents it
        cannot do with such a model; same form as :meth:`check_recipe`, with the step index
        :data:`MODEL` for a verdict on every recipe (fp32 included). Default: none."""
        return []

    def plan(self, recipe: Recipe, model: ModelSummary | None = None) -> Plan:
        """Per step: native / approximated(note) / unsupported(reason). Imports nothing.
        With ``model`` (the reference model's summary) the model rules apply too."""
        steps = recipe.steps
        planned = [plan_step(self.capabilities, i, step) for i, step in enumerate(steps)]
        order = list(Support)
        rules = self.check_recipe(steps)
        if model is not None:
            rules += self.check_model(steps, model)
        whole: list[StepPlan] = []
        for index, verdict in rules:
            if index == MODEL:
                if verdict.support is not Support.native or verdict.note:
                    whole.append(StepPlan(MODEL, "model", verdict))
                continue
            current = planned[index]
            if order.index(verdict.support) > order.index(current.verdict.support):
                planned[index] = StepPlan(index, current.kind, verdict)
            elif verdict.support is current.verdict.support and verdict.note:
                joined = "; ".join(n for n in (current.verdict.note, verdict.note) if n)
                planned[index] = StepPlan(index, current.kind, Verdict(verdict.support, joined))
        return Plan(self.name, (*planned, *whole))

    def prepare_process(self) -> None:
        """Per-process set-up, run in every worker before its first job (and once by the test
        session): the environment the toolkit reads at import, then the modules to preload.
        A missing preload module is skipped (its toolkit is then unavailable anyway)."""
        for key, value in self.capabilities.environment.items():
            os.environ.setdefault(key, value)
        for module in self.capabilities.preload:
            if importlib.util.find_spec(module.split(".")[0]) is not None:
                importlib.import_module(module)

    def require_toolkit(self) -> None:
        missing = self.capabilities.missing()
        if missing:
            raise MissingToolkit(self.name, missing, self.capabilities.install_hint)

    def compress(self, ctx: JobContext) -> CompressResult:
        """Template method: plan, run the toolkit, check the ONNX it produced."""
        plan = self.plan(ctx.recipe, ctx.model_summary)
        if plan.status == "unsupported":
            raise RuntimeError(f"compress called on an unsupported plan: {plan.reason}")
        self.require_toolkit()
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        artifacts = self._compress(ctx, plan)
        seconds = time.perf_counter() - start
        self._check_onnx(artifacts.onnx_path)
        # the same lossless clean-up as the fp32 reference got, so sizes compare fairly
        from unified.measure.onnx_compact import compact_verified

        kept = compact_verified(artifacts.onnx_path, ctx.data.test_x[:8])
        if kept:
            artifacts.notes.append(kept)
        return CompressResult(artifacts, plan, seconds)

    @abstractmethod
    def _compress(self, ctx: JobContext, plan: Plan) -> Artifacts:
        """Run the toolkit on ``ctx``; write the native artifact and model.onnx in ctx.workdir.

        On the empty recipe (no step) it writes the toolkit's *fp32* native and deployable
        artifacts, in the same formats as for any recipe: they are the yardstick of the
        backend's ``native_ratio`` and ``deploy_ratio`` (the runner runs the empty recipe
        once per reference × backend, as an ordinary cached job, even when the scenario has
        no such recipe)."""

    @staticmethod
    def _check_onnx(path: Path) -> None:
        import onnx

        if not path.is_file():
            raise ExportMismatch(f"the adapter did not write its ONNX file {path}")
        onnx.checker.check_model(str(path))
