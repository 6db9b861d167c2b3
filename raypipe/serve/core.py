"""The serving pipeline as plain functions, shared by the Serve deployments and the
in-process server (no Ray here, so it runs and is measured anywhere).

Contract, identical to preprocessing + training: ``FacePipeline.process`` (the entry
preprocessing calls, here for every face) -> each face's stored-style crop and its box
in crop pixels -> :class:`raypipe.predict.Predictor` (``model_inputs`` with the
model's crop spec, its eval transform, softmax of the attack class) = spoof
probability; "spoof" iff probability >= the model's threshold. The face pipeline is
built from the crop settings the model was trained on (:func:`serving_face_config`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from raypipe.face import Detection, FaceConfig, FacePipeline

log = logging.getLogger(__name__)


@dataclass
class Findings:
    """Every face of one image: detections (primary first), their uint8 crops (N, S, S, 3)
    and each face's box in its crop's pixels (N, 4), which the model's input is cut around."""

    detections: list[Detection]
    crops: np.ndarray
    boxes: np.ndarray
    width: int
    height: int
    decode_ms: float
    detect_ms: float


@dataclass
class FaceFailure:
    """A FaceError as plain data: exceptions crossing a Serve hop arrive wrapped and slow."""

    reason: str
    message: str


def find_faces(pipeline: FacePipeline, data: bytes) -> Findings:
    """Encoded image -> every face and its crop, through preprocessing's own entry.

    Raises a ``FaceError`` subclass (``NoFaceFound`` when the image holds no face).
    """
    result = pipeline.process(data, all_faces=True)
    return Findings(result.detections, np.stack([face.crop for face in result.faces]),
                    np.array([face.box_in_crop for face in result.faces], dtype=np.float64),
                    result.source_width, result.source_height, result.decode_ms, result.detect_ms)


class LocalDetector:
    """One FacePipeline, run off the event loop so the replica keeps routing meanwhile.

    Two threads: one decodes the next image while the other holds the (locked) detector.
    """

    def __init__(self, config: FaceConfig) -> None:
        import cv2

        cv2.setNumThreads(1)  # fractional-CPU replicas: OpenCV's own threads only oversubscribe
        self.pipeline = FacePipeline(config)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="raypipe-face")

    async def find_faces(self, data: bytes) -> Findings:
        return await asyncio.get_running_loop().run_in_executor(self._executor, find_faces, self.pipeline, data)


def crop_digest(crop: np.ndarray) -> str:
    """SHA-256 of a uint8 crop's pixels: proves which crop was classified without keeping it."""
    return hashlib.sha256(np.ascontiguousarray(crop, dtype=np.uint8).tobytes()).hexdigest()


def verdict(spoof_probability: float, threshold: float) -> tuple[str, float]:
    """(label, confidence): "spoof" iff p >= threshold.

    Confidence is measured from the decision threshold, not from 0.5: 0.5 at the threshold,
    1.0 at p = 1 (spoof) or p = 0 (real), linear in between. With a dev-calibrated threshold
    of, say, 0.66, p = 0.65 is a "real" verdict on the edge (confidence ~0.51), where the
    raw 1 - p = 0.35 would read as a confident "spoof".
    """
    p, t = float(spoof_probability), min(max(float(threshold), 1e-6), 1.0 - 1e-6)
    if p >= t:
        return "spoof", 0.5 + 0.5 * (p - t) / (1.0 - t)
    return "real", 0.5 + 0.5 * (t - p) / t


def fuse(probabilities: list[float]) -> float:
    """Fused spoof probability of one presentation's frames: the mean.

    The mean keeps a single blurred frame from deciding alone, and is what a frame-level
    model calibrated on single crops can be thresholded with directly.
    """
    return float(np.mean(probabilities))


@dataclass
class Scores:
    """What the classifier answers for one request: per-crop probabilities and the model used."""

    probabilities: list[float]
    model: dict
    digests: list[str] | None = None
    batch_size: int = 1
    infer_ms: float = 0.0
    extra: dict = field(default_factory=dict)


class ModelRunner:
    """A registry model behind :class:`raypipe.predict.Predictor`: crops -> spoof probabilities."""

    def __init__(self, loaded, device: str | None = None, precision: str = "auto") -> None:
        from raypipe.predict import Predictor

        self.loaded = loaded
        self.predictor = Predictor(loaded.model, loaded.spec, device or "auto", precision)
        self.info = {"name": loaded.name, "version": loaded.version, "threshold": loaded.threshold,
                     "runtime": "torch", "device": self.predictor.device.type,
                     "precision": str(self.predictor.dtype).removeprefix("torch.") if self.predictor.dtype else "float32"}

    def spoof_probabilities(self, crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return self.predictor.score_crops(crops, boxes)


def serving_face_config(model_face: dict | None, override: dict, guards: dict) -> FaceConfig:
    """The face pipeline serving must run: the crop settings the model was trained on.

    ``override`` (``face:`` of serve_config.yaml) may restate them or set what the model does
    not record (a model file path); a value that disagrees with the model fails here, at
    deploy time, instead of serving crops the model never saw. ``guards`` are the serving
    size limits, which never change a crop.
    """
    settings = dict(model_face or {})
    clashes = {k: (v, settings[k]) for k, v in override.items() if k in settings and settings[k] != v}
    if clashes:
        detail = ", ".join(f"{k}: yaml {a!r} != model {b!r}" for k, (a, b) in clashes.items())
        raise ValueError(f"serve_config face settings disagree with the crops the model was trained on ({detail}); "
                         "remove them from `face:` (serving takes them from the model)")
    return FaceConfig(**{**settings, **override, **guards})


def load_runner(model_uri: str, tracking_uri: str | None, pipeline_version: str,
                device: str | None = None, precision: str = "auto") -> ModelRunner:
    """Load ``model_uri`` from MLflow; refuse a model trained on crops this service does not cut."""
    from raypipe.models.store import FACE_TAG, configure_tracking, load_model

    configure_tracking(tracking_uri)
    loaded = load_model(model_uri, device="cpu")
    trained_on = loaded.tags.get("pipeline_version")
    if FACE_TAG in loaded.tags and trained_on and trained_on != pipeline_version:
        raise ValueError(f"model {model_uri} was trained on crops of face pipeline {trained_on}, this service "
                         f"cuts {pipeline_version}: rebuild the app (serve deploy) so it takes the model's settings")
    if trained_on != pipeline_version:
        log.warning("model %s was trained on face-pipeline version %s but this service crops with %s: "
                    "served crops may differ from training crops", model_uri, trained_on, pipeline_version)
    return ModelRunner(loaded, device, precision)
