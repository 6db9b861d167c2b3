"""The one face pipeline: decoding guards, EXIF, detection, primary face, expansion, crops."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from raypipe import face
from raypipe.face import Detection, FaceConfig
from tests.fixtures.images import astronaut_rgb, bad_inputs, encode, grace_hopper_rgb


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression-bomb header)."""
    png = bytearray(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    ihdr = bytearray(png[16:29])  # IHDR data: width, height, depth, colour, ...
    ihdr[0:8] = struct.pack(">II", width, height)
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(png)


# -- decoding ---------------------------------------------------------------------------

def test_decode_gives_rgb_in_source_orientation():
    rgb = astronaut_rgb()
    decoded = face.decode_image(encode(rgb, "PNG"))
    assert decoded.dtype == np.uint8 and decoded.shape == rgb.shape
    assert np.array_equal(decoded, rgb)  # PNG is lossless and the channel order is RGB


def test_exif_orientation_is_applied():
    rgb = grace_hopper_rgb()  # 600 high x 512 wide
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # pixels stored rotated 90 degrees CCW
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif)
    decoded = face.decode_image(buffer.getvalue())
    assert decoded.shape == rgb.shape
    assert np.abs(decoded.astype(int) - rgb.astype(int)).mean() < 6  # upright again (JPEG noise only)


@pytest.mark.parametrize("name", sorted(bad_inputs()))
def test_bad_inputs_raise_typed_errors_with_their_reason(face_pipeline, name):
    payload, reason = bad_inputs()[name]
    with pytest.raises(face.FaceError) as info:
        face_pipeline.process(payload)
    assert info.value.reason == reason


def test_pixel_bomb_is_rejected_from_the_header_before_decoding():
    bomb = png_with_claimed_size(20000, 20000)
    with pytest.raises(face.ImageTooLarge):
        face.decode_image(bomb)


def test_encoded_size_limit():
    payload = encode(astronaut_rgb(), "PNG")
    with pytest.raises(face.ImageTooLarge):
        face.decode_image(payload, FaceConfig(max_bytes=len(payload) - 1))


def test_frames_are_checked_like_images(face_pipeline):
    with pytest.raises(face.UndecodableImage):
        face_pipeline.process(np.zeros((64, 64), np.float32))
    with pytest.raises(face.ImageTooSmall):
        face_pipeline.process(np.zeros((8, 8, 3), np.uint8))


# -- geometry ---------------------------------------------------------------------------

def test_expanded_square_inside_the_image_is_centred():
    x0, y0, side, height = face.expanded_region((100, 100, 50, 60), 640, 480, 1.5)
    assert side == height == 90  # max(50, 60) * 1.5
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((125, 130), abs=1)


def test_expanded_square_shifts_to_stay_inside_at_the_border():
    assert face.expanded_region((0, 0, 100, 100), 640, 480, 2.0) == (0, 0, 200, 200)


def test_expansion_adapts_to_close_ups():
    # a face 400 px high in a 480 px image: 1.5x would be 600 px, mostly padding
    x0, y0, side, _ = face.expanded_region((120, 40, 400, 400), 640, 480, 1.5)
    assert side == 480 and 0 <= x0 <= 640 - 480 and y0 == 0


def test_box_shape_keeps_the_aspect_and_caps_the_scale_to_fit():
    # Silent-Face's rule: 100x150 box scaled 2.7 -> 270x405, inside 640x480
    assert face.expanded_region((270, 165, 100, 150), 640, 480, 2.7, "box") == (185, 38, 270, 405)
    # scale 4.0 would be 600 px high in a 480 px image: capped to 480/150 = 3.2 -> 320x480, shifted in
    assert face.expanded_region((270, 20, 100, 150), 640, 480, 4.0, "box") == (160, 0, 320, 480)
    with pytest.raises(ValueError, match="shape"):
        face.expanded_region((0, 0, 10, 10), 64, 64, 2.0, "circle")


def test_cut_region_pads_outside_the_image():
    image = np.full((10, 10, 3), 200, np.uint8)
    crop = face.cut_region(image, -5, -5, 20, 20, 20)
    assert crop.shape == (20, 20, 3)
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[10, 10].tolist() == [200, 200, 200]


def test_box_in_crop_maps_source_pixels_to_crop_pixels():
    # a 100 px box at (150, 120) inside the source square (100, 50, side 400) stored at 256 px
    assert face.box_in_crop((150, 120, 100, 100), (100, 50, 400), 256) == pytest.approx((32.0, 44.8, 64.0, 64.0))


def test_primary_face_is_the_largest_then_the_most_central():
    small, big = Detection((0, 0, 10, 10), 0.99), Detection((300, 200, 40, 40), 0.6)
    assert face.primary_index([small, big], 640, 480) == 1
    corner, centre = Detection((0, 0, 40, 40), 0.9), Detection((300, 220, 40, 40), 0.9)
    assert face.primary_index([corner, centre], 640, 480) == 1


# -- detection and crops ------------------------------------------------------------------

def test_crop_is_256_rgb_and_contains_the_face(face_pipeline):
    result = face_pipeline.process(encode(astronaut_rgb(), "PNG"))
    assert result.primary.crop.shape == (256, 256, 3) and result.primary.crop.dtype == np.uint8
    x, y, w, h = result.primary.box
    assert 150 < x + w / 2 < 300 and 60 < y + h / 2 < 220  # the astronaut's face, not the flag
    assert face_pipeline.detect(result.primary.crop), "the crop itself must still show a face"
    assert len(result.primary.detection.keypoints) == 6


def test_bytes_and_decoded_frame_give_the_same_crop(face_pipeline):
    rgb = grace_hopper_rgb()
    from_bytes = face_pipeline.process(encode(rgb, "PNG")).primary.crop
    from_frame = face_pipeline.process(rgb).primary.crop
    assert np.array_equal(from_bytes, from_frame)


def test_primary_face_among_several(face_pipeline):
    canvas = np.full((480, 640, 3), 90, np.uint8)
    canvas[60:480, 0:360] = cv2.resize(grace_hopper_rgb(), (360, 420))  # big face, left
    canvas[100:360, 370:630] = cv2.resize(astronaut_rgb()[40:260, 115:335], (260, 260))  # smaller, right
    result = face_pipeline.process(canvas)
    assert len(result.detections) >= 2
    assert result.primary.box[0] < 360  # the larger face on the left
    assert result.primary.detection.area == max(d.area for d in result.detections)
    assert len(result.faces) == 1  # preprocessing crops the primary only ...
    every = face_pipeline.process(canvas, all_faces=True)  # ... serving every face, primary first
    assert len(every.faces) == len(result.detections)
    assert np.array_equal(every.faces[0].crop, result.primary.crop)


def test_encoded_crop_is_lossless_and_deterministic(face_pipeline):
    crop = face_pipeline.process(encode(astronaut_rgb(), "PNG")).primary.crop
    first, second = face_pipeline.encode(crop), face_pipeline.encode(crop)
    assert first == second
    assert np.array_equal(face.decode_crop(first), crop)


def test_pipeline_version_tracks_crop_parameters():
    assert FaceConfig().version() == FaceConfig().version()
    assert FaceConfig(expand=2.0).version() != FaceConfig().version()
    assert FaceConfig(max_bytes=1).version() == FaceConfig().version()  # guards don't change crops


# -- model files ----------------------------------------------------------------------------

def test_configured_model_path_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(face.MODEL_PATH_ENV, str(tmp_path / "nope.tflite"))
    with pytest.raises(face.ModelUnavailable, match=face.MODEL_PATH_ENV):
        face.resolve_model_path()


def test_corrupt_cached_model_is_not_used(monkeypatch, tmp_path):
    monkeypatch.delenv(face.MODEL_PATH_ENV, raising=False)
    monkeypatch.setenv(face.CACHE_ENV, str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / face.MODELS["short_range"][0]).write_bytes(b"corrupt")
    with pytest.raises(face.ModelUnavailable, match=face.MODEL_PATH_ENV):
        face.resolve_model_path(fetch=False)


def test_cached_model_is_verified(monkeypatch):
    monkeypatch.delenv(face.MODEL_PATH_ENV, raising=False)
    path = face.resolve_model_path(fetch=False)  # setup fetched it into the user cache
    assert path.stat().st_size == face.MODELS["short_range"][2]
