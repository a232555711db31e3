"""torch → tf_keras (Keras 2) with nobuco, producing the standard Keras layers TF-MOT accepts.

nobuco turns ``F.relu``, ``x + y`` and ``flatten`` into ``TFOpLambda`` layers, which TF-MOT
refuses to wrap, and makes a 1-input-channel stem conv a ``DepthwiseConv2D`` (never pruned or
clustered by TF-MOT). The converters registered here give ``ReLU``, ``Add``, ``Flatten``,
``GlobalAveragePooling2D`` and ``Conv2D`` instead, and name conv / dense layers after the torch
module (``features.0.0``) so recipe targets and notes can speak torch names.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch._dynamo  # (loads triton: importing triton *after* TF segfaults)
import torch.nn.functional as F
from torch import nn

# isort: split
import tensorflow as tf
import tf_keras
import tf_keras.activations
import tf_keras.layers
import tf_keras.src.engine.keras_tensor

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":  # pragma: no cover - user override
    raise RuntimeError("the tfmot backend needs TF_USE_LEGACY_KERAS=1 (Keras 2) before TF import "
                       "(its adapter's prepare_process sets it)")

__all__ = ["BridgeError", "Bridged", "keras", "tf", "torch_to_keras"]

_ALIAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _keras_is_tf_keras() -> Iterator[None]:
    """While importing nobuco, make ``import keras`` give tf_keras (Keras 2).

    nobuco imports ``keras.src.engine`` (Keras 2 layout) and builds layers with
    ``keras.layers``; the installed ``keras`` is Keras 3. The alias is scoped: the previous
    ``keras`` modules are put back afterwards, nobuco keeps its references to tf_keras.
    """
    with _ALIAS_LOCK:
        saved = {k: v for k, v in sys.modules.items() if k == "keras" or k.startswith("keras.")}
        for name in saved:
            del sys.modules[name]
        for name, module in list(sys.modules.items()):
            if name == "tf_keras" or name.startswith("tf_keras."):
                sys.modules["keras" + name[len("tf_keras"):]] = module
        try:
            yield
        finally:
            for name in [k for k in sys.modules if k == "keras" or k.startswith("keras.")]:
                del sys.modules[name]
            sys.modules.update(saved)


def _import_nobuco() -> ModuleType:
    if "nobuco" in sys.modules:
        return sys.modules["nobuco"]
    with _keras_is_tf_keras():
        import nobuco

        # keras.src.applications is imported lazily by one converter: load it while aliased
        import tf_keras.src.applications  # noqa: F401
    return nobuco


nobuco = _import_nobuco()
from nobuco.commons import CONVERTER_DICT, ChannelOrder, ChannelOrderingStrategy  # noqa: E402
from nobuco.converters.channel_ordering import get_channel_order, set_channel_order  # noqa: E402
from nobuco.layers.channel_order import tf_set_order_recursively  # noqa: E402
from nobuco.trace.trace import Tracer  # noqa: E402

from adapters.tfmot._impl_bridge_ops import (  # noqa: E402  (registers more converters)
    MODULE_NAMES,
    TRACE_BATCH,
    begin,
    conv_layer,
    end,
    torch_name,
    unique_name,
)

keras = tf_keras
Strategy = ChannelOrderingStrategy

# Layers that TF-MOT and the TFLite converter handle as ordinary Keras layers.
STANDARD_LAYERS = (
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization",
    "ReLU", "Activation", "Add", "Multiply", "Concatenate", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Permute",
    "ZeroPadding2D", "Cropping2D", "Dropout", "Identity", "Softmax",
)


class BridgeError(RuntimeError):
    """The torch model has a layer the torch → Keras bridge cannot convert."""


# --- naming: Keras layers carry the torch module name ------------------------------------

def _keras_name(module: nn.Module) -> str | None:
    """A unique Keras name from the torch module name (dots kept, anything exotic replaced)."""
    return unique_name(MODULE_NAMES.get(id(module)))


def _original(op: Any) -> Any:
    return CONVERTER_DICT[Tracer.op_undecorate(op)]


# --- converters ------------------------------------------------------------------------

_ORIG_CONV = _original(nn.Conv2d)
_ORIG_LINEAR = _original(nn.Linear)
_ORIG_ADD = _original(torch.Tensor.__add__)
_ORIG_MEAN = _original(torch.mean)
_ORIG_FLATTEN = _original(torch.flatten)


@nobuco.converter(nn.Conv2d, channel_ordering_strategy=Strategy.FORCE_TENSORFLOW_ORDER)
def _convert_conv2d(self: nn.Conv2d, input: torch.Tensor) -> Any:
    """Conv2D unless the conv is really depthwise (groups == in_channels > 1); 'same'
    padding instead of a ZeroPadding2D layer when it is equivalent (stride 1, odd kernel)."""
    if self.padding_mode != "zeros":
        return _ORIG_CONV.convert_func(self, input)
    func = conv_layer(self.weight, self.bias, self.stride, self.padding, self.dilation,
                      self.groups, input.shape[1], MODULE_NAMES.get(id(self)))
    return func if func is not None else _ORIG_CONV.convert_func(self, input)


@nobuco.converter(nn.Linear, channel_ordering_strategy=Strategy.FORCE_PYTORCH_ORDER)
def _convert_linear(self: nn.Linear, input: torch.Tensor) -> Any:
    out_features = self.weight.shape[0]
    params = [self.weight.detach().cpu().numpy().T]
    if self.bias is not None:
        params.append(self.bias.detach().cpu().numpy())
    return keras.layers.Dense(out_features, use_bias=self.bias is not None, weights=params,
                              name=_keras_name(self))


@nobuco.converter(F.relu, torch.relu, torch.Tensor.relu,
                  channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_relu(input: torch.Tensor, inplace: bool = False) -> Any:
    def func(input: Any, inplace: bool = False) -> Any:
        return keras.layers.ReLU()(input)

    return func


@nobuco.converter(torch.relu_, torch.Tensor.relu_,
                  channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_relu_(input: torch.Tensor) -> Any:
    def func(input: Any) -> Any:
        return keras.layers.ReLU()(input)

    return func


@nobuco.converter(nn.ReLU6, F.relu6, channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS)
def _convert_relu6(*args: Any, **kwargs: Any) -> Any:
    layer = keras.layers.ReLU(max_value=6.0)
    if args and isinstance(args[0], nn.Module):
        return layer

    def func(input: Any, *_: Any, **__: Any) -> Any:
        return layer(input)

    return func


@nobuco.converter(torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__,
                  torch.Tensor.__iadd__, torch.Tensor.__radd__,
                  channel_ordering_strategy=Strategy.MINIMUM_TRANSPOSITIONS_OR_PYTORCH,
                  autocast=True)
def _convert_add(input: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
    """Two tensors of one shape (a residual sum) → keras Add; anything else as nobuco does."""
    if (isinstance(input, torch.Tensor) and isinstance(other, torch.Tensor)
            and input.shape == other.shape and not args and kwargs.get("alpha", 1) == 1):
        def func(input: Any, other: Any, *args: Any, **kwargs: Any) -> Any:
            return keras.layers.Add()([input, other])

        return func
    return _ORIG_ADD.convert_func(input, other, *args, **kwargs)


@nobuco.converter(torch.mean, torch.Tensor.mean, channel_ordering_strategy=Strategy.MANUAL)
def _convert_mean(input: torch.Tensor, dim: Any = None, keepdim: bool = False,
                  *args: Any, **kwargs: Any) -> Any:
    """Mean over the spatial dims of an NCHW tensor → GlobalAveragePooling2D."""
    dims = None if dim is None else sorted(d % input.dim() for d in
                                           ((dim,) if isinstance(dim, int) else dim))
    if input.dim() == 4 and dims == [2, 3] and not args and not kwargs.get("dtype"):
        def func(input: Any, dim: Any = None, keepdim: bool = False,
                 *args: Any, **kwargs: Any) -> Any:
            (x,) = tf_set_order_recursively((input,), channel_order=ChannelOrder.TENSORFLOW)
            y = keras.layers.GlobalAveragePooling2D(keepdims=keepdim)(x)
            # (N, C) is the same in both orders; (N, 1, 1, C) is the TF order of (N, C, 1, 1)
            return set_channel_order(
                y, ChannelOrder.TENSORFLOW if keepdim else ChannelOrder.PYTORCH)

        return func
    return _ORIG_MEAN.convert_func(input, dim, keepdim, *args, **kwargs)


@nobuco.converter(torch.flatten, torch.Tensor.flatten, channel_ordering_strategy=Strategy.MANUAL)
def _convert_flatten(input: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> Any:
    """flatten(x, 1) of an NCHW tensor → (Permute when H*W > 1) + Flatten, not tf.reshape."""
    n = input.dim()
    if n >= 3 and start_dim % n == 1 and end_dim % n == n - 1:
        def func(input: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
            x = input
            spatial_one = all(s == 1 for s in x.shape[1:-1]) or all(
                s == 1 for s in x.shape[2:])
            if get_channel_order(x) == ChannelOrder.TENSORFLOW and not spatial_one:
                # torch flattens C, H, W in that order: go back to channels-first first
                x = keras.layers.Permute((n - 1, *range(1, n - 1)))(x)
            y = keras.layers.Flatten()(x)
            return set_channel_order(y, ChannelOrder.PYTORCH)

        return func

    original = _ORIG_FLATTEN.convert_func(input, start_dim, end_dim)  # on the torch tensor

    def fallback(input: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
        (x,) = tf_set_order_recursively((input,), channel_order=ChannelOrder.PYTORCH)
        y = original(x, start_dim, end_dim)
        return set_channel_order(y, ChannelOrder.PYTORCH)

    return fallback


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """torch's adaptive pooling windows along one axis: [floor(i*n/o), ceil((i+1)*n/o))."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_pool(input: torch.Tensor, output_size: Any, kind: str) -> Any:
    """Adaptive pooling as standard layers: one MaxPooling2D/AveragePooling2D when every
    window has one size and one stride, else Cropping2D + global pooling per output cell,
    concatenated (all TFLite builtins, no TFOpLambda)."""
    h, w = input.shape[-2:]
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    oh, ow = oh or h, ow or w
    rows, cols = _windows(h, oh), _windows(w, ow)
    sizes = {(b - a) for a, b in rows}, {(b - a) for a, b in cols}
    steps = ({rows[i + 1][0] - rows[i][0] for i in range(oh - 1)} or {1},
             {cols[i + 1][0] - cols[i][0] for i in range(ow - 1)} or {1})
    pool = keras.layers.MaxPooling2D if kind == "max" else keras.layers.AveragePooling2D
    glob = keras.layers.GlobalMaxPooling2D if kind == "max" else keras.layers.GlobalAveragePooling2D
    if (oh, ow) == (1, 1):
        layer = glob(keepdims=True)
    elif all(len(x) == 1 for x in (*sizes, *steps)):
        layer = pool(pool_size=(sizes[0].pop(), sizes[1].pop()),
                     strides=(steps[0].pop(), steps[1].pop()), padding="valid")
    else:
        layer = None
    if layer is not None:

        def func(input: Any, *args: Any, **kwargs: Any) -> Any:
            return layer(input)

        return func

    def cells(input: Any, *args: Any, **kwargs: Any) -> Any:
        out_rows = []
        for r0, r1 in rows:
            row = [glob(keepdims=True)(keras.layers.Cropping2D(((r0, h - r1), (c0, w - c1)))(input))
                   for c0, c1 in cols]
            out_rows.append(row[0] if len(row) == 1 else keras.layers.Concatenate(axis=2)(row))
        return out_rows[0] if len(out_rows) == 1 else keras.layers.Concatenate(axis=1)(out_rows)

    return cells


@nobuco.converter(F.adaptive_max_pool2d, channel_ordering_strategy=Strategy.FORCE_TENSORFLOW_ORDER)
def _convert_adaptive_max_pool2d(input: torch.Tensor, output_size: Any,
                                 return_indices: bool = False) -> Any:
    if return_indices:
        raise BridgeError("adaptive_max_pool2d with return_indices has no Keras layer")
    return _adaptive_pool(input, output_size, "max")


@nobuco.converter(F.adaptive_avg_pool2d, channel_ordering_strategy=Strategy.FORCE_TENSORFLOW_ORDER)
def _convert_adaptive_avg_pool2d(input: torch.Tensor, output_size: Any) -> Any:
    return _adaptive_pool(input, output_size, "avg")


# --- conversion ------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Bridged:
    """A converted model and what the conversion check found."""

    model: tf_keras.Model
    max_abs_diff: float
    nonstandard: list[str] = field(default_factory=list)  # "name (Class)" of odd layers
    keras_to_torch: dict[str, str] = field(default_factory=dict)  # layer name → module name
    shape_traced: bool = False  # converted with nobuco's trace_shape (batch-dependent shapes)


def _unimplemented(text: str) -> str:
    """The op names nobuco printed under 'Unimplemented nodes'."""
    clean = _ANSI.sub("", text)
    tail = clean.split("Unimplemented nodes:", 1)[-1]
    ops = re.findall(r"([A-Za-z_][\w.]*)\[([\w.]+)\]", tail)
    leaves = [f"{mod}.{op}" for op, mod in ops]
    return ", ".join(dict.fromkeys(leaves)) or "unknown op"


class _Mismatch(BridgeError):
    """The converted model does not compute what the torch model does (e.g. on another batch
    size than the traced one)."""


_NOISE = ("Exception encountered when calling", "Call arguments received", "•")


def first_line(exc: BaseException) -> str:
    """The first informative line of a (Keras / TensorFlow) error message."""
    for line in str(exc).splitlines():
        text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line.strip())
        if text and not text.startswith(_NOISE):
            return text
    return type(exc).__name__


def _nobuco_convert(model: nn.Module, input_shape: tuple[int, int, int], check_x: np.ndarray,
                    trace_shape: bool) -> tf_keras.Model:
    """nobuco on a batch of TRACE_BATCH samples (cycled from ``check_x``)."""
    batch = np.resize(check_x, (TRACE_BATCH, *check_x.shape[1:])).astype(np.float32)
    sample = torch.from_numpy(np.ascontiguousarray(batch))
    log = io.StringIO()
    begin(model)
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()), \
                torch.no_grad():
            return nobuco.pytorch_to_keras(
                model, args=[sample],
                input_shapes={sample: (None, *input_shape)},  # torch order; batch free
                inputs_channel_order=ChannelOrder.TENSORFLOW,
                outputs_channel_order=ChannelOrder.PYTORCH,
                trace_shape=trace_shape,
                full_validation=False,
                debug_traces=nobuco.TraceLevel.NEVER,
            )
    except Exception as exc:
        if "Unimplemented" in str(exc):
            raise BridgeError(
                f"unsupported by the torch→Keras bridge (nobuco has no converter): "
                f"{_unimplemented(log.getvalue())}") from None
        raise BridgeError(f"torch→Keras conversion failed: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    finally:
        end()


def _check(keras_model: tf_keras.Model, check_x: np.ndarray, expected: np.ndarray,
           atol: float) -> float:
    """Max |torch - Keras| on a batch of one (what TFLite runs) and on all of ``check_x``."""
    worst = 0.0
    for x, want in ((check_x[:1], expected[:1]), (check_x, expected)):
        try:
            got = keras_model(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                              training=False).numpy()
        except Exception as exc:
            raise _Mismatch(
                f"the converted Keras model fails on a batch of {len(x)} (traced on "
                f"{TRACE_BATCH}): {type(exc).__name__}: {first_line(exc)}") from None
        diff = float(np.abs(want - got).max())
        if not np.isfinite(diff) or diff > atol:
            raise _Mismatch(
                f"torch→Keras conversion differs from the torch model on a batch of {len(x)}: "
                f"max abs diff {diff:.3g} > {atol}")
        worst = max(worst, diff)
    return worst


def torch_to_keras(model: nn.Module, input_shape: tuple[int, int, int],
                   check_x: np.ndarray, atol: float = 1e-3) -> Bridged:
    """Convert ``model`` (eval) to a Keras 2 functional model taking NHWC input of any batch.

    Checks the conversion on ``check_x`` (NCHW) and on a batch of one and raises
    :class:`BridgeError` naming the torch op when nobuco has no converter or the outputs
    differ by more than ``atol``. When the first conversion does not compute the same (a
    shape computed from the traced batch size, e.g. a class token expanded to it), converts
    again with nobuco's ``trace_shape``: shape arithmetic becomes part of the Keras graph.
    """
    model = model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(check_x)).numpy()
    shape_traced = False
    try:
        keras_model = _nobuco_convert(model, input_shape, check_x, trace_shape=False)
        diff = _check(keras_model, check_x, expected, atol)
    except _Mismatch as first:
        try:
            keras_model = _nobuco_convert(model, input_shape, check_x, trace_shape=True)
            diff = _check(keras_model, check_x, expected, atol)
        except BridgeError:
            raise first from None
        shape_traced = True
    nonstandard = [f"{layer.name} ({type(layer).__name__})" for layer in keras_model.layers
                   if type(layer).__name__ not in STANDARD_LAYERS]
    torch_names = {n for n, _ in model.named_modules() if n}
    mapping = {layer.name: torch_name(layer.name) for layer in keras_model.layers
               if torch_name(layer.name) in torch_names}
    return Bridged(keras_model, diff, nonstandard, mapping, shape_traced)
