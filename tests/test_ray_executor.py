"""The Ray executor on a real two-node Ray cluster on this machine: a node lost mid-run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tiny import tiny_scenario

from unified.run.job import Job
from unified.run.runner import Progress, Runner, RunOptions

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

RECIPES = {"fp32": [], "int8": [{"quantize": {"method": "static"}}]}
FIGURES = ("status", "accuracy", "agreement", "onnx_bytes", "native_bytes", "gzip_bytes",
           "sparsity", "int8_fraction")


@pytest.fixture
def cluster() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = cluster_utils.Cluster(initialize_head=True,
                                    head_node_args={"num_cpus": 0, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
def test_a_lost_node_is_a_failed_row_and_a_rerun_completes_it(
        cluster: Any, tmp_path: Path, cache_dir: Path, tiny_reference: Any) -> None:
    scenario = tiny_scenario(RECIPES, ["onnxruntime", "pytorch"])
    cache, local_cache = tmp_path / "cache", tmp_path / "local"
    for folder in (cache, local_cache):  # their own job caches, the session's reference
        folder.mkdir()
        (folder / "reference").symlink_to(cache_dir / "reference")
    lost: list[str] = []

    def on_start(job: Job, where: str) -> None:
        # the first job to start loses its node (the other node keeps the cluster going)
        if lost:
            return
        victim = next(n for n in cluster.worker_nodes if where.startswith(
            f"Ray node {n.node_id[:12]}"))
        lost.append(victim.node_id)
        cluster.remove_node(victim)

    first = Runner(scenario, RunOptions(out=tmp_path / "a", cache_dir=cache, executor="ray",
                                        ray_address=cluster.address),
                   Progress(on_start=on_start)).run()
    failed = [r for r in first if r["status"] == "failed"]
    assert len(failed) == 1 and lost
    assert f"Ray node {lost[0]}" in failed[0]["reason"] and "lost" in failed[0]["reason"]
    others = [r for r in first if r["status"] != "failed"]
    assert len(others) == 3 and all(r["status"] == "ok" for r in others)
    assert all(r["executor"] == "ray" and r["host"] for r in others)
    assert all(r["latency_ms_p50"] and r["speedup"] for r in others)  # timed on the driver

    again = Runner(scenario, RunOptions(out=tmp_path / "b", cache_dir=cache, executor="ray",
                                        ray_address=cluster.address)).run()
    by_job = {(r["recipe"], r["backend"]): r for r in again}
    redone = by_job[(failed[0]["recipe"], failed[0]["backend"])]
    assert redone["status"] == "ok" and not redone.get("cached")
    assert all(r.get("cached") for r in again if r is not redone)

    # the local executor gives the same figures for the same jobs
    local = Runner(scenario, RunOptions(out=tmp_path / "c", cache_dir=local_cache,
                                        jobs=2)).run()
    assert [{k: r[k] for k in FIGURES} for r in local] == \
           [{k: r[k] for k in FIGURES} for r in again]
