"""Where torch.ao's native (x86 / fbgemm) backend config puts activation observers, and two
corrections that keep the int8 model the function it quantizes.

**A clamp after a conv.** The backend config fuses conv (+BN) with ReLU but not with ReLU6 /
hardtanh: those are "share qparams" ops (``ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT``),
so one observer sees the conv's output *before* the clamp, and its 256 levels span that
pre-clamp range. On EfficientNet-Lite0 the depthwise conv of block 0 ranges over [-97, 91]:
the ReLU6 output [0, 6] kept 9 levels, and int8 top-1 agreement with fp32 fell to 0.64.
:func:`observe_after_clamp` makes that shared observer see the clamped values instead: the
conv's int8 output then spans [0, ≤6] with zero point 0, so its saturation *is* the ReLU6
(what onnxruntime's quantizer does when it removes a Clip after a Conv, and TFLite's fused
ReLU6). The float model is unchanged; only the observed range is.

**Zero padding between quantized ops.** ``nn.ZeroPad2d`` (EfficientNet's 'SAME' padding in
front of a conv) is not in the backend config, so it got an observer of its own and the int8
values were rounded a second time onto another calibrated scale. :func:`backend_config` adds
it as a share-qparams op: the padding's output takes its input's scale and zero point, so the
dequantize → pad → quantize torch leaves around it (its lowering knows only its own list of
such ops) gives back the same integers, with the zero point (0.0) in the border.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.ao.quantization.observer import HistogramObserver


class ClampedHistogramObserver(HistogramObserver):
    """A HistogramObserver that records ``x.clamp(low, high)``, for a conv whose output goes
    only through that clamp; it returns ``x`` unchanged."""

    def __init__(self, low: float, high: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.low, self.high = low, high

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        super().forward(x_orig.detach().clamp(self.low, self.high))
        return x_orig

    def extra_repr(self) -> str:
        return f"clamp=[{self.low:g}, {self.high:g}]"


def _clamp_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """(low, high) of a ReLU6 / hardtanh node, else None."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is Hardtanh(0, 6)
            return float(module.min_val), float(module.max_val)
        return None
    if node.op == "call_function" and node.target is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and node.target in (F.hardtanh, F.hardtanh_):
        names = ("min_val", "max_val")
        given = dict(zip(names, node.args[1:3], strict=False)) | {
            k: v for k, v in node.kwargs.items() if k in names}
        low, high = given.get("min_val", -1.0), given.get("max_val", 1.0)
        if isinstance(low, int | float) and isinstance(high, int | float):
            return float(low), float(high)
    return None


def _attribute_names(root: nn.Module, target: nn.Module) -> list[str]:
    """Every attribute of ``root`` that holds ``target`` (a shared observer has several)."""
    return [name for name, child in root._modules.items() if child is target]


def observe_after_clamp(prepared: fx.GraphModule) -> list[str]:
    """Replace the observer of each conv / linear output that only a clamp (ReLU6, hardtanh)
    reads, and that the clamp shares, by a :class:`ClampedHistogramObserver` with the same
    settings; return the module paths of those layers. Only plain HistogramObservers (static
    post-training quantization) are replaced."""
    modules = dict(prepared.named_modules(remove_duplicate=False))
    changed: list[str] = []
    for node in prepared.graph.nodes:
        # Any: without torch installed (the lint environment) mypy sees Module | None here
        observer: Any = modules.get(str(node.target)) if node.op == "call_module" else None
        if type(observer) is not HistogramObserver or not node.args:
            continue
        layer = node.args[0]
        if not (isinstance(layer, fx.Node) and layer.op == "call_module" and isinstance(
                modules.get(str(layer.target)), nn.Conv2d | nn.Linear)):
            continue
        found = {_clamp_bounds(user, modules) for user in node.users}
        bounds = found.pop() if len(found) == 1 else None
        if bounds is None:
            continue  # another reader needs the unclamped range
        low, high = bounds
        clamped = ClampedHistogramObserver(
            low, high, bins=observer.bins, dtype=observer.dtype, qscheme=observer.qscheme,
            quant_min=observer.quant_min, quant_max=observer.quant_max,
            reduce_range=observer.reduce_range)
        for name in _attribute_names(prepared, observer):
            setattr(prepared, name, clamped)
        modules = dict(prepared.named_modules(remove_duplicate=False))
        changed.append(str(layer.target))
    return changed


def backend_config() -> Any:
    """torch.ao's native backend config (prepare_fx's default) plus ``nn.ZeroPad2d`` as an
    op that shares its input's quantization parameters."""
    from torch.ao.quantization.backend_config import (
        BackendPatternConfig,
        DTypeConfig,
        ObservationType,
        get_native_backend_config,
    )

    pad = (BackendPatternConfig(nn.ZeroPad2d)
           .set_observation_type(ObservationType.OUTPUT_SHARE_OBSERVER_WITH_INPUT)
           .set_dtype_configs([DTypeConfig(input_dtype=torch.quint8,
                                           output_dtype=torch.quint8)]))
    return get_native_backend_config().set_backend_pattern_config(pad)
