"""The Ray executor: each job a Ray task on any node of a cluster.

The task runs the same isolated worker as everywhere (``python -m unified.run.worker``, its
own process group, killed with it on timeout: Ray has no per-task timeout, and
``ray.cancel(force=True)`` does not reach a task's grandchildren), with ``max_retries=0``: a
crashing toolkit is a row, not something to run again. The reference is shipped to a node
once; the job folder (record, log, artifacts) is shipped back into the driver's run folder.
The latency pass runs on the driver afterwards, so every latency comes from one machine.

A task first reports the node it runs on, so that a node lost mid-job becomes a ``failed``
row naming it. Usage statistics are off (``RAY_USAGE_STATS_ENABLED=0``) and no dashboard is
started: nothing phones home.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import shutil
import socket
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from unified.run.executor import OnDone, OnStart, Outcome, Task, run_isolated, worker_env
from unified.run.job import write_json

INSTALL_HINT = "pip install 'squeezelab[ray]'"


def _tar(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _untar(data: bytes, folder: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


def _node_root() -> Path:
    return Path(tempfile.gettempdir()) / "squeezelab-ray"


def _local_reference(digest: str, shipped: list[Any]) -> Path:
    """The reference folder on this node: unpacked once per node (atomically)."""
    folder = _node_root() / "reference" / digest
    if not (folder / "reference.json").is_file():
        import ray

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=folder.parent))
        _untar(ray.get(shipped[0]), tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another task on this node unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def job_task(spec: dict[str, Any], digest: str, shipped: list[Any], timeout: float,
             threads: int, extra_paths: list[str]) -> Iterator[dict[str, Any]]:
    """The body of a job's Ray task (a streaming generator): first where it runs, then the
    outcome with the job folder as a tar."""
    import ray

    host = socket.gethostname()
    yield {"node": ray.get_runtime_context().get_node_id(), "host": host}
    _node_root().mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="job-", dir=_node_root()))
    try:
        write_json(folder / "job.json", {**spec, "reference": str(_local_reference(
            digest, shipped))})
        env = worker_env(spec["backend"], threads,
                         [p for p in extra_paths if Path(p).is_dir()])
        outcome = run_isolated(folder, env, timeout, die_with_parent=True)
        yield {"ended": outcome.ended, "code": outcome.code, "seconds": outcome.seconds,
               "host": host, "tar": _tar(folder)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class RayExecutor:
    """Jobs as Ray tasks: on a local cluster it starts, or on ``address``'s cluster.
    ``jobs`` caps the tasks in flight (default: the cluster's CPUs)."""

    name = "ray"

    def __init__(self, address: str | None, jobs: int | None,
                 extra_paths: Sequence[str] = ()) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            import ray
        except ImportError:
            from unified.spec.errors import SqueezelabError

            raise SqueezelabError(f"--executor ray needs Ray: {INSTALL_HINT}") from None
        self._ray = ray
        self._owner = not ray.is_initialized()
        if self._owner:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=jobs or os.cpu_count() or 1, **options)
        self.slots = jobs or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.extra_paths = list(extra_paths)
        self._remote: Any = ray.remote(num_cpus=1, max_retries=0)(job_task)
        self._shipped: dict[str, Any] = {}

    def run(self, tasks: Sequence[Task], on_start: OnStart, on_done: OnDone) -> None:
        pending: queue.Queue[Task] = queue.Queue()
        for task in tasks:
            pending.put(task)

        def slot() -> None:
            while True:
                try:
                    task = pending.get_nowait()
                except queue.Empty:
                    return
                on_done(task, self._run_one(task, on_start))

        threads = [threading.Thread(target=slot, daemon=True)
                   for _ in range(min(self.slots, len(tasks)))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _reference(self, folder: Path) -> tuple[str, list[Any]]:
        from unified.run.cache import reference_content_digest

        digest = reference_content_digest(folder)
        if digest not in self._shipped:
            self._shipped[digest] = self._ray.put(_tar(folder))
        return digest, [self._shipped[digest]]  # in a list: fetched only where not unpacked

    def _run_one(self, task: Task, on_start: OnStart) -> Outcome:
        ray = self._ray
        spec = json.loads((task.folder / "job.json").read_text())
        digest, shipped = self._reference(Path(spec["reference"]))
        where: dict[str, Any] = {}
        try:
            stream = self._remote.remote(spec, digest, shipped, task.timeout, task.threads,
                                         self.extra_paths)
            where = ray.get(next(stream))
            on_start(task, f"Ray node {where['node'][:12]} ({where['host']})")
            result = ray.get(next(stream))
        except (ray.exceptions.RayError, StopIteration) as exc:
            return Outcome("lost", 0.0, where.get("host", "?"), reason=_lost(where, exc))
        _untar(result["tar"], task.folder)
        return Outcome(result["ended"], result["seconds"], result["host"], code=result["code"])

    def close(self) -> None:
        if self._owner and self._ray.is_initialized():
            self._ray.shutdown()


def _lost(where: dict[str, Any], exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    if where:
        return (f"Ray node {where['node']} ({where['host']}) was lost while running the job: "
                f"{type(exc).__name__}: {first}")
    return f"the Ray task failed before it started: {type(exc).__name__}: {first}"
