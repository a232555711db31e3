"""Shared fixtures: a tiny real model trained on real digits, built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from tiny import tiny_scenario

from adapters.registry import backends, get_adapter
from unified.context import ReferenceArtifacts

# This session runs every backend in one process: set up the process as each backend's
# worker would be (environment before any toolkit import, preloads).
for _backend in backends():
    get_adapter(_backend).prepare_process()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_reference(cache_dir: Path) -> ReferenceArtifacts:
    from unified.run.reference import prepare_reference

    return prepare_reference(tiny_scenario({"fp32": []}, ["pytorch"]), cache_dir)


@pytest.fixture
def run_recipe(tiny_reference: ReferenceArtifacts,
               tmp_path: Path) -> Callable[[str, list[Any]], dict[str, Any]]:
    """Run one recipe on one backend in this process (real toolkit); return the record."""
    from unified.run.job import Job, execute

    def run(backend: str, steps: list[Any], **overrides: Any) -> dict[str, Any]:
        scenario = tiny_scenario({"r": steps}, [backend], **overrides)
        return execute(scenario, Job("r", backend), tmp_path / backend, tiny_reference)

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the TF-MOT tests last. Its torch→Keras bridge (nobuco) leaves torch patched in the
    process it ran in, which breaks NNI's tracer afterwards. squeezelab itself runs every job
    in a fresh worker process, so only this one-process test session needs the ordering."""
    items.sort(key=lambda item: "test_tfmot" in item.nodeid)
