"""More torch → Keras converters for the bridge (``_impl_bridge``), for networks as users write
them:

- ``F.conv2d`` called with a layer's own weight (an ``nn.Conv2d`` subclass whose forward pads,
  then calls ``F.conv2d``, like EfficientNet's ``Conv2dStaticSamePadding``) → a ``Conv2D`` /
  ``DepthwiseConv2D`` named after the torch module, like an ``nn.Conv2d``;
- zero ``F.pad`` of an NCHW tensor → ``ZeroPadding2D`` (a TFLite PAD, quantizable);
- ``max_pool2d`` with padding or ``ceil_mode`` → ``MaxPooling2D`` ('same', or zero padding of a
  ReLU output), never a -inf padding constant, which int8 calibration took for the range;
- ``torch.cat`` → ``Concatenate`` (of one tensor: the tensor itself, as Keras cannot clone a
  Concatenate of one input, which DenseNet's ``torch.cat([x], 1)`` gave);
- ``Tensor.expand`` with ``-1`` sizes resolved in Python (the class token of a ViT expanded to
  the batch): nobuco's ``tf.where(sizes == -1, …)`` is a ``tf.__operators__.eq`` node whose
  constant operand Keras drops when it clones the model (TF-MOT's clustering and pruning do);
- ``hardswish`` → ``x * relu6(x + 3) * (1/6)``, the pattern the TFLite converter fuses into one
  HARD_SWISH (nobuco's ``x * clip(x/6 + 1/2, 0, 1)`` gave five int8 ops, each re-quantized,
  and the ONNX of MobileNetV3 then disagreed with the TFLite model); ``hardsigmoid`` →
  ``relu6(x + 3) * (1/6)`` (an ADD with a fused RELU6, then a MUL);
- ``view`` / ``reshape`` whose leading size is the batch (``x.view(x.size(0), -1)``, ShuffleNet's
  channel shuffle) → ``Reshape`` of the other dims, so the Keras model takes any batch size:
  nobuco writes the traced batch size into ``tf.reshape``.

Imported by ``_impl_bridge`` once nobuco is loaded (with ``keras`` aliased to tf_keras).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# isort: split
import tensorflow as tf
import tf_keras as keras

if "nobuco" not in sys.modules:  # pragma: no cover - import order guard
    raise ImportError("import adapters.tfmot._impl_bridge (it loads nobuco) before this module")
import nobuco
from nobuco.commons import CONVERTER_DICT, ChannelOrder
from nobuco.commons import ChannelOrderingStrategy as Strategy
from nobuco.converters.channel_ordering import get_channel_order, set_channel_order
from nobuco.converters.tensor import _flatten, dim_pytorch2keras
from nobuco.layers.channel_order import tf_set_order_recursively
from nobuco.trace.trace import Tracer

# the batch size the bridge traces with: a leading size equal to it is taken for the batch
TRACE_BATCH = 5
MODULE_NAMES: dict[int, str] = {}  # id(module) → torch module name
WEIGHT_OWNERS: dict[tuple[int, tuple[int, ...]], str] = {}  # weight values → module name
_USED: set[str] = set()


def begin(model: nn.Module) -> None:
    """Remember ``model``'s module names for the converters (one conversion at a time)."""
    end()
    for name, module in model.named_modules():
        if name:
            MODULE_NAMES[id(module)] = name
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor):
                WEIGHT_OWNERS[_key(weight)] = name


def _key(weight: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """A weight by its values (nobuco hands converters a copy, not the Parameter)."""
    return hash(weight.detach().cpu().numpy().tobytes()), tuple(weight.shape)


def end() -> None:
    MODULE_NAMES.clear()
    WEIGHT_OWNERS.clear()
    _USED.clear()


def keras_name(torch_name: str) -> str:
    """The Keras layer name of a torch module name: the same, with a '.' in front of a leading
    '_' (a layer's name becomes a TF root name scope, which must start with a letter, a digit
    or '.': EfficientNet's ``_conv_stem`` would fail with "not a valid root scope name")."""
    return "." + torch_name if torch_name.startswith("_") else torch_name


def torch_name(keras_layer_name: str) -> str:
    """The torch module name of a bridged Keras layer name (the inverse of keras_name)."""
    return keras_layer_name[1:] if keras_layer_name.startswith("._") else keras_layer_name


def unique_name(name: str | None) -> str | None:
    """A Keras-safe, unique layer name for the torch name ``name`` (None stays None)."""
    if not name:
        return None
    base = keras_name("".join(c if c.isalnum() or c in "_." else "_" for c in name))
    candidate, i = base, 1
    while candidate in _USED:
        i += 1
        candidate = f"{base}_{i}"
    _USED.add(candidate)
    return candidate


def _original(op: Any) -> Any:
    return CONVERTER_DICT[Tracer.op_undecorate(op)]


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


# --- conv ------------------------------------------------------------------------------------


def conv_layer(weight: torch.Tensor, bias: torch.Tensor | None, stride: Any, padding: Any,
               dilation: Any, groups: int, cin: int, name: str | None
               ) -> Callable[[Any], Any] | None:
    """A Keras function computing ``F.conv2d`` with these arguments on an NHWC tensor:
    Conv2D, or DepthwiseConv2D when groups == in_channels > 1, 'same' padding where it is
    equivalent (stride 1, odd kernel) else a ZeroPadding2D in front. None when there is no
    such layer (other groups, string padding)."""
    cout, _, kh, kw = weight.shape
    depthwise = groups == cin and cin > 1
    if groups not in (1, cin) or isinstance(padding, str) or (depthwise and cout % cin):
        return None
    stride, dilation, padding = _pair(stride), _pair(dilation), _pair(padding)
    array = weight.detach().cpu().numpy()
    if depthwise:
        kernel = array.transpose(2, 3, 0, 1).reshape(kh, kw, cin, cout // cin)
    else:
        kernel = array.transpose(2, 3, 1, 0)
    params = [kernel] + ([bias.detach().cpu().numpy()] if bias is not None else [])
    same = (stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1
            and padding == (dilation[0] * (kh // 2), dilation[1] * (kw // 2)))
    pad = keras.layers.ZeroPadding2D(padding) if not same and padding != (0, 0) else None
    common = dict(kernel_size=(kh, kw), strides=stride, padding="same" if same else "valid",
                  dilation_rate=dilation, use_bias=bias is not None, weights=params,
                  name=unique_name(name))
    if depthwise:
        conv = keras.layers.DepthwiseConv2D(depth_multiplier=cout // cin, **common)
    else:
        conv = keras.layers.Conv2D(filters=cout, **common)

    def func(input: Any, *args: Any, **kwargs: Any) -> Any:
        return conv(pad(input) if pad is not None else input)

    return func


_ORIG_F_CONV = _original(F.conv2d)


@nobuco.converter(F.conv2d, channel_ordering_strategy=Strategy.FORCE_TENSORFLOW_ORDER)
def _convert_f_conv2d(input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0,
                      dilation: Any = 1, groups: int = 1) -> Any:
    """F.conv2d with a module's own weight is that module's conv: name it after the module."""
    func = conv_layer(weight, bias, stride, padding, dilation, groups, input.shape[1],
                      WEIGHT_OWNERS.get(_key(weight)))
    if func is None:
        return _ORIG_F_CONV.convert_func(input, weight, bias, stride, padding, dilation, groups)
    return func


# --- padding ---------------------------------------------------------------------------------

_ORIG_PAD = _original(F.pad)


@nobuco.converter(F.pad, channel_ordering_strategy=Strategy.MANUAL)
def _convert_pad(input: torch.Tensor, pad: Any, mode: str = "constant",
                 value: float | None = None) -> Any:
    """Zero padding of H and W of an NCHW tensor → ZeroPadding2D (in TensorFlow order)."""
    sizes = tuple(pad)
    if input.dim() == 4 and mode == "constant" and not value and len(sizes) == 4 \
            and all(isinstance(p, int) and p >= 0 for p in sizes):
        left, right, top, bottom = sizes
        layer = keras.layers.ZeroPadding2D(((top, bottom), (left, right)))

        def func(input: Any, *args: Any, **kwargs: Any) -> Any:
            (x,) = tf_set_order_recursively((input,), channel_order=ChannelOrder.TENSORFLOW)
            return set_channel_order(layer(x), ChannelOrder.TENSORFLOW)

        return func
    original = _ORIG_PAD.convert_func(input, pad, mode, value)

    def fallback(input: Any, *args: Any, **kwargs: Any) -> Any:
        (x,) = tf_set_order_recursively((input,), channel_order=ChannelOrder.PYTORCH)
        return set_channel_order(original(x, *args, **kwargs), ChannelOrder.PYTORCH)

    return fallback


# --- max pooling -----------------------------------------------------------------------------

_ORIG_MAX_POOL = _original(F.max_pool2d)


def _pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """torch's max_pool2d output size along one axis."""
    span = size + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside
        out -= 1
    return out


def _tf_same(size: int, k: int, s: int, p: int, out: int) -> bool:
    """Do TF's 'same' windows (padding ignored by the max) equal torch's here?"""
    tf_out = -(-size // s)
    total = max((tf_out - 1) * s + k - size, 0)
    return tf_out == out and total // 2 == p


def _non_negative(tensor: Any) -> bool:
    """Is this Keras tensor the output of a ReLU (through pooling / padding / transposes)?"""
    for _ in range(8):
        history = getattr(tensor, "_keras_history", None)
        layer: Any = getattr(history, "layer", None)
        kind = type(layer).__name__
        if kind == "ReLU":
            return float(layer.negative_slope) == 0 and float(layer.threshold) >= 0
        if kind not in ("MaxPooling2D", "ZeroPadding2D", "TFOpLambda") or (
                kind == "TFOpLambda" and "transpose" not in layer.name):
            return False
        tensor = layer.input
    return False


@nobuco.converter(F.max_pool2d, torch.max_pool2d,
                  channel_ordering_strategy=Strategy.FORCE_TENSORFLOW_ORDER)
def _convert_max_pool2d(input: torch.Tensor, kernel_size: Any, stride: Any = None,
                        padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                        return_indices: bool = False) -> Any:
    """MaxPooling2D with torch's windows, without a -inf padding constant (in int8 it became the
    tensor's range, scale ~1e36): 'same' padding where TF's windows are torch's, else zero
    padding of a ReLU output (the max is the same), else nobuco's -inf padding."""
    k, s = _pair(kernel_size), _pair(stride or kernel_size)
    p, h, w = _pair(padding), input.shape[2], input.shape[3]
    if _pair(dilation) != (1, 1) or return_indices:
        return _ORIG_MAX_POOL.convert_func(input, kernel_size, stride, padding, dilation,
                                           ceil_mode)
    out = (_pool_out(h, k[0], s[0], p[0], ceil_mode), _pool_out(w, k[1], s[1], p[1], ceil_mode))
    same = _tf_same(h, k[0], s[0], p[0], out[0]) and _tf_same(w, k[1], s[1], p[1], out[1])
    extra = ((out[0] - 1) * s[0] + k[0] - h - 2 * p[0], (out[1] - 1) * s[1] + k[1] - w - 2 * p[1])
    pads = ((p[0], p[0] + max(extra[0], 0)), (p[1], p[1] + max(extra[1], 0)))
    pool = keras.layers.MaxPooling2D(k, s, padding="same" if same else "valid")
    fallback = _ORIG_MAX_POOL.convert_func(input, kernel_size, stride, padding, dilation,
                                           ceil_mode)

    def func(input: Any, *args: Any, **kwargs: Any) -> Any:
        if same or pads == ((0, 0), (0, 0)):
            return pool(input)
        if _non_negative(input):
            return pool(keras.layers.ZeroPadding2D(pads)(input))
        return fallback(input, *args, **kwargs)

    return func


# --- concatenation ---------------------------------------------------------------------------


@nobuco.converter(torch.cat, channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_cat(tensors: Any, dim: int = 0, *, out: Any = None) -> Any:
    """torch.cat along a non-batch dim → keras Concatenate (nobuco writes tf.concat)."""
    n = tensors[0].dim()
    axis = dim % n

    def func(tensors: Any, dim: int = 0, *, out: Any = None) -> Any:
        if len(tensors) == 1:  # a copy in torch; Keras would not clone Concatenate([x])
            return tensors[0]
        keras_axis = axis
        if get_channel_order(tensors[0]) == ChannelOrder.TENSORFLOW:
            keras_axis = dim_pytorch2keras(axis, n)
        if keras_axis == 0:
            return tf.concat(tensors, axis=0)
        return keras.layers.Concatenate(axis=keras_axis)(list(tensors))

    return func


# --- hard activations ------------------------------------------------------------------------


@nobuco.converter(F.hardswish, channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_hardswish(input: torch.Tensor, inplace: bool = False) -> Any:
    def func(input: Any, inplace: bool = False) -> Any:
        return input * keras.layers.ReLU(max_value=6.0)(input + 3.0) * (1.0 / 6.0)

    return func


@nobuco.converter(F.hardsigmoid, channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_hardsigmoid(input: torch.Tensor, inplace: bool = False) -> Any:
    def func(input: Any, inplace: bool = False) -> Any:
        return keras.layers.ReLU(max_value=6.0)(input + 3.0) * (1.0 / 6.0)

    return func


# --- expand ----------------------------------------------------------------------------------


@nobuco.converter(torch.Tensor.expand, channel_ordering_strategy=Strategy.FORCE_PYTORCH_ORDER)
def _convert_expand(self: torch.Tensor, *sizes: Any) -> Any:
    """tf.broadcast_to with each -1 replaced by the input's size: its static size when Keras
    knows it, else ``tf.shape(x)[i]``, never a ``sizes == -1`` comparison, whose constant operand
    ``clone_model`` drops ("TypeError: Missing required positional argument")."""
    def func(self: Any, *sizes: Any) -> Any:
        flat = list(_flatten(sizes))
        lead = len(flat) - len(self.shape)
        resolved = [s if not (isinstance(s, int) and s == -1) else (
            self.shape[i - lead] if self.shape[i - lead] is not None else tf.shape(self)[i - lead])
            for i, s in enumerate(flat)]
        return tf.broadcast_to(self, tf.convert_to_tensor(resolved))

    return func


# --- reshape ---------------------------------------------------------------------------------


def _sizes(shape: tuple[Any, ...]) -> list[Any]:
    """The requested shape of ``view(*shape)`` / ``view(shape)``."""
    if len(shape) == 1 and isinstance(shape[0], list | tuple | torch.Size):
        return list(shape[0])
    return list(shape)


def _batch_free(input: torch.Tensor, sizes: list[Any]) -> tuple[int, ...] | None:
    """The sizes after the batch when ``sizes`` keeps ``input``'s leading (batch) size, with
    a -1 resolved (TFLite needs static channel counts)."""
    if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        return None
    if input.dim() < 1 or input.shape[0] != TRACE_BATCH or sizes[0] != TRACE_BATCH:
        return None
    return tuple(int(s) for s in input.reshape(sizes).shape[1:])


def _reshape_converter(original: Any) -> Callable[..., Any]:
    def convert(input: torch.Tensor, *shape: Any) -> Any:
        rest = _batch_free(input, _sizes(shape))
        if rest is None:
            orig = original.convert_func(input, *shape)

            def fallback(input: Any, *args: Any, **kwargs: Any) -> Any:
                (x,) = tf_set_order_recursively((input,), channel_order=ChannelOrder.PYTORCH)
                return set_channel_order(orig(x, *args, **kwargs), ChannelOrder.PYTORCH)

            return fallback
        layer = keras.layers.Reshape(rest)
        pooled = input.dim() == 4 and tuple(input.shape[2:]) == (1, 1) and len(rest) == 1

        def func(input: Any, *args: Any, **kwargs: Any) -> Any:
            x = input
            # (N, 1, 1, C) in TensorFlow order flattens like (N, C, 1, 1): no transpose
            if not (pooled and get_channel_order(x) == ChannelOrder.TENSORFLOW):
                (x,) = tf_set_order_recursively((x,), channel_order=ChannelOrder.PYTORCH)
            return set_channel_order(layer(x), ChannelOrder.PYTORCH)

        return func

    return convert


for _op in (torch.Tensor.view, torch.Tensor.reshape, torch.reshape):
    nobuco.converter(_op, channel_ordering_strategy=Strategy.MANUAL)(
        _reshape_converter(_original(_op)))


__all__ = ["TRACE_BATCH", "begin", "conv_layer", "end", "unique_name"]
