"""The job context adapters get: the epoch log every backend writes through one helper."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from tiny import tiny_scenario

from unified.context import SPARSITY_DIGITS, EpochEntry, JobContext, ReferenceArtifacts
from unified.data.splits import DataSplits


def _context(tmp_path: Path) -> JobContext:
    scenario = tiny_scenario({"p": [{"prune": {"sparsity": 0.5}}, "finetune"]}, ["pytorch"])
    none = np.zeros((0, 1, 8, 8), np.float32)
    empty = DataSplits(train_x=none, train_y=None, calib_x=none, test_x=none, test_y=None)
    return JobContext(scenario=scenario, recipe_name="p", recipe=scenario.recipes["p"],
                      backend="pytorch", workdir=tmp_path,
                      reference=ReferenceArtifacts(tmp_path), data=empty)


def test_log_epoch_numbers_steps_from_one_with_one_key_set(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    ctx.log_epoch(0, "prune", None, sparsity=0.5000004)
    ctx.log_epoch(0, "prune", 3, sparsity=1 / 3, target=0.123456789)
    ctx.log_epoch(1, "finetune", 0)
    records = [e.as_record() for e in ctx.epoch_log]
    assert records == [
        {"step": 1, "kind": "prune", "epoch": None, "sparsity": 0.5, "target": None},
        {"step": 1, "kind": "prune", "epoch": 3, "sparsity": round(1 / 3, SPARSITY_DIGITS),
         "target": 0.123457},
        {"step": 2, "kind": "finetune", "epoch": 0, "sparsity": None, "target": None},
    ]
    assert ctx.epoch_log[1] == EpochEntry(1, "prune", 3, 1 / 3, 0.123456789)  # unrounded


def test_steps_per_epoch_counts_the_short_last_batch(tmp_path: Path) -> None:
    ctx = _context(tmp_path)  # the tiny budget's batch size is 32
    assert ctx.budget.batch_size == 32
    for samples, steps in ((0, 0), (32, 1), (33, 2), (65, 3)):
        ctx.data = dataclasses.replace(ctx.data, train_x=np.zeros((samples, 1, 8, 8)))
        assert ctx.steps_per_epoch == steps


def _logits(seed: int, rows: int = 200, classes: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, classes))


def test_parity_tolerates_rounding_smaller_than_the_compression(tmp_path: Path) -> None:
    """Two int8 runtimes that round differently flip some near-tie classes: the row is kept
    (with a note) when the ONNX moved less than the compression did."""
    fp32 = _logits(0)
    np.save(tmp_path / "test_logits.npy", fp32)
    native = fp32 + 0.3 * _logits(1)  # the compression's own error
    onnx = native + 0.1 * _logits(2)  # the other runtime's rounding
    ctx = _context(tmp_path)
    parity = ctx.check_parity("TFLite interpreter", native, onnx)
    assert parity.agreement < 0.99 and parity.faithful
    assert parity.onnx_rel_l2 is not None and parity.compression_rel_l2 is not None
    assert parity.onnx_rel_l2 < parity.compression_rel_l2
    assert any("moved the outputs less than the compression did" in n for n in ctx.notes)


def test_parity_fails_an_export_that_moves_more_than_the_compression(tmp_path: Path) -> None:
    fp32 = _logits(0)
    np.save(tmp_path / "test_logits.npy", fp32)
    native = fp32 + 0.1 * _logits(1)
    ctx = _context(tmp_path)
    parity = ctx.check_parity("torch", native, native[:, ::-1])  # classes reversed
    assert not parity.faithful
    assert parity.failure().startswith("export changed the model")
    assert "of the torch model from fp32" in parity.failure()
    # an unchanged fp32 model allows no flip at all: its compression error is zero
    assert not ctx.check_parity("torch", fp32, fp32 + 0.5 * _logits(3)).faithful
