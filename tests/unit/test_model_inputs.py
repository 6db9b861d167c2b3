"""Each model's input is cut from the stored crop by one function, identically in training and serving."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raypipe.crops import DecodeCrops, SplitPlan
from raypipe.face import FaceConfig, FacePipeline
from raypipe.models import build_transforms, get_spec, model_inputs, model_names
from raypipe.models.base import CropSpec, ModelSpec
from raypipe.preprocess import FaceCropper
from raypipe.serve.core import find_faces
from tests.fixtures.images import astronaut_rgb, encode, grace_hopper_rgb


def _spec(scale: float, shape: str, size: int = 32, channels: str = "rgb") -> ModelSpec:
    return ModelSpec("probe", size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 8, crop=CropSpec(scale, shape),
                     channels=channels)


def test_square_region_is_the_box_times_the_scale():
    crop = np.zeros((256, 256, 3), np.uint8)
    crop[96:160, 96:160] = 255  # a white 64 px "face" in the middle
    [tight] = model_inputs(crop[None], np.array([[96, 96, 64, 64]]), _spec(1.0, "square"))
    [wide] = model_inputs(crop[None], np.array([[96, 96, 64, 64]]), _spec(2.0, "square"))
    assert tight.min() == 255  # the region is exactly the box
    white = (wide == 255).all(axis=-1).mean()
    assert white == pytest.approx(0.25, abs=0.03)  # twice the box: the face covers a quarter


def test_box_shape_stretches_the_box_aspect_to_the_square_input():
    crop = np.zeros((256, 256, 3), np.uint8)
    crop[64:192, 112:144] = 255  # a tall 32x128 box
    [inputs] = model_inputs(crop[None], np.array([[112, 64, 32, 128]]), _spec(1.0, "box"))
    assert inputs.min() == 255  # the whole input is the box, stretched


def test_bgr_models_get_the_channels_swapped():
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    rgb = build_transforms(_spec(1.5, "square"), None, train=False)(red)
    bgr = build_transforms(_spec(1.5, "square", channels="bgr"), None, train=False)(red)
    assert torch.equal(rgb[:, 0], bgr[:, 2]) and rgb[:, 0].max() == 1.0 and bgr[:, 0].max() == 0.0


def test_mismatched_boxes_are_an_error():
    with pytest.raises(ValueError, match="one box each"):
        model_inputs(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((1, 4)), _spec(1.5, "square"))


@pytest.fixture(scope="module")
def cropper():
    return FaceCropper(FaceConfig())  # preprocessing's per-record work (a Ray Data actor), without Ray


@pytest.mark.parametrize("name", model_names())
def test_serving_input_equals_training_input_pixel_for_pixel(cropper, name):
    """Serving (find_faces -> model_inputs) and training (Parquet row -> DecodeCrops) on the same photos."""
    spec = get_spec(name)
    face_pipeline = FacePipeline(FaceConfig())  # serving's own pipeline, built from the same settings
    photos = [encode(astronaut_rgb(), "PNG"), encode(grace_hopper_rgb(), "JPEG")]
    rows = []
    for i, data in enumerate(photos):
        record = {"sample_id": f"s{i}", "dataset": "probe", "split": "train", "subject": f"p{i}", "label": 0,
                  "attack_type": "live", "path": "-", "rel_path": f"{i}.png", "media": "image", "frame_index": -1,
                  "extras": "{}"}
        rows.append(cropper._crop_row(record, data))
    assert all(row["status"] == "ok" for row in rows)
    trained_on = DecodeCrops("train", SplitPlan(), spec)(pa.Table.from_pylist(rows))["image"]
    served = [model_inputs(f.crops[:1], f.boxes[:1], spec)[0] for f in (find_faces(face_pipeline, d) for d in photos)]
    assert trained_on.shape == (2, spec.input_size, spec.input_size, 3)
    assert np.array_equal(trained_on, np.stack(served))


def test_crop_readers_unpickle_without_torch():
    """What Ray Data ships to a streamed training's reader processes must not import torch
    (a fresh reader per epoch paid 4-10 s for it): the decoder holds an InputCut, not the spec."""
    import base64
    import pickle
    import subprocess
    import sys

    from raypipe.crops import InputCut, read_role_files

    decoder = DecodeCrops("train", SplitPlan(), get_spec("minifasnet_v2"))
    shipped = base64.b64encode(pickle.dumps((decoder, read_role_files, InputCut.of(get_spec("resnet18"))))).decode()
    probe = ("import base64, pickle, sys; decoder, fn, cut = pickle.loads(base64.b64decode(sys.argv[1])); "
             "print(decoder.cut.size, cut.size, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe, shipped], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(get_spec("minifasnet_v2").input_size), str(get_spec("resnet18").input_size),
                                  "False"]


def test_input_cut_is_model_inputs():
    from raypipe.crops import InputCut

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    boxes = np.array([[90, 80, 70, 90], [100, 100, 40, 60], [60, 70, 120, 110]], float)
    for name in model_names():
        assert np.array_equal(InputCut.of(get_spec(name))(crops, boxes), model_inputs(crops, boxes, get_spec(name)))
