"""Typed settings of the liveness service: the ``args`` of ``serve_config.yaml``.

Everything has a default that runs on one laptop. A few values can be overridden by
environment variables of the processes that build the app and run the replicas
(``serve run`` starts them with its own environment when it starts the cluster):

- ``RAYPIPE_MODEL_URI``: the model reference (wins over ``model_uri``);
- ``MLFLOW_TRACKING_URI``: the MLflow store (when ``tracking_uri`` is not set);
- ``RAYPIPE_API_KEYS`` (comma separated) / ``RAYPIPE_API_KEYS_FILE`` (one key a line).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raypipe.face import FaceConfig
from raypipe.serve.core import serving_face_config

log = logging.getLogger(__name__)

MODEL_URI_ENV = "RAYPIPE_MODEL_URI"
API_KEYS_ENV = "RAYPIPE_API_KEYS"
API_KEYS_FILE_ENV = "RAYPIPE_API_KEYS_FILE"
DEFAULT_MODEL_URI = "models:/attacknet@champion"


class ServeSettings(BaseModel):
    """The application's arguments (``args:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")  # a typo in the YAML must fail the deploy, not be ignored

    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else raypipe's local default
    # FaceConfig fields. Leave {}: the app takes the crop settings the model was trained on;
    # a value here that disagrees with them fails the deploy (serve.core.serving_face_config).
    face: dict[str, Any] = Field(default_factory=dict)
    # Where detection runs: inside the ingress replica (one Serve hop fewer, see docs/serving.md)
    # or in the FaceDetector deployment (scales on its own; worth it when detection is heavy).
    detector: Literal["ingress", "deployment"] = "ingress"
    # Where the model runs: the Classifier deployment (scales and takes GPUs on its own, batches
    # across ingress replicas) or inside the ingress replica (one Serve hop fewer; with the
    # ONNX runtime a CPU-only service's fastest cut, measured in docs/serving.md).
    classifier: Literal["deployment", "ingress"] = "deployment"

    # Protection in front of the pipeline.
    max_body_bytes: int = 10 * 1024 * 1024  # whole HTTP body (base64 inflates images by 4/3)
    max_image_bytes: int = 6 * 1024 * 1024  # one encoded image after base64 decoding
    max_pixels: int = 25_000_000  # from the image header, before any full decode
    max_frames: int = 16  # /v1/detect-frames
    api_keys_file: str | None = None  # one key a line; with RAYPIPE_API_KEYS(_FILE) keys turn auth on
    rate_limit_per_s: float = 20.0  # per API key (or per client address without keys); 0 = off
    rate_limit_burst: int = 40
    request_timeout_s: float = 30.0
    cors_origins: list[str] = Field(default_factory=list)  # [] = no CORS headers at all

    # Test and debug hook: each face also reports the SHA-256 of the exact uint8 crop the
    # classifier received (a digest, never the image), to prove served crop == stored crop.
    expose_crop_digest: bool = False
    # How the Classifier runs the model: "onnx" (ONNX Runtime, the replica imports neither torch
    # nor MLflow: the cold start docs/serving.md measures) or "torch" (the PyTorch model).
    runtime: Literal["onnx", "torch"] = "onnx"
    # runtime torch on a GPU: "auto" = bfloat16 where the GPU supports it, else float16 (T4)
    # (raypipe.predict.inference_dtype); float32 on CPU. ONNX runs the exported float32 graph.
    precision: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Follow an alias (models:/m@champion): replicas switch to the version it names within this
    # many seconds of a promotion, without a redeploy; 0 = only on deploy/reconfigure.
    model_refresh_s: float = Field(default=60.0, ge=0.0)
    # Classifier batching (@serve.batch); 0 s = opportunistic: no added latency when idle.
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.0

    def resolved_model_uri(self) -> str:
        return os.environ.get(MODEL_URI_ENV) or self.model_uri

    def resolved_tracking_uri(self) -> str | None:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def face_config(self) -> FaceConfig:
        """The face pipeline: ``face`` (which :func:`raypipe.serve.app.build_app` fills with the
        crop settings the model was trained on), with the serving guards as size limits.

        The guards are not part of ``FaceConfig.version()``, so changing them never changes a crop.
        """
        return serving_face_config(None, self.face, self.guards())

    def guards(self) -> dict[str, int]:
        return {"max_bytes": self.max_image_bytes, "max_pixels": self.max_pixels}

    def api_keys(self) -> frozenset[str]:
        """Keys from RAYPIPE_API_KEYS, RAYPIPE_API_KEYS_FILE and ``api_keys_file``; empty = auth off."""
        keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",")}
        for path in (os.environ.get(API_KEYS_FILE_ENV), self.api_keys_file):
            if path:
                lines = Path(path).expanduser().read_text().splitlines()
                keys.update(line.strip() for line in lines if not line.lstrip().startswith("#"))
        return frozenset(k for k in keys if k)


def with_model_face(settings: ServeSettings) -> ServeSettings:
    """``settings`` whose ``face`` holds the crop settings the served model was trained on.

    Resolved once, where the app is built (the replicas then need no registry look-up to
    know how to crop). A ``face:`` value that disagrees with the model raises ValueError:
    the deploy fails with that message. A model that cannot be resolved yet (not
    registered, registry down) keeps the YAML's settings; its Classifier says why later.
    """
    from raypipe.models.store import configure_tracking, model_face_settings

    configure_tracking(settings.resolved_tracking_uri())
    try:
        model_face = model_face_settings(settings.resolved_model_uri())
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors: decided at load time
        log.warning("could not read the crop settings of %s (%s: %s); using serve_config's face settings",
                    settings.resolved_model_uri(), type(exc).__name__, exc)
        return settings
    serving_face_config(model_face, settings.face, settings.guards())  # raises on a clash
    return settings.model_copy(update={"face": {**(model_face or {}), **settings.face}})


# The Classifier's batching defaults, read by its @serve.batch decorator: one source.
BATCH_DEFAULTS = {name: ServeSettings.model_fields[name].default for name in ("max_batch_size", "batch_wait_timeout_s")}
# ... and the rest of its user_config, for a YAML user_config that leaves them out.
MODEL_DEFAULTS = {name: ServeSettings.model_fields[name].default for name in ("runtime", "precision", "model_refresh_s")}
