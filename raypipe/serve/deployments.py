"""The Serve graph: Ingress (FastAPI) -> FaceDetector -> Classifier (``@serve.batch``).

Resource requests and autoscaling here are defaults for a 2-core laptop; serve_config.yaml
overrides them per deployment. Every deployment scales to zero (``min_replicas: 0``).
Whether detection runs in the FaceDetector deployment or inside the ingress replica is
the ``detector`` setting (measured trade-off in docs/serving.md).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from raypipe.face import FaceConfig, FaceError
from raypipe.serve.core import FaceFailure, Findings, LocalDetector, Scores, crop_digest
from raypipe.serve.errors import face_error
from raypipe.serve.metrics import ClassifierMetrics
from raypipe.serve.runners import ServedModel, load_served, resolve_served_model
from raypipe.serve.settings import BATCH_DEFAULTS, MODEL_DEFAULTS, ServeSettings

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("ray.serve")

INGRESS, DETECTOR, CLASSIFIER, RESOLVER = "Ingress", "FaceDetector", "Classifier", "ModelResolver"
# Classifier user_config keys applied in place; any other change reloads the model.
LIGHT_SETTINGS = ("max_batch_size", "batch_wait_timeout_s", "model_refresh_s")


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


@serve.deployment(name=RESOLVER, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=8,
                  autoscaling_config={**_autoscaling(target=4, initial=0), "max_replicas": 1})
class ModelResolver:
    """Answers "which version does this alias name now?" for the Classifier replicas.

    The one deployment that imports MLflow, off the request path: Classifier replicas
    ask it every ``model_refresh_s`` and switch when the answer changes. With every
    Classifier at zero nobody asks, and it scales to zero too.
    """

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri

    def resolve(self, model_uri: str) -> dict:
        return resolve_served_model(model_uri, self.tracking_uri).to_dict()


class ServedModelHolder:
    """One replica's model: loads it, follows its alias, scores batches of crops.

    Used by the Classifier deployment and, with ``classifier: ingress``, inside the ingress
    replica. Configured by the Classifier ``user_config`` (:func:`raypipe.serve.app.classifier_user_config`):
    ``{"model_uri", "model" (the reference resolved where the app was built), "runtime"
    (onnx | torch), "precision", "model_refresh_s", "max_batch_size", "batch_wait_timeout_s"}``.
    With the ONNX runtime the process imports neither torch nor MLflow. An alias
    (``models:/m@champion``) is followed: every ``model_refresh_s`` the :class:`ModelResolver`
    is asked what it names, and a new version is loaded beside the current one and swapped
    in (a batch in flight keeps the runner it started with: no request dropped).
    """

    def __init__(self, tracking_uri: str | None, pipeline_version: str,
                 resolver: DeploymentHandle | None = None) -> None:
        self.tracking_uri, self.pipeline_version, self.resolver = tracking_uri, pipeline_version, resolver
        self.runner: Any = None
        self.served: ServedModel | None = None
        self.model_uri: str | None = None
        self.runtime, self.precision, self.refresh_s = MODEL_DEFAULTS["runtime"], MODEL_DEFAULTS["precision"], 0.0
        self._model_key: dict | None = None  # the user_config minus batching and refresh settings
        self._follower: asyncio.Task | None = None
        self._switching = asyncio.Lock()  # one load-and-swap at a time: a reconfigure or the follower
        self.load_s: float | None = None
        self.metrics = ClassifierMetrics()

    async def configure(self, user_config: dict) -> None:
        self.classify.set_max_batch_size(int(user_config.get("max_batch_size", BATCH_DEFAULTS["max_batch_size"])))
        self.classify.set_batch_wait_timeout_s(
            float(user_config.get("batch_wait_timeout_s", BATCH_DEFAULTS["batch_wait_timeout_s"])))
        self.refresh_s = float(user_config.get("model_refresh_s", MODEL_DEFAULTS["model_refresh_s"]))
        model_key = {k: v for k, v in user_config.items() if k not in LIGHT_SETTINGS}
        if model_key != self._model_key:
            async with self._switching:
                self.model_uri, self.runtime = user_config["model_uri"], user_config.get("runtime",
                                                                                          MODEL_DEFAULTS["runtime"])
                self.precision = user_config.get("precision", MODEL_DEFAULTS["precision"])
                resolved = user_config.get("model") or await self._ask_resolver(self.model_uri)
                await self._load(ServedModel.from_dict(resolved))
                self._model_key = model_key
        self._follow_alias()

    async def _ask_resolver(self, uri: str) -> dict:
        if self.resolver is None:  # built without one (tests): resolve here, importing MLflow
            return await asyncio.to_thread(lambda: resolve_served_model(uri, self.tracking_uri).to_dict())
        return await self.resolver.resolve.remote(uri)

    async def _load(self, served: ServedModel) -> None:
        start = time.perf_counter()
        runner = await asyncio.to_thread(load_served, served, self.runtime, self.tracking_uri, self.pipeline_version,
                                         self.precision)
        self.runner, self.served = runner, served
        self.load_s = round(time.perf_counter() - start, 3)
        log.info("serving %s version %s with %s (loaded in %.2f s)", runner.info["name"],
                 runner.info["version"], runner.info["runtime"], self.load_s)

    def _follow_alias(self) -> None:
        follows = self.refresh_s > 0 and "@" in (self.model_uri or "")
        if follows and (self._follower is None or self._follower.done()):
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        """Check at once (the build-time answer may be stale after a scale-from-zero), then every interval."""
        while self.refresh_s > 0 and "@" in (self.model_uri or ""):
            uri = self.model_uri
            try:
                served = ServedModel.from_dict(await self._ask_resolver(uri))
                async with self._switching:
                    # A reconfigure may have changed the model while the resolver answered: an
                    # answer about the previous URI must not undo it.
                    current = self.served
                    if uri == self.model_uri and (current is None or (served.name, served.version) !=
                                                  (current.name, current.version)):
                        log.info("%s now names version %s (serving %s): switching", uri, served.version,
                                 current.version if current else None)
                        await self._load(served)
            except Exception as exc:  # noqa: BLE001 - registry down, bad new version: keep serving the current one
                log.warning("could not follow %s: %s: %s", self.model_uri, type(exc).__name__, exc)
            await asyncio.sleep(self.refresh_s)

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
    def _infer(runner: Any, crops: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float]:
        start = time.perf_counter()
        probabilities = runner.spoof_probabilities(crops, boxes)
        return probabilities, (time.perf_counter() - start) * 1000

    def status(self) -> dict:
        # "imports": proof that the lean path stays lean (this process's sys.modules, read in tests).
        return {**(self.runner.info if self.runner else {}), "uri": self.model_uri, "load_s": self.load_s,
                "imports": {module: module in sys.modules for module in ("torch", "mlflow")}}


@serve.deployment(name=CLASSIFIER, ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64,
                  autoscaling_config=_autoscaling(target=16, initial=1))
class Classifier:
    """The registry model behind ``@serve.batch`` (:class:`ServedModelHolder`); ``reconfigure``
    (a ``user_config`` change) swaps models without a restart."""

    def __init__(self, tracking_uri: str | None, pipeline_version: str,
                 resolver: DeploymentHandle | None = None) -> None:
        self.model = ServedModelHolder(tracking_uri, pipeline_version, resolver)

    async def reconfigure(self, user_config: dict) -> None:
        await self.model.configure(user_config)

    async def classify(self, request: tuple[np.ndarray, np.ndarray, bool]) -> Scores:
        return await self.model.classify(request)

    def ping(self) -> dict:
        return self.model.status()


class ServeBackend:
    """The API's backend inside the ingress replica: detection local or via the FaceDetector
    deployment, classification local or via the Classifier deployment."""

    def __init__(self, settings: ServeSettings, detector: DeploymentHandle, classifier: DeploymentHandle,
                 local_model: ServedModelHolder | None = None) -> None:
        self.detector_where, self.classifier_where = settings.detector, settings.classifier
        self.detector, self.classifier, self.local_model = detector, classifier, local_model
        self.local = LocalDetector(settings.face_config()) if settings.detector == "ingress" else None

    async def find_faces(self, data: bytes) -> Findings:
        if self.local is not None:
            return await self.local.find_faces(data)
        result = await self._call(self.detector.detect, data)
        if isinstance(result, FaceFailure):
            raise face_error(result.reason, result.message)
        return result

    async def classify(self, crops: np.ndarray, boxes: np.ndarray, want_digests: bool) -> Scores:
        if self.local_model is not None:
            return await self.local_model.classify((crops, boxes, want_digests))
        return await self._call(self.classifier.classify, (crops, boxes, want_digests))  # one batch item

    async def model_info(self) -> dict:
        if self.local_model is not None:
            return self.local_model.status()
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

    async def __init__(self, settings: dict, detector: DeploymentHandle, classifier: DeploymentHandle,
                       model: dict | None = None) -> None:
        """``model``: with ``classifier: ingress``, the Classifier's user_config and what the
        in-ingress :class:`ServedModelHolder` needs (``tracking_uri``, ``pipeline_version``, ``resolver``)."""
        self.settings = ServeSettings.model_validate(settings)
        # Wake the downstream deployments now, so after a scale-from-zero they start in
        # parallel with this replica instead of after the first request reaches them.
        wake = ([classifier.ping.remote()] if self.settings.classifier == "deployment" else []) + \
            ([detector.ping.remote()] if self.settings.detector == "deployment" else [])
        self._warmup = asyncio.get_running_loop().create_task(self._await_quietly(wake))
        start = time.perf_counter()
        local_model = None
        if self.settings.classifier == "ingress":
            local_model = ServedModelHolder(model["tracking_uri"], model["pipeline_version"], model["resolver"])
            await local_model.configure(model["user_config"])
        self.backend = ServeBackend(self.settings, detector, classifier, local_model)
        log.info("ingress ready (detector in the %s, classifier in the %s, %.2f s)", self.settings.detector,
                 self.settings.classifier, time.perf_counter() - start)

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
