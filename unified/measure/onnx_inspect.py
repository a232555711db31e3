"""Static inspection of an ONNX file: sizes, conv/linear weights, sparsity, distinct values, ops.

Everything here reads the file as stored (onnx + numpy only). `optimized_op_counts` is the one
exception: it asks onnxruntime for the graph it actually executes, imported inside the function
so that `import unified.measure.onnx_inspect` stays cheap.
"""

from __future__ import annotations

import gzip
import io
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import external_data_helper

from unified.measure.onnx_weights import WeightInfo, collect_weights

__all__ = [
    "FLOAT_COMPUTE_OPS",
    "QUANTIZED_COMPUTE_OPS",
    "OnnxStats",
    "WeightInfo",
    "compute_op_summary",
    "inspect_onnx",
    "optimized_op_counts",
]


@dataclass(frozen=True)
class OnnxStats:
    """Static figures of one ONNX file."""

    onnx_bytes: int  # file size (+ external data files)
    gzip_bytes: int  # gzip -9 size of the same bytes
    parameters: int  # elements of conv/linear weights and their biases
    sparsity: float | None  # zeros / size over conv/linear weights; None if there are none
    max_distinct_values: int | None  # max distinct stored values over conv/linear weights
    int8_fraction: float  # share of all initializer elements stored as 8 bits or narrower int
    weights: tuple[WeightInfo, ...]
    op_counts: dict[str, int]  # op_type -> count in the graph as stored


# Compute ops, split by whether they run on integer weights. Used on ORT's optimized graph,
# where QDQ pairs around a Conv have been fused into QLinearConv (or were left in float).
QUANTIZED_COMPUTE_OPS: frozenset[str] = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QLinearConvTranspose",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLSTM",
        "QGemm",
        "QAttention",
        "MatMulNBits",
        "MatMulBnb4",
    }
)
FLOAT_COMPUTE_OPS: frozenset[str] = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "TransposeMatMul",  # older name of FusedMatMul
        "NhwcConv",
        "NhwcFusedConv",
        "ConvTransposeWithDynamicPads",
    }
)

_NARROW_INT_TYPES = frozenset(
    getattr(onnx.TensorProto, name)
    for name in ("INT8", "UINT8", "INT4", "UINT4", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, name)
)


# ---------------------------------------------------------------- loading and file sizes


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Yields every TensorProto held by a graph: initializers, Constant values, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == onnx.AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_tensors(sub)


def _external_files(model: onnx.ModelProto, base: Path) -> list[Path]:
    """Returns the distinct external data files the model's tensors point to."""
    files: set[Path] = set()
    for tensor in _graph_tensors(model.graph):
        if external_data_helper.uses_external_data(tensor):
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            if location:
                files.add(base / location)
    return sorted(files)


def _load(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
    """Returns the model with all tensor data loaded, and the external data files it used."""
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    # Load the graph first, then the external data ourselves: a missing data file then gets a
    # message naming it instead of a bare protobuf/IO error from deep inside onnx.
    model = onnx.load(str(path), load_external_data=False)
    files = _external_files(model, path.parent)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: external data file(s) not found: {', '.join(missing)}")
    if files:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    return model, files


class _CountingSink(io.RawIOBase):
    """A write-only stream that only counts bytes (the gzip output itself is not kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = memoryview(data).nbytes
        self.count += size
        return size


def _gzip_size(files: list[Path]) -> int:
    """Returns len(gzip.compress(concatenated file bytes, compresslevel=9)), streamed."""
    sink = _CountingSink()
    # Streaming keeps memory flat for 100 MB+ models; deflate output does not depend on how
    # the input is chunked, so the length equals the one-shot gzip.compress length.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=sink, mtime=0) as gz:
        for file in files:
            with file.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    gz.write(chunk)
    return sink.count


def _int8_fraction(model: onnx.ModelProto) -> float:
    """Returns the share of initializer (and Constant) elements stored as <= 8-bit integers."""
    total = narrow = 0
    tensors: list[onnx.TensorProto] = list(model.graph.initializer)
    # Constant nodes hold weights in some exporters, so they count as initializers here.
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for t in tensors:
        size = int(np.prod(tuple(t.dims), dtype=np.int64))
        total += size
        if t.data_type in _NARROW_INT_TYPES:
            narrow += size
    return narrow / total if total else 0.0


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Yields the nodes of a graph and of its subgraphs (If/Loop/Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def _op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Returns op_type -> number of nodes, subgraphs included, most frequent first."""
    return dict(Counter(node.op_type for node in _all_nodes(model.graph)).most_common())


# ---------------------------------------------------------------- public API


def inspect_onnx(path: str | Path) -> OnnxStats:
    """Returns the static figures (sizes, weights, sparsity, int8 share, ops) of an ONNX file."""
    path = Path(path)
    model, external = _load(path)
    files = [path, *external]
    weights, parameters = collect_weights(model)
    size = sum(w.size for w in weights)
    return OnnxStats(
        onnx_bytes=sum(f.stat().st_size for f in files),
        gzip_bytes=_gzip_size(files),
        parameters=parameters,
        sparsity=sum(w.zeros for w in weights) / size if size else None,
        max_distinct_values=max((w.distinct for w in weights), default=None),
        int8_fraction=_int8_fraction(model),
        weights=tuple(weights),
        op_counts=_op_counts(model),
    )


def optimized_op_counts(path: str | Path, threads: int = 1) -> dict[str, int]:
    """Returns op_type -> count of the graph onnxruntime runs (ORT_ENABLE_ALL, CPU EP)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="squeezelab-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # the NCHWc "hardware specific" save warning is expected
        options.optimized_model_filepath = str(out)
        # Weights go to a side file: only the graph is read back, and >2 GB models still save.
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.onnx.data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return _op_counts(onnx.load(str(out), load_external_data=False))


def compute_op_summary(op_counts: dict[str, int]) -> tuple[int, int]:
    """Returns (quantized_compute_ops, float_compute_ops) counted from an op_type histogram."""
    quantized = sum(c for op, c in op_counts.items() if op in QUANTIZED_COMPUTE_OPS)
    floating = sum(c for op, c in op_counts.items() if op in FLOAT_COMPUTE_OPS)
    return quantized, floating
