"""A failed row's reason names its cause: the decisive exception's type, the first
meaningful line of its message and the toolkit function it came from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unified.run.failure import decisive_exception, failure_reason, first_line


class SubclassedConv(nn.Conv2d):
    """A Conv2d subclass, as EfficientNet's Conv2dStaticSamePadding is."""


def raised(fn) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def test_nni_unregistered_subclass_names_nni_function_and_first_line() -> None:
    from nni.compression.base.setting import QuantizationSetting

    exc = raised(lambda: QuantizationSetting.get(SubclassedConv(3, 4, 3),
                                                 {"quant_dtype": "int8"}))
    reason = failure_reason(exc)
    assert reason.startswith("nni QuantizationSetting.get: AssertionError: SubclassedConv is "
                             "not registered"), reason


def test_keras_multi_line_message_gives_its_first_meaningful_line_not_the_last() -> None:
    import tf_keras

    layer = tf_keras.layers.Dense(4)
    layer.build((None, 1280))
    exc = raised(lambda: layer(tf_keras.Input((40960,))))  # the bridge's wrong flatten
    message = str(exc).strip().splitlines()
    assert len(message) > 3  # Keras's own multi-line message, ending in "• mask=None" or so
    reason = failure_reason(exc)
    assert 'ValueError: layer "dense" (type Dense): ' in reason, reason
    assert "40960" in reason and message[-1].strip() not in reason, reason
    assert reason.startswith("tensorflow "), reason  # where TF raised it


def test_torch_error_names_the_torch_function() -> None:
    exc = raised(lambda: nn.Linear(3, 4)(torch.zeros(2, 5)))
    reason = failure_reason(exc)
    assert reason.startswith("torch Linear.forward: RuntimeError: mat1 and mat2 shapes"), reason


class Wrapper(Exception):
    pass


def _wrapping() -> None:
    try:
        nn.Linear(3, 4)(torch.zeros(2, 5))
    except RuntimeError as exc:
        raise Wrapper(f"conversion failed: RuntimeError: {exc}") from exc


def test_a_wrapper_is_followed_to_the_exception_it_wraps_and_names_its_stage() -> None:
    exc = raised(_wrapping)
    assert isinstance(decisive_exception(exc), RuntimeError)
    reason = failure_reason(exc)
    assert reason.startswith("torch Linear.forward: RuntimeError: mat1"), reason
    assert reason.endswith("(in Wrapper: conversion failed)"), reason


def _handling_fails() -> None:
    try:
        raise KeyError("first attempt")
    except KeyError:
        raise ValueError("the documented way failed too") from None


def test_the_later_exception_wins_over_the_one_being_handled() -> None:
    reason = failure_reason(raised(_handling_fails))
    assert "ValueError: the documented way failed too" in reason and "first attempt" \
        not in reason


def test_a_bare_assert_shows_its_source_line(tmp_path, monkeypatch) -> None:
    # a module of its own: pytest rewrites the asserts of test modules, not of a toolkit's
    (tmp_path / "some_toolkit.py").write_text(
        "def check(shape):\n    assert len(shape) == 4\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import some_toolkit

    reason = failure_reason(raised(lambda: some_toolkit.check((1, 2))))
    assert reason == "some_toolkit check: AssertionError: assert len(shape) == 4", reason


def test_first_line_skips_blank_headers_and_tensorflow_node_names() -> None:
    tf_like = ValueError("{{function_node __wrapped__Reshape_device_/job:localhost}} Input to "
                         "reshape is a tensor with 221184 values, but the requested shape has "
                         "13824 [Op:Reshape]")
    assert first_line(tf_like).startswith("Input to reshape is a tensor with 221184 values")
    graph = ValueError("Graph execution error:\n\nDetected at node x defined at (most recent "
                       "call last):\n  File \"a.py\", line 1\n\nreal cause here\n\t [[{{node x}}]]")
    assert first_line(graph) == "real cause here"


def test_our_own_error_is_not_prefixed_with_our_function() -> None:
    """A SqueezelabError raised by our code is written for the user; the name of the function
    that raised it (here a closure inside the model loader) would only add noise."""
    from unified.spec.errors import SqueezelabError
    from unified.torchkit.models import build_model

    with pytest.raises(SqueezelabError) as caught:  # json.loads() needs an argument
        build_model("python:json:loads", 10, (1, 8, 8))
    error, tb = caught.value, caught.tb  # as our job runner sees it: without this test's frame
    reason = failure_reason(error.with_traceback(tb.tb_next))
    assert reason.startswith("BuildError: calling json:loads() failed: TypeError"), reason
