"""Import-time compatibility patches for NNI 3.0 on torch >= 2.2 (never edits site-packages).

``ModelSpeedup`` traces the model with NNI's ``concrete_tracer``, which breaks on torch >= 2.2:

1. ``ConcreteTracer.trace`` recognises tensor methods by ``__qualname__.startswith('_TensorBase')``;
   torch 2.2 renamed ``torch._C._TensorBase`` to ``TensorBase``, so the methods fall through to
   a branch that reads ``func.__module__`` (None) and crashes. The method is recompiled from
   its own source with the check widened to both names.
2. ``node_is_impure_wrapper`` replaces ``torch.fx.Node.is_impure`` during dead-code
   elimination, but newer torch calls ``is_impure(impure_random=...)``; the replacement takes
   ``*args, **kwargs`` and ignores them.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from typing import Any

import torch
from nni.common.concrete_trace_utils import concrete_tracer as _ct

_OLD_CHECK = "func.__qualname__.startswith('_TensorBase')"
_NEW_CHECK = "func.__qualname__.startswith(('_TensorBase', 'TensorBase'))"
_applied = False


def _patch_tensorbase_check() -> None:
    cls = _ct.ConcreteTracer
    source = textwrap.dedent(inspect.getsource(cls.trace))
    if _OLD_CHECK not in source:  # a fixed NNI release: nothing to do
        return
    source = source.replace(_OLD_CHECK, _NEW_CHECK)
    # keep line numbers pointing into the original file for tracebacks
    first_line = inspect.getsourcelines(cls.trace)[1]
    code = compile("\n" * (first_line - 1) + source, inspect.getsourcefile(cls.trace) or "<nni>",
                   "exec")
    namespace: dict[str, Any] = {}
    exec(code, vars(_ct), namespace)  # NNI's own source with one string replaced
    cls.trace = namespace["trace"]


def _patch_is_impure() -> None:
    original = _ct.node_is_impure_wrapper
    if getattr(original, "_squeezelab_patched", False):
        return

    @functools.wraps(original)
    def node_is_impure_wrapper(node: torch.fx.Node, *args: Any, **kwargs: Any) -> bool:
        return bool(original(node))

    node_is_impure_wrapper._squeezelab_patched = True  # type: ignore[attr-defined]
    _ct.node_is_impure_wrapper = node_is_impure_wrapper


def apply() -> None:
    """Apply both patches once per process."""
    global _applied
    if _applied:
        return
    if hasattr(torch._C, "TensorBase"):  # torch >= 2.2
        _patch_tensorbase_check()
        _patch_is_impure()
    _applied = True
