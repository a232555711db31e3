"""The fp32 reference: build, train (or load) once, export to ONNX, measure its deterministic
figures; cached by content hash so a rerun never retrains. Its latency is timed by each run's
paired pass (unified.run.latency_pass), never cached."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unified.context import ReferenceArtifacts
from unified.run.cache import reference_content_digest, reference_key
from unified.run.entries import discard, manifest_problem, remove_stale, warn, write_manifest
from unified.run.locks import file_lock, lock_path
from unified.run.storage import atomic_write
from unified.run.threads import torch_threads
from unified.spec.scenario import Scenario

log = logging.getLogger(__name__)


def load_summary(ref: ReferenceArtifacts) -> dict[str, Any]:
    return dict(json.loads(ref.summary.read_text()))


def prepare_reference(scenario: Scenario, cache_dir: Path,
                      on_wait: Callable[[str], None] | None = None) -> ReferenceArtifacts:
    """Return the cached reference for ``scenario``, building it first if needed.

    One run builds a reference at a time (a lock per reference key): another run that needs
    the same one waits (``on_wait`` gets the lock's path) and then uses it. A cached
    reference whose files do not match its manifest is discarded with a warning and rebuilt.
    """
    key = reference_key(scenario)
    folder = cache_dir / "reference" / key
    ref = ReferenceArtifacts(folder)
    if folder.is_dir() and manifest_problem(folder) is None:
        return ref
    lock = lock_path(cache_dir, "reference", key)
    with file_lock(lock, on_wait=(lambda: on_wait(str(lock))) if on_wait else None):
        if folder.exists():
            problem = manifest_problem(folder)
            if problem is None:
                return ref  # built by another run while this one waited
            warn(f"cached reference {folder} is corrupt ({problem}); building it again")
            discard(folder)
        remove_stale(folder.parent, f".building-{key}-")
        remove_stale(folder.parent, f".trash-{key}-")
        tmp = folder.parent / f".building-{key}-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            _build(scenario, ReferenceArtifacts(tmp))
            reference_content_digest(tmp)
            write_manifest(tmp)
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return ref


def _build(scenario: Scenario, ref: ReferenceArtifacts) -> None:
    import torch

    from unified.data.sources import load_splits
    from unified.measure.harness import HarnessSettings, make_session, measure, run_model
    from unified.measure.onnx_compact import compact_verified
    from unified.measure.outputs import degenerate_reason
    from unified.torchkit.export import export_onnx
    from unified.torchkit.models import (
        build_model,
        count_parameters,
        initial_weights,
        load_state_dict,
    )
    from unified.torchkit.pooling import pooling_notes
    from unified.torchkit.training import predict, set_seed, train

    spec = scenario.model
    data = load_splits(scenario.data, spec.input_shape, scenario.seed)
    data.save(ref.data)
    set_seed(scenario.seed)
    model = build_model(spec.source, spec.num_classes, spec.input_shape)
    trained = False
    if spec.weights == "train":
        assert data.train_y is not None  # the scenario validator guarantees labels
        log.info("training the reference model for %d epochs", scenario.budget.train_epochs)
        with torch_threads():  # like every job: figures independent of the machine's cores
            train(model, data.train_x, data.train_y, scenario.budget,
                  epochs=scenario.budget.train_epochs, lr=scenario.budget.lr,
                  seed=scenario.seed)
        trained = True
        if spec.recalibrate_batchnorm:
            from unified.torchkit.models import recalibrate_batchnorm

            count = recalibrate_batchnorm(model, data.train_x, scenario.budget.batch_size)
            log.info("re-estimated the statistics of %d BatchNorm layers", count)
    elif spec.weights_path is not None:
        model.load_state_dict(load_state_dict(spec.weights_path))
    else:
        initial_weights(model, spec.source, spec.weights)
    model.eval()
    torch.save(model.state_dict(), ref.weights)
    export_onnx(model, ref.onnx, spec.input_shape)
    kept = compact_verified(ref.onnx, data.test_x[:8])
    if kept:
        log.warning("reference: %s", kept)

    # no latency here: the run's paired pass times the reference with its candidates
    settings = HarnessSettings(threads=scenario.evaluate.latency.threads, runs=0)
    logits = run_model(make_session(ref.onnx, settings.threads), data.test_x)
    np.save(ref.logits, logits)
    torch_logits = predict(model, data.test_x)
    figures = measure(ref.onnx, native_path=ref.weights, test_x=data.test_x,
                      test_y=data.test_y, reference=None, settings=settings)
    write_inventory(model, ref, spec.input_shape)
    degenerate = degenerate_reason(logits)
    if degenerate:
        log.warning("reference %s is degenerate: %s", spec.label, degenerate)
    summary = {
        "model": spec.model_dump(mode="json"),
        "trained_epochs": scenario.budget.train_epochs if trained else 0,
        "torch_parameters": count_parameters(model),
        "onnx_vs_torch_max_abs": float(np.abs(torch_logits - logits).max()),
        "samples": {"train": len(data.train_x), "calibration": len(data.calib_x),
                    "test": len(data.test_x)},
        "reference_degenerate": degenerate is not None,
        "reference_degenerate_reason": degenerate,
        "model_notes": pooling_notes(model),
        **figures,
    }
    atomic_write(ref.summary, json.dumps(summary, indent=2).encode())


def write_inventory(model: Any, ref: ReferenceArtifacts, input_shape: tuple[int, int, int]) -> None:
    """The reference's layers.json: its conv/linear layers in execution order, each with the
    node of the fp32 ONNX that computes it (matched by order and weight shape)."""
    from dataclasses import replace

    from unified.measure.onnx_layers import load_layers, match_layers
    from unified.spec.layers import save_inventory
    from unified.torchkit.targets import layer_inventory

    layers = layer_inventory(model, input_shape)
    onnx_layers = load_layers(ref.onnx)
    pairs = match_layers([layer.signature for layer in layers],
                         [layer.signature for layer in onnx_layers])
    save_inventory(ref.layers, [
        replace(layer, onnx_node=None if j is None else onnx_layers[j].node)
        for layer, j in zip(layers, pairs, strict=True)])


def degenerate(summary: dict[str, Any]) -> str | None:
    """Why the reference's own outputs carry no information (reference.json), or None."""
    reason = summary.get("reference_degenerate_reason")
    return str(reason) if summary.get("reference_degenerate") and reason else None
