"""Frame sampling for video and HDF5 samples, one frame in memory at a time.

Adapters list a video once (``frame_index=-1``); preprocessing calls
:func:`iter_frames` to expand it into frames. Choice of frames
(:func:`frame_indices`): ``frames_per_video=N`` takes N frames at the centres
of N equal segments (away from the first and last frames, which are often
black or undecodable, unless the video is very short); ``every=k`` takes
frames 0, k, 2k, ...; the default is 5 evenly spaced frames.

Videos are read with OpenCV's ``VideoCapture``. When the container reports a
frame count, sparse frames are reached by seeking (``CAP_PROP_POS_FRAMES``);
when a seek does not land where asked, the reader reopens the file and reads
sequentially instead, which is always exact. If the container announced more
frames than it holds, the remaining frames are re-planned on the real count
(frames already yielded stay, so such a file may give a few extra frames).
When the count is 0/unknown (raw streams, some webm/mkv), the frames are
counted in a first pass with ``grab()`` (no conversion to pixels) and read
sequentially in a second. Output is deterministic for a given file.

HDF5 files (3DMAD) are read with h5py, slicing only the chosen frames of the
colour dataset (``Color_Data`` by default, channel-first ``(N, 3, H, W)`` as
3DMAD stores it, or channel-last ``(N, H, W, 3)``; single-channel frames are
replicated to 3 channels). HDF5 colour data is taken to be RGB already (the
Idiap convention); video frames are converted from OpenCV's BGR.

Every frame is yielded as ``(frame_index, RGB uint8 array of shape HxWx3)``.
Unreadable files raise :class:`FrameReadError`, whose ``reason`` (``empty``,
``truncated``, ``undecodable``, ``read_error``) becomes the reject reason;
sampling settings that cannot apply raise :class:`FrameSamplingError`.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

if TYPE_CHECKING:  # h5py is imported lazily: only HDF5 datasets need it
    import h5py

DEFAULT_FRAMES_PER_VIDEO = 5
DEFAULT_HDF5_KEY = "Color_Data"
# A count above this is a container lying (e.g. a raw MJPEG stream reports ~1e14).
_MAX_PLAUSIBLE_FRAMES = 10_000_000
# Indices closer than this are read sequentially: grabbing a few frames beats a keyframe seek.
_SEQUENTIAL_GAP = 8


class FrameReadError(ValueError):
    """A video or HDF5 file cannot be opened or yields no decodable frame.

    ``reason`` is the reject reason preprocessing records: ``empty`` (0 bytes),
    ``truncated`` (shorter than its own container headers say), ``undecodable``,
    ``read_error`` (missing or unreadable file).
    """

    def __init__(self, message: str, reason: str = "undecodable") -> None:
        super().__init__(message)
        self.reason = reason


class FrameSamplingError(ValueError):
    """Frame sampling settings that cannot apply: both N and k given, or a value below 1."""


def check_sampling(frames_per_video: int | None = None, every: int | None = None) -> tuple[int | None, int | None]:
    """The effective ``(frames_per_video, every)``: exactly one is set (neither given: N = 5).

    Raises :class:`FrameSamplingError` for both given or a value below 1, so a job can
    refuse its settings before it reads any file.
    """
    if frames_per_video is not None and every is not None:
        raise FrameSamplingError(f"give frames_per_video ({frames_per_video}) or every ({every}), not both")
    for name, value in (("frames_per_video", frames_per_video), ("every", every)):
        if value is not None and int(value) < 1:
            raise FrameSamplingError(f"{name} must be >= 1, got {value}")
    if every is not None:
        return None, int(every)
    return (DEFAULT_FRAMES_PER_VIDEO if frames_per_video is None else int(frames_per_video)), None


def frame_indices(n_frames: int, frames_per_video: int | None = None, every: int | None = None) -> list[int]:
    """Indices of the frames to sample from a video of ``n_frames`` frames.

    ``frames_per_video`` (N evenly spaced, segment centres) and ``every`` (each
    k-th frame from 0) are exclusive; neither means 5 evenly spaced frames.
    A video shorter than N gives all its frames.
    """
    count, every = check_sampling(frames_per_video, every)
    if every is not None:
        return list(range(0, max(int(n_frames), 0), every))
    n_frames = max(int(n_frames), 0)
    if count >= n_frames:
        return list(range(n_frames))
    return sorted({min(n_frames - 1, int((i + 0.5) * n_frames / count)) for i in range(count)})


def iter_frames(
    path: str | Path,
    media: str,
    frames_per_video: int | None = None,
    every: int | None = None,
    hdf5_key: str | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame_index, rgb_uint8_hxwx3)`` for the sampled frames of one file.

    ``media`` is ``"video"``, ``"hdf5"`` or ``"image"`` (one frame, index -1).
    ``hdf5_key`` names the HDF5 dataset (default ``Color_Data``, else the first
    array that looks like colour frames); adapters put it in ``extras["hdf5_key"]``.
    """
    path = str(path)
    if media == "video":
        yield from _video_frames(path, frames_per_video, every)
    elif media == "hdf5":
        yield from _hdf5_frames(path, frames_per_video, every, hdf5_key)
    elif media == "image":
        yield -1, _read_image(path)
    else:
        raise ValueError(f"unknown media {media!r}")


# -- videos ------------------------------------------------------------------------------------


def _open(path: str) -> cv2.VideoCapture:
    if "://" not in path:  # URLs go to FFmpeg as they are
        if not Path(path).is_file():
            raise FrameReadError(f"{path}: no such file", "read_error")
        if Path(path).stat().st_size == 0:
            raise FrameReadError(f"{path}: empty file", "empty")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise _unreadable(path, "OpenCV cannot open this video")
    return capture


def _unreadable(path: str, what: str) -> FrameReadError:
    """The error for a video that gives no frame: ``truncated`` when its headers say so."""
    if container_truncated(path):
        return FrameReadError(f"{path}: {what} (the file is shorter than its container headers say)", "truncated")
    return FrameReadError(f"{path}: {what}", "undecodable")


# ISO-BMFF (MP4/MOV) top-level boxes a real file starts with: anything else is not walked.
_BMFF_FIRST_BOXES = {b"ftyp", b"wide", b"free", b"skip", b"mdat", b"moov", b"pnot"}


def container_truncated(path: str | Path) -> bool:
    """True when a local AVI (RIFF) or MP4/MOV (ISO-BMFF) file is shorter than its own
    headers say: a copy cut off in transfer. Other formats and URLs: False.

    Only the headers are read (the RIFF size, or the top-level box sizes): a truncated
    MP4/MOV usually lacks its index (``moov`` is written last), so OpenCV cannot even
    open it and would not say why.
    """
    path = str(path)
    if "://" in path:
        return False
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(12)
            if head[:4] == b"RIFF" and len(head) >= 8:
                return struct.unpack("<I", head[4:8])[0] + 8 > size
            if head[4:8] in _BMFF_FIRST_BOXES:
                return _boxes_overrun(handle, size)
    except OSError:
        return False
    return False


def _boxes_overrun(handle, size: int) -> bool:
    """Walk the top-level ISO-BMFF boxes: True when the last one ends past the end of file."""
    offset = 0
    while offset + 8 <= size:
        handle.seek(offset)
        box_size, _kind = struct.unpack(">I4s", handle.read(8))
        if box_size == 1:  # 64-bit size follows the type
            box_size = struct.unpack(">Q", handle.read(8))[0]
        elif box_size == 0:  # "extends to the end of the file"
            return False
        if box_size < 8:
            return False  # not a box structure after all: no claim about truncation
        offset += box_size
    return offset > size


def _frame_count(capture: cv2.VideoCapture) -> int:
    """The container's frame count, or 0 when unknown or implausible."""
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    if not math.isfinite(count) or count <= 0 or count > _MAX_PLAUSIBLE_FRAMES:
        return 0
    return int(count)


def _video_frames(path: str, frames_per_video: int | None, every: int | None) -> Iterator[tuple[int, np.ndarray]]:
    capture = _open(path)
    try:
        count = _frame_count(capture)
        if count == 0:
            # unknown length: count with grab() (no pixel conversion), then read from the start
            count = _count_by_grabbing(capture)
            capture = _reopen(capture, path)
        remaining = frame_indices(count, frames_per_video, every)
        done: set[int] = set()
        if not _dense(remaining):
            while remaining:
                frame = _seek_read(capture, remaining[0])
                if frame is None:
                    break  # unreliable seeking or a shorter file than announced: go sequential
                done.add(remaining[0])
                yield remaining.pop(0), frame
            if remaining:
                # the announced count may be too high: re-plan on the real count, read sequentially
                capture = _reopen(capture, path)
                real = _count_by_grabbing(capture)
                if real < count:
                    remaining = [i for i in frame_indices(real, frames_per_video, every) if i not in done]
                capture = _reopen(capture, path)
        for index, frame in _sequential(capture, remaining):
            done.add(index)
            yield index, frame
        if not done:
            raise _unreadable(path, "no decodable frame")
    finally:
        capture.release()


def _reopen(capture: cv2.VideoCapture, path: str) -> cv2.VideoCapture:
    capture.release()
    return _open(path)


def _count_by_grabbing(capture: cv2.VideoCapture) -> int:
    count = 0
    while count < _MAX_PLAUSIBLE_FRAMES and capture.grab():
        count += 1
    return count


def _dense(indices: list[int]) -> bool:
    """True when every gap is small enough that grabbing beats seeking."""
    previous = [-1, *indices[:-1]] if indices else []
    return all(b - a <= _SEQUENTIAL_GAP for a, b in zip(previous, indices, strict=True))


def _seek_read(capture: cv2.VideoCapture, index: int) -> np.ndarray | None:
    """The frame at ``index`` by seeking, or None if the capture did not land there."""
    if not capture.set(cv2.CAP_PROP_POS_FRAMES, index):
        return None
    ok, frame = capture.read()
    # after reading frame i the position is i + 1; anything else means the seek was approximate
    if not ok or frame is None or int(round(capture.get(cv2.CAP_PROP_POS_FRAMES))) != index + 1:
        return None
    return _bgr_to_rgb(frame)


def _sequential(capture: cv2.VideoCapture, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """Read from the start, decoding only the wanted frames (grab() skips the others)."""
    if not wanted:
        return
    targets = set(wanted)
    for index in range(max(wanted) + 1):
        if not capture.grab():
            return  # the container over-reported its length: stop at the real end
        if index in targets:
            ok, frame = capture.retrieve()
            if ok and frame is not None:
                yield index, _bgr_to_rgb(frame)


def _bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB))
    return np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def _read_image(path: str) -> np.ndarray:
    try:
        data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work
    except OSError as exc:
        raise FrameReadError(f"{path}: {exc}", "read_error") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FrameReadError(f"{path}: cannot decode image")
    return _bgr_to_rgb(image)


# -- HDF5 --------------------------------------------------------------------------------------


def _hdf5_frames(path: str, frames_per_video: int | None, every: int | None,
                 key: str | None) -> Iterator[tuple[int, np.ndarray]]:
    import h5py

    if not Path(path).is_file():
        raise FrameReadError(f"{path}: no such file", "read_error")
    if Path(path).stat().st_size == 0:
        raise FrameReadError(f"{path}: empty file", "empty")
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        # the HDF5 library names a cut-off file itself ("truncated file: eof = ...")
        reason = "truncated" if "truncated file" in str(exc) else "undecodable"
        raise FrameReadError(f"{path}: not a readable HDF5 file ({exc})", reason) from exc
    with handle:
        dataset = _colour_dataset(handle, key, path)
        channel_first = _is_channel_first(dataset.shape)
        for index in frame_indices(dataset.shape[0], frames_per_video, every):
            try:
                frame = np.asarray(dataset[index])  # reads this frame only
            except (OSError, ValueError) as exc:
                raise FrameReadError(f"{path}: cannot read frame {index} ({exc})") from exc
            yield index, _to_rgb_uint8(frame, channel_first)


def _colour_dataset(handle: h5py.File, key: str | None, path: str) -> h5py.Dataset:
    """The dataset of colour frames: ``key``, else ``Color_Data``, else the first frame stack."""
    import h5py

    if key is not None:
        if key not in handle or not isinstance(handle[key], h5py.Dataset):
            raise FrameReadError(f"{path}: no dataset {key!r} (has {sorted(handle.keys())})")
        return _check_frames(handle[key], path)
    if DEFAULT_HDF5_KEY in handle:
        return _check_frames(handle[DEFAULT_HDF5_KEY], path)
    stacks: list[h5py.Dataset] = []

    def collect(_name: str, obj: object) -> None:  # returning None keeps visititems walking
        if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4):
            stacks.append(obj)

    handle.visititems(collect)
    colour = [d for d in stacks if d.ndim == 4 and (d.shape[1] == 3 or d.shape[-1] == 3)]
    if not (colour or stacks):
        raise FrameReadError(f"{path}: no frame array (datasets of shape (N,3,H,W)/(N,H,W,3)/(N,H,W))")
    return _check_frames((colour or stacks)[0], path)


def _check_frames(dataset: h5py.Dataset, path: str) -> h5py.Dataset:
    if dataset.ndim not in (3, 4) or dataset.shape[0] == 0:
        raise FrameReadError(f"{path}: dataset {dataset.name} of shape {dataset.shape} is not a frame stack")
    return dataset


def _is_channel_first(shape: tuple[int, ...]) -> bool:
    """(N, C, H, W) with C in 1/3/4 and a last axis that is not a channel count."""
    return len(shape) == 4 and shape[1] in (1, 3, 4) and shape[3] not in (1, 3, 4)


def _to_rgb_uint8(frame: np.ndarray, channel_first: bool) -> np.ndarray:
    if channel_first:
        frame = np.moveaxis(frame, 0, -1)
    if frame.ndim == 2:
        frame = frame[..., None]
    frame = _as_uint8(frame)
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    elif frame.shape[-1] == 4:
        frame = frame[..., :3]
    return np.ascontiguousarray(frame)


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    """uint8 as is; floats in [0, 1] scaled; wider integers (depth, 16-bit NIR) min-max stretched."""
    if frame.dtype == np.uint8:
        return frame
    values = frame.astype(np.float64)
    if np.issubdtype(frame.dtype, np.floating) and values.max(initial=0.0) <= 1.0:
        values = values * 255.0
    elif values.max(initial=0.0) > 255.0:
        low, high = values.min(), values.max()
        values = (values - low) * (255.0 / (high - low)) if high > low else values * 0.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
