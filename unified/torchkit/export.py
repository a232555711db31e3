"""torch → ONNX, the one way every torch-based backend exports."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

from unified.streams import redirected

OPSET = 17


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: tuple[int, int, int],
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Export with the TorchScript exporter (``dynamo=False``): it is the one that turns
    torch.ao quantized and fake-quant models into QDQ ONNX that onnxruntime fuses."""
    model = model.eval()
    sample = torch.zeros(1, *input_shape)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()), _native_stderr_discarded():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


@contextlib.contextmanager
def _native_stderr_discarded() -> Iterator[None]:
    """Discard what C++ code writes to stderr (file descriptor 2) for the duration, with
    torch's ONNX log sent there. When the TorchScript exporter fails it dumps the whole graph
    to that log, which is always on (torch 2.x's setup_onnx_logging tests the function
    ``_jit_is_onnx_log_enabled`` for truth instead of calling it) and writes to stdout, where
    the run's progress is. The exception itself says what failed."""
    set_stream = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    if set_stream is not None:
        set_stream("stderr")
    with redirected(None, fds=(2,)):
        yield


def save_torchscript(model: nn.Module, path: Path, input_shape: tuple[int, int, int]) -> str | None:
    """Trace ``model`` (eval mode, float32 input) to a TorchScript file the latency pass times
    as the native runtime; return why it could not be traced, or None."""
    model = model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, torch.zeros(1, *input_shape), check_trace=False)
            traced.save(str(path))
    except Exception as exc:  # a model torch cannot trace: no native timing, said so
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None
