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
