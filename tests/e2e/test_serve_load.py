"""Load on the Ray Serve app: concurrency 8 for 60 s without an error, and replicas
SIGKILLed mid-load with at most 1% failed requests and recovery without help.

Slow (about 4 minutes); traffic goes to 127.0.0.1 only. benchmarks/serve.py runs the
same two scenarios and records their numbers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from raypipe.face import FaceConfig
from tests.fixtures.images import astronaut_rgb, encode

pytestmark = [pytest.mark.ray, pytest.mark.slow]

APP = "rp-load"


@pytest.fixture(scope="module")
def load_url(ray_session, tmp_path_factory) -> Iterator[str]:
    import mlflow
    import torch
    from ray import serve
    from ray.serve.context import _get_global_client

    from raypipe.models import create_model
    from raypipe.models.store import configure_tracking, ensure_experiment, log_and_register
    from raypipe.serve.app import compose
    from raypipe.serve.settings import ServeSettings
    from tests.integration.test_serve import _free_port, wait_app

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    configure_tracking(uri)
    torch.manual_seed(0)
    with mlflow.start_run(experiment_id=ensure_experiment("serve-load")):
        log_and_register(create_model("attacknet"), threshold=0.5, register_as="load-attacknet", promote=True,
                         extra_tags={"pipeline_version": FaceConfig().version()})
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    scaling = {"min_replicas": 0, "initial_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8,
               "metrics_interval_s": 1, "upscale_delay_s": 3, "downscale_delay_s": 60,
               "downscale_to_zero_delay_s": 600}
    options = {name: {"autoscaling_config": dict(scaling, initial_replicas=0 if name == "FaceDetector" else 1)}
               for name in ("Ingress", "FaceDetector", "Classifier")}
    settings = ServeSettings(model_uri="models:/load-attacknet@champion", tracking_uri=uri, rate_limit_per_s=0)
    serve.run(compose(settings, options), name=APP, route_prefix="/", blocking=False)
    wait_app(APP, "RUNNING")
    yield f"http://127.0.0.1:{_get_global_client().http_config.port}/v1/detect"
    serve.delete(APP)
    serve.shutdown()
    mlflow.set_tracking_uri(previous)


def run_load(url: str, seconds: float, concurrency: int = 8) -> list[tuple[float, float, int | str]]:
    """(start, latency, status) of every request from ``concurrency`` closed-loop clients."""
    import aiohttp

    body = json.dumps({"image": base64.b64encode(encode(astronaut_rgb(), quality=90)).decode()}).encode()
    results: list = []

    async def client(session, deadline: float) -> None:
        while time.time() < deadline:
            start = time.time()
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    results.append((start, time.time() - start, r.status))
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request
                results.append((start, time.time() - start, type(exc).__name__))

    async def main() -> None:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            deadline = time.time() + seconds
            await asyncio.gather(*(client(session, deadline) for _ in range(concurrency)))

    asyncio.run(main())
    return results


def test_concurrency_8_for_60_seconds_without_errors(load_url):
    run_load(load_url, 3)  # warm-up
    results = run_load(load_url, 60)
    failed = [r for r in results if r[2] != 200]
    print(f"{len(results)} requests in 60 s ({len(results) / 60:.1f}/s), {len(failed)} failed")
    assert len(results) > 60 and not failed, failed[:5]


def replica_pid(deployment: str) -> int | None:
    out = subprocess.run(["pgrep", "-f", f"ray::ServeReplica:{APP}:{deployment}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def test_killing_replicas_mid_load_fails_at_most_1_percent_and_recovers(load_url):
    """SIGKILL the Classifier replica at 20 s and the Ingress replica at 45 s of 90 s.

    A killed Classifier costs nothing (the ingress retries the idempotent call once); a
    killed Ingress loses the requests it held (at most the concurrency, 8)."""
    killed, began = [], time.time()

    def killer() -> None:
        for at, deployment in ((20, "Classifier"), (45, "Ingress")):
            time.sleep(max(0.0, began + at - time.time()))
            pid = replica_pid(deployment)
            assert pid, f"no {deployment} replica process found"
            os.kill(pid, signal.SIGKILL)
            killed.append(deployment)

    thread = threading.Thread(target=killer)
    thread.start()
    results = run_load(load_url, 90)
    thread.join()
    failed = [r for r in results if r[2] != 200]
    rate = len(failed) / len(results)
    print(f"killed {killed}: {len(results)} requests, {len(failed)} failed ({rate:.2%})")
    assert killed == ["Classifier", "Ingress"]
    assert rate <= 0.01, failed[:10]
    tail = [r for r in results if r[0] > began + 80]
    assert tail and all(r[2] == 200 for r in tail)  # recovered by itself
