"""One small error hierarchy. Every user-facing error renders as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SqueezelabError(Exception):
    """Base class: a problem the user can fix; the CLI prints it on one line, exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def lines(self) -> list[str]:
        return [self.message]


class SpecError(SqueezelabError):
    """A scenario or recipe is invalid. ``problems`` are complete one-line messages."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if len(problems) == 1 else f"{len(problems)} problems")
        self.problems = problems

    def lines(self) -> list[str]:
        return list(self.problems)


class UnsupportedOption(SqueezelabError):
    """An adapter cannot carry out an option of a step."""

    def __init__(self, adapter: str, option: str, value: object, supported: object) -> None:
        super().__init__(
            f"The '{option}' option of backend '{adapter}' must be one of {supported}. "
            f"Got {value!r} instead."
        )


class MissingToolkit(SqueezelabError):
    """A backend's toolkit is not installed."""

    def __init__(self, backend: str, packages: list[str], hint: str) -> None:
        super().__init__(
            f"backend '{backend}' needs {', '.join(packages)} which is not installed; {hint}"
        )
        self.hint = hint


class ExportMismatch(SqueezelabError):
    """An exported ONNX disagrees with the toolkit's own artifact beyond the tolerance."""


# --- message helpers: one line, sklearn's pattern, a suggestion for a misspelt name ---------


def closest(word: object, choices: Iterable[object], cutoff: float = 0.6) -> str | None:
    """The choice closest to ``word`` in spelling (case-insensitive), or None if none is
    near enough (difflib's similarity ratio below ``cutoff``)."""
    names = {str(c).lower(): str(c) for c in choices}
    found = difflib.get_close_matches(str(word).lower(), list(names), n=1, cutoff=cutoff)
    return names[found[0]] if found else None


def did_you_mean(word: object, choices: Iterable[object], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    match = closest(word, choices, cutoff)
    return f"; did you mean {match!r}?" if match is not None and match != str(word) else ""


def one_line(text: str, limit: int = 240) -> str:
    """``text`` with every run of whitespace (newlines too) made one space, cut at ``limit``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def summarize(exc: BaseException, limit: int = 160) -> str:
    """A third-party exception as ``Type: first line of its message`` (never the whole text:
    torch's multi-line messages end in advice meant for torch's own users)."""
    text = str(exc).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    name = type(exc).__name__
    return one_line(f"{name}: {first}" if first else name, limit)
