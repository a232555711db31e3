"""torch → ONNX, the one way every torch-based backend exports."""

from __future__ import annotations

import io
import warnings
from contextlib import redirect_stdout
from pathlib import Path

import torch
from torch import nn

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
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
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
