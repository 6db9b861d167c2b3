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


# ------------------------------------------------------------------------- what the cluster can grow to


def cluster_yaml() -> dict:
    import yaml

    from tests.unit.test_deploy_configs import ROOT

    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_can_grow_to_its_worker_types_within_max_workers():
    """6 CPU nodes x 8 + 4 GPU nodes x 4 CPUs: 64 CPUs and 4 GPUs, though the head alone has 0."""
    assert runtime.max_resources(runtime.config_node_types(cluster_yaml())) == {"CPU": 64.0, "GPU": 4.0}


def test_cpu_work_is_sized_by_the_cpu_only_types():
    """Ray's autoscaler keeps GPU nodes for GPU work: counting their CPUs would start them for preprocessing."""
    assert runtime.max_resources(runtime.config_node_types(cluster_yaml()), cpu_work=True) == {"CPU": 48.0}


def test_the_cluster_wide_max_workers_caps_the_richest_types_first():
    config = {"head_node_type": "head", "max_workers": 3,
              "available_node_types": {"head": {"resources": {"CPU": 0}},
                                       "big": {"resources": {"CPU": 16}, "max_workers": 2},
                                       "small": {"resources": {"CPU": 2}, "max_workers": 5},
                                       "uncapped": {"resources": {"CPU": 99}}}}  # counted under the cluster's 3
    assert runtime.max_resources(runtime.config_node_types(config)) == {"CPU": 99 * 3 + 0.0}
    del config["max_workers"]  # no cap anywhere: a type without max_workers cannot be counted
    assert runtime.max_resources(runtime.config_node_types(config)) == {"CPU": 16 * 2 + 2 * 5 + 0.0}


def test_the_autoscaler_config_file_decides_gpus_before_any_gpu_node_runs(monkeypatch, tmp_path):
    import json

    import ray

    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(cluster_yaml()))
    monkeypatch.setenv(runtime.AUTOSCALING_CONFIG_ENV, str(path))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0})  # only the 0-CPU head is up
    assert runtime.cluster_capacity(cpu_work=True) == {"CPU": 48.0}
    assert runtime.resolve_use_gpu(None) is True
    assert runtime.resolve_use_gpu(False) is False
    monkeypatch.setenv(runtime.AUTOSCALING_CONFIG_ENV, str(tmp_path / "absent.yaml"))  # no autoscaler: what runs
    assert runtime.cluster_capacity() == {"CPU": 0.0}
    assert runtime.resolve_use_gpu(None) is False


def test_more_gpu_workers_than_the_cluster_can_have_are_refused(monkeypatch, tmp_path):
    import json

    path = tmp_path / "bootstrap.yaml"
    path.write_text(json.dumps(cluster_yaml()))  # 4 T4 nodes at most
    monkeypatch.setenv(runtime.AUTOSCALING_CONFIG_ENV, str(path))
    runtime.check_gpu_workers(4)
    with pytest.raises(ValueError, match="at most 4 GPUs"):
        runtime.check_gpu_workers(5)


# ----------------------------------------------------------------------------- tasks at most N at a time


def _sleep_then(value: int, seconds: float = 0.5) -> int:
    import time

    time.sleep(seconds)
    if value < 0:
        raise ValueError(f"task {value} failed")
    return value


@pytest.mark.ray
def test_run_at_most_keeps_order_and_never_runs_more_than_the_limit(ray_session):
    import ray

    @ray.remote(num_cpus=0)
    class Gauge:
        def __init__(self):
            self.now, self.most = 0, 0

        def enter(self):
            self.now += 1
            self.most = max(self.most, self.now)

        def leave(self):
            self.now -= 1

        def peak(self):
            return self.most

    gauge = Gauge.remote()

    @ray.remote(num_cpus=0)
    def task(value):
        ray.get(gauge.enter.remote())
        result = _sleep_then(value, 0.3)
        ray.get(gauge.leave.remote())
        return result

    values = [5, 1, 4, 2, 3]
    assert runtime.run_at_most([lambda v=v: task.remote(v) for v in values], 2) == values
    assert ray.get(gauge.peak.remote()) == 2


@pytest.mark.ray
def test_run_at_most_raises_the_first_failure(ray_session):
    import ray

    task = ray.remote(num_cpus=0)(_sleep_then)
    with pytest.raises(ValueError, match="task -1 failed"):
        runtime.run_at_most([lambda v=v: task.remote(v, 0.1 if v < 0 else 1) for v in (-1, 2, 3)], 2)
