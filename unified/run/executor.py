"""What every executor shares: the task it is given, the outcome it hands back, the worker's
environment, and how a worker process is run, timed out and killed with all its children.

An executor runs phase 1 (compress + the deterministic figures) of a list of tasks and calls
``on_done`` once per task, from any thread, with an :class:`Outcome`; the runner turns the
job folder's files and the outcome into the row. Executors: ``local`` (warm workers,
unified.run.local) and ``ray`` (a Ray cluster, unified.run.ray_executor).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import unified
from adapters.registry import get_adapter
from unified.run.job import Job

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Task:
    """One job to run: its folder in the driver's run folder holds ``job.json``."""

    job: Job
    key: str
    folder: Path
    timeout: float
    threads: int

    @property
    def backend(self) -> str:
        return self.job.backend


@dataclass(frozen=True)
class Outcome:
    """How a task ended. ``ended`` is ``exited`` (look for record.json / error.json),
    ``timeout`` or ``lost`` (the worker or its node went away: ``reason`` says how)."""

    ended: str
    seconds: float
    host: str
    code: int | None = None  # the worker's exit code or -signal, when it ended
    reason: str | None = None


OnStart = Callable[[Task, str], None]  # the task and where it runs (for progress)
OnDone = Callable[[Task, Outcome], None]


class Executor(Protocol):
    name: str

    def run(self, tasks: Sequence[Task], on_start: OnStart, on_done: OnDone) -> None:
        """Run every task; return when each has had its ``on_done``."""

    def close(self) -> None:
        """Stop every worker (called before the latency pass: nothing else may run)."""


def hostname() -> str:
    return socket.gethostname()


def python_path(extra: Sequence[str] = ()) -> str:
    """PYTHONPATH of a worker: this very package first, then python: model sources from the
    driver's working folder, then the caller's own PYTHONPATH."""
    paths = [str(Path(unified.__file__).resolve().parents[1]), *extra]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return os.pathsep.join(dict.fromkeys(paths))


def worker_env(backend: str, threads: int, extra_paths: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a worker process of ``backend`` (its adapter adds what its toolkit
    reads at import; a user's explicit value wins)."""
    env = dict(os.environ)
    env.setdefault("ORT_DISABLE_TELEMETRY", "1")
    for key, value in get_adapter(backend).capabilities.environment.items():
        env.setdefault(key, value)
    # set here, not left to the executor (Ray sets it to a task's CPU count), so that a
    # record does not depend on where it ran
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = python_path(extra_paths)
    return env


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill a worker started with start_new_session=True and every process it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def signal_text(code: int) -> str:
    if code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code} without a result"


def _die_with_parent() -> None:
    """In the child before exec: be killed when the parent dies (Linux), e.g. with the Ray
    worker of a lost node; its own process group would otherwise outlive it."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_isolated(folder: Path, env: dict[str, str], timeout: float,
                 die_with_parent: bool = False) -> Outcome:
    """Run ``folder``'s job in a fresh worker process (``python -m unified.run.worker``) in
    its own process group; kill the whole group when it overruns ``timeout`` seconds."""
    start = time.monotonic()
    linux = sys.platform.startswith("linux")
    with (folder / "worker.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unified.run.worker", str(folder)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # so a timeout kills the worker's children too
            preexec_fn=_die_with_parent if die_with_parent and linux else None,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            return Outcome("timeout", time.monotonic() - start, hostname())
    return Outcome("exited", time.monotonic() - start, hostname(), code=code)
