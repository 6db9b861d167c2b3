"""The serving pipeline as plain functions, shared by the Serve deployments and the
in-process server (no Ray here, so it runs and is measured anywhere).

Contract (identical to preprocessing, DESIGN section 3): ``decode_image(bytes, config)``
-> ``FacePipeline.detect`` -> ``FacePipeline.crop(rgb, det).crop`` for every face ->
``build_transforms(spec, None, train=False)`` -> model -> ``softmax[:, 1]`` = spoof
probability; "spoof" iff probability >= the model's threshold.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from raypipe.face import Detection, FaceConfig, FacePipeline, NoFaceFound, decode_image

log = logging.getLogger(__name__)


@dataclass
class Findings:
    """Every face of one image: detections (primary first) and their uint8 crops (N, S, S, 3)."""

    detections: list[Detection]
    crops: np.ndarray
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
    """Encoded image -> every face and its crop, with preprocessing's exact calls.

    Raises a ``FaceError`` subclass (``NoFaceFound`` when the image holds no face).
    """
    start = time.perf_counter()
    rgb = decode_image(data, pipeline.config)
    decoded = time.perf_counter()
    detections = pipeline.detect(rgb)
    if not detections:
        raise NoFaceFound("no face found in the image")
    crops = np.stack([pipeline.crop(rgb, detection).crop for detection in detections])
    done = time.perf_counter()
    return Findings(detections, crops, int(rgb.shape[1]), int(rgb.shape[0]),
                    (decoded - start) * 1000, (done - decoded) * 1000)


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
    """A registry model with its eval transform: uint8 crops -> spoof probabilities."""

    def __init__(self, loaded, device: str | None = None) -> None:
        import torch

        from raypipe.models import build_transforms

        self.loaded = loaded
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = loaded.model.to(self.device).eval()
        self.transform = build_transforms(loaded.spec, None, train=False)
        self.info = {"name": loaded.name, "version": loaded.version, "threshold": loaded.threshold}

    def spoof_probabilities(self, crops: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            # uint8 goes to the device first (4x less to copy than float); the transform runs there.
            images = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).movedim(-1, 1)
            logits = self.model(self.transform(images))
            return torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy()


def load_runner(model_uri: str, tracking_uri: str | None, pipeline_version: str,
                device: str | None = None) -> ModelRunner:
    """Load ``model_uri`` from MLflow; warn when it was trained on crops of another face pipeline."""
    from raypipe.models.store import configure_tracking, load_model

    configure_tracking(tracking_uri)
    loaded = load_model(model_uri, device="cpu")
    trained_on = loaded.tags.get("pipeline_version")
    if trained_on != pipeline_version:
        log.warning("model %s was trained on face-pipeline version %s but this service crops with %s: "
                    "served crops may differ from training crops", model_uri, trained_on, pipeline_version)
    return ModelRunner(loaded, device)
