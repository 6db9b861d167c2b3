"""Shared fixtures: one real local Ray cluster per test session, real MLflow stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on for local clusters
os.environ.setdefault("GLOG_minloglevel", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
NUAA_ROOT = SHARED / "datasets" / "nuaa"
# The published MiniFASNet weights beside a development checkout (no network here); an empty
# value (as the Makefile exports it elsewhere) means: the cache, then the published URL.
if not os.environ.get("RAYPIPE_WEIGHTS_DIR") and (SHARED / "weights" / "silentface").is_dir():
    os.environ["RAYPIPE_WEIGHTS_DIR"] = str(SHARED / "weights")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole session (start-up takes 5-10 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def face_pipeline():
    from raypipe.face import FacePipeline

    pipeline = FacePipeline()
    yield pipeline
    pipeline.close()


@pytest.fixture(scope="session")
def nuaa_root() -> Path:
    if not (NUAA_ROOT / "client_train_raw.txt").is_file():
        pytest.skip("../shared/datasets/nuaa is not beside the project")
    return NUAA_ROOT
