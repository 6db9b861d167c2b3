"""Response bodies of the liveness API as Pydantic models.

The handlers build every answer through these models and the routes publish them in
the OpenAPI schema (``/openapi.json``, ``/docs``), so the code and the documented
contract cannot drift apart. Bodies are closed (``additionalProperties: false``): a
field added on one side only is a schema violation, not a silent extension. The one
open object is ``model``, the classifier's own description of what it serves.

Optional fields are left out of the JSON when absent (never sent as ``null``), which
is what ``exclude_if`` on the field says; ``model.version`` is the exception: it is
always present and ``null`` for a model logged in a run but never registered.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# Confidence is measured from the decision threshold: 0.5 on it, 1.0 at p = 0 or p = 1.
Confidence = Annotated[float, Field(ge=0.5, le=1.0)]
Label = Literal["real", "spoof"]


def _absent(value: object) -> bool:
    return value is None


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(BaseModel):
    """The classifier's model. Open: the classifier may describe it with more keys."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="registered model name (or the run id of an unregistered model)")
    version: str | None = Field(description="registry version; null for a model that is not registered")
    threshold: float = Field(description="spoof iff spoof_probability >= threshold")
    runtime: Literal["onnx", "torch"] | SkipJsonSchema[None] = Field(
        default=None, exclude_if=_absent, description="onnx: the registered ONNX export on ONNX Runtime; "
                                                      "torch: the PyTorch model")


class ClassifierStatus(ModelInfo):
    """``/healthz?deep=true``: the model and, on Serve, where and how fast it was loaded."""

    uri: str | SkipJsonSchema[None] = Field(default=None, exclude_if=_absent,
                                            description="the model URI the Classifier was configured with")
    load_s: float | SkipJsonSchema[None] = Field(default=None, exclude_if=_absent,
                                                 description="seconds the last model load took")
    imports: dict[str, bool] | SkipJsonSchema[None] = Field(
        default=None, exclude_if=_absent, description="whether the Classifier replica has imported torch / mlflow "
                                                      "(false for both on the ONNX runtime: the lean cold start)")


class Face(_Closed):
    """One face: where it is and the verdict on it."""

    box: list[int] = Field(min_length=4, max_length=4, description="x, y, width, height in source pixels")
    det_score: float = Field(description="face detector score")
    label: Label
    spoof_probability: Probability
    confidence: Confidence
    crop_sha256: str | SkipJsonSchema[None] = Field(
        default=None, exclude_if=_absent,
        description="SHA-256 of the classified uint8 crop (only when the service exposes crop digests)")


class ImageSize(_Closed):
    width: int
    height: int


class DetectTiming(_Closed):
    """Milliseconds per stage of one /v1/detect request."""

    decode: float
    detect: float
    detector_call: float = Field(description="decode + detect + crop as seen by the API, hop included")
    classify: float
    total: float


class DetectResponse(_Closed):
    """``/v1/detect``: every face of the photo, primary (largest) first."""

    faces: list[Face]
    model: ModelInfo
    image: ImageSize
    pipeline_version: str = Field(description="version of the face pipeline that cropped the faces")
    timing_ms: DetectTiming


class ErrorDetail(_Closed):
    code: str = Field(description="stable, machine-readable error code")
    message: str


class ErrorBody(_Closed):
    """Every 4xx and 5xx answer."""

    error: ErrorDetail


class FrameFace(_Closed):
    """A frame with a usable face: its primary face, scored."""

    index: int
    face: Face
    n_faces: int = Field(ge=1, description="faces found in the frame (only the primary one is scored)")


class FrameError(_Closed):
    """A frame skipped without failing the burst (no face, face too small)."""

    index: int
    error: ErrorDetail


class Fused(_Closed):
    """The verdict on the whole presentation."""

    label: Label
    spoof_probability: Probability
    confidence: Confidence
    frames_used: int = Field(ge=1)
    method: Literal["mean"]


class FramesTiming(_Closed):
    detect: float
    classify: float
    total: float


class FramesResponse(_Closed):
    """``/v1/detect-frames``: one entry per frame sent, in order, and the fused verdict."""

    frames: list[FrameFace | FrameError]
    fused: Fused
    model: ModelInfo
    pipeline_version: str
    timing_ms: FramesTiming


class Health(_Closed):
    """``/healthz``."""

    status: Literal["ok"]
    detector: str = Field(description="where faces are detected: ingress, deployment or local")
    classifier: str = Field(description="where the model runs: deployment, ingress or local")
    pipeline_version: str
    auth: bool = Field(description="whether X-API-Key is required")
    model: ClassifierStatus | SkipJsonSchema[None] = Field(default=None, exclude_if=_absent,
                                                          description="only with ?deep=true")
