"""Worker processes: where jobs run, away from the driver.

Two ways to start one:

- ``python -m unified.run.worker JOB_FOLDER`` runs one job and exits (the Ray executor's
  tasks start this).
- ``python -m unified.run.worker --serve BACKEND REPLY_FD`` is a warm worker: it sets its
  process up for BACKEND once (environment, preloads, the toolkit's import), then reads job
  folders from stdin, one per line, and answers each on the file descriptor REPLY_FD with one
  JSON line once the job's ``record.json`` (or ``error.json``) is written. The driver kills
  it (its whole process group) when a job overruns; EOF on stdin ends it, and so does the
  driver's death mid-job (a SIGKILLed driver closes no pipe a busy worker would notice).

Either way a job reads ``job.json``, writes ``record.json`` or ``error.json`` (with the
traceback), and its output goes to the job folder's ``worker.log``. Before every job the
process state a job could leave behind is reset (:func:`reset_process`), so that a record
does not depend on what ran before it in the same worker.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

import unified  # noqa: F401  (environment defaults before any toolkit import)
from adapters.registry import get_adapter
from unified.context import ReferenceArtifacts
from unified.run.failure import failure_reason
from unified.run.guards import is_memory_error, memory_reason, set_memory_limit, watch_parent
from unified.run.job import execute, format_traceback, job_from_spec, write_json
from unified.streams import redirected


def warm_up(backend: str) -> None:
    """Set this process up for ``backend``: its environment and preloads
    (``Adapter.prepare_process``), then its toolkit, by importing the adapter's ``_impl``
    module when it has one (what its first job would import anyway)."""
    adapter = get_adapter(backend)
    adapter.prepare_process()
    impl = f"{type(adapter).__module__}._impl"
    with contextlib.suppress(ImportError):  # the toolkit missing: the job's row says so
        if importlib.util.find_spec(impl) is not None:
            importlib.import_module(impl)


# Module-level counters that toolkits put into the names of what they write (and so into
# its bytes): (toolkit, modules, counter module, attribute). Once the toolkit is loaded, the
# modules are imported (all that take a number at import: tf2onnx's rewriters do, and a
# conversion imports them lazily) and the counter's value then is kept; every job starts
# from that value, as the first job of a fresh worker does.
NAME_COUNTERS = (("tensorflow", ("tf2onnx.convert", "tf2onnx.tfonnx"), "tf2onnx.utils",
                  "INTERNAL_NAME"),)  # the suffixes of tf2onnx's make_name
_counter_start: dict[tuple[str, str], Any] = {}


def _reset_counters() -> None:
    for toolkit, imports, module_name, attribute in NAME_COUNTERS:
        if toolkit not in sys.modules:
            continue
        try:
            for name in imports:
                importlib.import_module(name)
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        start = _counter_start.setdefault((module_name, attribute), getattr(module, attribute))
        setattr(module, attribute, start)


def reset_process(seed: int, threads: int | None) -> None:
    """Put back the global state a previous job may have changed: random seeds, torch's
    thread count, Keras' session (layer-name counters, graph) and NAME_COUNTERS, so every
    job starts as the first job of a fresh worker would."""
    _reset_counters()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
        if threads:
            torch.set_num_threads(threads)
    keras = sys.modules.get("tf_keras")
    if keras is not None:
        keras.backend.clear_session()
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "random"):
        tf.random.set_seed(seed)
    gc.collect()


# Where the time of a job goes, for benchmarks/cold_run.py (SQUEEZELAB_PROFILE=1): calls to
# these functions are timed as "export" (to ONNX) and "bridge" (torch → Keras) by wrapping
# them in this worker only, once the toolkit (first name) is imported; a plain run wraps
# nothing.
PROFILED = {"export": (("torch", "torch.onnx", "export"),
                       ("tensorflow", "tf2onnx.convert", "from_tflite")),
            "bridge": (("nobuco", "nobuco", "pytorch_to_keras"),)}
_spent: dict[str, float] = {}


def _profile() -> None:
    """Wrap the PROFILED functions of the toolkits imported so far (once each)."""
    for part, targets in PROFILED.items():
        for toolkit, module_name, attribute in targets:
            if toolkit not in sys.modules:
                continue
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            original = getattr(module, attribute, None)
            if original is None or getattr(original, "__squeezelab_timed__", False):
                continue
            setattr(module, attribute, _timed(part, original))


def _timed(part: str, function: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _spent[part] = _spent.get(part, 0.0) + time.perf_counter() - start

    timed.__squeezelab_timed__ = True  # type: ignore[attr-defined]
    return timed


def run_job(folder: Path) -> tuple[bool, str | None]:
    """Run the job described by ``folder/job.json``. Returns whether ``record.json`` was
    written and, for a failure, its reason (also in ``error.json`` when that can be
    written: on a full disk the reason only travels back through the reply)."""
    limit = None
    try:
        spec = json.loads((folder / "job.json").read_text())
        scenario, job = job_from_spec(spec)
        threads = spec.get("torch_threads")
        # torch imported later by the job takes its thread count from OMP_NUM_THREADS
        reset_process(scenario.seed, int(threads) if threads else None)
        limit = scenario.evaluate.memory_limit
        set_memory_limit(limit)
        profiling = os.environ.get("SQUEEZELAB_PROFILE") == "1"
        if profiling:
            _profile()
            _spent.clear()
        record = execute(scenario, job, folder / "artifacts",
                         ReferenceArtifacts(Path(spec["reference"])))
        if profiling:
            record["timings"].update({k: round(v, 3) for k, v in _spent.items()})
        write_json(folder / "record.json", record)
        return True, None
    except Exception as exc:
        set_memory_limit(None)  # what follows must not fail for the job's lack of memory
        reason = failure_reason(exc)
        if limit is not None and is_memory_error(exc):
            reason = memory_reason(limit, reason)
        with contextlib.suppress(OSError):
            write_json(folder / "error.json",
                       {"reason": reason, "traceback": format_traceback(exc)})
        return False, reason
    finally:
        set_memory_limit(None)  # the reply and the next job's set-up are not the job's


def _reply(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _stop_with_driver(interval: float = 1.0) -> None:
    """Kill this worker's process group (itself and whatever it started) once the driver that
    started it is gone, instead of finishing a job nobody waits for: a rerun of that job
    (resuming the run) would share its folder."""
    driver = os.getppid()

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(interval)
        # its own group only when it leads one (the executors start it in a new session)
        if os.getpgrp() == os.getpid():
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="squeezelab-driver-watch", daemon=True).start()


def serve(backend: str, reply_fd: int) -> int:
    """The warm worker's loop (see the module docstring)."""
    _stop_with_driver()
    os.set_inheritable(reply_fd, False)  # a toolkit's own subprocesses must not hold it
    start = time.perf_counter()
    try:
        warm_up(backend)
    except Exception as exc:
        _reply(reply_fd, {"error": failure_reason(exc), "traceback": format_traceback(exc)})
        return 1
    _reply(reply_fd, {"ready": round(time.perf_counter() - start, 3), "at": time.time(),
                      "pid": os.getpid()})
    for line in sys.stdin:
        folder = Path(line.strip())
        if not line.strip():
            continue
        try:
            with redirected(folder / "worker.log"):
                ok, reason = run_job(folder)
        except OSError as exc:  # the log cannot be opened: a full disk, a removed folder
            ok, reason = False, f"{folder / 'worker.log'}: {exc.strerror or exc}"
        _reply(reply_fd, {"done": str(folder), "ok": ok, "reason": reason})
    return 0


def main(argv: list[str]) -> int:
    watch_parent()  # a run killed with SIGKILL must not leave this worker running
    if argv[:1] == ["--serve"]:
        return serve(argv[1], int(argv[2]))
    folder = Path(argv[0])
    try:
        warm_up(json.loads((folder / "job.json").read_text())["backend"])
    except Exception as exc:
        write_json(folder / "error.json",
                   {"reason": failure_reason(exc), "traceback": format_traceback(exc)})
        return 1
    return 0 if run_job(folder)[0] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
