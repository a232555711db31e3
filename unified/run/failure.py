"""The one-line reason of a failed row: the decisive exception's type, the first meaningful
line of its message and the toolkit function it came from, e.g.
``nni QuantizationSetting.get: AssertionError: Conv2dStaticSamePadding is not registered``.

The full traceback stays in the job folder (``error.json``); this line is what a reader of
the table needs to tell one cause from another.
"""

from __future__ import annotations

import re
import sys
import traceback
from types import FrameType, TracebackType

from unified.spec.errors import SqueezelabError

MAX_CHARS = 300
# squeezelab's own code: a frame here is "ours", not the toolkit's
PROJECT_PACKAGES = frozenset({"unified", "adapters"})
# Frames that only pass a call on (decorators, module __call__, TF's eager plumbing): the
# function that failed is the innermost frame that is not one of these.
PLUMBING_FUNCTIONS = frozenset({
    "_call_impl", "_wrapped_call_impl", "__call__", "error_handler", "wrapper", "wrapped",
    "inner", "decorated", "decorator", "_fn", "quick_execute", "raise_from_not_ok_status",
    "_apply_op_helper", "op_dispatch_handler", "<lambda>", "<module>", "<genexpr>",
    "<listcomp>", "<dictcomp>", "_method_wrapper", "autograph_handler", "converted_call",
})
# A line that only introduces the detail on the next line(s)
HEADER_LINE = re.compile(
    r"^(Exception encountered when calling layer .*|Traceback \(most recent call last\):|"
    r"Graph execution error:|Detected at node .*|.*\(most recent call last\):|"
    r"During handling of the above exception.*|The above exception was the direct cause.*)$")
STACK_LINE = re.compile(r"^(File \"|File '|  |\t|\[\[|Call arguments received)")
DECORATION = re.compile(r"^[\W_]*$")
# Sentences a toolkit appends to every message of a kind, which say nothing of this failure
BOILERPLATE = re.compile(
    r"\s*Please feel free to request support or submit a pull request on PyTorch GitHub:?"
    r"\s*\S*|\s*\[Caused by the value .*$")
TF_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[\[\{\{node [^}]*\}\}\]\]")


def failure_reason(exc: BaseException) -> str:
    """The record's ``reason`` for a job that raised ``exc``."""
    decisive = decisive_exception(exc)
    text = f"{type(decisive).__name__}: {first_line(decisive)}".rstrip(": ")
    # our own errors are written for the user: our function's name would add nothing
    where = origin(decisive.__traceback__,
                   name_ours=not isinstance(decisive, SqueezelabError))
    if where:
        text = f"{where}: {text}"
    if decisive is not exc:
        context = wrapper_context(exc, decisive)
        if context:
            text += f" (in {type(exc).__name__}: {context})"
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def decisive_exception(exc: BaseException) -> BaseException:
    """The innermost exception of the explicit ``raise ... from`` chain: a wrapper (ours or a
    toolkit's) names the stage, the exception it wraps names the cause. An implicit context
    ("during handling of ...") is not followed: the later exception is the failure."""
    seen = {id(exc)}
    current = exc
    while current.__cause__ is not None and id(current.__cause__) not in seen:
        current = current.__cause__
        seen.add(id(current))
    return current


def first_line(exc: BaseException) -> str:
    """The first line of the message that says something: not blank, not a header such as
    Keras's "Exception encountered when calling layer ...", not a stack line; the source line
    of a bare ``assert``."""
    lines = [BOILERPLATE.sub("", TF_NODE.sub("", line)).rstrip()
             for line in str(exc).splitlines()]
    header = ""
    for line in lines:
        stripped = line.strip()
        if not stripped or DECORATION.match(stripped) or STACK_LINE.match(line):
            continue
        if HEADER_LINE.match(stripped):
            if stripped.startswith("Exception encountered when calling layer"):
                header = stripped.removeprefix("Exception encountered when calling ").rstrip(".")
            continue
        return f"{header}: {stripped}" if header else stripped
    if isinstance(exc, AssertionError):
        source = _raising_source(exc.__traceback__)
        if source:
            return source
    return header


def origin(tb: TracebackType | None, name_ours: bool = True) -> str:
    """Where the exception came from: ``<toolkit> <qualified function>`` for the innermost
    toolkit frame that is not plumbing; ``<toolkit>, called from <our function>`` when the
    toolkit left only plumbing in the traceback; else the innermost frame of our own code
    (when ``name_ours``)."""
    frames = list(_frames(tb))
    toolkit = [(package, module, name) for package, module, name in frames
               if package not in PROJECT_PACKAGES and not _stdlib(package)]
    meaningful = [f for f in toolkit if f[2].rpartition(".")[2] not in PLUMBING_FUNCTIONS]
    ours = [f"{module}.{name}" for package, module, name in frames
            if package in PROJECT_PACKAGES]
    if meaningful:
        package, _, name = meaningful[-1]
        return f"{package} {name}"
    if toolkit and ours:  # a toolkit that cut its traceback (Keras, TF): where we called it
        return f"{toolkit[-1][0]}, called from {ours[-1]}"
    if toolkit:
        return f"{toolkit[-1][0]} {toolkit[-1][2]}"
    return ours[-1] if ours and name_ours else ""


def wrapper_context(outer: BaseException, inner: BaseException) -> str:
    """What the outermost wrapper says beyond the wrapped message (its stage), or ''."""
    line = next((s.strip() for s in str(outer).splitlines() if s.strip()), "")
    for marker in (f"{type(inner).__name__}:", first_line(inner)):
        if marker and marker in line:
            line = line.partition(marker)[0]
    return line.strip().rstrip(":").strip()


def _frames(tb: TracebackType | None) -> list[tuple[str, str, str]]:
    """(top-level package, module, qualified function name) per frame, outermost first."""
    out = []
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        out.append((module.partition(".")[0], module, _qualname(frame)))
        tb = tb.tb_next
    return out


def _qualname(frame: FrameType) -> str:
    """The function's qualified name, with the class it was called on rather than the base
    class that defines it (``QuantizationSetting.get``, not ``ModuleSetting.get``)."""
    code = frame.f_code
    owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
    if owner is not None and code.co_varnames[:1] in (("self",), ("cls",)):
        cls = owner if isinstance(owner, type) else type(owner)
        return f"{cls.__name__}.{code.co_name}"
    return code.co_qualname


def _stdlib(package: str) -> bool:
    return package in sys.stdlib_module_names or package in ("", "__main__", "builtins")


def _raising_source(tb: TracebackType | None) -> str:
    summary = traceback.extract_tb(tb)
    return (summary[-1].line or "").strip() if summary else ""
