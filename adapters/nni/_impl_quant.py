"""NNI quantizers and binarizers.

NNI 3.0 has no CPU quantized export, so:

- quantize: BatchNorm is folded into the preceding conv BEFORE NNI's quantizer (the exported
  ONNX has no BatchNorm either), so NNI's per-channel weight scales are computed on exactly
  the weights the ONNX carries. NNI trains/calibrates; its fake-quant weights are written back
  into plain float modules, the float model is exported with the shared exporter, and
  QuantizeLinear/DequantizeLinear are inserted with NNI's scales (``_impl_qdq``).
- binarize: BNN / DoReFa 1-bit weights; BatchNorm is NOT folded into the binarized convs (it is
  exported as a per-channel Mul + Add), so each binarized weight keeps exactly two values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
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
from torch import nn

from adapters.nni._impl_common import (
    PARITY_SAMPLES,
    State,
    cross_entropy_step,
    make_evaluator,
    onnx_logits,
    torch_logits,
    traced_optimizer_class,
)
from adapters.nni._impl_layers import uncalled_layers
from adapters.nni._impl_qdq import LayerQuant, build_qdq_onnx
from adapters.nni._impl_qdq_graph import output_plan
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
from unified.torchkit.fold import conv_bn_pairs, fold_batchnorm, set_module

# --- BatchNorm handling ----------------------------------------------------------------------


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as x * scale + shift: exported as Mul + Add, which the ONNX
    exporter does not fold into the preceding conv (it folds a BatchNormalization)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        assert bn.running_var is not None and bn.running_mean is not None
        var, mean = cast(torch.Tensor, bn.running_var), cast(torch.Tensor, bn.running_mean)
        scale = (bn.weight if bn.weight is not None else 1.0) / torch.sqrt(var + bn.eps)
        shift = (bn.bias if bn.bias is not None else 0.0) - mean * scale
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # per channel, for 1-d and 2-d convs alike
        return x * self.scale.reshape(shape) + self.shift.reshape(shape)


# --- NNI quantizer set-up --------------------------------------------------------------------


def _weight_setting(step: QuantizeStep) -> dict[str, Any]:
    if step.algorithm is QuantAlgorithm.dorefa:
        # DoReFa maps tanh(w) into [0, 1] and quantizes affinely (its only weight scheme)
        return {"quant_dtype": "int8", "quant_scheme": "affine", "granularity": "default"}
    # NNI: "out_channel" = one scale per weight row (output channel); "per_channel" is for
    # activations (dim 1)
    granularity = "out_channel" if step.granularity is Granularity.per_channel else "default"
    return {"quant_dtype": "int8", "quant_scheme": "symmetric", "granularity": granularity}


def _output_setting(step: QuantizeStep) -> dict[str, Any]:
    if step.algorithm is QuantAlgorithm.lsq:  # LSQ has no zero point: signed for signed outputs
        return {"quant_dtype": "int8", "quant_scheme": "symmetric", "granularity": "default"}
    return {"quant_dtype": "uint8", "quant_scheme": "affine", "granularity": "default"}


def _quant_config(step: QuantizeStep, names: list[str],
                  outputs: dict[str, str | None]) -> list[dict[str, Any]]:
    """NNI's config_list: weights and inputs of every layer; also the outputs of the layers
    ``outputs`` names (``_impl_qdq_graph``), each fused with its ReLU module when it has one."""
    settings: dict[str, Any] = {"weight": _weight_setting(step)}
    if step.activations is not None:
        settings["_input_"] = {"quant_dtype": "uint8", "quant_scheme": "affine",
                               "granularity": "default"}
    # the top-level quant_dtype is required by NNI's schema; target_settings override it
    plain = [n for n in names if n not in outputs]
    config = [{"op_names": plain, "target_names": list(settings), "target_settings": settings,
               "quant_dtype": "int8"}] if plain else []
    if outputs:
        with_output = {**settings, "_output_": _output_setting(step)}
        entry: dict[str, Any] = {"op_names": list(outputs), "target_names": list(with_output),
                                 "target_settings": with_output, "quant_dtype": "int8"}
        fused = [(layer, relu) for layer, relu in outputs.items() if relu is not None]
        if fused:
            entry["fuse_names"] = fused
        config.append(entry)
    return config


def _outputs_to_quantize(ctx: JobContext, model: nn.Module, step: QuantizeStep,
                         names: list[str]) -> dict[str, str | None]:
    """Which layers NNI must quantize at the output for onnxruntime to fuse every layer
    (read from a float export of the BN-folded model)."""
    if step.activations is None:
        return {}
    import onnx

    path = ctx.workdir / "model_plan.onnx"
    export_onnx(model, path, ctx.input_shape)
    relus = {name for name, module in model.named_modules() if type(module) is nn.ReLU}
    try:
        return output_plan(onnx.load(str(path)), names, relus)
    finally:
        path.unlink()


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


# --- steps -----------------------------------------------------------------------------------


def _layer_quant(step: QuantizeStep, calibration: dict[str, Any], name: str,
                 outputs: dict[str, str | None]) -> LayerQuant:
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
    act = _activation(step, targets.get("_input_0"))
    if act is None:
        return LayerQuant(scale, None, None)
    out = _activation(step, targets.get("_output_0"))
    return LayerQuant(scale, act[0], act[1],
                      output_scale=None if out is None else out[0],
                      output_zero_point=None if out is None else out[1],
                      output_signed=step.algorithm is QuantAlgorithm.lsq,
                      output_after=outputs.get(name))


def _activation(step: QuantizeStep, act: dict[str, Any] | None) -> tuple[float, int] | None:
    """(scale, zero point) of one of NNI's activation quantizations, or None."""
    if act is None or act.get("scale") is None:
        return None
    zero_point = act.get("zero_point")
    if step.algorithm is QuantAlgorithm.lsq or zero_point is None:
        zp = 0  # LSQ quantizes round(clamp(x / s)) with no zero point
    else:
        zp = int(np.round(_as_array(zero_point)).reshape(-1)[0])
    return float(_as_array(act["scale"]).reshape(-1)[0]), zp


def _round_biases(model: nn.Module, layers: dict[str, LayerQuant]) -> int:
    """Put each quantized layer's bias on the int32 grid the QDQ ONNX stores it on
    (input_scale × weight_scale), before NNI's simulation runs for the parity check: NNI
    keeps biases float, and a difference of half an accumulator step per channel, repeated
    over 50 requantized layers, flips enough 1-step roundings to change the top-1 class of
    a few % of inputs. Returns how many layers have a bias."""
    count = 0
    with torch.no_grad():
        for name, lq in layers.items():
            bias = getattr(model.get_submodule(name), "bias", None)
            if lq.input_scale is None or not isinstance(bias, torch.Tensor):
                continue
            w_scale = np.asarray(lq.weight_scale, dtype=np.float32).reshape(-1)
            step = torch.from_numpy((np.float32(lq.input_scale) * w_scale).astype(np.float32))
            bias.copy_(torch.round(bias / step) * step)
            count += 1
    return count


def quantize(ctx: JobContext, state: State, step: QuantizeStep, onnx_path: Path) -> None:
    model = state.model.eval()
    pairs = fold_batchnorm(model)
    if pairs:
        ctx.note(f"BatchNorm folded into {len(pairs)} conv(s) before NNI's quantizer, so the "
                 "per-channel weight scales are those of the exported (BN-folded) weights")
    names = list(ctx.layers_for(step))
    uncalled = uncalled_layers(model, names, ctx.input_shape)
    if uncalled:
        ctx.note(f"not quantized: {', '.join(uncalled)} (their parent uses the weight without "
                 "calling the layer, e.g. nn.MultiheadAttention's out_proj, so NNI's wrapper "
                 "never observes them)")
        names = [n for n in names if n not in uncalled]
    if not names:
        raise ValueError("the quantize step's targets select no conv/linear module")
    outputs = _outputs_to_quantize(ctx, model, step, names)
    config_list = _quant_config(step, names, outputs)
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
    layers = {name: _layer_quant(step, calibration, name, outputs) for name in names}
    rounded = _round_biases(model, layers)
    effective = _effective_weights(quantizer)
    simulated = torch_logits(model, ctx.data.test_x[:PARITY_SAMPLES])  # NNI's own simulation
    quantizer.unwrap_model()
    with torch.no_grad():
        for name, weight in effective.items():
            cast(torch.Tensor, model.get_submodule(name).weight).copy_(weight)
    float_path = onnx_path.with_name("model_float.onnx")
    export_onnx(model, float_path, ctx.input_shape)
    done = build_qdq_onnx(float_path, onnx_path, layers)
    float_path.unlink()
    state.onnx_written = True
    state.model = model
    state.details.update(done)
    state.details["quantized_layers"] = len(layers)
    ctx.report_changed(step, done["qdq_layers"])
    ctx.check_parity("torch model under NNI's simulated quantization", simulated,
                     onnx_logits(onnx_path, ctx.data.test_x[:PARITY_SAMPLES]))
    gran = "per-channel" if step.granularity is Granularity.per_channel else "per-tensor"
    acts = "uint8 affine activations (NNI's scale/zero point on each layer input)" \
        if step.activations is not None else "float activations (weights only)"
    ctx.note(f"{what}; {len(names)} layers: int8 symmetric {gran} weights (NNI's int8 range "
             f"[-127, 127]), {acts}")
    ctx.note("QDQ ONNX built by inserting QuantizeLinear/DequantizeLinear with NNI's scales into "
             "the float export (NNI has no CPU quantized export); biases int32 at "
             f"input_scale × weight_scale (rounded so before NNI's simulation runs, on "
             f"{rounded} layers, as the ONNX stores them); each input quantization repeated up "
             "through ReLU / max pooling / reshapes / zero padding to the previous layer's output "
             "(exact), so onnxruntime fuses every layer; the pair on the model input rounds "
             "as NNI does (round(zp + x/s))")
    if done["weight_scales_raised_for_int32_bias"]:
        ctx.note(f"{done['weight_scales_raised_for_int32_bias']} output channel(s) with "
                 "(near-)zero weights got a larger weight scale than NNI's 1.2e-7, so that "
                 "their int32 bias fits; their weights stay zero")
    if outputs:
        fused = [f"{layer} (+{relu})" if relu else layer for layer, relu in outputs.items()]
        ctx.note(f"NNI also quantizes the outputs of {', '.join(fused)}: they feed a residual "
                 "add, a branch or the model output, not just the next quantized layer "
                 "(a ReLU module after a layer is fused into it first, NNI fuse_names)")
    missing = [n for n in names if n not in done["qdq_layers"]]
    if missing:
        ctx.deviate(f"no QDQ for {', '.join(missing)}: their weights are not a plain "
                    "initializer in the export, so they stay float")


def binarize(ctx: JobContext, state: State, step: BinarizeStep, onnx_path: Path) -> None:
    model = state.model
    names = list(ctx.layers_for(step))
    if not names:
        raise ValueError("the binarize step's targets select no conv/linear module")
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
            set_module(model, bn_name, ChannelAffine(bn))  # type: ignore[arg-type]
            kept += 1
    export_onnx(model, onnx_path, ctx.input_shape)
    state.onnx_written = True
    distinct = {n: int(torch.unique(w).numel()) for n, w in effective.items()}
    ctx.report_changed(step, [n for n, count in distinct.items() if count <= 2])
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
