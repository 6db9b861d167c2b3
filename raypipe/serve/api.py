"""The HTTP API as a FastAPI app over a pluggable backend.

The same app runs inside the Serve ingress replica (backend: deployment handles) and in
the one-process baseline server (backend: local pipeline and model), so the benchmark
compares Serve against exactly the same HTTP layer. Request bodies are parsed by hand
(JSON base64, multipart or raw bytes, see ``payload``) and documented in ``openapi_extra``;
responses are built through the models of ``schemas``, which the routes also publish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Awaitable, Callable, Protocol

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

import raypipe
from raypipe.face import FaceError
from raypipe.serve.core import Findings, Scores, fuse, verdict
from raypipe.serve.errors import ApiError, error_response, from_face_error
from raypipe.serve.guard import API_KEY_HEADER, ApiKeys, RateLimiter, read_body
from raypipe.serve.metrics import IngressMetrics
from raypipe.serve.payload import images_from_body
from raypipe.serve.schemas import (
    ClassifierStatus,
    DetectResponse,
    DetectTiming,
    ErrorBody,
    ErrorDetail,
    Face,
    FrameError,
    FrameFace,
    FramesResponse,
    FramesTiming,
    Fused,
    Health,
    ImageSize,
    ModelInfo,
)
from raypipe.serve.settings import ServeSettings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Frame-level problems that leave the rest of a burst usable (a blink, motion blur).
SKIPPABLE_FRAME_ERRORS = {"no_face", "too_small"}
HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "too_large", 415: "unsupported_media_type", 422: "unprocessable", 429: "rate_limited"}


class Backend(Protocol):
    """Where the faces are found and classified (Serve handles, or in-process)."""

    detector_where: str
    classifier_where: str

    async def find_faces(self, data: bytes) -> Findings:
        """Raises a FaceError subclass for input without a usable face."""

    async def classify(self, crops: np.ndarray, boxes: np.ndarray, want_digests: bool) -> Scores:
        """Spoof probabilities of ``crops`` (N, S, S, 3), ``boxes`` (N, 4) being each face in its crop."""

    async def model_info(self) -> dict: ...


def face_result(findings: Findings, index: int, probability: float, model: ModelInfo, digest: str | None) -> Face:
    detection = findings.detections[index]
    label, confidence = verdict(probability, model.threshold)
    return Face(box=list(detection.box), det_score=round(detection.score, 4), label=label,
                spoof_probability=round(probability, 6), confidence=round(confidence, 6), crop_sha256=digest)


IMAGE_FIELD = {"type": "string", "description": "base64 image (JPEG/PNG/WebP/BMP); a data: URL prefix is accepted"}
FILE_FIELD = {"type": "string", "format": "binary"}
REQUEST_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {"image": IMAGE_FIELD}}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {"file": FILE_FIELD}}},
}}}
FRAMES_BODY_DOC = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "required": ["frames"], "properties": {
        "frames": {"type": "array", "items": IMAGE_FIELD, "description": "frames of one presentation"}}}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": FILE_FIELD}}}},
}}}


def error_doc(description: str, code: str) -> dict:
    """An OpenAPI ``responses`` entry: the ErrorBody schema with a typical code as example."""
    example = {"error": {"code": code, "message": "..."}}
    return {"description": description, "model": ErrorBody, "content": {"application/json": {"example": example}}}


ERROR_DOC = {400: error_doc("undecodable image, bad base64, bad JSON or a missing field", "bad_base64"),
             401: error_doc("missing or invalid X-API-Key (when keys are configured)", "unauthorized"),
             413: error_doc("body, image or pixel count over the limits", "too_large"),
             415: error_doc("unsupported Content-Type", "unsupported_media_type"),
             422: error_doc("no face found, or image too small", "no_face"),
             429: error_doc("rate limited (see Retry-After)", "rate_limited"),
             500: error_doc("the service failed", "internal"),
             504: error_doc("request timed out", "timeout")}
# "4XX" also keeps FastAPI from publishing its own 422 body for ?deep: a bad value is our 400.
HEALTH_ERROR_DOC = {"4XX": error_doc("invalid query parameter", "invalid_field"),
                    503: error_doc("the classifier did not answer in time (deep only)", "model_unavailable")}


class LivenessApi:
    """Routes and guards; one instance per replica or process."""

    def __init__(self, backend: Backend, settings: ServeSettings, metrics: IngressMetrics) -> None:
        self.backend, self.settings, self.metrics = backend, settings, metrics
        self.keys = ApiKeys(settings.api_keys())
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        self.pipeline_version = settings.face_config().version()
        self.index_html = (STATIC_DIR / "index.html").read_text()

    async def guarded(self, request: Request, endpoint: str,
                      work: Callable[[bytes, str | None], Awaitable[BaseModel]]) -> Response:
        """auth -> rate limit -> bounded body -> work, all under the request timeout."""
        start, status = time.perf_counter(), 500
        try:
            client = self.keys.identify(request)
            self.limiter.check(client)
            result = await asyncio.wait_for(self._read_and_work(request, work), self.settings.request_timeout_s)
            status = 200
            return JSONResponse(result.model_dump())
        except ApiError as exc:
            status = exc.status
            self.metrics.errors.inc(tags={"code": exc.code})
            return exc.response()
        except FaceError as exc:
            error = from_face_error(exc)
            status = error.status
            self.metrics.errors.inc(tags={"code": error.code})
            return error.response()
        except asyncio.TimeoutError:
            status = 504
            self.metrics.errors.inc(tags={"code": "timeout"})
            return error_response(504, "timeout", f"request took longer than {self.settings.request_timeout_s:g} s")
        finally:
            self.metrics.requests.inc(tags={"endpoint": endpoint, "status": str(status)})
            self.metrics.request_ms.observe((time.perf_counter() - start) * 1000, tags={"endpoint": endpoint})

    async def _read_and_work(self, request: Request,
                             work: Callable[[bytes, str | None], Awaitable[BaseModel]]) -> BaseModel:
        body = await read_body(request, self.settings.max_body_bytes)
        return await work(body, request.headers.get("content-type"))

    async def find_faces(self, data: bytes) -> Findings:
        start = time.perf_counter()
        try:
            return await self.backend.find_faces(data)
        finally:
            self.metrics.detector_ms.observe((time.perf_counter() - start) * 1000,
                                             tags={"where": self.backend.detector_where})

    async def classify(self, crops: np.ndarray, boxes: np.ndarray) -> Scores:
        start = time.perf_counter()
        scores = await self.backend.classify(crops, boxes, self.settings.expose_crop_digest)
        self.metrics.classifier_ms.observe((time.perf_counter() - start) * 1000)
        return scores

    async def detect(self, body: bytes, content_type: str | None) -> DetectResponse:
        start = time.perf_counter()
        [data] = images_from_body(body, content_type, frames=False, max_image_bytes=self.settings.max_image_bytes)
        findings = await self.find_faces(data)
        found = time.perf_counter()
        scores = await self.classify(findings.crops, findings.boxes)
        classified = time.perf_counter()
        model = ModelInfo.model_validate(scores.model)
        faces = [face_result(findings, i, p, model, scores.digests[i] if scores.digests else None)
                 for i, p in enumerate(scores.probabilities)]
        for face in faces:
            self.metrics.verdicts.inc(tags={"label": face.label})
        timing = DetectTiming(decode=round(findings.decode_ms, 2), detect=round(findings.detect_ms, 2),
                              detector_call=round((found - start) * 1000, 2),
                              classify=round((classified - found) * 1000, 2),
                              total=round((time.perf_counter() - start) * 1000, 2))
        return DetectResponse(faces=faces, model=model, image=ImageSize(width=findings.width, height=findings.height),
                              pipeline_version=self.pipeline_version, timing_ms=timing)

    async def detect_frames(self, body: bytes, content_type: str | None) -> FramesResponse:
        start = time.perf_counter()
        images = images_from_body(body, content_type, frames=True, max_image_bytes=self.settings.max_image_bytes,
                                  max_frames=self.settings.max_frames)
        outcomes = await asyncio.gather(*(self.find_faces(data) for data in images), return_exceptions=True)
        usable = self._usable_frames(outcomes)
        if not usable:
            raise ApiError(422, "no_face", "no face found in any frame")
        found = time.perf_counter()
        scores = await self.classify(np.stack([outcomes[i].crops[0] for i in usable]),
                                     np.stack([outcomes[i].boxes[0] for i in usable]))
        model = ModelInfo.model_validate(scores.model)
        probability = dict(zip(usable, scores.probabilities))
        frames: list[FrameFace | FrameError] = []
        for index, outcome in enumerate(outcomes):
            if index in probability:
                digest = scores.digests[usable.index(index)] if scores.digests else None
                face = face_result(outcome, 0, probability[index], model, digest)
                frames.append(FrameFace(index=index, face=face, n_faces=len(outcome.detections)))
            else:
                frames.append(FrameError(index=index, error=ErrorDetail(code=outcome.reason, message=str(outcome))))
        fused = fuse(scores.probabilities)
        label, confidence = verdict(fused, model.threshold)
        self.metrics.verdicts.inc(tags={"label": label})
        timing = FramesTiming(detect=round((found - start) * 1000, 2),
                              classify=round((time.perf_counter() - found) * 1000, 2),
                              total=round((time.perf_counter() - start) * 1000, 2))
        return FramesResponse(frames=frames,
                              fused=Fused(label=label, spoof_probability=round(fused, 6),
                                          confidence=round(confidence, 6), frames_used=len(usable), method="mean"),
                              model=model, pipeline_version=self.pipeline_version, timing_ms=timing)

    @staticmethod
    def _usable_frames(outcomes: list) -> list[int]:
        """Indices of frames with a face; a frame that is not an image fails the whole burst."""
        usable = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, Findings):
                usable.append(index)
            elif isinstance(outcome, FaceError) and outcome.reason in SKIPPABLE_FRAME_ERRORS:
                continue
            elif isinstance(outcome, FaceError):
                raise from_face_error(outcome, prefix=f"frame {index}: ")
            else:
                raise outcome
        return usable


def create_api(backend: Backend, settings: ServeSettings, metrics: IngressMetrics | None = None) -> FastAPI:
    """The FastAPI app of the liveness service over ``backend``."""
    api = LivenessApi(backend, settings, metrics or IngressMetrics(enabled=False))
    app = FastAPI(title="raypipe liveness API", version=raypipe.__version__,
                  description="Face anti-spoofing: POST a photo, get every face with real/spoof and a "
                              f"confidence. Send `{API_KEY_HEADER}` when keys are configured.")
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", API_KEY_HEADER])
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(api.index_html)

    @app.get("/healthz", summary="Liveness of the service; ?deep=true also asks the classifier",
             response_model=Health, responses=HEALTH_ERROR_DOC)
    async def healthz(deep: bool = False) -> Response:
        model = None
        if deep:
            try:  # wakes the Classifier when it is at zero replicas
                info = await asyncio.wait_for(backend.model_info(), settings.request_timeout_s)
            except asyncio.TimeoutError:
                return error_response(503, "model_unavailable", "the classifier did not answer in time")
            if "name" not in info:  # a Classifier whose model has not loaded (yet)
                return error_response(503, "model_unavailable", "the classifier has no model loaded")
            model = ClassifierStatus.model_validate(info)
        body = Health(status="ok", detector=backend.detector_where, classifier=backend.classifier_where,
                      pipeline_version=api.pipeline_version,
                      auth=api.keys.enabled, model=model)
        return JSONResponse(body.model_dump())

    @app.post("/v1/detect", summary="Every face in one photo with real/spoof and a confidence",
              openapi_extra=REQUEST_BODY_DOC, response_model=DetectResponse, responses=ERROR_DOC)
    async def detect(request: Request) -> Response:
        return await api.guarded(request, "detect", api.detect)

    @app.post("/v1/detect-frames", summary="Several frames of one presentation: per-frame scores and a fused verdict",
              openapi_extra=FRAMES_BODY_DOC, response_model=FramesResponse, responses=ERROR_DOC)
    async def detect_frames(request: Request) -> Response:
        return await api.guarded(request, "detect_frames", api.detect_frames)

    app.state.liveness = api
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every answer, even a framework error, has the ``{"error": {...}}`` shape."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                              getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid_field", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Type and route only: a message could quote request data.
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__)
        return error_response(500, "internal", "internal error")
