"""Typed settings of the liveness service: the ``args`` of ``serve_config.yaml``.

Everything has a default that runs on one laptop. A few values can be overridden by
environment variables of the processes that build the app and run the replicas
(``serve run`` starts them with its own environment when it starts the cluster):

- ``RAYPIPE_MODEL_URI``: the model reference (wins over ``model_uri``);
- ``MLFLOW_TRACKING_URI``: the MLflow store (when ``tracking_uri`` is not set);
- ``RAYPIPE_API_KEYS`` (comma separated) / ``RAYPIPE_API_KEYS_FILE`` (one key a line).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raypipe.face import FaceConfig

MODEL_URI_ENV = "RAYPIPE_MODEL_URI"
API_KEYS_ENV = "RAYPIPE_API_KEYS"
API_KEYS_FILE_ENV = "RAYPIPE_API_KEYS_FILE"
DEFAULT_MODEL_URI = "models:/attacknet@champion"


class ServeSettings(BaseModel):
    """The application's arguments (``args:`` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")  # a typo in the YAML must fail the deploy, not be ignored

    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else raypipe's local default
    # FaceConfig fields; {} is exactly preprocessing's default, so served crops equal stored crops.
    face: dict[str, Any] = Field(default_factory=dict)
    # Where detection runs: inside the ingress replica (one Serve hop fewer, see docs/serving.md)
    # or in the FaceDetector deployment (scales on its own; worth it when detection is heavy).
    detector: Literal["ingress", "deployment"] = "ingress"

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
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002

    def resolved_model_uri(self) -> str:
        return os.environ.get(MODEL_URI_ENV) or self.model_uri

    def resolved_tracking_uri(self) -> str | None:
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None

    def face_config(self) -> FaceConfig:
        """The crop-defining parameters from ``face``; the serving guards replace the size limits.

        The guards are not part of ``FaceConfig.version()``, so changing them never changes a crop.
        """
        base = FaceConfig(**self.face)
        return dataclasses.replace(base, max_bytes=self.max_image_bytes, max_pixels=self.max_pixels)

    def api_keys(self) -> frozenset[str]:
        """Keys from RAYPIPE_API_KEYS, RAYPIPE_API_KEYS_FILE and ``api_keys_file``; empty = auth off."""
        keys = {k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",")}
        for path in (os.environ.get(API_KEYS_FILE_ENV), self.api_keys_file):
            if path:
                lines = Path(path).expanduser().read_text().splitlines()
                keys.update(line.strip() for line in lines if not line.lstrip().startswith("#"))
        return frozenset(k for k in keys if k)
