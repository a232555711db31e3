"""Adaptive average pooling that torch's ONNX exporter can export at every input size.

The exporter turns ``nn.AdaptiveAvgPool2d`` into a fixed AveragePool only when the input size
divides into the output size; otherwise (VGG's 7×7 or AlexNet's 6×6 pooling on the 1×1 or
2×2 feature map of a small input) it refuses the whole model. For the one input size a
scenario fixes, the same pooling is a fixed set of windows: slices averaged and concatenated,
which every exporter and converter here takes."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class AdaptiveAvgPoolFixed(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for one input size, written with slices, means and concats:
    each output the mean of exactly the window torch's adaptive pooling averages (a 1×1
    input is broadcast). No MatMul: TFLite's int8 BATCH_MATMUL does not survive tf2onnx."""

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_size, self.out_size = in_size, out_size
        self.row_windows = windows(in_size[0], out_size[0])
        self.col_windows = windows(in_size[1], out_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_size == (1, 1):  # every window is the one value
            return x.expand(-1, -1, *self.out_size)
        x = torch.cat([x[:, :, start:end, :].mean(2, keepdim=True)
                       for start, end in self.row_windows], dim=2)
        return torch.cat([x[:, :, :, start:end].mean(3, keepdim=True)
                          for start, end in self.col_windows], dim=3)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, out_size={self.out_size}"


def windows(size_in: int, size_out: int) -> list[tuple[int, int]]:
    """The windows [floor(i·in/out), ceil((i+1)·in/out)) of adaptive pooling, i < out."""
    return [((i * size_in) // size_out, -(-((i + 1) * size_in) // size_out))
            for i in range(size_out)]


def exportable_adaptive_pooling(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Replace (in place) every ``nn.AdaptiveAvgPool2d`` whose input, at ``input_shape``, does
    not divide into its output by :class:`AdaptiveAvgPoolFixed` (nothing when the
    model does not run: its own error comes later, where it is reported)."""
    # a 1×1 output divides every input: the global pooling of most classifiers needs no probe
    pools = {name: m for name, m in model.named_modules()
             if type(m) is nn.AdaptiveAvgPool2d and m.output_size not in (1, (1, 1))}
    if not pools:
        return
    seen: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(_: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            (h_in, w_in), (h_out, w_out) = args[0].shape[-2:], out.shape[-2:]
            seen[name] = (int(h_in), int(w_in)), (int(h_out), int(w_out))
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in pools.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception:  # a model that does not run: its own error comes later
        return
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    for name, (size_in, size_out) in seen.items():
        if all(i % o == 0 for i, o in zip(size_in, size_out, strict=True)):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, AdaptiveAvgPoolFixed(size_in, size_out))


def pooling_notes(model: nn.Module) -> list[str]:
    """One note per adaptive pooling computed from fixed windows in ``model``."""
    return [f"{name}: AdaptiveAvgPool2d({m.out_size[0]}, {m.out_size[1]}) on a "
            f"{m.in_size[0]}×{m.in_size[1]} input computed from its fixed windows (slices "
            "averaged and concatenated): torch's ONNX exporter cannot export adaptive "
            "pooling whose input size does not divide into its output size"
            for name, m in model.named_modules() if isinstance(m, AdaptiveAvgPoolFixed)]
