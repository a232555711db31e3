"""One small error hierarchy. Every user-facing error renders as one line."""

from __future__ import annotations


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
