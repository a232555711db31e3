"""How a run ends early: Ctrl-C, SIGTERM, or a file it cannot write.

While a run is under way in the main thread, SIGINT and SIGTERM raise :class:`Interrupted`
there; the runner then stops its executor (no new job, running workers killed), keeps every
row finished so far in results.jsonl and raises :class:`RunStopped`, whose message is the one
line the user sees, with the exit code a shell expects (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_STORAGE = 1  # a file the run could not write (a full disk): not the user's input
EXIT_BUSY = 2  # the run folder is in use: a usage error


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException, as KeyboardInterrupt: ``except
    Exception`` must not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunStopped(Exception):
    """The run ended before its end. ``message`` is one line (what happened, what was kept,
    how to go on); the CLI prints it after ``squeezelab: `` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread (elsewhere,
    e.g. a run started from a worker thread, signals are left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        _restore(previous)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Within the block (the clean-up of a stopping run), a second Ctrl-C or SIGTERM is
    ignored, so that the clean-up ends; SIGKILL still ends the run at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        _restore(previous)


def _restore(previous: dict[signal.Signals, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
