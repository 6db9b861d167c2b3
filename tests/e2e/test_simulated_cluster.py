"""The jobs on Ray's simulated autoscaling cluster: cluster.yaml's topology (a 0-CPU head, CPU and
"GPU" worker types from 0 nodes) on one machine, started for this module (tests/fixtures/simulated_cluster.py).

Each job runs as `raypipe ... --address` in a subprocess, as `ray job submit` would run it on
the head: this test process may be connected to the shared test cluster, and a process joins
one cluster only. The test reads the cluster's nodes from its GCS while a job runs. What it
measured is printed at the end (`-s`) and recorded in docs/cluster.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.images import bad_inputs, write
from tests.fixtures.simulated_cluster import (
    CPU_TYPE,
    GPU_TYPE,
    NodeWatch,
    SimulatedCluster,
    base_env,
    run_job,
    wait_for_no_workers,
)
from tests.integration.test_preprocess import good_images

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

COPIES = 25  # x 6 good photos: 150 crops in 3 batches of 64, so the pool can use 2 actors (1 per CPU node)
MEASURED: dict[str, dict] = {}


@pytest.fixture(scope="module")
def cluster():
    temp_dir = Path(tempfile.mkdtemp(prefix="rps", dir="/tmp"))  # short: Ray's socket paths have a length limit
    started = time.monotonic()
    simulated = SimulatedCluster(temp_dir=temp_dir, env=base_env(), idle_minutes=0.15)
    simulated.start()
    MEASURED["head"] = {"seconds": round(time.monotonic() - started, 1)}
    try:
        yield simulated
    finally:
        simulated.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        print("\nsimulated cluster run:", json.dumps(MEASURED, indent=1))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder dataset: good photos (live and spoof) under many names, and one bad file of each kind."""
    work = tmp_path_factory.mktemp("simulated")
    for copy in range(COPIES):
        for index, (name, payload) in enumerate(sorted(good_images().items())):
            write(work / "faces" / ("live" if index % 2 == 0 else "spoof") / f"s{copy}_{name}", payload)
    for name, (payload, _) in bad_inputs().items():
        write(work / "faces" / "live" / f"bad_{name}", payload)
    return work


def record(stage: str, summary: dict, watch: NodeWatch, **extra) -> None:
    MEASURED[stage] = {"job_seconds": summary["wall_seconds"], "nodes_started": watch.started(),
                       "most_nodes_at_once": dict(watch.peak), **extra}


def test_preprocessing_makes_the_autoscaler_start_cpu_workers(cluster, work):
    assert not any(cluster.alive_workers().values()), "the cluster starts as its head alone"
    with NodeWatch(cluster) as watch:
        summary = run_job(cluster, ["preprocess", "--dataset", "folder", "--root", str(work / "faces"),
                                    "--out", str(work / "out")], cluster.job_env(), timeout=300)
    record("preprocess", summary, watch, rows=summary["rows"], rejected=summary["rejected"])
    assert summary["inputs"] == COPIES * len(good_images()) + len(bad_inputs())
    assert summary["rows"] + summary["rejected"] == summary["inputs"]
    assert summary["rejected"] == len(bad_inputs())
    # one actor per batch, up to the 2 CPUs the CPU worker type can add (not the 0 the head has)
    assert summary["actors"] == {"min": 1, "initial": 2, "max": 2}
    assert watch.peak[CPU_TYPE] == 2, watch.started()
    assert GPU_TYPE not in watch.seen, "CPU work must not start GPU nodes"


def test_idle_workers_go_back_to_zero(cluster):
    seconds = wait_for_no_workers(cluster, timeout=90)
    MEASURED["back_to_zero_after_preprocess"] = {"seconds": round(seconds, 1)}


def test_training_asking_for_gpus_runs_on_the_gpu_worker_type(cluster, work):
    env = cluster.job_env(MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", RAYPIPE_DATA_DIR=str(work),
                          RAYPIPE_TRACKING_SHARED="1")  # simulated nodes share this machine's disk
    with NodeWatch(cluster) as watch:
        summary = run_job(cluster, ["train", "--data", str(work / "out"), "--model", "attacknet", "--epochs", "1",
                                    "--workers", "1", "--experiment", "simulated"], env, timeout=400)
    record("train", summary, watch, device=summary["device"])
    # no --gpu: the cluster config can start GPU nodes, so training asks for GPUs although none runs yet
    assert summary["requested_gpu"] is True
    assert watch.seen[GPU_TYPE], watch.started()
    # the fake GPU has no CUDA behind it: the worker trained on the CPU and the job said so
    assert summary["device"] == "cpu" and summary["epochs_run"] == 1
    assert "CUDA is not available" in summary["stderr"]
    MEASURED["back_to_zero_after_train"] = {"seconds": round(wait_for_no_workers(cluster, timeout=90), 1)}
