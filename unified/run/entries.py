"""Cache entries (a reference folder, a job's row and artifacts) that can be checked before
they are trusted.

An entry is built in a temporary folder beside its place, gets a ``manifest.json`` (every
file's size and digest) last, and is renamed into place: a reader sees a whole entry or
none. A folder whose manifest is missing or does not match its files (a half-written copy, a
truncated or overwritten file, a disk that lost blocks) is *corrupt*: the caller warns on
one line, discards it and computes it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from unified.run.cache import file_digest
from unified.run.storage import atomic_write

MANIFEST = "manifest.json"


def warn(message: str) -> None:
    """One line on stderr, as the CLI prints every warning."""
    sys.stderr.write(f"squeezelab: warning: {message}\n")


def write_manifest(folder: Path) -> None:
    """List every file of ``folder`` (recursively) with its size and digest."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {str(p.relative_to(folder)): [p.stat().st_size, file_digest(p)] for p in files}
    atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1).encode())


def manifest_problem(folder: Path) -> str | None:
    """What is wrong with the entry in ``folder``, in a few words; None when every file its
    manifest lists is there with the same size and digest."""
    path = folder / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST}: written by an interrupted run"
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return f"{MANIFEST} is not JSON"
    if not isinstance(manifest, dict) or not manifest:
        return f"{MANIFEST} lists no files"
    for name, entry in manifest.items():
        file = folder / name
        if not (isinstance(entry, list) and len(entry) == 2):
            return f"{MANIFEST} is malformed at {name!r}"
        size, digest = entry
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, not {size}"
        if file_digest(file) != digest:
            return f"{name} does not match its digest"
    return None


def read_json_object(path: Path) -> dict[str, object] | None:
    """The JSON object in ``path``, or None when it is missing or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def discard(folder: Path) -> None:
    """Remove a corrupt entry: renamed away first, so no reader finds half of it."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    try:
        folder.rename(trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale(parent: Path, prefix: str) -> None:
    """Remove temporary folders named ``prefix``* under ``parent``: left by a run that was
    killed while building them (call it holding the entry's lock, so none is in use)."""
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        if path.name.startswith(prefix):
            with contextlib.suppress(OSError):
                shutil.rmtree(path)
