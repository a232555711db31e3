"""What a run is asked for (RunOptions), how it reports progress (Progress), and the
executor the options name."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unified.run.executor import Executor, worker_env
from unified.run.job import Job
from unified.run.threads import JOB_THREADS


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "squeezelab"


def default_jobs() -> int:
    return os.cpu_count() or 1


@dataclass
class RunOptions:
    out: Path
    cache_dir: Path = field(default_factory=default_cache_dir)
    jobs: int | None = None  # workers (Ray tasks) at once; default: the cores (cluster CPUs)
    timeout: float | None = None  # overrides the scenario's evaluate.timeout
    backends: tuple[str, ...] = ()  # empty: all of the scenario's
    recipes: tuple[str, ...] = ()
    use_cache: bool = True
    executor: str = "local"  # local | ray
    ray_address: str | None = None  # ray: join this cluster (default: start a local one)


@dataclass
class Progress:
    """Callbacks for the CLI's progress output; all optional. ``on_start`` gets the job and
    where it runs (a worker's pid, a Ray node)."""

    on_stage: Callable[[str], None] = lambda _msg: None
    on_start: Callable[[Job, str], None] = lambda _job, _where: None
    on_done: Callable[[Job, dict[str, Any]], None] = lambda _job, _rec: None


def threads_per_job(options: RunOptions) -> int:
    """Compute threads of one job: JOB_THREADS whatever --jobs or the executor, because the
    thread count changes trained figures (docs/architecture.md, "The cache key")."""
    return JOB_THREADS


def make_executor(options: RunOptions, keep_warm: int = 0) -> Executor:
    """The executor the options name (Ray is imported only when asked for). ``keep_warm``:
    idle local workers kept between ``run`` calls (for jobs handed over one at a time)."""
    if options.executor == "ray":
        from unified.run.ray_executor import RayExecutor

        return RayExecutor(options.ray_address, options.jobs, extra_paths=[os.getcwd()])
    from unified.run.local import LocalExecutor

    return LocalExecutor(
        slots=options.jobs or default_jobs(),
        env_for=lambda backend, threads: worker_env(backend, threads, [os.getcwd()]),
        log_dir=options.out / "workers", threads=threads_per_job(options), keep_warm=keep_warm)
