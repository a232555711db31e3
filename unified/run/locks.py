"""File locks, so that several runs (and the threads of one) can share a cache directory and
never use a run folder twice at once.

``flock`` locks belong to an open file, so two threads of one process exclude each other as
two processes do, and the kernel drops a lock when its holder dies (a SIGKILLed run blocks
nobody). Lock files are empty and never deleted: deleting one while another process waits
on it would let a third take a different lock of the same name.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Busy(Exception):
    """The run folder is being written by another run."""


def lock_path(cache_dir: Path, kind: str, key: str) -> Path:
    """The lock file of one cache entry (``kind`` is ``reference`` or ``job``)."""
    return cache_dir / ".locks" / f"{kind}-{key}"


@contextmanager
def file_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; when
    another holder has it, call ``on_wait`` once, then wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` while a run writes the folder; a second run given the same
    ``--out`` meanwhile gets Busy, whose message names the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{folder} is in use by another squeezelab run; wait for it to end or "
                       "choose another --out") from None
        yield
    finally:
        os.close(fd)
