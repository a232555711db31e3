"""What keeps a worker process within bounds: it dies with the run that started it, and it
stays under the scenario's ``evaluate.memory_limit``.

- **Parent watch.** A worker runs in its own process group (so a timeout can kill it with
  every process it started), which also means a run killed with SIGKILL does not take its
  workers along. ``watch_parent`` starts a thread that notices when the parent is gone and
  kills the worker's group, before an orphan could write into a job folder a rerun uses.
  (``PR_SET_PDEATHSIG`` is not enough: it fires when the *thread* that started the child
  ends, and the local executor starts workers from short-lived threads.)
- **Memory limit.** Enforced with ``RLIMIT_DATA`` (heap and private writable mappings), not
  ``RLIMIT_AS``: torch reserves about 3 GB of address space at import, so an address-space
  limit of a few GB fails every allocation of a torch worker, while its data is ~0.8 GB
  (TensorFlow ~0.4 GB). Past the limit an allocation fails: numpy raises MemoryError, torch
  RuntimeError "can't allocate memory", TensorFlow ResourceExhaustedError; the job becomes a
  ``failed`` row naming the limit (:func:`memory_reason`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from unified.spec.sizes import format_size

WATCH_SECONDS = 0.25
MEMORY_MARKERS = ("can't allocate memory", "cannot allocate memory", "std::bad_alloc",
                  "out of memory", "oom when allocating", "failed to allocate")
_original: dict[str, tuple[int, int]] = {}  # the limits this process started with


def watch_parent(interval: float = WATCH_SECONDS) -> None:
    """Start a daemon thread that kills this process (and its process group, when it leads
    one) once its parent process has ended."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        if os.getpgrp() == os.getpid():  # our own group: the processes a toolkit started
            with contextlib.suppress(OSError):
                os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="squeezelab-parent-watch", daemon=True).start()


def set_memory_limit(limit: int | None) -> None:
    """Limit this process's data memory to ``limit`` bytes (None: back to no limit)."""
    import resource

    original, hard = _original.setdefault("data", resource.getrlimit(resource.RLIMIT_DATA))
    soft = original if limit is None else limit
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def is_memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) is a failed
    allocation."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):
            return True
        text = str(current).lower()
        if any(marker in text for marker in MEMORY_MARKERS):
            return True
        current = current.__cause__ or current.__context__
    return False


def memory_reason(limit: int, reason: str) -> str:
    """A failed row's reason when the job ran out of its memory limit."""
    return f"worker exceeded evaluate.memory_limit {format_size(limit)}: {reason}"
