"""The one onnxruntime yardstick: every compressed model is measured here, the same way.

onnxruntime is imported inside the functions that run it, so that importing this module
(e.g. for `HarnessSettings`) stays cheap and sends nothing anywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unified.measure.macs import count_macs
from unified.measure.onnx_inspect import compute_op_summary, inspect_onnx, optimized_op_counts
from unified.measure.outputs import rel_l2

if TYPE_CHECKING:
    import onnxruntime

__all__ = [
    "MEASURE_KEYS",
    "HarnessSettings",
    "ReferenceFigures",
    "artifact_format",
    "latency_feed",
    "make_session",
    "measure",
    "measure_latency",
    "measure_outputs",
    "path_bytes",
    "run_model",
]

# The keys `measure` returns, in this order; they are result-record fields (docs/architecture.md).
MEASURE_KEYS: tuple[str, ...] = (
    "accuracy",
    "accuracy_drop",
    "agreement",
    "rel_l2",
    "onnx_bytes",
    "native_bytes",
    "deploy_bytes",
    "deploy_format",
    "gzip_bytes",
    "size_ratio",
    "gzip_ratio",
    "macs",
    "macs_ratio",
    "parameters",
    "sparsity",
    "max_distinct_values",
    "int8_fraction",
    "quantized_compute_ops",
    "float_compute_ops",
    "ort_ops",
    "latency_ms_p50",
    "latency_ms_p90",
    "speedup",
)

_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class HarnessSettings:
    """Measurement settings, identical for every job of a run (a fairness rule)."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50  # 0 skips latency: its fields are then None
    batch_size: int = 256


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make generated __eq__ ambiguous
class ReferenceFigures:
    """What the fp32 reference measured; the denominators of every ratio."""

    accuracy: float | None
    logits: np.ndarray
    onnx_bytes: int
    gzip_bytes: int
    latency_ms_p50: float | None
    macs: int | None = None


def make_session(path: str | Path, threads: int) -> onnxruntime.InferenceSession:
    """Returns an InferenceSession built with the one set of options every job uses."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: per-model optimizer warnings are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_spec(
    session: onnxruntime.InferenceSession, x: np.ndarray
) -> tuple[str, Any, int | None]:
    """Returns (input name, numpy dtype, fixed batch size or None) after checking x's shape.

    Raises ValueError when x cannot be fed as is: layouts are never guessed (an NHWC model
    given NCHW data is a conversion bug to fix, not something to transpose around).
    """
    first = session.get_inputs()[0]
    dtype = _INPUT_DTYPES.get(first.type)
    if dtype is None:
        raise ValueError(
            f"model input '{first.name}' has type {first.type}; expected a float tensor"
        )
    expected = list(first.shape)
    given = list(x.shape)
    # Symbolic dims come back as str (or None); only concrete ints constrain x.
    fixed = [d if isinstance(d, int) and d > 0 else None for d in expected]
    if len(fixed) != len(given) or any(
        f is not None and f != g for f, g in zip(fixed[1:], given[1:], strict=True)
    ):
        shown = ["N" if f is None else f for f in fixed]
        raise ValueError(
            f"model input '{first.name}' expects shape {shown}, given data of shape {given} "
            "(layouts are not converted: check the export, e.g. NHWC vs NCHW)"
        )
    return first.name, dtype, fixed[0] if fixed else None


def _run_chunk(
    session: onnxruntime.InferenceSession, name: str, chunk: np.ndarray, fixed: int | None
) -> np.ndarray:
    """Returns the first output for `chunk`, padding it to a fixed batch size if needed."""
    rows = chunk.shape[0]
    if fixed is not None and rows < fixed:
        # A fixed batch larger than the rows left: pad with zeros and drop the padded outputs.
        pad = np.zeros((fixed - rows, *chunk.shape[1:]), dtype=chunk.dtype)
        chunk = np.concatenate([chunk, pad])
    out = np.asarray(session.run(None, {name: chunk})[0])
    total = chunk.shape[0]
    if out.size % total:
        raise ValueError(f"model output of shape {list(out.shape)} does not have {total} rows")
    return out.reshape(total, -1)[:rows]


def run_model(
    session: onnxruntime.InferenceSession, x: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Returns the first output for every row of x, as float32 of shape (rows, -1).

    Rows go in chunks of `batch_size`, or of the model's batch size when it is fixed (e.g. 1
    for TFLite-converted models). x is cast to the input's float type (float32 or float16).
    """
    name, dtype, fixed = _input_spec(session, x)
    chunk_rows = fixed if fixed is not None else max(1, batch_size)
    data = np.ascontiguousarray(x, dtype=dtype)
    outputs = [
        _run_chunk(session, name, data[start : start + chunk_rows], fixed)
        for start in range(0, data.shape[0], chunk_rows)
    ]
    if not outputs:
        raise ValueError("run_model needs at least one row of input")
    return np.concatenate(outputs).astype(np.float32, copy=False)


def latency_feed(session: onnxruntime.InferenceSession, sample: np.ndarray) -> dict[str, Any]:
    """The input of one latency call: the first row of `sample`, cast to the input's type.

    A model with a fixed batch larger than one gets the row repeated to that batch: that is
    the smallest call it can serve.
    """
    name, dtype, fixed = _input_spec(session, sample)
    data = np.ascontiguousarray(sample[:1], dtype=dtype)
    if fixed is not None and fixed > 1:
        data = np.ascontiguousarray(np.repeat(data, fixed, axis=0))
    return {name: data}


def measure_latency(
    session: onnxruntime.InferenceSession, sample: np.ndarray, warmup: int, runs: int
) -> tuple[float, float]:
    """Returns (p50, p90) milliseconds of one session.run on `sample` (one row), after warmup.

    One model alone; a speedup comes from `unified.measure.latency.paired_latency`, which
    times the reference and the candidates interleaved.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    feed = latency_feed(session, sample)
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - start
    p50, p90 = np.percentile(times * 1000.0, [50, 90])
    return float(p50), float(p90)


def artifact_format(path: Path | None) -> str | None:
    """What kind of file an artifact is: its suffix (".pt", ".tflite", ".mlpackage"), or its
    name when it has none."""
    if path is None:
        return None
    return path.suffix or path.name


def path_bytes(path: str | Path) -> int:
    """Returns the size of a file, or the total size of all files under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        # Packages such as .mlpackage are directories: their size is all the files inside.
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    raise FileNotFoundError(f"native artifact not found: {path}")


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Returns numerator / denominator, or None when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def _top1(logits: np.ndarray) -> np.ndarray:
    """Returns the argmax class of every row."""
    return np.argmax(logits.reshape(logits.shape[0], -1), axis=1)


def _against_reference(logits: np.ndarray, predicted: np.ndarray,
                       reference: ReferenceFigures | None) -> tuple[float | None, float | None]:
    """Top-1 agreement with the reference's logits and the relative L2 distance from them."""
    if reference is None:
        return None, None
    ref = np.asarray(reference.logits, dtype=np.float32).reshape(len(reference.logits), -1)
    if ref.shape != logits.shape:
        raise ValueError(
            f"reference logits have shape {list(ref.shape)}, this model gives "
            f"{list(logits.shape)}: they must come from the same test rows and classes"
        )
    agreement = float(np.mean(predicted == _top1(ref)))
    return agreement, rel_l2(logits, ref)


def measure(
    onnx_path: str | Path,
    *,
    native_path: Path | None,
    deploy_path: Path | None = None,
    test_x: np.ndarray,
    test_y: np.ndarray | None,
    reference: ReferenceFigures | None,
    settings: HarnessSettings,
) -> dict[str, Any]:
    """Returns the harness figures (keys: MEASURE_KEYS) of one ONNX model; None = not computable.

    With reference=None (measuring the reference itself) the reference-relative fields are None.
    Ratios of the native and deployable artifacts need the backend's own fp32 artifact: the
    runner sets them (unified.run.aggregate). Values are plain Python types so the dict goes
    straight into results.jsonl.
    """
    return measure_outputs(onnx_path, native_path=native_path, deploy_path=deploy_path,
                           test_x=test_x, test_y=test_y, reference=reference,
                           settings=settings)[0]


def measure_outputs(
    onnx_path: str | Path,
    *,
    native_path: Path | None,
    deploy_path: Path | None = None,
    test_x: np.ndarray,
    test_y: np.ndarray | None,
    reference: ReferenceFigures | None,
    settings: HarnessSettings,
) -> tuple[dict[str, Any], np.ndarray]:
    """`measure`, and the model's logits on test_x (rows × outputs, float32)."""
    stats = inspect_onnx(onnx_path)
    session = make_session(onnx_path, settings.threads)
    logits = run_model(session, test_x, settings.batch_size)
    predicted = _top1(logits)

    accuracy: float | None = None
    if test_y is not None:
        labels = np.asarray(test_y).reshape(-1)
        if labels.shape[0] != predicted.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {predicted.shape[0]} test rows")
        accuracy = float(np.mean(predicted == labels))

    agreement, rel_l2 = _against_reference(logits, predicted, reference)

    ort_ops = {op: n for op, n in optimized_op_counts(onnx_path, settings.threads).items() if n}
    quantized_ops, float_ops = compute_op_summary(ort_ops)

    p50: float | None = None
    p90: float | None = None
    if settings.runs > 0:
        p50, p90 = measure_latency(session, test_x[:1], settings.warmup, settings.runs)

    native_bytes = None if native_path is None else path_bytes(native_path)
    deploy_bytes = None if deploy_path is None else path_bytes(deploy_path)
    macs = count_macs(onnx_path)
    ref_accuracy = None if reference is None else reference.accuracy
    ref_bytes = None if reference is None else reference.onnx_bytes
    result: dict[str, Any] = {
        "accuracy": accuracy,
        "accuracy_drop": (
            None if ref_accuracy is None or accuracy is None else float(ref_accuracy - accuracy)
        ),
        "agreement": agreement,
        "rel_l2": rel_l2,
        "onnx_bytes": stats.onnx_bytes,
        "native_bytes": native_bytes,
        "deploy_bytes": deploy_bytes,
        "deploy_format": artifact_format(deploy_path),
        "gzip_bytes": stats.gzip_bytes,
        "size_ratio": _ratio(ref_bytes, stats.onnx_bytes),
        "gzip_ratio": _ratio(None if reference is None else reference.gzip_bytes, stats.gzip_bytes),
        "macs": macs,
        "macs_ratio": _ratio(None if reference is None else reference.macs, macs),
        "parameters": stats.parameters,
        "sparsity": stats.sparsity,
        "max_distinct_values": stats.max_distinct_values,
        "int8_fraction": stats.int8_fraction,
        "quantized_compute_ops": quantized_ops,
        "float_compute_ops": float_ops,
        "ort_ops": ort_ops,
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "speedup": _ratio(None if reference is None else reference.latency_ms_p50, p50),
    }
    assert tuple(result) == MEASURE_KEYS  # the record's field names are a user contract
    return result, logits
