"""coremltools pipeline: an optional optimize.torch stage (``_impl_torch``) on the BN-folded
reference, then an optional optimize.coreml stage (``_impl_post``) whose compressed weights
are read back into the torch model for the ONNX."""

from __future__ import annotations

import contextlib
from typing import Any

from adapters.base import Artifacts
from adapters.coreml import COREML, TORCH, TRAIN, _impl_torch
from adapters.coreml._impl_common import weight_file
from adapters.coreml._impl_post import coreml_op, coreml_to_onnx, run_coreml_steps
from unified.context import JobContext
from unified.spec.steps import QuantizeStep
from unified.torchkit.fold import batchnorm_count, fold_batchnorm
from unified.torchkit.training import set_seed


def compress(ctx: JobContext, routes: list[str]) -> Artifacts:
    """Run the recipe: optional optimize.torch stage, then optional optimize.coreml stage."""
    set_seed(ctx.seed)
    steps = ctx.recipe.steps
    model = ctx.reference_model()
    with contextlib.suppress(Exception):  # untraceable: nothing folded, the read-back tells
        fold_batchnorm(model)
    left = batchnorm_count(model)
    if left:
        ctx.note(f"{left} BatchNorm layers could not be folded into a conv")
    details: dict[str, Any] = {}
    torch_result = None
    if TORCH in routes or (steps and routes[0] == TRAIN):
        torch_result = _impl_torch.run(ctx, model, steps, routes)
        model = torch_result.model
    coreml_steps = [(s, coreml_op(s, ctx)) for s, r in zip(steps, routes, strict=True)
                    if r == COREML]
    fp16 = any(isinstance(s, QuantizeStep) and (s.weights == 16 or s.activations == 16)
               for s, _ in coreml_steps)
    if torch_result is not None and torch_result.onnx_path is not None:
        # LinearQuantizer: the fake-quant model is the ONNX; no read-back of Core ML weights
        return torch_result.artifacts(ctx)
    if fp16:
        ctx.note("converted with compute_precision FLOAT16 (fp16 weights and activations); "
                 "the ONNX carries the fp16 weights and computes in fp32")
    fp32_package, package, _ = run_coreml_steps(ctx, model, coreml_steps, fp16)
    onnx_path, exact = coreml_to_onnx(ctx, model, package)
    fp32_bytes = weight_file(fp32_package).stat().st_size
    native = weight_file(package)
    details.update(
        fp32_weight_bytes=fp32_bytes,
        weight_bytes=native.stat().st_size,
        weight_file_ratio=round(native.stat().st_size / fp32_bytes, 4),
        readback_exact=exact,
        mlpackage=str(package),
    )
    if torch_result is not None:
        details.update(torch_result.details)
    notes = [
        "native_bytes is the mlpackage's weight file (Data/com.apple.CoreML/weights/"
        "weight.bin); the program description (model.mlmodel) is not counted",
        "ONNX = the BN-folded torch model carrying the decompressed Core ML weights "
        "(decompress_weights; equal to the ONNX weights exactly)",
    ]
    return Artifacts(onnx_path=onnx_path, native_path=native, deploy_path=package, notes=notes,
                     details=details)
