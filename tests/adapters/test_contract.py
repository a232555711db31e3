"""The adapter contract, checked the same way for every registered backend (as scikit-learn's
test_common does for estimators): capabilities are typed data, every step kind plans to a
verdict that says why when it is not native, the per-process set-up does what it declares,
and importing an adapter and planning with it imports no toolkit. None of it needs a toolkit
installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.base import Capabilities, StepCapability, Support, Verdict
from adapters.registry import backends, get_adapter
from unified.spec.backends import backend_entry_points
from unified.spec.steps import STEP_TYPES, Recipe

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = backends()
HEAVY = ("torch", "torchvision", "tensorflow", "tf_keras", "tensorflow_model_optimization",
         "nni", "coremltools", "tf2onnx", "nobuco", "onnxruntime")
FRAMEWORKS = ("pytorch", "onnx", "keras", "coreml")
# the smallest valid step of each kind
MINIMAL: dict[str, dict[str, Any]] = {
    "prune": {"sparsity": 0.5},
    "quantize": {},
    "cluster": {"clusters": 16},
    "binarize": {},
    "distill": {"student": "builtin:convnet-tiny"},
    "finetune": {},
}
ORDER = list(Support)


def test_every_step_kind_has_a_minimal_example() -> None:
    assert set(MINIMAL) == set(STEP_TYPES)
    for kind, data in MINIMAL.items():
        (step,) = Recipe.model_validate([{kind: data}]).steps
        assert step.kind == kind


def test_the_backends_of_this_repository_are_registered() -> None:
    assert {"pytorch", "onnxruntime", "nni", "tfmot", "coreml"} <= set(BACKENDS)


def _says_why(verdict: Verdict) -> bool:
    return verdict.support is Support.native or bool(verdict.note.strip())


def _strings(values: Any) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, str) and v for v in values)


@pytest.mark.parametrize("backend", BACKENDS)
def test_capabilities_are_typed_data(backend: str) -> None:
    cap = get_adapter(backend).capabilities
    assert isinstance(cap, Capabilities)
    assert cap.backend == backend
    assert isinstance(cap.toolkit, str) and cap.toolkit
    assert isinstance(cap.install_hint, str) and cap.install_hint
    assert cap.input_framework in FRAMEWORKS
    assert cap.artifact.startswith(".")
    assert _strings(cap.packages) and cap.packages
    assert _strings(cap.modules) and cap.modules
    assert _strings(cap.preload) or cap.preload == ()
    assert isinstance(cap.environment, Mapping)
    assert all(isinstance(k, str) and k and isinstance(v, str)
               for k, v in cap.environment.items())
    assert set(cap.steps) <= set(STEP_TYPES)
    for kind, step_cap in cap.steps.items():
        assert isinstance(step_cap, StepCapability)
        assert isinstance(step_cap.verdict, Verdict) and _says_why(step_cap.verdict), kind
        fields = STEP_TYPES[kind].model_fields
        for option, table in step_cap.options.items():
            assert option in fields, f"{backend}: a {kind} step has no option {option!r}"
            for value, verdict in table.items():
                assert isinstance(verdict, Verdict), (kind, option, value)
                assert _says_why(verdict), f"{backend}: {kind} {option}={value} says no why"


@pytest.mark.parametrize("backend", BACKENDS)
def test_versions_name_every_package(backend: str) -> None:
    cap = get_adapter(backend).capabilities
    versions = cap.versions()
    assert list(versions) == list(cap.packages)
    assert all(v is None or (isinstance(v, str) and v) for v in versions.values())
    missing = cap.missing()
    assert set(missing) <= set(cap.modules)
    assert cap.available() is (not missing)


@pytest.mark.parametrize("kind", sorted(STEP_TYPES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_step_kind_plans_to_a_verdict(backend: str, kind: str) -> None:
    plan = get_adapter(backend).plan(Recipe.model_validate([{kind: MINIMAL[kind]}]))
    assert plan.backend == backend
    (step,) = plan.steps
    assert (step.index, step.kind) == (0, kind)
    assert isinstance(step.verdict, Verdict) and _says_why(step.verdict)
    if step.verdict.support is Support.unsupported:
        assert plan.status == "unsupported"
        assert plan.reason == f"step 1 ({kind}): {step.verdict.note}"
    if kind not in get_adapter(backend).capabilities.steps:
        assert step.verdict.support is Support.unsupported


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_option_value_plans_to_its_table_verdict_or_worse(backend: str) -> None:
    """Set alone on the smallest step, a value listed in an option table plans to that
    verdict or a worse one (other defaults and cross-step rules may only add to it), and an
    unsupported value's reason reaches the plan."""
    adapter = get_adapter(backend)
    tried = 0
    for kind, step_cap in adapter.capabilities.steps.items():
        for option, table in step_cap.options.items():
            for value, verdict in table.items():
                try:
                    recipe = Recipe.model_validate([{kind: {**MINIMAL[kind], option: value}}])
                except ValidationError:  # the value needs other fields too (n:m needs n, m)
                    continue
                (planned,) = adapter.plan(recipe).steps
                where = f"{backend}: {kind} {option}={value}"
                assert ORDER.index(planned.verdict.support) >= ORDER.index(verdict.support), where
                if verdict.support is Support.unsupported:
                    assert verdict.note in planned.verdict.note, where
                tried += 1
    assert tried > 0 or not any(c.options for c in adapter.capabilities.steps.values())


_PROBE = """
import importlib, json, os, sys
module, attribute, kinds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
adapter = getattr(importlib.import_module(module), attribute)
from unified.spec.steps import Recipe
for kind, data in kinds.items():
    adapter.plan(Recipe.model_validate([{kind: data}]))
heavy = sorted(m for m in json.loads(sys.argv[4]) if m in sys.modules)
adapter.prepare_process()
environment = {k: os.environ.get(k) for k in adapter.capabilities.environment}
preloaded = [m for m in adapter.capabilities.preload if m in sys.modules]
print(json.dumps({"heavy": heavy, "environment": environment, "preloaded": preloaded}))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_import_and_plan_are_light_and_prepare_process_sets_up(backend: str) -> None:
    """In a fresh process: importing the adapter and planning every step kind imports no
    toolkit; prepare_process then sets the declared environment (a user's explicit value
    wins) and imports the declared preloads whose package is installed."""
    cap = get_adapter(backend).capabilities
    point = backend_entry_points()[backend]
    env = {k: v for k, v in os.environ.items() if k not in cap.environment}
    user = next(iter(cap.environment), None)
    if user is not None:
        env[user] = "a user's choice"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, point.module, point.attr, json.dumps(MINIMAL),
         json.dumps(HEAVY)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["heavy"] == []
    expected = {**cap.environment, **({user: "a user's choice"} if user else {})}
    assert found["environment"] == expected
    installed = [m for m in cap.preload if importlib.util.find_spec(m.split(".")[0])]
    assert found["preloaded"] == installed
