"""Frame sampling from videos and HDF5 files (raypipe.datasets.frames)."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from raypipe.datasets.frames import (FrameReadError, FrameSamplingError, check_sampling, container_truncated,
                                     frame_indices, iter_frames)
from tests.fixtures.layouts import frame_value, pattern_frame, write_hdf5, write_image, write_video

# -- frame_indices -----------------------------------------------------------------------------


def test_default_is_five_evenly_spaced_segment_centres():
    assert frame_indices(100) == [10, 30, 50, 70, 90]
    assert frame_indices(300, frames_per_video=3) == [50, 150, 250]


def test_every_kth_frame_from_zero():
    assert frame_indices(10, every=3) == [0, 3, 6, 9]
    assert frame_indices(10, every=1) == list(range(10))


def test_short_or_empty_videos():
    assert frame_indices(3) == [0, 1, 2]
    assert frame_indices(6, frames_per_video=6) == list(range(6))
    assert frame_indices(0) == [] and frame_indices(0, every=2) == []
    assert frame_indices(1, frames_per_video=1) == [0]


@pytest.mark.parametrize("n", [7, 50, 301])
@pytest.mark.parametrize("k", [1, 2, 5, 7])
def test_indices_are_sorted_unique_and_in_range(n, k):
    got = frame_indices(n, frames_per_video=k)
    assert got == sorted(set(got)) and len(got) == min(n, k) and got[0] >= 0 and got[-1] < n


@pytest.mark.parametrize("kwargs", [{"frames_per_video": 0}, {"every": 0}, {"frames_per_video": 2, "every": 2}])
def test_bad_arguments(kwargs):
    with pytest.raises(FrameSamplingError):
        frame_indices(10, **kwargs)
    with pytest.raises(FrameSamplingError):
        check_sampling(**kwargs)


def test_effective_sampling():
    assert check_sampling() == (5, None)
    assert check_sampling(frames_per_video=3) == (3, None)
    assert check_sampling(every=2) == (None, 2)


# -- videos ------------------------------------------------------------------------------------


def assert_frame(index: int, frame: np.ndarray, shape=(24, 32, 3), tolerance: int = 12) -> None:
    """A synthetic frame: RGB order, right size, and the blue level of its index."""
    assert frame.dtype == np.uint8 and frame.shape == shape and frame.flags["C_CONTIGUOUS"]
    blue, red = float(frame[..., 2].mean()), float(frame[..., 0].mean())
    assert abs(blue - frame_value(index)) <= tolerance, (index, blue)
    assert abs(red - (255 - frame_value(index))) <= tolerance, (index, red)


@pytest.mark.parametrize("suffix", [".avi", ".mov", ".mp4"])
def test_video_evenly_spaced_frames_by_seeking(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", seed=1, n_frames=40)
    frames = list(iter_frames(path, "video", frames_per_video=4))
    assert [i for i, _ in frames] == [5, 15, 25, 35]
    for index, frame in frames:
        assert_frame(index, frame)  # frame_value wraps at 256: 20+30*i mod 256 still identifies i here


def test_video_every_kth_frame_sequentially(tmp_path):
    path = write_video(tmp_path / "clip.avi", seed=1, n_frames=8)
    frames = list(iter_frames(str(path), "video", every=3))
    assert [i for i, _ in frames] == [0, 3, 6]
    for index, frame in frames:
        assert_frame(index, frame)


def test_video_default_sampling_and_short_video(tmp_path):
    path = write_video(tmp_path / "short.avi", seed=1, n_frames=4)
    assert [i for i, _ in iter_frames(path, "video")] == [0, 1, 2, 3]


def test_video_is_yielded_lazily(tmp_path):
    path = write_video(tmp_path / "clip.avi", seed=1, n_frames=8)
    stream = iter_frames(path, "video", every=1)
    index, frame = next(stream)
    assert index == 0
    assert_frame(0, frame)
    stream.close()  # releases the capture without reading the rest


def test_unknown_frame_count_reads_sequentially(tmp_path):
    """A raw MJPEG stream has no frame count (OpenCV reports garbage): count, then read."""
    path = tmp_path / "stream.mjpeg"
    with path.open("wb") as handle:
        for i in range(7):
            handle.write(cv2.imencode(".jpg", pattern_frame(3, i))[1].tobytes())
    assert not 0 < cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) < 1000
    frames = list(iter_frames(path, "video", frames_per_video=3))
    assert [i for i, _ in frames] == [1, 3, 5]
    for index, frame in frames:
        assert_frame(index, frame)
    assert [i for i, _ in iter_frames(path, "video", every=4)] == [0, 4]


def test_over_announced_frame_count_is_replanned(tmp_path):
    """An AVI whose headers claim 40 frames but holds 8: seek what exists, re-plan the rest."""
    path = write_video(tmp_path / "liar.avi", seed=1, n_frames=8)
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 16), (b"strh", 32)):  # dwTotalFrames, dwLength
        at = data.find(tag) + 8 + offset
        assert struct.unpack("<I", data[at:at + 4]) == (8,)
        data[at:at + 4] = struct.pack("<I", 40)
    path.write_bytes(bytes(data))
    assert cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT) == 40
    frames = list(iter_frames(path, "video", frames_per_video=4))
    # plan on 40: [5, 15, 25, 35]; 5 is read by seeking, 15 fails; re-plan on 8: [1, 3, 5, 7]
    assert [i for i, _ in frames] == [5, 1, 3, 7]
    for index, frame in frames:
        assert_frame(index, frame)
    assert [i for i, _ in iter_frames(path, "video", every=3)] == [0, 3, 6]


@pytest.mark.parametrize("payload", [b"", b"RIFF....AVI not really a video" * 20])
def test_unreadable_video_raises_frame_read_error(tmp_path, payload):
    path = tmp_path / "broken.avi"
    path.write_bytes(payload)
    with pytest.raises(FrameReadError):
        list(iter_frames(path, "video"))
    with pytest.raises(FrameReadError):
        list(iter_frames(tmp_path / "absent.mov", "video"))
    assert issubclass(FrameReadError, ValueError)


@pytest.mark.parametrize("suffix", [".avi", ".mov", ".mp4"])
def test_a_cut_off_video_is_named_truncated(tmp_path, suffix):
    path = write_video(tmp_path / f"clip{suffix}", seed=1, n_frames=8)
    assert not container_truncated(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 10])
    assert container_truncated(path)
    with pytest.raises(FrameReadError) as error:
        list(iter_frames(path, "video"))
    assert error.value.reason == "truncated"


@pytest.mark.parametrize("payload, reason", [(b"", "empty"), (b"only text, not a video\n" * 20, "undecodable"),
                                             (None, "read_error")])
def test_unreadable_video_reasons(tmp_path, payload, reason):
    path = tmp_path / "broken.avi"
    if payload is not None:
        path.write_bytes(payload)
    with pytest.raises(FrameReadError) as error:
        list(iter_frames(path, "video"))
    assert error.value.reason == reason


def test_a_cut_off_hdf5_is_named_truncated(tmp_path):
    path = write_hdf5(tmp_path / "01_01_01.hdf5", seed=5, n_frames=4)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FrameReadError) as error:
        list(iter_frames(path, "hdf5"))
    assert error.value.reason == "truncated"


# -- HDF5 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channel_first", [True, False])
def test_hdf5_colour_frames_either_layout(tmp_path, channel_first):
    path = write_hdf5(tmp_path / "01_01_01.hdf5", seed=5, n_frames=8, channel_first=channel_first)
    frames = list(iter_frames(path, "hdf5", frames_per_video=4))
    assert [i for i, _ in frames] == [1, 3, 5, 7]
    for index, frame in frames:
        assert_frame(index, frame, tolerance=0)  # lossless: exact values


def test_hdf5_key_option_and_auto_detection(tmp_path):
    path = write_hdf5(tmp_path / "x.h5", seed=2, n_frames=6, key="data/color", channel_first=False)
    assert [i for i, _ in iter_frames(path, "hdf5", every=2, hdf5_key="data/color")] == [0, 2, 4]
    assert [i for i, _ in iter_frames(path, "hdf5", every=2)] == [0, 2, 4]  # found without a key
    with pytest.raises(FrameReadError, match="Color_Data"):
        list(iter_frames(path, "hdf5", hdf5_key="Color_Data"))


def test_hdf5_grayscale_and_wide_integer_frames(tmp_path):
    path = tmp_path / "nir.h5"
    with h5py.File(path, "w") as handle:
        handle["frames"] = np.stack([np.full((4, 5), 1000 * (i + 1), np.uint16) for i in range(3)])
        handle["frames"][1, 0, 0] = 0
    frames = dict(iter_frames(path, "hdf5", every=1, hdf5_key="frames"))
    assert sorted(frames) == [0, 1, 2]
    assert frames[0].shape == (4, 5, 3) and frames[0].dtype == np.uint8
    assert (frames[1][0, 0] == 0).all() and (frames[1][1, 1] == 255).all()  # min-max stretched
    assert np.array_equal(frames[1][..., 0], frames[1][..., 2])  # gray replicated to 3 channels


def test_hdf5_reads_only_the_sampled_frames(tmp_path):
    """Corrupt every frame that is not sampled: reading the whole array would fail, sampling must not."""
    path = tmp_path / "sparse.h5"
    frames = np.random.default_rng(0).integers(0, 256, (10, 3, 8, 8), dtype=np.uint8)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("Color_Data", data=frames, chunks=(1, 3, 8, 8), compression="gzip")
    with h5py.File(path, "r") as handle:
        dataset = handle["Color_Data"]
        chunks = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    with path.open("r+b") as raw:
        for chunk in chunks:
            if chunk.chunk_offset[0] not in (0, 5):
                raw.seek(chunk.byte_offset)
                raw.write(b"\xff" * chunk.size)
    with h5py.File(path, "r") as handle, pytest.raises(OSError):
        handle["Color_Data"][:]  # the corruption is real
    got = dict(iter_frames(path, "hdf5", every=5))
    assert sorted(got) == [0, 5]
    assert np.array_equal(got[5], frames[5].transpose(1, 2, 0))


def test_unreadable_hdf5_raises_frame_read_error(tmp_path):
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"\x89HDF but not really" * 10)
    with pytest.raises(FrameReadError):
        list(iter_frames(bad, "hdf5"))
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as handle:
        handle["Eye_Pos"] = np.zeros((3, 4))
    with pytest.raises(FrameReadError, match="frame"):
        list(iter_frames(empty, "hdf5"))


# -- images and media names ----------------------------------------------------------------------


def test_image_is_one_rgb_frame(tmp_path):
    path = write_image(tmp_path / "still.png", seed=1)
    ((index, frame),) = list(iter_frames(path, "image"))
    assert index == -1
    assert_frame(0, frame, tolerance=0)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(FrameReadError):
        list(iter_frames(tmp_path / "bad.jpg", "image"))


def test_unknown_media(tmp_path: Path):
    with pytest.raises(ValueError, match="media"):
        list(iter_frames(tmp_path / "x", "audio"))
