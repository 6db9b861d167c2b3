"""MLflow on a cluster: a local tracking store is refused when workers may run on another machine.

The check takes the node list as input, so fake ``ray.nodes()`` lists stand for clusters.
"""

from __future__ import annotations

import pytest

from raypipe import runtime
from raypipe.runtime import TrackingStoreUnreachable, check_tracking_for_workers, is_local_tracking_uri

SQLITE = "sqlite:////home/me/raypipe/data/mlflow.db"
CPU_WORKER = {"CPU": 1.0, "GPU": 0.0}
GPU_WORKER = {"CPU": 1.0, "GPU": 1.0}


def node(address: str, alive: bool = True, **resources: float) -> dict:
    return {"NodeID": f"id-{address}-{len(resources)}", "Alive": alive, "NodeManagerAddress": address,
            "Resources": resources}


@pytest.mark.parametrize("uri, local", [
    (SQLITE, True), ("file:///mnt/mlruns", True), ("mlruns", True), ("/abs/mlruns", True),
    ("http://mlflow.internal:5000", False), ("https://mlflow.example.com", False),
    ("postgresql://u:p@db:5432/mlflow", False), ("databricks", False), ("databricks://profile", False),
])
def test_which_stores_are_local(uri, local):
    assert is_local_tracking_uri(uri) is local


def test_two_machines_with_a_sqlite_store_fail_naming_the_variable():
    nodes = [node("10.0.0.1", CPU=4), node("10.0.0.2", CPU=8)]
    with pytest.raises(TrackingStoreUnreachable, match="MLFLOW_TRACKING_URI") as error:
        check_tracking_for_workers(SQLITE, nodes, "10.0.0.1", CPU_WORKER)
    assert "2 machines" in str(error.value) and SQLITE in str(error.value)


def test_a_zero_cpu_head_alone_fails_too():
    """cluster.yaml's topology at job start: only the head is up, and it takes no workers."""
    with pytest.raises(TrackingStoreUnreachable, match="MLFLOW_TRACKING_URI"):
        check_tracking_for_workers(SQLITE, [node("10.0.0.1", memory=1e9)], "10.0.0.1", CPU_WORKER)


def test_gpu_workers_on_a_cpu_only_machine_fail():
    with pytest.raises(TrackingStoreUnreachable, match="GPU 1"):
        check_tracking_for_workers(SQLITE, [node("10.0.0.1", CPU=8)], "10.0.0.1", GPU_WORKER)


@pytest.mark.parametrize("nodes, worker", [
    ([node("10.0.0.1", CPU=2)], CPU_WORKER),  # a laptop
    ([node("10.0.0.1", CPU=2, GPU=1)], GPU_WORKER),  # a GPU box
    ([node("10.0.0.1"), node("10.0.0.1", CPU=2), node("10.0.0.1", CPU=2, GPU=1)], GPU_WORKER),  # simulated nodes
    ([node("10.0.0.1", CPU=2), node("10.0.0.9", alive=False, CPU=8)], CPU_WORKER),  # a node that went away
])
def test_one_machine_keeps_its_local_store(nodes, worker):
    check_tracking_for_workers(SQLITE, nodes, "10.0.0.1", worker)


def test_a_tracking_server_is_fine_on_any_cluster():
    nodes = [node("10.0.0.1"), node("10.0.0.2", CPU=8), node("10.0.0.3", CPU=8, GPU=1)]
    check_tracking_for_workers("http://mlflow.internal:5000", nodes, "10.0.0.1", GPU_WORKER)


@pytest.fixture()
def two_machines(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: [node("10.0.0.1", CPU=4), node("10.0.0.2", CPU=4)])
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "10.0.0.1")


def test_the_cluster_check_reads_the_live_nodes_and_honours_a_shared_mount(two_machines, monkeypatch):
    monkeypatch.delenv(runtime.SHARED_TRACKING_ENV, raising=False)
    with pytest.raises(TrackingStoreUnreachable):
        runtime.check_tracking_reachable(SQLITE, use_gpu=False)
    monkeypatch.setenv(runtime.SHARED_TRACKING_ENV, "1")
    runtime.check_tracking_reachable(SQLITE, use_gpu=False)


def test_training_refuses_before_building_any_dataset(two_machines, monkeypatch, tmp_path):
    from raypipe import crops
    from raypipe.train import TrainConfig, run_training
    from tests.fixtures.crops import make_crops_dir

    def no_datasets(*_args, **_kwargs):
        raise AssertionError("built training data before refusing the tracking store")

    monkeypatch.delenv(runtime.SHARED_TRACKING_ENV, raising=False)
    monkeypatch.setattr(runtime, "init_ray", lambda *_args, **_kwargs: None)  # the fake cluster is "connected"
    monkeypatch.setattr(crops, "ray_dataset", no_datasets)
    data = make_crops_dir(tmp_path / "crops", splits=("train", "test"), subjects=4)
    config = TrainConfig(data=str(data.root), use_gpu=False, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(TrackingStoreUnreachable, match="MLFLOW_TRACKING_URI"):
        run_training(config)
