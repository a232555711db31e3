"""What both coremltools routes share: the conv/linear layers in execution order, conversion
to an mlprogram and reading the MIL program back, and the check that torch layers and Core
ML ops line up."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from adapters.coreml._impl_ct import ct, ct_model_utils, milproto_load
from unified.spec.errors import ExportMismatch
from unified.torchkit.fxtrace import static_shapes

WEIGHT_FILE = Path("Data/com.apple.CoreML/weights/weight.bin")
COMPUTE_OPS = ("conv", "linear")
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)
DEFAULT_GROUP = 32  # coremltools' default group_size / block_size

for _name in ("coremltools", "coremltools.optimize"):
    logging.getLogger(_name).setLevel(logging.ERROR)


# --- torch side -----------------------------------------------------------------------------


def layers_in_order(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, nn.Module]]:
    """conv/linear modules in the order a forward pass runs them (each once)."""
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            def hook(mod: nn.Module, _inp: Any, _out: Any, name: str = name) -> None:
                if id(mod) not in seen:
                    seen.add(id(mod))
                    order.append((name, mod))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return order


# --- Core ML side ---------------------------------------------------------------------------


def convert(model: nn.Module, input_shape: tuple[int, ...], fp16: bool) -> ct.models.MLModel:
    """torch.jit.trace → ct.convert to an iOS18 mlprogram (joint compression needs iOS18)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = torch.zeros(1, *input_shape)
        # the program has one input shape: sizes read in forward are its constants
        # (coremltools cannot convert the aten::Int of a traced x.size(0))
        # check_trace off: its second trace can name float modules (nn.MultiheadAttention)
        # differently and fail on that alone; the read-back check compares the weights
        traced = torch.jit.trace(static_shapes(model.eval(), example), example,
                                 check_trace=False)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(name="input", shape=(1, *input_shape))],
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS18,
        )


def load_mlpackage(path: Path) -> ct.models.MLModel:
    # No Core ML runtime on Linux: load the spec and weights only.
    return ct.models.MLModel(str(path), skip_model_load=True)


def mil_program(mlmodel: ct.models.MLModel) -> Any:
    """The PyMIL program of a (saved or converted) mlprogram."""
    spec = mlmodel.get_spec()
    return ct_model_utils._convert_model_spec_to_pymil_prog(
        mlmodel, spec.specificationVersion, milproto_load.load
    )


def compute_ops(prog: Any) -> list[Any]:
    return [op for op in prog.functions["main"].operations if op.op_type in COMPUTE_OPS]


def _source_op(var: Any) -> Any:
    return var.op if var is not None else None


def weight_file(package: Path) -> Path:
    return package / WEIGHT_FILE



def _weight(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


def _check_alignment(layers: list[tuple[str, nn.Module]], shapes: list[tuple[int, ...]]) -> None:
    torch_shapes = [tuple(_weight(m).shape) for _, m in layers]
    if len(torch_shapes) != len(shapes) or any(
        tuple(a) != tuple(b) for a, b in zip(torch_shapes, shapes, strict=False)
    ):
        raise ExportMismatch(
            "the Core ML program's conv/linear weights do not match the torch layers by order "
            f"and shape: torch {torch_shapes}, Core ML {[tuple(s) for s in shapes]}"
        )

