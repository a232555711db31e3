"""A process's output at the file-descriptor level: C and C++ libraries (torch's C++ core,
TensorFlow, onnxruntime) write to descriptors 1 and 2 directly, past ``sys.stdout`` /
``sys.stderr``, so only redirecting the descriptors catches what they print."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def redirected(target: Path | None, fds: tuple[int, ...] = (1, 2)) -> Iterator[None]:
    """Send file descriptors ``fds`` (1 stdout, 2 stderr) to ``target`` (appended), or
    discard them when ``target`` is None, for the duration."""
    _flush()
    saved = [os.dup(fd) for fd in fds]
    sink = os.open(os.devnull if target is None else target,
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for fd in fds:
            os.dup2(sink, fd)
        yield
    finally:
        _flush()
        for fd, original in zip(fds, saved, strict=True):
            os.dup2(original, fd)
        for handle in (sink, *saved):
            os.close(handle)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a full disk, a closed stream
            stream.flush()
