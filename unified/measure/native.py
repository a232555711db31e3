"""The native runtime's own latency: a row's native artifact timed against the same runtime's
fp32 baseline, so a slow ONNX is told apart from a slow toolkit (the round-trip, not the
toolkit). Only runtimes that run here: TorchScript (torch models of pytorch and NNI) and the
TFLite interpreter (TF-MOT).

An adapter declares its runnable native pair as :class:`NativeFiles` (written next to its
artifacts); the driver's latency pass times the pair interleaved with
:func:`unified.measure.latency.paired_latency`, like the ONNX rows.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unified.measure.latency import Call, Candidate
from unified.streams import redirected

RUNTIMES = ("torchscript", "tflite")


@dataclass(frozen=True)
class NativeFiles:
    """A row's native model and the same runtime's fp32 baseline (the reference model through
    the same toolkit path, uncompressed)."""

    runtime: str  # one of RUNTIMES
    model: Path
    reference: Path
    # torchscript: the torch quantized engine the model was quantized for (None: the default)
    engine: str | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(f"native runtime must be one of {RUNTIMES}, not {self.runtime!r}")

    def as_record(self, folder: Path) -> dict[str, str]:
        """The record's ``native_files``: paths relative to the job folder."""
        out = {"runtime": self.runtime, "model": _relative(self.model, folder),
               "reference": _relative(self.reference, folder)}
        return out if self.engine is None else {**out, "engine": self.engine}

    @classmethod
    def from_record(cls, data: dict[str, Any], folder: Path) -> NativeFiles:
        def path(name: str) -> Path:
            p = Path(data[name])
            return p if p.is_absolute() else folder / p

        engine = data.get("engine")
        return cls(str(data["runtime"]), path("model"), path("reference"),
                   None if engine is None else str(engine))


def _relative(path: Path, folder: Path) -> str:
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path)


def native_candidate(key: str, runtime: str, path: Path, sample: np.ndarray,
                     threads: int, engine: str | None = None) -> Candidate:
    """A candidate running ``path`` in its native runtime on the first row of ``sample``
    (NCHW float32; the TFLite interpreter gets it as NHWC), one thread like the ONNX pass.
    ``engine``: the torch quantized engine a quantized TorchScript was made for; it is set
    before loading, which packs the weights for that engine."""
    row = np.ascontiguousarray(sample[:1], dtype=np.float32)

    def torchscript() -> Call:
        import torch

        torch.set_num_threads(threads)
        if engine is not None:
            torch.backends.quantized.engine = engine
        inputs = torch.from_numpy(row)
        # torch's C++ core warns (once per process, on stderr, on the first quantized call)
        # that quantize_per_tensor is deprecated: a line on the run's console that says
        # nothing of this model, so the load and a first call happen with stderr discarded
        with redirected(None, fds=(2,)), warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu").eval()
            module(inputs)

        def call() -> object:
            with torch.inference_mode():
                return module(inputs)

        return call

    def tflite() -> Call:
        # TensorFlow's C++ start-up log (absl writes it to stderr before any log level
        # applies), the interpreter's deprecation warning and its delegate line would land on
        # the run's console: import, load and a first call happen with stderr discarded
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # a user's own setting wins
        with redirected(None, fds=(2,)), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tensorflow as tf

            interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
            detail = interpreter.get_input_details()[0]
            feed = np.transpose(row, (0, 2, 3, 1)) if len(row.shape) == 4 else row
            if tuple(detail["shape"]) != feed.shape:
                interpreter.resize_tensor_input(detail["index"], feed.shape)
            interpreter.allocate_tensors()
            if detail["dtype"] != np.float32:  # a fully integer model: quantize the input
                scale, zero = detail["quantization"]
                feed = np.clip(np.round(feed / scale + zero), np.iinfo(detail["dtype"]).min,
                               np.iinfo(detail["dtype"]).max).astype(detail["dtype"])
            index = detail["index"]
            interpreter.set_tensor(index, feed)
            interpreter.invoke()

        def call() -> object:
            interpreter.set_tensor(index, feed)
            interpreter.invoke()
            return None

        return call

    return Candidate(key, torchscript if runtime == "torchscript" else tflite)
