"""PyTorch-native quantization: float16 (model.half()), dynamic (torch quantize_dynamic on
Linear, its int8 computation written as ONNX integer ops), static and QAT with torch.ao FX graph
mode, exported to QDQ ONNX."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters.pytorch import _impl_prune as P
from adapters.pytorch._impl_common import State, run_training
from adapters.pytorch._impl_fx import float_leaves, quantizable_copy
from adapters.pytorch._impl_observe import backend_config, observe_after_clamp
from unified.context import JobContext
from unified.spec.errors import SqueezelabError
from unified.spec.names import first_few
from unified.spec.steps import Granularity, QuantDType, QuantizeStep, QuantMethod
from unified.torchkit.export import export_onnx
from unified.torchkit.models import count_parameters
from unified.torchkit.targets import named_layers, op_type

# torch.ao prints a deprecation banner on every prepare/convert call
warnings.filterwarnings("ignore", module=r"torch\.ao\..*")

def quantize(ctx: JobContext, state: State, index: int, step: QuantizeStep,
              onnx_path: Path) -> None:
    masks: dict[str, torch.Tensor] = {}
    if P.make_permanent(state.model):
        ctx.note("pruning masks made permanent (prune.remove) before quantization")
        masks = P.zero_masks(state.model)
    state.model.eval()
    # converted modules hold packed int8 weights, not parameters: count before
    state.details["torch_parameters"] = count_parameters(state.model)
    if step.dtype is QuantDType.float16:
        _float16(ctx, state, onnx_path)
        ctx.report_changed(index, [n for n, _ in named_layers(state.model,
                                                              ctx.layers_for(index))])
    elif step.method is QuantMethod.dynamic:
        _dynamic(ctx, state, index, step, onnx_path)
    else:
        _fx_quantize(ctx, state, index, step, onnx_path, masks)
    state.onnx_written = True


def _float16(ctx: JobContext, state: State, onnx_path: Path) -> None:
    half = state.model.half()
    export_onnx(_Float32IO(half), onnx_path, ctx.input_shape)
    ctx.note("float16: model.half() (weights and compute in float16); Cast float32 -> "
             "float16 at the input and back at the output, because the harness feeds float32")


class _Float32IO(nn.Module):
    """float32 in and out around a float16 model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def _quantized_linears(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    return [name for name, module in named_layers(model, names) if isinstance(module, nn.Linear)]


def _dynamic(ctx: JobContext, state: State, index: int, step: QuantizeStep,
             onnx_path: Path) -> None:
    from torch.ao.quantization import QConfig, default_dynamic_quant_observer
    from torch.ao.quantization import quantize_dynamic as torch_quantize_dynamic

    from adapters.pytorch._impl_dynamic import (
        activation_levels,
        quantized_linears,
        write_dynamic_onnx,
    )

    model = state.model
    names = _quantized_linears(model, ctx.layers_for(index))
    if not names:  # what torch's quantize_dynamic does too: nothing to quantize
        export_onnx(model, onnx_path, ctx.input_shape)
        ctx.report_changed(index, [])
        ctx.note("no targeted nn.Linear: torch dynamic quantization (Linear/LSTM/RNN only) "
                 "leaves this model unchanged; the ONNX is the float model")
        return
    qconfig = QConfig(activation=default_dynamic_quant_observer,
                      weight=_weight_observer(step, qat=False))
    fp32_path = ctx.workdir / "model.fp32.onnx"
    export_onnx(model, fp32_path, ctx.input_shape)
    state.model = torch_quantize_dynamic(copy.deepcopy(model), {n: qconfig for n in names},
                                         dtype=torch.qint8)
    quantized = quantized_linears(state.model)
    write_dynamic_onnx(fp32_path, onnx_path, model, quantized)
    fp32_path.unlink()
    done = [n for n in names if n in quantized]
    ctx.report_changed(index, done)
    bits = {127: "7-bit (reduce_range)", 255: "8-bit"}[activation_levels()]
    ctx.note(f"torch quantize_dynamic(qint8, {step.granularity}) on Linear: {', '.join(done)}; "
             f"the ONNX computes the same: torch's int8 weights and scales in MatMulInteger, "
             f"inputs quantized per call to {bits} uint8 as torch's "
             f"{torch.backends.quantized.engine} kernel does")
    if step.symmetric:
        ctx.note(WEIGHT_RANGE_NOTE)
    convs = [n for n, m in named_layers(model, ctx.layers_for(index))
             if not isinstance(m, nn.Linear)]
    if convs:
        ctx.deviate(f"convs stay float: torch dynamic quantization only covers "
                    f"Linear/LSTM/RNN ({len(convs)} targeted conv layer(s) left in float32: "
                    f"{', '.join(convs)})")


WEIGHT_RANGE_NOTE = (
    "symmetric int8 weights in [-127, 127], torch.ao's restricted-range weight observer "
    "(weight_observer_range_neg_127_to_127, as ONNX Runtime and TFLite quantize), not the "
    "default [-128, 127], whose scale max|w| / 127.5 moves each channel's largest weight by "
    "half a step (to 127 or -128)")
# Measured on EfficientNet-Lite0 (real weights, photos): that half step on the dominant tap of
# block 0's depthwise convs (BatchNorm folded in: taps up to 15.7, outputs over ±100 that cancel
# to [0, 6] at the ReLU6) took weight-only fake quantization to 0.82 top-1 agreement with fp32
# (0.89 in [-127, 127]), the int8 model to 0.81.


def _weight_observer(step: QuantizeStep, qat: bool) -> Any:
    from torch.ao.quantization import (
        FusedMovingAvgObsFakeQuantize,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
    )

    per_channel = step.granularity is Granularity.per_channel
    if per_channel:
        qscheme = torch.per_channel_symmetric if step.symmetric else torch.per_channel_affine
    else:
        qscheme = torch.per_tensor_symmetric if step.symmetric else torch.per_tensor_affine
    # symmetric: the restricted range of torch.ao's weight_observer_range_neg_127_to_127
    # (see WEIGHT_RANGE_NOTE)
    low = -127 if step.symmetric else -128
    args = {"dtype": torch.qint8, "qscheme": qscheme, "quant_min": low, "quant_max": 127}
    if qat:
        observer = (MovingAveragePerChannelMinMaxObserver if per_channel
                    else MovingAverageMinMaxObserver)
        return FusedMovingAvgObsFakeQuantize.with_args(observer=observer, **args)
    return (PerChannelMinMaxObserver if per_channel else MinMaxObserver).with_args(**args)


def quantized_engine(symmetric_weights: bool = True) -> tuple[str, int]:
    """(torch quantized engine, activation quant_max) for this CPU. With VNNI (and symmetric
    weights, the only ones onednn's conv takes), the onednn engine and full 8-bit
    activations, as torch's onednn qconfig pairs them: the x86 engine's int8 depthwise
    kernels saturate there (measured: a 144-channel 3×3 depthwise conv off by
    up to 38 levels on 8 % of its outputs, EfficientNet-Lite0's and MobileNetV2's ONNX then
    disagreeing with the torch model). Without VNNI, x86 with its default 7-bit activations
    (reduce_range), which keep its int16 accumulation from saturating."""
    engines = torch.backends.quantized.supported_engines
    vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()
    if vnni and symmetric_weights and "onednn" in engines:
        return "onednn", 255
    return ("x86" if "x86" in engines else "fbgemm"), 127


def _qconfig_mapping(model: nn.Module, step: QuantizeStep, qat: bool,
                     selected: set[str], quant_max: int = 255) -> Any:
    from torch.ao.quantization import (
        FusedMovingAvgObsFakeQuantize,
        HistogramObserver,
        MovingAverageMinMaxObserver,
        QConfig,
        get_default_qat_qconfig_mapping,
        get_default_qconfig_mapping,
    )

    # quant_max 127 is reduce_range spelled out (see quantized_engine)
    act_args = {"dtype": torch.quint8, "quant_min": 0, "quant_max": quant_max,
                "reduce_range": False}
    if qat:
        activation = FusedMovingAvgObsFakeQuantize.with_args(
            observer=MovingAverageMinMaxObserver, **act_args)
        mapping = get_default_qat_qconfig_mapping("x86")
    else:
        activation = HistogramObserver.with_args(**act_args)
        mapping = get_default_qconfig_mapping("x86")
    mapping.set_global(QConfig(activation=activation, weight=_weight_observer(step, qat)))
    for name, module in model.named_modules():
        if op_type(module) is not None and name not in selected:
            mapping.set_module_name(name, None)
    return mapping


def _fx_quantize(ctx: JobContext, state: State, index: int, step: QuantizeStep,
                 onnx_path: Path, masks: dict[str, torch.Tensor]) -> None:
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

    engine, quant_max = quantized_engine(step.symmetric)
    torch.backends.quantized.engine = engine
    qat = step.method is QuantMethod.qat
    model = state.model
    targeted = ctx.layers_for(index)
    mapping = _qconfig_mapping(model, step, qat, set(targeted), quant_max)
    example = (torch.from_numpy(ctx.data.calib_x[:1]),)
    base, notes = quantizable_copy(model, example[0], mapping, set(targeted))
    for note in notes:
        ctx.note(note)
    backend = backend_config()
    try:
        if qat:
            prepared = prepare_qat_fx(copy.deepcopy(base).train(), mapping, example,
                                      float_leaves(), backend_config=backend)
        else:
            prepared = prepare_fx(copy.deepcopy(base).eval(), mapping, example,
                                  float_leaves(), backend_config=backend)
    except Exception as exc:  # FX symbolic tracing: data-dependent control flow etc.
        raise SqueezelabError(
            f"torch.ao FX graph mode could not trace the model ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); eager mode "
            "would need QuantStub/DeQuantStub and FloatFunctional edits of the model code"
        ) from exc
    if qat:
        epochs = step.epochs if step.epochs is not None else ctx.budget.finetune_epochs
        state.model = prepared
        kept = _masks_for(prepared, masks)
        lr = ctx.budget.effective_finetune_lr
        rates = ctx.learning_rates(lr, epochs, "QAT")
        run_training(ctx, state, index, "qat", epochs, lr, masks=kept, learning_rates=rates)
        if masks:
            ctx.note(f"pruning masks re-applied after every QAT optimizer step on "
                     f"{len(kept)} layer(s)")
    else:
        _clamped_note(ctx, observe_after_clamp(prepared))
        calib = ctx.data.calib_x
        with torch.no_grad():
            prepared.eval()
            for start in range(0, len(calib), ctx.budget.batch_size):
                prepared(torch.from_numpy(calib[start:start + ctx.budget.batch_size]))
    prepared.eval()
    quantized = convert_fx(prepared, backend_config=backend)
    state.model = quantized
    # the exporter traces a quantized model itself, with check_trace on, which fails on a
    # false positive for some models (float modules such as nn.MultiheadAttention get other
    # mangled names in the second trace); the parity check compares the ONNX with the model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(torch.jit.trace(quantized, example, check_trace=False), onnx_path,
                    ctx.input_shape)
    weights = (f"qint8 {step.granularity} {'symmetric' if step.symmetric else 'affine'}")
    ctx.report_changed(index, _converted(quantized, targeted))
    all_layers = [n for n, m in model.named_modules() if op_type(m) is not None]
    left = [n for n in all_layers if n not in targeted]
    how = ("prepare_qat_fx / convert_fx" if qat
           else f"prepare_fx / convert_fx, calibrated on {len(ctx.data.calib_x)} samples")
    observer = "moving-average min-max fake-quant" if qat else "HistogramObserver"
    bits = ("8-bit [0, 255] (CPU with VNNI: torch's onednn pairing)" if quant_max == 255
            else "7-bit [0, 127] (no VNNI: torch's x86 default reduce_range)")
    ctx.note(f"torch.ao FX {how}, {engine} engine, native backend config with nn.ZeroPad2d "
             f"sharing its input's qparams: weights {weights}, activations quint8 affine "
             f"{bits}, {observer}; exported with the TorchScript exporter to QDQ ONNX")
    if step.symmetric:
        ctx.note(WEIGHT_RANGE_NOTE)
    if left:
        ctx.note(f"not targeted, left float: {', '.join(left)}")


def _clamped_note(ctx: JobContext, layers: list[str]) -> None:
    if layers:
        ctx.note(f"{len(layers)} conv/linear output(s) read only by a ReLU6 / hardtanh "
                 f"({first_few(layers)}):"
                 " observed after the clamp (ClampedHistogramObserver), so the int8 output "
                 "spans the clamp's range and its saturation is the ReLU6; torch.ao's native "
                 "config has no conv+ReLU6 fusion and shares one observer with the pre-clamp "
                 "output")


def _converted(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    """The targeted modules convert_fx turned into quantized modules (a fused conv keeps the
    conv's name)."""
    out = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        if type(module).__module__.startswith(("torch.ao.nn.quantized",
                                               "torch.ao.nn.intrinsic.quantized")):
            out.append(name)
    return out


def _masks_for(prepared: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pruning masks whose module (same name, same weight shape) survives FX fusion."""
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        try:
            module = prepared.get_submodule(name)
        except AttributeError:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.shape == mask.shape:
            out[name] = mask
    if len(out) != len(masks):
        lost = sorted(set(masks) - set(out))
        raise SqueezelabError(f"cannot find the QAT modules of pruned layers {lost}")
    return out
