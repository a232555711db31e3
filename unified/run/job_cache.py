"""Finished rows kept across runs: ``cache_dir/jobs/<job key>/`` holds the row
(``record.json``), the job's ``artifacts/`` and a ``manifest.json`` (unified.run.entries).

Reading and storing an entry hold its lock (unified.run.locks), so runs sharing a cache
directory never see half an entry, and a corrupt one is discarded by one of them only. Both
are best effort: a cache that cannot be read or written costs a recomputation, never a row.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unified.run.entries import (
    discard,
    manifest_problem,
    read_json_object,
    remove_stale,
    write_manifest,
)
from unified.run.job import write_json
from unified.run.locks import file_lock, lock_path
from unified.run.results import STATUSES
from unified.run.storage import copy_tree, os_reason

STORED_STATUSES = tuple(s for s in STATUSES if s not in ("failed", "timeout"))


class JobCache:
    """The job entries of one cache directory; ``warn`` prints a one-line warning."""

    def __init__(self, cache_dir: Path, warn: Callable[[str], None]) -> None:
        self.cache_dir = cache_dir
        self.root = cache_dir / "jobs"
        self.warn = warn

    def folder(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, label: str, artifacts: Path) -> dict[str, Any] | None:
        """The cached row of ``key`` with its artifacts copied to ``artifacts`` (replacing
        what is there), or None: not cached, corrupt (warned and discarded) or not copied."""
        folder = self.folder(key)
        if not folder.exists():
            return None
        with file_lock(lock_path(self.cache_dir, "job", key)):
            if not folder.exists():
                return None
            record, problem = self._check(folder, key)
            if record is None:
                self.warn(f"cache entry {folder} is corrupt ({problem}); computing "
                          f"{label} again")
                discard(folder)
                return None
            try:
                _copy_folder(folder / "artifacts", artifacts)
            except OSError as exc:  # e.g. a full disk: run the job instead
                self.warn(f"cached {label} not reused: {os_reason(exc)}")
                return None
        return record

    def store(self, key: str, label: str, job_dir: Path, record: dict[str, Any]) -> None:
        """Keep the row and ``job_dir/artifacts`` under ``key``, unless an entry is there."""
        folder = self.folder(key)
        tmp = self.root / f".{key}.{os.getpid()}.{threading.get_ident()}"
        try:
            with file_lock(lock_path(self.cache_dir, "job", key)):
                if folder.exists():
                    return  # another run (or thread) stored it first
                remove_stale(self.root, f".{key}.")
                remove_stale(self.root, f".trash-{key}-")
                _copy_folder(job_dir / "artifacts", tmp / "artifacts")
                write_json(tmp / "record.json", record)
                write_manifest(tmp)
                tmp.rename(folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            self.warn(f"{label} not stored in the cache {self.cache_dir}: {os_reason(exc)}")

    def _check(self, folder: Path, key: str) -> tuple[dict[str, Any] | None, str]:
        """The entry's row, or None and what is wrong with it."""
        problem = manifest_problem(folder)
        if problem is not None:
            return None, problem
        record = read_json_object(folder / "record.json")
        if record is None:
            return None, "record.json is not a JSON object"
        if record.get("status") not in STORED_STATUSES or record.get("job_key") not in (None,
                                                                                        key):
            return None, "record.json is not a finished row of this job"
        return record, ""


def _copy_folder(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (an empty folder when ``source`` is missing): into a
    temporary folder beside it first, so ``target`` is never half a copy."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if source.is_dir():
            copy_tree(source, tmp)
        else:
            tmp.mkdir(parents=True)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
