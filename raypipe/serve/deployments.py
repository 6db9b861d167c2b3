"""The Serve graph: Ingress (FastAPI) -> FaceDetector -> Classifier (``@serve.batch``).

Resource requests and autoscaling here are defaults for a 2-core laptop; serve_config.yaml
overrides them per deployment. Every deployment scales to zero (``min_replicas: 0``).
Whether detection runs in the FaceDetector deployment or inside the ingress replica is
the ``detector`` setting (measured trade-off in docs/serving.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from raypipe.face import FaceConfig, FaceError
from raypipe.serve.core import FaceFailure, Findings, LocalDetector, ModelRunner, Scores, crop_digest, load_runner
from raypipe.serve.errors import face_error
from raypipe.serve.metrics import ClassifierMetrics
from raypipe.serve.settings import BATCH_DEFAULTS

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("ray.serve")

INGRESS, DETECTOR, CLASSIFIER = "Ingress", "FaceDetector", "Classifier"


def _autoscaling(target: float, initial: int) -> dict[str, Any]:
    # metrics_interval_s: how often handles (the HTTP proxy's included) report queued requests.
    # At the default 10 s a request arriving at zero replicas waited up to 10 s more before the
    # scale-up even started (measured here; the from-zero fast push reports stale samples).
    return {"min_replicas": 0, "initial_replicas": initial, "max_replicas": 2, "target_ongoing_requests": target,
            "metrics_interval_s": 1.0, "upscale_delay_s": 3, "downscale_delay_s": 60,
            "downscale_to_zero_delay_s": 300}


@serve.deployment(name=DETECTOR, ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=16,
                  autoscaling_config=_autoscaling(target=4, initial=0))
class FaceDetector:
    """Decode -> detect -> crop every face (CPU). Errors come back as data, not exceptions."""

    def __init__(self, face_config: FaceConfig) -> None:
        self.local = LocalDetector(face_config)

    async def detect(self, data: bytes) -> Findings | FaceFailure:
        try:
            return await self.local.find_faces(data)
        except FaceError as exc:
            return FaceFailure(exc.reason, str(exc))

    def ping(self) -> str:
        return "ok"


@serve.deployment(name=CLASSIFIER, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  autoscaling_config=_autoscaling(target=16, initial=1))
class Classifier:
    """The registry model behind ``@serve.batch``; ``reconfigure`` swaps models without a restart.

    ``user_config``: ``{"model_uri": ..., "max_batch_size": ..., "batch_wait_timeout_s": ...}``
    (defaults: :data:`raypipe.serve.settings.BATCH_DEFAULTS`).
    Any change besides the batch settings reloads the model, so adding e.g. ``reload: 2``
    re-resolves an alias that moved while the URI stayed ``models:/name@champion``.
    """

    def __init__(self, tracking_uri: str | None, pipeline_version: str) -> None:
        self.tracking_uri, self.pipeline_version = tracking_uri, pipeline_version
        self.runner: ModelRunner | None = None
        self.model_uri: str | None = None
        self._model_key: dict | None = None  # the user_config minus the batch settings
        self.load_s: float | None = None
        self.metrics = ClassifierMetrics()

    async def reconfigure(self, user_config: dict) -> None:
        self.classify.set_max_batch_size(int(user_config.get("max_batch_size", BATCH_DEFAULTS["max_batch_size"])))
        self.classify.set_batch_wait_timeout_s(
            float(user_config.get("batch_wait_timeout_s", BATCH_DEFAULTS["batch_wait_timeout_s"])))
        uri = user_config["model_uri"]
        model_key = {k: v for k, v in user_config.items() if k not in ("max_batch_size", "batch_wait_timeout_s")}
        if model_key == self._model_key:
            return
        # Load beside the current model, then swap one reference: a batch in flight keeps the
        # runner it started with, so no request sees half a switch.
        start = time.perf_counter()
        runner = await asyncio.to_thread(load_runner, uri, self.tracking_uri, self.pipeline_version)
        self.runner, self.model_uri, self._model_key = runner, uri, model_key
        self.load_s = round(time.perf_counter() - start, 3)
        log.info("classifier serving %s version %s (loaded in %.2f s)", runner.info["name"], runner.info["version"],
                 self.load_s)

    @serve.batch(**BATCH_DEFAULTS)
    async def classify(self, requests: list[tuple[np.ndarray, np.ndarray, bool]]) -> list[Scores]:
        """Each request: (crops N x S x S x 3, their face boxes N x 4, whether to return digests)."""
        runner = self.runner
        if runner is None:
            raise RuntimeError("no model loaded: the Classifier needs user_config.model_uri")
        crops = np.concatenate([crops for crops, _, _ in requests])
        boxes = np.concatenate([boxes for _, boxes, _ in requests])
        # Off the event loop: requests keep queueing meanwhile and form the next batch.
        probabilities, infer_ms = await asyncio.to_thread(self._infer, runner, crops, boxes)
        self.metrics.batch_size.observe(len(crops))
        self.metrics.inference_ms.observe(infer_ms)
        answers, start = [], 0
        for request_crops, _, want_digests in requests:
            end = start + len(request_crops)
            digests = [crop_digest(c) for c in request_crops] if want_digests else None
            answers.append(Scores([float(p) for p in probabilities[start:end]], dict(runner.info), digests,
                                  batch_size=len(crops), infer_ms=infer_ms))
            start = end
        return answers

    @staticmethod
    def _infer(runner: ModelRunner, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        probabilities = runner.spoof_probabilities(crops, boxes)
        return probabilities, (time.perf_counter() - start) * 1000

    def ping(self) -> dict:
        return {**(self.runner.info if self.runner else {}), "uri": self.model_uri, "load_s": self.load_s}


class ServeBackend:
    """The API's backend inside the ingress replica: detection local or via the FaceDetector
    deployment, classification via the Classifier deployment."""

    def __init__(self, detector_where: str, face_config: FaceConfig, detector: DeploymentHandle,
                 classifier: DeploymentHandle) -> None:
        self.detector_where = detector_where
        self.detector, self.classifier = detector, classifier
        self.local = LocalDetector(face_config) if detector_where == "ingress" else None

    async def find_faces(self, data: bytes) -> Findings:
        if self.local is not None:
            return await self.local.find_faces(data)
        result = await self._call(self.detector.detect, data)
        if isinstance(result, FaceFailure):
            raise face_error(result.reason, result.message)
        return result

    async def classify(self, crops: np.ndarray, boxes: np.ndarray, want_digests: bool) -> Scores:
        return await self._call(self.classifier.classify, (crops, boxes, want_digests))  # one batch item

    async def model_info(self) -> dict:
        return await self._call(self.classifier.ping)

    @staticmethod
    async def _call(method: DeploymentHandle, *args: Any) -> Any:
        """One retry when the replica died under the request (the calls are idempotent)."""
        try:
            return await method.remote(*args)
        except RayActorError as exc:
            log.warning("replica died during a call (%s); retrying once", type(exc).__name__)
            return await method.remote(*args)


@serve.deployment(name=INGRESS, ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32,
                  autoscaling_config=_autoscaling(target=8, initial=1))
@serve.ingress()
class Ingress:
    """HTTP in front (FastAPI built per replica from the settings, so CORS and keys are per config)."""

    async def __init__(self, settings: dict, detector: DeploymentHandle, classifier: DeploymentHandle) -> None:
        from raypipe.serve.settings import ServeSettings

        self.settings = ServeSettings.model_validate(settings)
        # Wake the downstream deployments now, so after a scale-from-zero they start in
        # parallel with this replica instead of after the first request reaches them.
        wake = [classifier.ping.remote()] + ([detector.ping.remote()] if self.settings.detector == "deployment" else [])
        self._warmup = asyncio.get_running_loop().create_task(self._await_quietly(wake))
        start = time.perf_counter()
        self.backend = ServeBackend(self.settings.detector, self.settings.face_config(), detector, classifier)
        log.info("ingress ready (detector in the %s, %.2f s)", self.settings.detector, time.perf_counter() - start)

    @staticmethod
    async def _await_quietly(responses: list) -> None:
        for response in responses:
            try:
                await response
            except Exception as exc:  # noqa: BLE001 - a failed warm-up only costs latency later
                log.warning("warm-up call failed: %s", type(exc).__name__)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from raypipe.serve.api import create_api
        from raypipe.serve.metrics import IngressMetrics

        return create_api(self.backend, self.settings, IngressMetrics())
