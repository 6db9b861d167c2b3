"""Connecting to Ray the same way from every job (local laptop or an existing cluster)."""

from __future__ import annotations

import logging
import os


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


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


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
