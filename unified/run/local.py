"""The local executor: warm workers, one long-lived process per backend in use.

A worker imports its toolkit once and runs its backend's jobs one after another. A job that
crashes, hangs or overruns its timeout costs only that worker: its whole process group is
killed, the row is ``failed`` / ``timeout``, and a fresh worker takes the next job. Up to
``slots`` workers run at once; a free slot takes the backend with the most jobs left that no
slot serves yet, else helps the one with the most jobs left.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from unified.run.executor import (
    OnDone,
    OnStart,
    Outcome,
    Task,
    hostname,
    kill_group,
    signal_text,
)

STOP_JOIN_SECONDS = 30.0  # how long a stopping run waits for a slot's callback to end


class WorkerGone(Exception):
    """The worker died or overran while starting; the message says how."""


@dataclass(eq=False)
class WarmWorker:
    """One ``python -m unified.run.worker --serve BACKEND`` process and its reply pipe."""

    backend: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0  # wall clock (time.time): the worker reports when it was ready
    ready_seconds: float | None = None  # process start + toolkit import, once ready
    idle_since: float = 0.0  # monotonic: when it last went back to the idle pool
    _reply: IO[bytes] | None = None
    _buffer: bytes = b""
    _ended: bool = False  # killed or closed: its process group is never signalled again
    _stopped: bool = False  # the run is stopping: never start, kill if started
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self) -> None:
        """Start the process; it sets itself up while the caller does other work."""
        read_fd, write_fd = os.pipe()
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self._guard, self.log.open("ab") as log:
                if self._stopped:
                    raise WorkerGone("the run is stopping")
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "unified.run.worker", "--serve", self.backend,
                     str(write_fd)],
                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                    pass_fds=(write_fd,), start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # ours closed: EOF on the pipe when the worker dies
        self._reply = os.fdopen(read_fd, "rb", buffering=0)
        self.spawned_at = time.time()

    def wait_ready(self, timeout: float) -> float:
        """Seconds from spawn to ready; raises WorkerGone when it fails to start."""
        if self.proc is None:
            self.spawn()
        message = self._read(timeout)
        if message is None:
            self.kill()
            raise WorkerGone(f"the {self.backend} worker did not start within {timeout:g} s")
        if "error" in message:
            self.kill()
            raise WorkerGone(f"the {self.backend} worker failed to start: {message['error']}")
        # from spawn to ready as the worker saw it: a prestarted worker may wait for us
        self.ready_seconds = max(0.0, float(message["at"]) - self.spawned_at)
        return self.ready_seconds

    def run(self, task: Task) -> Outcome:
        """Hand ``task`` to the worker and wait for it, at most ``task.timeout`` seconds."""
        assert self.proc is not None and self.proc.stdin is not None
        start = time.monotonic()
        try:
            self.proc.stdin.write(f"{task.folder}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: _read sees EOF and the exit code says how
        try:
            message = self._read(task.timeout)
        except WorkerGone:
            message = {}
        seconds = time.monotonic() - start
        if message is None:
            self.kill()
            return Outcome("timeout", seconds, hostname())
        if "done" in message:
            ok = bool(message["ok"])
            return Outcome("exited", seconds, hostname(), code=0 if ok else 1,
                           error=None if ok else message.get("reason"))
        code = self.kill()
        return Outcome("exited", seconds, hostname(), code=code,
                       reason=signal_text(code) if code else "the worker exited mid-job")

    def _read(self, timeout: float) -> dict[str, Any] | None:
        """The next reply, None on timeout; raises WorkerGone on EOF (the worker died)."""
        assert self._reply is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._reply], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = self._reply.read(65536)
            if not chunk:
                code = self.kill()
                raise WorkerGone(f"the {self.backend} worker died ({signal_text(code)})")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))

    def close(self) -> None:
        """Let the worker finish (EOF on its stdin); kill it if it does not within 10 s."""
        if self.proc is None or self._ended:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            pass
        self.kill()

    def terminate(self) -> None:
        """Kill the worker's process group now, from any thread (the run is stopping); the
        thread using the worker sees it die, and no new process is started."""
        with self._guard:
            self._stopped = True
            if self.proc is not None and not self._ended and self.proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)

    def kill(self) -> int:
        """Kill the worker's process group; return its exit code (negative: the signal)."""
        if self.proc is None:
            return 0
        if not self._ended:
            self._ended = True
            if self.proc.poll() is None:
                kill_group(self.proc)
            else:  # the worker is gone, but a child of it may still run
                with contextlib.suppress(OSError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        if self._reply is not None:
            self._reply.close()
            self._reply = None
        return int(self.proc.returncode)


@dataclass
class WorkerStart:
    backend: str
    seconds: float


@dataclass
class LocalExecutor:
    """Warm workers on this machine. ``env_for(backend, threads)`` gives a worker's
    environment; worker logs (start-up output) go under ``log_dir``. With ``keep_warm`` > 0 a
    worker outlives the ``run`` call that started it (up to that many idle workers, the
    longest idle stopped first), so that a caller handing over jobs one at a time (a search)
    does not pay its toolkit's import per job."""

    slots: int
    env_for: Callable[[str, int], dict[str, str]]
    log_dir: Path
    threads: int = 1
    keep_warm: int = 0
    name: str = "local"
    starts: list[WorkerStart] = field(default_factory=list)  # for timings.json
    _idle: dict[str, list[WarmWorker]] = field(default_factory=dict)
    _all: list[WarmWorker] = field(default_factory=list)  # every worker started
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    _stopping: bool = False
    _failure: BaseException | None = None

    def prestart(self, backends: Sequence[str]) -> None:
        """Start workers for ``backends`` now (e.g. while the reference trains): their
        imports overlap other work. At most one per slot."""
        for backend in list(dict.fromkeys(backends))[: self.slots]:
            worker = self._new_worker(backend)
            worker.spawn()
            self._idle.setdefault(backend, []).append(worker)

    def run(self, tasks: Sequence[Task], on_start: OnStart, on_done: OnDone) -> None:
        queues: dict[str, deque[Task]] = {}
        for task in tasks:
            queues.setdefault(task.backend, deque()).append(task)
        serving: dict[str, int] = dict.fromkeys(queues, 0)
        threads = [threading.Thread(target=self._slot, args=(queues, serving, on_start, on_done),
                                    name=f"squeezelab-slot-{i}", daemon=True)
                   for i in range(min(self.slots, len(tasks)))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C or SIGTERM in this (the main) thread
            self.stop()
            for thread in threads:
                if thread.ident is not None:
                    thread.join(timeout=STOP_JOIN_SECONDS)
            raise
        if self._failure is not None:
            raise self._failure  # what a slot's callback raised (e.g. a full disk)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            workers = list(self._all)
        for worker in workers:
            worker.terminate()

    def close(self) -> None:
        """Stop every worker: idle ones finish, busy ones (the run was interrupted) are
        killed with their process group, which does not get the terminal's Ctrl-C."""
        with self._lock:
            idle = [w for workers in self._idle.values() for w in workers]
            self._idle.clear()
            busy = [w for w in self._all if w not in idle]
            self._all.clear()
        for worker in idle:
            worker.close()
        for worker in busy:
            worker.kill()

    # -- inside a slot's thread ----------------------------------------------------------

    def _next(self, queues: dict[str, deque[Task]], serving: dict[str, int],
              current: str | None) -> Task | None:
        with self._lock:
            if self._stopping:
                return None
            if current is not None and queues[current]:
                return queues[current].popleft()
            if current is not None:
                serving[current] -= 1
            left = [b for b, q in queues.items() if q]
            if not left:
                return None
            # a backend nobody serves first, then the one with the most jobs left
            backend = min(left, key=lambda b: (serving[b] > 0, -len(queues[b])))
            serving[backend] += 1
            return queues[backend].popleft()

    def _slot(self, queues: dict[str, deque[Task]], serving: dict[str, int],
              on_start: OnStart, on_done: OnDone) -> None:
        worker: WarmWorker | None = None
        try:
            worker = self._serve(queues, serving, on_start, on_done)
        except BaseException as exc:  # a callback failed: stop the run, re-raise in run()
            with self._lock:
                self._failure = self._failure or exc
            self.stop()
        finally:
            if worker is not None:
                self._release(worker)

    def _serve(self, queues: dict[str, deque[Task]], serving: dict[str, int],
               on_start: OnStart, on_done: OnDone) -> WarmWorker | None:
        """Run tasks until none is left; return the worker still open."""
        worker: WarmWorker | None = None
        backend: str | None = None
        while (task := self._next(queues, serving, backend)) is not None:
            backend = task.backend
            if worker is not None and worker.backend != backend:
                self._release(worker)
                worker = None
            if worker is None:
                try:
                    worker = self._ready_worker(backend, task.timeout)
                except WorkerGone as exc:
                    self._report(on_done, task, Outcome("lost", 0.0, hostname(),
                                                        reason=str(exc)))
                    continue
            assert worker.proc is not None
            on_start(task, f"worker {worker.proc.pid}")
            outcome = worker.run(task)
            if outcome.ended != "exited" or outcome.reason is not None:
                worker = None  # killed: a fresh one takes the next job
            elif outcome.code:
                # the job raised: whatever it left half-done (a patched module, a graph
                # mid-build) must not reach the next job, so that one gets a fresh worker
                worker.close()
                worker = None
            self._report(on_done, task, outcome)
        return worker

    def _report(self, on_done: OnDone, task: Task, outcome: Outcome) -> None:
        """Pass the outcome on, unless the run is stopping and this is what stopping did
        (a killed worker is not the job's fault: its row stays to be computed)."""
        if self._stopping and not outcome.succeeded:
            return
        on_done(task, outcome)

    def _release(self, worker: WarmWorker) -> None:
        """A worker whose slot moves on: idle (keep_warm) or stopped."""
        if self.keep_warm <= 0:
            worker.close()
            return
        worker.idle_since = time.monotonic()
        with self._lock:
            self._idle.setdefault(worker.backend, []).append(worker)
            idle = [w for workers in self._idle.values() for w in workers]
            surplus = sorted(idle, key=lambda w: w.idle_since)[:max(0, len(idle) -
                                                                    self.keep_warm)]
            for old in surplus:
                self._idle[old.backend].remove(old)
                self._all.remove(old)
        for old in surplus:
            old.close()

    def _new_worker(self, backend: str) -> WarmWorker:
        with self._lock:
            self._count += 1
            count = self._count
        worker = WarmWorker(backend, self.env_for(backend, self.threads),
                            self.log_dir / f"{backend}-{count}.log")
        with self._lock:
            self._all.append(worker)
            if self._stopping:  # stop() did not see it: it must never start
                worker.terminate()
        return worker

    def _ready_worker(self, backend: str, timeout: float) -> WarmWorker:
        with self._lock:
            pool = self._idle.get(backend) or []
            worker = pool.pop() if pool else None
        if worker is not None and worker.ready_seconds is not None:  # kept warm
            assert worker.proc is not None
            if worker.proc.poll() is None:
                return worker
            worker.kill()
            worker = None
        if worker is None:
            worker = self._new_worker(backend)
        seconds = worker.wait_ready(timeout)
        with self._lock:
            self.starts.append(WorkerStart(backend, round(seconds, 3)))
        return worker
