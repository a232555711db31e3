"""unified.measure.onnx_inspect on hand-built ONNX models whose answers are known exactly."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnx_builders as build
import pytest

from unified.measure.onnx_inspect import (
    compute_op_summary,
    inspect_onnx,
    optimized_op_counts,
)

RNG = np.random.default_rng(0)


def _half_zero(shape: tuple[int, ...]) -> np.ndarray:
    """Returns nonzero values in `shape` with exactly half of the entries set to 0."""
    values = RNG.uniform(0.5, 1.5, size=shape) * RNG.choice([-1, 1], size=shape)
    flat = values.reshape(-1)
    flat[RNG.permutation(flat.size)[: flat.size // 2]] = 0.0
    return values


def _int8_weight(zero_point: int, n_zp: int, n_zero: int) -> np.ndarray:
    """Returns a [10, 4, 5, 5] int8 weight: n_zp entries == zero_point, n_zero entries == 0."""
    values = RNG.integers(10, 100, size=1000)  # never 0 or the zero point by chance
    order = RNG.permutation(1000)
    values[order[:n_zp]] = zero_point
    values[order[n_zp : n_zp + n_zero]] = 0
    return values.reshape(10, 4, 5, 5)


@pytest.fixture
def conv_gemm_path(tmp_path: Path) -> Path:
    graph = build.conv_gemm(
        _half_zero((4, 2, 3, 3)), np.ones(4), _half_zero((10, 64)), np.ones(10), hw=4
    )
    return build.save(graph, tmp_path / "conv_gemm.onnx")


def test_half_zero_weights_give_sparsity_one_half(conv_gemm_path: Path) -> None:
    stats = inspect_onnx(conv_gemm_path)
    assert stats.sparsity == 0.5
    assert stats.parameters == 72 + 4 + 640 + 10  # weights + biases
    assert [(w.name, w.op_type, w.shape, w.size, w.zeros) for w in stats.weights] == [
        ("conv_w", "Conv", (4, 2, 3, 3), 72, 36),
        ("gemm_w", "Gemm", (10, 64), 640, 320),
    ]
    assert {w.dtype for w in stats.weights} == {"float32"}
    assert stats.int8_fraction == 0.0
    assert stats.op_counts == {"Conv": 1, "Relu": 1, "Flatten": 1, "Gemm": 1}
    assert stats.onnx_bytes == conv_gemm_path.stat().st_size


def test_gzip_bytes_is_gzip9_of_the_file(conv_gemm_path: Path) -> None:
    expected = len(gzip.compress(conv_gemm_path.read_bytes(), compresslevel=9))
    assert inspect_onnx(conv_gemm_path).gzip_bytes == expected


def test_max_distinct_values_counts_the_most_varied_weight(tmp_path: Path) -> None:
    palette = np.linspace(-1.0, 1.0, 16)
    conv_w = np.concatenate([palette, RNG.choice(palette, size=72 - 16)]).reshape(4, 2, 3, 3)
    gemm_w = RNG.choice([-0.5, 0.0, 0.25, 0.5], size=(10, 64))
    gemm_w[0, :4] = [-0.5, 0.0, 0.25, 0.5]  # all four values present
    path = build.save(
        build.conv_gemm(conv_w, np.zeros(4), gemm_w, np.zeros(10)), tmp_path / "m.onnx"
    )
    stats = inspect_onnx(path)
    assert [w.distinct for w in stats.weights] == [16, 4]
    assert stats.max_distinct_values == 16


def test_qdq_weight_is_counted_as_stored_int8(tmp_path: Path) -> None:
    # 250 weights sit at the zero point 3 (they dequantize to 0.0); 100 stored 0s do not.
    w = _int8_weight(zero_point=3, n_zp=250, n_zero=100)
    path = build.save(build.qdq_conv(w, 3, np.arange(10)), tmp_path / "qdq.onnx")
    stats = inspect_onnx(path)
    (weight,) = stats.weights
    assert (weight.name, weight.op_type, weight.dtype) == ("w_q", "Conv", "int8")
    assert (weight.shape, weight.size, weight.zeros) == ((10, 4, 5, 5), 1000, 250)
    assert weight.distinct == len(np.unique(w))
    assert stats.sparsity == 0.25
    assert stats.parameters == 1000 + 10  # int8 weight + int32 bias
    # Initializers: w 1000 int8 + x_zp, w_zp, y_zp (uint8/int8) out of 1000 + 10 bias + 8 scalars.
    assert stats.int8_fraction == 1003 / 1018
    assert stats.op_counts == {"DequantizeLinear": 4, "QuantizeLinear": 2, "Conv": 1}


def test_per_channel_zero_points_are_compared_channel_by_channel(tmp_path: Path) -> None:
    zps = np.arange(-5, 5)  # one per output channel
    w = RNG.integers(10, 100, size=(10, 4, 5, 5))
    for c, zp in enumerate(zps):
        w[c].flat[: c + 1] = zp  # channel c has c + 1 weights at its own zero point
    w[0, 1, 1, 1] = 1  # channel 0 is at zp -5; a 1 in it is not a zero
    path = build.save(build.qdq_conv(w, zps, np.zeros(10)), tmp_path / "pc.onnx")
    assert inspect_onnx(path).weights[0].zeros == sum(range(1, 11))


def test_fake_quantized_float_weight_counts_its_quantized_values(tmp_path: Path) -> None:
    levels = np.arange(-8, 8)  # 16 levels of 0.05; small float noise rounds away
    w = (np.concatenate([levels, RNG.choice(levels, size=200 - 16)]) * 0.05).reshape(4, 2, 5, 5)
    w += RNG.uniform(-0.01, 0.01, size=w.shape)
    path = build.save(build.fake_quant_conv(w, 0.05), tmp_path / "fq.onnx")
    stats = inspect_onnx(path)
    (weight,) = stats.weights
    assert (weight.name, weight.dtype, weight.distinct) == ("w", "float32", 16)
    assert weight.zeros == int(np.sum(np.rint(w / 0.05) == 0))
    assert stats.int8_fraction == 1 / 202  # only the int8 zero point is stored narrow


def test_weight_is_traced_through_transpose(tmp_path: Path) -> None:
    weight = _half_zero((10, 6))
    path = build.save(build.transposed_matmul(weight), tmp_path / "mm.onnx")
    (info,) = inspect_onnx(path).weights
    assert (info.name, info.node, info.op_type, info.shape) == ("w", "mm", "MatMul", (10, 6))
    assert info.zeros == 30


def test_external_data_is_loaded_and_sized(tmp_path: Path) -> None:
    graph = build.conv_gemm(_half_zero((4, 2, 3, 3)), np.ones(4), _half_zero((10, 64)), np.ones(10))
    path = build.save(graph, tmp_path / "ext.onnx", external=True)
    data = tmp_path / "ext.onnx.data"
    assert data.stat().st_size >= 4 * (72 + 4 + 640 + 10)  # the weights really live outside
    stats = inspect_onnx(path)
    assert stats.sparsity == 0.5
    assert stats.onnx_bytes == path.stat().st_size + data.stat().st_size
    together = path.read_bytes() + data.read_bytes()
    assert stats.gzip_bytes == len(gzip.compress(together, compresslevel=9))
    data.unlink()
    with pytest.raises(FileNotFoundError, match=r"ext\.onnx\.data"):
        inspect_onnx(path)


def test_onnxruntime_fuses_the_qdq_conv_into_qlinearconv(tmp_path: Path) -> None:
    w = _int8_weight(zero_point=0, n_zp=100, n_zero=0)
    path = build.save(build.qdq_conv(w, 0, np.arange(10)), tmp_path / "qdq.onnx")
    ops = optimized_op_counts(path)
    assert ops.get("QLinearConv") == 1
    assert "Conv" not in ops
    assert compute_op_summary(ops) == (1, 0)


def test_float_model_stays_float_after_optimization(conv_gemm_path: Path) -> None:
    ops = optimized_op_counts(conv_gemm_path)
    assert compute_op_summary(ops) == (0, 2)  # Conv(+Relu fused) and Gemm, whatever their names


def test_compute_op_summary_splits_quantized_and_float() -> None:
    counts = {"QLinearConv": 3, "MatMulInteger": 1, "FusedConv": 2, "MatMul": 1, "Relu": 9}
    assert compute_op_summary(counts) == (4, 3)
    assert compute_op_summary({}) == (0, 0)
