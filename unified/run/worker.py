"""Entry point of a job's worker process: ``python -m unified.run.worker JOB_FOLDER``.

Reads ``job.json``, runs the job, writes ``record.json`` (or ``error.json`` with the
traceback). The parent turns a missing record, a signal or a timeout into a row.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import unified  # noqa: F401  (environment defaults before any toolkit import)
from adapters.registry import get_adapter
from unified.context import ReferenceArtifacts
from unified.run.failure import failure_reason
from unified.run.job import Job, execute, format_traceback, write_json
from unified.spec.scenario import Scenario


def main(folder: Path) -> int:
    try:
        spec = json.loads((folder / "job.json").read_text())
        get_adapter(spec["backend"]).prepare_process()
        scenario = Scenario.model_validate(spec["scenario"])
        job = Job(spec["recipe"], spec["backend"])
        threads = spec.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        record = execute(scenario, job, folder / "artifacts",
                         ReferenceArtifacts(Path(spec["reference"])))
    except Exception as exc:
        write_json(folder / "error.json",
                   {"reason": failure_reason(exc), "traceback": format_traceback(exc)})
        return 1
    write_json(folder / "record.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
