"""Connecting to Ray the same way from every job (local laptop or an existing cluster)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple


def init_ray(address: str | None = None) -> None:
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local cluster; no-op if connected."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Ray 2.60 turns token auth on for local clusters; a laptop run needs none (docs/cluster.md).
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level=logging.WARNING)


# --------------------------------------------------------------------------------------
# What the cluster can grow to. An autoscaling cluster starts small (cluster.yaml and the
# RayJob: a 0-CPU head, workers from 0), so sizing work by ``ray.cluster_resources()`` at job
# start asks for one actor on no GPU and the autoscaler is never asked for more.

AUTOSCALING_CONFIG_ENV = "RAYPIPE_AUTOSCALING_CONFIG"  # the autoscaler's cluster config file, if elsewhere
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves it on the head (job drivers run there)


def run_at_most(starts: Sequence[Callable[[], Any]], limit: int) -> list[Any]:
    """Run Ray tasks at most ``limit`` at a time: each ``start()`` submits one and returns its
    ObjectRef. Results come back in the order of ``starts``; the first failure is raised and
    nothing more is submitted. Tasks already running are left to finish, not cancelled:
    ``ray.cancel`` racing a task's completion crashed Ray 2.60's core worker in our CI
    ("Tried to complete task that was not pending")."""
    import ray

    results: list[Any] = [None] * len(starts)
    queue = iter(enumerate(starts))
    pending: dict[Any, int] = {}

    def submit_next() -> None:
        for index, start in queue:
            pending[start()] = index
            return

    for _ in range(max(1, limit)):
        submit_next()
    while pending:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        results[pending.pop(ready)] = ray.get(ready)
        submit_next()
    return results


class NodeTypes(NamedTuple):
    """What an autoscaler can start: each worker type's resources and how many such nodes
    there can be, the most worker nodes in all, and the head's own resources."""

    workers: list[tuple[dict[str, float], float]]
    most_workers: float = float("inf")
    head: dict[str, float] = {}


def config_node_types(config: dict[str, Any]) -> NodeTypes:
    """The node types of a cluster-launcher config (cluster.yaml's shape). A worker type
    without ``max_workers`` (and no cluster-wide one) is left out: the config does not say
    how many there can be."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    workers = [(t.get("resources") or {}, t.get("max_workers", cap)) for name, t in types.items() if name != head]
    return NodeTypes([(r, n) for r, n in workers if n is not None], float("inf") if cap is None else cap,
                     dict(types.get(head, {}).get("resources") or {}))


def max_resources(node_types: NodeTypes, cpu_work: bool = False) -> dict[str, float]:
    """The most of each resource the head plus ``node_types.most_workers`` worker nodes can
    provide (for each resource, the worker types richest in it first).

    ``cpu_work``: leave GPU node types out when CPU-only ones exist, as Ray's autoscaler
    keeps GPU nodes for GPU work; sizing CPU work by their CPUs would start GPU nodes for it.
    """
    workers = node_types.workers
    if cpu_work and any(r.get("CPU", 0) > 0 and not r.get("GPU", 0) for r, _ in workers):
        workers = [(r, n) for r, n in workers if not r.get("GPU", 0)]
    totals = {k: float(v) for k, v in node_types.head.items()}
    for key in {k for resources, _ in workers for k in resources}:
        left = node_types.most_workers
        for resources, count in sorted(workers, key=lambda t: -t[0].get(key, 0)):
            taken = min(count, left)
            totals[key] = totals.get(key, 0.0) + resources.get(key, 0) * taken
            left -= taken
    return totals


def autoscaler_node_types() -> NodeTypes | None:
    """The node types the connected cluster's autoscaler can start; None when none says.

    Autoscaler v2 (KubeRay's default) reports its config to the GCS, where Ray Train and Ray
    Data read it too (a private API, hence the guard). Autoscaler v1 (`ray up`) does not:
    its config is the file ``ray up`` leaves on the head, or ``$RAYPIPE_AUTOSCALING_CONFIG``.
    """
    from pathlib import Path

    try:
        from ray._private.state import state

        reported = state.get_cluster_config()
    except Exception as exc:  # noqa: BLE001 - a private API may move: fall back to the file
        logging.getLogger(__name__).debug("no cluster config from the GCS: %s", exc)
        reported = None
    if reported is not None and reported.node_group_configs:
        return NodeTypes([(dict(g.resources), float("inf") if g.max_count < 0 else g.max_count)
                          for g in reported.node_group_configs])
    path = Path(os.environ.get(AUTOSCALING_CONFIG_ENV) or BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    import yaml

    return config_node_types(yaml.safe_load(path.read_text()))


def cluster_capacity(cpu_work: bool = False) -> dict[str, float]:
    """The most the connected cluster can offer: what its autoscaler can start (``cpu_work``:
    see :func:`max_resources`), else what it has now (a cluster without an autoscaler never grows)."""
    import ray

    types = autoscaler_node_types()
    if types is not None:
        return max_resources(types, cpu_work=cpu_work)
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def check_gpu_workers(workers: int) -> None:
    """Refuse GPU workers the cluster can never have: Ray Train would wait for them for ever
    (autoscaler v1 does not tell it the cluster's maximum)."""
    most = cluster_capacity().get("GPU", 0)
    if workers > most:
        raise ValueError(f"{workers} training workers with one GPU each, but the cluster can have at most "
                         f"{most:g} GPUs: lower --workers, or --no-gpu")


def resolve_use_gpu(requested: bool | None) -> bool:
    """``--gpu/--no-gpu`` when given, else GPUs when the cluster has GPU nodes or its
    autoscaler can start them (never "has them now": GPU nodes of cluster.yaml start at zero)."""
    if requested is not None:
        return requested
    return cluster_capacity().get("GPU", 0) > 0


# --------------------------------------------------------------------------------------
# MLflow on a cluster: a local store only exists on this machine

SHARED_TRACKING_ENV = "RAYPIPE_TRACKING_SHARED"  # "1": the local store path is on a mount every node shares


class TrackingStoreUnreachable(ValueError):
    """A local MLflow store (SQLite file, ``file:`` path) that training workers on other
    machines cannot reach: rank 0 would log its epochs into a store of its own."""


def is_local_tracking_uri(uri: str) -> bool:
    """SQLite files, ``file:`` URIs and bare paths live on one machine; servers and databases do not."""
    from urllib.parse import urlparse

    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc"):  # MLflow's names for a remote service
        return False
    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # one letter: a Windows drive


def check_tracking_for_workers(tracking_uri: str, nodes: list[dict], driver_address: str,
                               worker_resources: dict[str, float]) -> None:
    """Raise :class:`TrackingStoreUnreachable` when ``tracking_uri`` is local and training
    workers may run on another machine.

    ``nodes`` is ``ray.nodes()`` (``Alive``, ``NodeManagerAddress``, ``Resources``); tests pass
    fakes. Workers may run elsewhere when the live nodes span more than one machine, or when
    no node on the driver's machine offers ``worker_resources`` (a 0-CPU head whose workers
    the autoscaler has yet to start: one machine now, several once training starts).
    Simulated multi-node clusters share one machine's disk: they pass.
    """
    if not is_local_tracking_uri(tracking_uri):
        return
    alive = [n for n in nodes if n.get("Alive", True)]
    machines = sorted({n["NodeManagerAddress"] for n in alive})
    here = [n for n in alive if n["NodeManagerAddress"] == driver_address]
    can_host = any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in worker_resources.items() if v)
                   for n in here)
    if len(machines) > 1:
        why = f"the Ray cluster spans {len(machines)} machines ({', '.join(machines[:4])})"
    elif not can_host:
        wanted = ", ".join(f"{k} {v:g}" for k, v in worker_resources.items() if v)
        why = f"no node on this machine offers a training worker's {wanted}, so the workers will start elsewhere"
    else:
        return
    raise TrackingStoreUnreachable(
        f"MLflow tracking store {tracking_uri} is local to this machine, but {why}: they could not log to it. "
        "Set MLFLOW_TRACKING_URI (or --tracking-uri) to a tracking server every node reaches, e.g. "
        f"http://mlflow.internal:5000 (docs/cluster.md), or {SHARED_TRACKING_ENV}=1 if the path is on a mount "
        "every node shares.")


def check_tracking_reachable(tracking_uri: str, use_gpu: bool) -> None:
    """:func:`check_tracking_for_workers` on the connected cluster, before any training."""
    import ray

    if os.environ.get(SHARED_TRACKING_ENV) == "1":
        return
    resources = {"CPU": 1.0, "GPU": 1.0 if use_gpu else 0.0}  # Ray Train's default per worker
    check_tracking_for_workers(tracking_uri, ray.nodes(), ray.util.get_node_ip_address(), resources)
