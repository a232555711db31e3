"""NNI quantizers and binarizers, and the QDQ ONNX built from NNI's own scales.

NNI 3.0 has no CPU quantized export, so:

- quantize: BatchNorm is folded into the preceding conv BEFORE NNI's quantizer (the exported
  ONNX has no BatchNorm either), so NNI's per-channel weight scales are computed on exactly
  the weights the ONNX carries. NNI trains/calibrates; its fake-quant weights are written back
  into plain float modules, the float model is exported with the shared exporter, and
  QuantizeLinear/DequantizeLinear are inserted: int8 weights quantized with NNI's weight
  scales (symmetric, NNI's int8 range [-127, 127]), a uint8 QDQ pair with NNI's activation
  scale/zero point on the input of every quantized conv/linear, int32 biases at
  input_scale × weight_scale (what onnxruntime needs to fuse QLinearConv).
- binarize: BNN / DoReFa 1-bit weights; BatchNorm is NOT folded into the binarized convs (it is
  exported as a per-channel Mul + Add), so each binarized weight keeps exactly two values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import torch
import torch.fx
from nni.compression.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    LsqQuantizer,
    PtqQuantizer,
    QATQuantizer,
)
from nni.compression.utils import TorchEvaluator
from onnx import helper, numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from adapters.nni._impl import (
    State,
    cross_entropy_step,
    make_evaluator,
    target_modules,
    traced_optimizer_class,
)
from adapters.nni._impl_layers import uncalled_layers
from unified.context import JobContext
from unified.spec.steps import (
    BinarizeStep,
    BinarizeStyle,
    Granularity,
    QuantAlgorithm,
    QuantizeStep,
    QuantMethod,
)
from unified.torchkit import training
from unified.torchkit.export import export_onnx
from unified.torchkit.fxtrace import trace_layers

INT8_MIN, INT8_MAX = -127, 127  # NNI's symmetric int8 range


# --- BatchNorm handling ----------------------------------------------------------------------


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN consumes only that conv's output (torch.fx)."""
    try:
        graph = trace_layers(model)  # conv subclasses stay call_module nodes
    except Exception:  # not traceable by torch.fx: nothing folded (scales of the raw weights)
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target),
                                                      nn.BatchNorm2d):
            continue
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "call_module" and \
                isinstance(modules.get(src.target), nn.Conv2d) and len(src.users) == 1:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BN into its conv in place (BN → Identity); returns the folded pairs."""
    model.eval()
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv = model.get_submodule(conv_name)
        bn = model.get_submodule(bn_name)
        fused = fuse_conv_bn_eval(cast(nn.Conv2d, conv), cast(nn.BatchNorm2d, bn))
        _set_module(model, conv_name, fused)
        _set_module(model, bn_name, nn.Identity())
    return pairs


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as x * scale + shift: exported as Mul + Add, which the ONNX
    exporter does not fold into the preceding conv (it folds a BatchNormalization)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        assert bn.running_var is not None and bn.running_mean is not None
        var, mean = cast(torch.Tensor, bn.running_var), cast(torch.Tensor, bn.running_mean)
        scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(var + bn.eps)
        shift = (bn.bias if bn.bias is not None else 0.0) - mean * scale
        self.register_buffer("scale", scale.detach().reshape(1, -1, 1, 1).clone())
        self.register_buffer("shift", shift.detach().reshape(1, -1, 1, 1).clone())

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


# --- NNI quantizer set-up --------------------------------------------------------------------


def _weight_setting(step: QuantizeStep) -> dict[str, Any]:
    if step.algorithm is QuantAlgorithm.dorefa:
        # DoReFa maps tanh(w) into [0, 1] and quantizes affinely (its only weight scheme)
        return {"quant_dtype": "int8", "quant_scheme": "affine", "granularity": "default"}
    # NNI: "out_channel" = one scale per weight row (output channel); "per_channel" is for
    # activations (dim 1)
    granularity = "out_channel" if step.granularity is Granularity.per_channel else "default"
    return {"quant_dtype": "int8", "quant_scheme": "symmetric", "granularity": granularity}


def _quant_config(step: QuantizeStep, names: list[str]) -> list[dict[str, Any]]:
    settings: dict[str, Any] = {"weight": _weight_setting(step)}
    if step.activations is not None:
        settings["_input_"] = {"quant_dtype": "uint8", "quant_scheme": "affine",
                               "granularity": "default"}
    # the top-level quant_dtype is required by NNI's schema; target_settings override it
    return [{"op_names": names, "target_names": list(settings), "target_settings": settings,
             "quant_dtype": "int8"}]


def _calibration_evaluator(ctx: JobContext, model: nn.Module) -> TorchEvaluator:
    """For PTQ: no training at all; NNI's evaluate() runs the calibration split forward."""

    def no_training(*args: Any, **kwargs: Any) -> None:
        return None

    def calibrate(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            x = ctx.data.calib_x
            for i in range(0, len(x), 64):
                model(torch.from_numpy(x[i:i + 64]))
        return 0.0

    optimizer = training.make_optimizer(model.parameters(), ctx.budget,
                                        ctx.budget.effective_finetune_lr,
                                        optimizer_class=traced_optimizer_class(ctx))
    return TorchEvaluator(no_training, optimizer, cross_entropy_step,
                          dummy_input=torch.zeros(1, *ctx.input_shape),
                          evaluating_func=calibrate)


def _training_epochs(ctx: JobContext, epochs: int | None, what: str) -> int:
    n = epochs if epochs is not None else ctx.budget.finetune_epochs
    if n < 1:
        raise ValueError(f"{what} needs at least one training epoch (step epochs or the "
                         "budget's finetune_epochs)")
    return n


def _effective_weights(quantizer: Any) -> dict[str, torch.Tensor]:
    """The weight each wrapped module computes with (NNI's own fake-quant / sign function)."""
    out = {}
    with torch.no_grad():
        for name, wrapper in quantizer._module_wrappers.items():
            space = wrapper.quantization_target_spaces.get("weight")
            if space is None:
                continue
            wrapper.eval()
            patched = wrapper.patch_params({"weight": space.target})
            out[name] = patched["weight"].detach().clone()
    return out


def _as_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(np.float64)
    return np.asarray(value, dtype=np.float64)


# --- QDQ ONNX --------------------------------------------------------------------------------


@dataclass
class LayerQuant:
    """What the QDQ ONNX needs for one conv/linear: NNI's scales, on the integer grid of the
    weights the float model carries."""

    weight_scale: np.ndarray  # (C,) per output channel, or () per tensor
    input_scale: float | None
    input_zero_point: int | None


def _scale_for_onnx(scale: np.ndarray) -> np.ndarray:
    flat = np.asarray(scale, dtype=np.float32).reshape(-1)
    return flat.reshape(()) if flat.size == 1 else flat


def build_qdq_onnx(
    float_path: Path, out_path: Path, layers: dict[str, LayerQuant]
) -> dict[str, Any]:
    """Insert QuantizeLinear/DequantizeLinear into the float ONNX for every layer whose weight
    initializer is ``<module>.weight``; returns what was done (for the record)."""
    model = onnx.load(str(float_path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    quantized: list[str] = []
    max_error = 0.0
    for node in graph.node:
        module = None
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            wname = node.input[1]
            if wname.endswith(".weight"):
                module = wname[: -len(".weight")]
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            if trans_b != 1:
                module = None  # torch Linear exports transB=1: weight rows = output channels
        lq = layers.get(module) if module is not None else None
        if lq is None:
            nodes.append(node)
            continue
        tag = module.replace(".", "_") if module else node.name
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        w_scale = _scale_for_onnx(lq.weight_scale)
        bshape = (-1,) + (1,) * (weight.ndim - 1)
        grid = weight / (w_scale.reshape(bshape) if w_scale.ndim else w_scale)
        max_error = max(max_error, float(np.abs(grid - np.round(grid)).max()))
        w_int = np.clip(np.round(grid), INT8_MIN, INT8_MAX).astype(np.int8)
        w_zp = np.zeros(w_scale.shape, dtype=np.int8)
        new_inits += [numpy_helper.from_array(w_int, f"{tag}.weight_int8"),
                      numpy_helper.from_array(w_scale, f"{tag}.weight_scale"),
                      numpy_helper.from_array(w_zp, f"{tag}.weight_zero_point")]
        nodes.append(helper.make_node(
            "DequantizeLinear", [f"{tag}.weight_int8", f"{tag}.weight_scale",
                                 f"{tag}.weight_zero_point"],
            [f"{tag}.weight_dq"], name=f"{tag}.weight_DequantizeLinear", axis=0))
        node.input[1] = f"{tag}.weight_dq"
        if lq.input_scale is not None and lq.input_zero_point is not None:
            x_scale = np.asarray(lq.input_scale, dtype=np.float32)
            x_zp = np.asarray(lq.input_zero_point, dtype=np.uint8)
            new_inits += [numpy_helper.from_array(x_scale, f"{tag}.input_scale"),
                          numpy_helper.from_array(x_zp, f"{tag}.input_zero_point")]
            x = node.input[0]
            nodes.append(helper.make_node(
                "QuantizeLinear", [x, f"{tag}.input_scale", f"{tag}.input_zero_point"],
                [f"{tag}.input_q"], name=f"{tag}.input_QuantizeLinear"))
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{tag}.input_q", f"{tag}.input_scale",
                                     f"{tag}.input_zero_point"],
                [f"{tag}.input_dq"], name=f"{tag}.input_DequantizeLinear"))
            node.input[0] = f"{tag}.input_dq"
            if len(node.input) > 2 and node.input[2] in inits:
                bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
                b_scale = (float(x_scale) * w_scale).astype(np.float32)
                b_int = np.round(bias / b_scale.astype(np.float64)).astype(np.int32)
                new_inits += [numpy_helper.from_array(b_int, f"{tag}.bias_int32"),
                              numpy_helper.from_array(b_scale, f"{tag}.bias_scale"),
                              numpy_helper.from_array(np.zeros(b_scale.shape, np.int32),
                                                      f"{tag}.bias_zero_point")]
                nodes.append(helper.make_node(
                    "DequantizeLinear", [f"{tag}.bias_int32", f"{tag}.bias_scale",
                                         f"{tag}.bias_zero_point"],
                    [f"{tag}.bias_dq"], name=f"{tag}.bias_DequantizeLinear", axis=0))
                node.input[2] = f"{tag}.bias_dq"
        nodes.append(node)
        quantized.append(module or "")
    used = {i for n in nodes for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_inits)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return {"qdq_layers": quantized, "weight_grid_max_error": round(max_error, 6)}


# --- steps -----------------------------------------------------------------------------------


def _layer_quant(step: QuantizeStep, calibration: dict[str, Any], name: str) -> LayerQuant:
    targets = calibration[name]
    weight = targets["weight"]
    scale = _as_array(weight["scale"])
    if step.algorithm is QuantAlgorithm.dorefa:
        # NNI DoReFa: w_q = 2 * s * (k - zp) - 1 with s = 1/254, zp = -127 → w_q = k / 127
        zp = _as_array(weight["zero_point"])
        offset = 2 * scale * zp + 1
        if np.abs(offset).max() > 1e-6:
            raise ValueError(f"DoReFa weights of {name} are not on a symmetric int8 grid")
        scale = 2 * scale
    elif weight.get("zero_point") is not None and np.abs(_as_array(weight["zero_point"])).max():
        raise ValueError(f"NNI gave {name} an asymmetric weight zero point")
    act = targets.get("_input_0")
    if act is None or act.get("scale") is None:
        return LayerQuant(scale, None, None)
    zero_point = act.get("zero_point")
    if step.algorithm is QuantAlgorithm.lsq or zero_point is None:
        act_zero_point = 0  # LSQ quantizes round(clamp(x / s)) with no zero point
    else:
        act_zero_point = int(np.round(_as_array(zero_point)).reshape(-1)[0])
    return LayerQuant(scale, float(_as_array(act["scale"]).reshape(-1)[0]), act_zero_point)


def quantize(ctx: JobContext, state: State, step: QuantizeStep, onnx_path: Path) -> None:
    model = state.model.eval()
    pairs = fold_batchnorm(model)
    if pairs:
        ctx.note(f"BatchNorm folded into {len(pairs)} conv(s) before NNI's quantizer, so the "
                 "per-channel weight scales are those of the exported (BN-folded) weights")
    selected = target_modules(model, step.targets)
    uncalled = uncalled_layers(model, list(selected), ctx.input_shape)
    if uncalled:
        ctx.note(f"not quantized: {', '.join(uncalled)} (their parent uses the weight without "
                 "calling the layer, e.g. nn.MultiheadAttention's out_proj, so NNI's wrapper "
                 "never observes them)")
        selected = {n: m for n, m in selected.items() if n not in uncalled}
    if not selected:
        raise ValueError("the quantize step's targets select no conv/linear module")
    names = list(selected)
    config_list = _quant_config(step, names)
    lr = ctx.budget.effective_finetune_lr
    quantizer: Any
    if step.method is QuantMethod.static:
        quantizer = PtqQuantizer(model, config_list, _calibration_evaluator(ctx, model))
        quantizer.compress(max_steps=None, max_epochs=0)
        what = f"NNI PtqQuantizer calibrated on {len(ctx.data.calib_x)} calibration samples " \
               "(forward passes only, no weight update)"
    else:
        epochs = _training_epochs(ctx, step.epochs, "QAT")
        rates = ctx.learning_rates(lr, epochs, "QAT")
        evaluator = make_evaluator(ctx, model, lr=lr, learning_rates=rates)
        cls = {QuantAlgorithm.plain: QATQuantizer, QuantAlgorithm.lsq: LsqQuantizer,
               QuantAlgorithm.dorefa: DoReFaQuantizer}[step.algorithm]  # the plan rejects dorefa
        quantizer = cls(model, config_list, evaluator)
        quantizer.compress(max_steps=None, max_epochs=epochs)
        what = f"NNI {cls.__name__} trained {epochs} epoch(s) at lr {lr}"
    calibration = quantizer.get_calibration_config()
    effective = _effective_weights(quantizer)
    quantizer.unwrap_model()
    with torch.no_grad():
        for name, weight in effective.items():
            cast(torch.Tensor, model.get_submodule(name).weight).copy_(weight)
    layers = {name: _layer_quant(step, calibration, name) for name in names}
    float_path = onnx_path.with_name("model_float.onnx")
    export_onnx(model, float_path, ctx.input_shape)
    done = build_qdq_onnx(float_path, onnx_path, layers)
    float_path.unlink()
    state.onnx_written = True
    state.model = model
    state.details.update(done)
    state.details["quantized_layers"] = len(layers)
    gran = "per-channel" if step.granularity is Granularity.per_channel else "per-tensor"
    acts = "uint8 affine activations (NNI's scale/zero point on each layer input)" \
        if step.activations is not None else "float activations (weights only)"
    ctx.note(f"{what}; {len(names)} layers: int8 symmetric {gran} weights (NNI's int8 range "
             f"[-127, 127]), {acts}")
    ctx.note("QDQ ONNX built by inserting QuantizeLinear/DequantizeLinear with NNI's scales into "
             "the float export (NNI has no CPU quantized export); biases int32 at "
             "input_scale × weight_scale")
    missing = [n for n in names if n not in done["qdq_layers"]]
    if missing:
        ctx.note(f"no QDQ for {', '.join(missing)}: their weights are not a plain initializer "
                 "in the export")


def binarize(ctx: JobContext, state: State, step: BinarizeStep, onnx_path: Path) -> None:
    model = state.model
    selected = target_modules(model, step.targets)
    if not selected:
        raise ValueError("the binarize step's targets select no conv/linear module")
    names = list(selected)
    pairs = conv_bn_pairs(model)
    epochs = _training_epochs(ctx, step.epochs, "binarization")
    lr = ctx.budget.effective_finetune_lr
    evaluator = make_evaluator(ctx, model, lr=lr)
    if step.style is not BinarizeStyle.bnn:  # the plan rejects the others
        raise ValueError(f"binarize style {step.style.value} has no working NNI quantizer")
    config = [{"op_names": names, "target_names": ["weight"], "quant_dtype": None}]
    quantizer = BNNQuantizer(model, config, evaluator)
    quantizer.compress(max_steps=None, max_epochs=epochs)
    effective = _effective_weights(quantizer)
    quantizer.unwrap_model()
    model.eval()
    with torch.no_grad():
        for name, weight in effective.items():
            cast(torch.Tensor, model.get_submodule(name).weight).copy_(weight)
    kept = 0
    for conv_name, bn_name in pairs:
        if conv_name in effective:
            bn = model.get_submodule(bn_name)
            _set_module(model, bn_name, ChannelAffine(bn))  # type: ignore[arg-type]
            kept += 1
    export_onnx(model, onnx_path, ctx.input_shape)
    state.onnx_written = True
    distinct = {n: int(torch.unique(w).numel()) for n, w in effective.items()}
    state.details.update(binarized_layers=len(distinct), distinct_values=distinct)
    ctx.note(f"NNI {type(quantizer).__name__} trained {epochs} epoch(s) at lr {lr} with 1-bit "
             f"weights on {len(names)} layers; the exported weights are NNI's sign values")
    if kept:
        ctx.note(f"{kept} BatchNorm(s) after binarized convs exported as per-channel Mul + Add, "
                 "not folded, so each binarized weight keeps two values")


def quantize_or_binarize(ctx: JobContext, state: State, step: QuantizeStep | BinarizeStep,
                         onnx_path: Path) -> None:
    """The last step of an NNI recipe: writes the ONNX itself."""
    if isinstance(step, QuantizeStep):
        quantize(ctx, state, step, onnx_path)
    else:
        binarize(ctx, state, step, onnx_path)
