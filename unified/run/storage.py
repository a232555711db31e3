"""Writing files so that a full disk, a kill or a crash never leaves a torn one behind.

``atomic_write`` writes a temporary file beside the target, syncs it and renames it over the
target: a reader sees the old file or the new one. ``append_line`` adds one line to a log
such as results.jsonl and, when the write fails half-way (a full disk), cuts the file back
to where it was. Both raise the ``OSError`` they met; ``storage_problem`` says whether it is
a storage fault the user can fix (no space, read-only, no permission) and in what words.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

# What a full or read-only disk, a quota or missing permissions raise when writing.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO,
                            errno.EACCES, errno.EPERM})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` at once (temp file, fsync, rename); on failure the old
    file stays as it was and no temp file is left."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _name(exc, path)
        raise


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` (ending in a newline) with one write on an O_APPEND descriptor, then
    fsync. A write that fails part-way is undone (the file is cut back to its old length),
    so the file never ends in a torn line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            _name(exc, path)
            raise
    finally:
        os.close(fd)


def _name(exc: BaseException, path: Path) -> None:
    """An OSError of os.write names no file, one on the temp file the wrong one: name the
    file the user knows."""
    if isinstance(exc, OSError):
        exc.filename = str(path)


def copy_tree(source: Path, target: Path) -> None:
    """Copy the folder ``source`` to the new folder ``target``, stopping at the first error.
    Unlike shutil.copytree, which gathers every file's error into one shutil.Error of strings,
    this raises the OSError itself, naming the file it could not write.

    A file is hard-linked where the file system allows it (a job's artifacts and their cache
    entry on one disk): a big model's scenario otherwise stores every artifact twice. Nothing
    rewrites an artifact in place (files are written whole, then renamed), and a cache entry
    changed through its link fails its manifest check and is recomputed."""
    target.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.is_dir() and not item.is_symlink():
            copy_tree(item, target / item.name)
            continue
        with contextlib.suppress(OSError):  # another file system, or no links: copy it
            os.link(item, target / item.name)
            continue
        try:
            shutil.copy2(item, target / item.name)
        except OSError as exc:
            if exc.filename2:  # a failed copy names both files: the one written is the second
                exc.filename, exc.filename2 = exc.filename2, None
            raise


def storage_problem(exc: BaseException) -> str | None:
    """'<file>: No space left on device' for a storage fault, None for anything else."""
    if not isinstance(exc, OSError) or exc.errno not in STORAGE_ERRNOS:
        return None
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def os_reason(exc: OSError) -> str:
    """The strerror of ``exc``: 'No space left on device'."""
    return exc.strerror or str(exc)
