"""unified.measure.harness on hand-built ONNX models with predictable outputs (real onnxruntime)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_builders as build
import pytest

from unified.measure.harness import (
    MEASURE_KEYS,
    HarnessSettings,
    ReferenceFigures,
    make_session,
    measure,
    measure_latency,
    path_bytes,
    run_model,
)
from unified.measure.latency import (
    Candidate,
    PairedSettings,
    median_interval,
    onnx_candidate,
    paired_latency,
    rounds_for,
)

FAST = HarnessSettings(threads=1, warmup=1, runs=5, batch_size=8)
RNG = np.random.default_rng(1)
FEATURES = 10
REFERENCE_ONLY = (
    "accuracy_drop",
    "agreement",
    "rel_l2",
    "size_ratio",
    "gzip_ratio",
    "macs_ratio",
    "speedup",
)


def _rows(n: int) -> np.ndarray:
    """Returns n NCHW rows [n, FEATURES, 1, 1] with a clear argmax each."""
    return RNG.normal(size=(n, FEATURES, 1, 1)).astype(np.float32)


@pytest.fixture
def identity_path(tmp_path: Path) -> Path:
    """A Gemm with W = I and b = 0: the logits are the input rows themselves."""
    graph = build.linear(np.eye(FEATURES), np.zeros(FEATURES))
    return build.save(graph, tmp_path / "identity.onnx")


def test_measure_against_a_reference(identity_path: Path, tmp_path: Path) -> None:
    x = _rows(20)
    logits = x.reshape(20, FEATURES)
    labels = logits.argmax(axis=1)
    labels[15:] = (labels[15:] + 1) % FEATURES  # 5 of 20 wrong -> accuracy 0.75
    # The reference scores twice as high (rel_l2 = 0.5) and disagrees on 4 rows.
    ref_logits = 2.0 * logits
    for i in range(4):
        ref_logits[i, (labels[i] + 1) % FEATURES] = 100.0
    expected_rel_l2 = np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits)
    native = tmp_path / "model.mlpackage"
    (native / "weights").mkdir(parents=True)
    (native / "Manifest.json").write_bytes(b"x" * 100)
    (native / "weights" / "weight.bin").write_bytes(b"x" * 300)
    onnx_bytes = identity_path.stat().st_size
    reference = ReferenceFigures(
        accuracy=0.9,
        logits=ref_logits,
        onnx_bytes=2 * onnx_bytes,
        gzip_bytes=12345,
        latency_ms_p50=7.0,
        macs=4 * FEATURES * FEATURES,
    )

    result = measure(
        identity_path,
        native_path=native / "weights" / "weight.bin",
        deploy_path=native,
        test_x=x,
        test_y=labels,
        reference=reference,
        settings=FAST,
    )

    assert tuple(result) == MEASURE_KEYS
    json.dumps(result)  # plain Python values only: the record goes to results.jsonl
    assert result["accuracy"] == 0.75
    assert result["accuracy_drop"] == pytest.approx(0.15)
    assert result["agreement"] == 0.8
    assert result["rel_l2"] == pytest.approx(expected_rel_l2, rel=1e-6)
    assert result["onnx_bytes"] == onnx_bytes
    assert result["native_bytes"] == 300  # the weight file
    assert (result["deploy_bytes"], result["deploy_format"]) == (400, ".mlpackage")  # all of it
    assert result["size_ratio"] == 2.0
    assert "native_ratio" not in result  # against the backend's own fp32 file: the runner's
    assert result["macs"] == FEATURES * FEATURES  # one Gemm [1, 10] x [10, 10]
    assert result["macs_ratio"] == 4.0
    assert result["gzip_ratio"] == 12345 / result["gzip_bytes"]
    assert result["parameters"] == FEATURES * FEATURES + FEATURES
    assert result["sparsity"] == pytest.approx(0.9)  # the identity is 90% zeros
    assert result["max_distinct_values"] == 2
    assert result["int8_fraction"] == 0.0
    assert (result["quantized_compute_ops"], result["float_compute_ops"]) == (0, 1)
    assert result["ort_ops"] and all(n > 0 for n in result["ort_ops"].values())
    assert result["speedup"] == pytest.approx(7.0 / result["latency_ms_p50"])


def test_measure_without_reference_or_labels(identity_path: Path) -> None:
    result = measure(
        identity_path, native_path=None, test_x=_rows(5), test_y=None, reference=None, settings=FAST
    )
    assert tuple(result) == MEASURE_KEYS
    assert all(result[key] is None for key in REFERENCE_ONLY)
    assert result["accuracy"] is None
    assert result["native_bytes"] is None and result["deploy_bytes"] is None
    assert result["macs"] == FEATURES * FEATURES
    assert result["onnx_bytes"] == identity_path.stat().st_size
    assert result["gzip_bytes"] > 0
    assert result["parameters"] == 110
    assert 0 < result["latency_ms_p50"] <= result["latency_ms_p90"]


def test_measure_a_qdq_model_reports_quantized_compute(tmp_path: Path) -> None:
    w = RNG.integers(-100, 100, size=(10, 4, 5, 5))
    path = build.save(build.qdq_conv(w, 0, np.arange(10)), tmp_path / "qdq.onnx")
    x = RNG.uniform(-1, 1, size=(3, 4, 8, 8)).astype(np.float32)
    result = measure(path, native_path=None, test_x=x, test_y=None, reference=None, settings=FAST)
    assert result["ort_ops"]["QLinearConv"] == 1
    assert (result["quantized_compute_ops"], result["float_compute_ops"]) == (1, 0)
    assert result["int8_fraction"] == 1003 / 1018


@pytest.mark.parametrize("fixed_batch", [1, 4])
def test_fixed_batch_models_run_over_all_rows(tmp_path: Path, fixed_batch: int) -> None:
    weight = RNG.normal(size=(3, FEATURES))
    bias = RNG.normal(size=3)
    graph = build.linear(weight, bias, batch=fixed_batch)
    session = make_session(build.save(graph, tmp_path / "fixed.onnx"), threads=1)
    x = _rows(10)  # 10 rows: not a multiple of 4, the last chunk is padded
    y = run_model(session, x, batch_size=256)
    assert y.shape == (10, 3)
    expected = x.reshape(10, FEATURES) @ weight.T + bias
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    p50, p90 = measure_latency(session, x[:1], warmup=1, runs=3)
    assert 0 < p50 <= p90


def test_float16_model_gets_float16_input(tmp_path: Path) -> None:
    graph = build.linear(np.eye(FEATURES), np.zeros(FEATURES), dtype=np.float16)
    session = make_session(build.save(graph, tmp_path / "half.onnx"), threads=1)
    x = _rows(6)
    y = run_model(session, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, x.reshape(6, FEATURES), rtol=1e-3, atol=1e-3)


def test_nchw_data_for_an_nhwc_model_is_refused(tmp_path: Path) -> None:
    session = make_session(build.save(build.nhwc_identity(8, 3), tmp_path / "nhwc.onnx"), 1)
    x = np.zeros((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expects shape \['N', 8, 8, 3\].*\[2, 3, 8, 8\]"):
        run_model(session, x)


def test_latency_percentiles_are_ordered(identity_path: Path) -> None:
    session = make_session(identity_path, threads=1)
    p50, p90 = measure_latency(session, _rows(4), warmup=2, runs=20)
    assert 0 < p50 <= p90


def test_path_bytes_of_a_file_and_a_directory(tmp_path: Path) -> None:
    package = tmp_path / "m.mlpackage"
    (package / "Data" / "weights").mkdir(parents=True)
    (package / "Manifest.json").write_bytes(b"a" * 17)
    (package / "Data" / "weights" / "w.bin").write_bytes(b"b" * 1000)
    assert path_bytes(package) == 1017
    assert path_bytes(package / "Manifest.json") == 17
    with pytest.raises(FileNotFoundError):
        path_bytes(tmp_path / "missing.tflite")


# -- the paired latency pass (unified.measure.latency) ---------------------------------------


class FakeClock:
    """A clock that moves only when a fake model "runs": timings become exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake(clock: FakeClock, key: str, seconds: float, log: list[str]) -> Candidate:
    def call() -> None:
        clock.now += seconds
        log.append(key)

    return Candidate(key, lambda: call)


def test_paired_latency_interleaves_and_takes_the_ratio_of_neighbours() -> None:
    clock, log = FakeClock(), []
    ref = _fake(clock, "A", 0.002, log)
    fast, slow = _fake(clock, "B", 0.001, log), _fake(clock, "C", 0.004, log)
    settings = PairedSettings(warmup=1, rounds=3, block=2, switch_warmup=0)
    out = paired_latency(ref, [fast, slow], settings, clock=clock)
    timed = log[3:]  # after one warm-up call each
    assert len(timed) == 3 * (3 * 2 + 2 * 2)  # per round: 3 reference blocks, 2 others
    for start in range(0, len(timed), 10):  # every round: A, one, A, the other, A
        blocks = [timed[i] for i in range(start, start + 10, 2)]
        assert blocks[0] == blocks[2] == blocks[4] == "A"
        assert sorted(blocks[1::2]) == ["B", "C"]
    # three rounds give a median but no 95 % interval (median_interval)
    assert (out["B"].speedup, out["B"].speedup_ci_low, out["B"].speedup_ci_high) == (2, None, None)
    assert out["C"].speedup == pytest.approx(0.5)
    assert out["B"].latency_ms_p50 == pytest.approx(1.0)
    assert out["A"].latency_ms_p50 == pytest.approx(2.0) and out["A"].speedup is None
    assert out["B"].rounds == 3


def test_paired_latency_goes_on_without_a_model_that_cannot_run() -> None:
    clock, log = FakeClock(), []

    def broken() -> Callable[[], object]:
        raise RuntimeError("no session for you")

    out = paired_latency(_fake(clock, "A", 0.002, log),
                         [Candidate("bad", broken), _fake(clock, "B", 0.001, log)],
                         PairedSettings(warmup=0, rounds=2, block=1), clock=clock, max_open=1)
    assert out["bad"].error == "RuntimeError: no session for you"
    assert out["bad"].latency_ms_p50 is None
    assert out["B"].speedup == pytest.approx(2.0)


def test_median_interval_is_distribution_free_over_rounds() -> None:
    median, low, high = median_interval([1.0, 1.1, 0.9, 1.05, 0.95, 3.0, 1.02, 0.98], 0.95)
    assert median == pytest.approx(1.01)
    assert (low, high) == (0.9, 3.0)  # eight rounds: the extremes, coverage 1 - 2/256
    assert low <= 1.0 <= high  # no measurable difference: one outlier round cannot make one
    median, low, high = median_interval([2.0, 2.1, 1.9, 2.05, 1.95, 2.02], 0.95)
    assert low is not None and high is not None and 1.0 < low <= median <= high
    # three (or five) rounds all above 1 happen by chance once in 8 (32): no 95 % interval
    assert median_interval([1.5, 2.2, 3.1], 0.95)[1:] == (None, None)
    assert median_interval([1.5, 2.2, 3.1, 1.2, 1.4], 0.95)[1:] == (None, None)
    twenty = [float(i) for i in range(1, 21)]
    assert median_interval(twenty, 0.95)[1:] == (6.0, 15.0)  # P(Binomial(20, 1/2) <= 5) = 0.021
    assert rounds_for(200) == 20 and rounds_for(50) == 8 and rounds_for(3) == 3


def test_paired_latency_on_real_sessions(identity_path: Path, tmp_path: Path) -> None:
    qdq = build.save(build.qdq_conv(RNG.integers(-100, 100, size=(10, 4, 5, 5)), 0,
                                    np.arange(10)), tmp_path / "qdq.onnx")
    x = RNG.uniform(-1, 1, size=(2, 4, 8, 8)).astype(np.float32)
    out = paired_latency(onnx_candidate("ref", qdq, x, 1), [onnx_candidate("same", qdq, x, 1)],
                         PairedSettings.from_runs(warmup=2, runs=20))
    same = out["same"]
    assert same.error is None and same.rounds == 8
    assert 0 < same.latency_ms_p50 <= same.latency_ms_p90
    assert 0 < same.speedup_ci_low <= same.speedup <= same.speedup_ci_high
