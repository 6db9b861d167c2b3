"""Input transforms: shapes, normalisation, determinism, augmentation, crop decoding."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from raypipe.face import decode_crop
from raypipe.models import AugmentConfig, build_transforms, get_spec

ATTACKNET = get_spec("attacknet")
RESNET = get_spec("resnet18")


@pytest.fixture
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8, generator=generator)


def test_eval_output_shape_and_dtype(batch):
    out = build_transforms(ATTACKNET, train=False)(batch)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    single = build_transforms(RESNET, train=False)(batch[0])
    assert single.shape == (3, 256, 256) and single.dtype == torch.float32


def test_accepts_hwc_numpy_from_decode_crop(batch):
    transform = build_transforms(ATTACKNET, train=False)
    hwc = batch[0].permute(1, 2, 0).numpy()
    assert torch.equal(transform(hwc), transform(batch[0]))
    assert transform(np.stack([hwc, hwc])).shape == (2, 3, 32, 32)


def test_normalisation_uses_spec_mean_std():
    white = torch.full((3, 256, 256), 255, dtype=torch.uint8)
    # attacknet: (1.0 - 0.5) / 0.5 = 1.0
    assert torch.allclose(build_transforms(ATTACKNET)(white), torch.ones(3, 32, 32))
    # resnet18, ImageNet red channel: (1.0 - 0.485) / 0.229 = 2.248908
    assert build_transforms(RESNET)(white)[0, 0, 0].item() == pytest.approx(2.248908, abs=1e-5)


def test_eval_is_deterministic_even_with_augment_config(batch):
    transform = build_transforms(ATTACKNET, AugmentConfig(), train=False)
    assert torch.equal(transform(batch), transform(batch))
    assert torch.equal(transform(batch), build_transforms(ATTACKNET, None, train=False)(batch))


def test_train_with_augmentation_differs_from_eval(batch):
    torch.manual_seed(0)
    train_out = build_transforms(ATTACKNET, AugmentConfig(), train=True)(batch)
    eval_out = build_transforms(ATTACKNET, AugmentConfig(), train=False)(batch)
    assert train_out.shape == eval_out.shape
    assert not torch.allclose(train_out, eval_out)


def test_train_with_augmentation_disabled_equals_eval(batch):
    train_out = build_transforms(ATTACKNET, AugmentConfig(enabled=False), train=True)(batch)
    assert torch.equal(train_out, build_transforms(ATTACKNET, train=False)(batch))


def test_each_image_in_a_batch_gets_its_own_augmentation(batch):
    torch.manual_seed(0)
    same = batch[:1].repeat(4, 1, 1, 1)
    out = build_transforms(ATTACKNET, AugmentConfig(), train=True)(same)
    assert not all(torch.equal(out[0], out[i]) for i in range(1, 4))


def test_default_augmentation_mirrors_about_half_the_faces():
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, :, :8] = 255  # a bright left edge: a mirrored image is unmistakable
    no_affine = replace(AugmentConfig(), rotation_degrees=0.0, width_shift=0.0, height_shift=0.0,
                        zoom=0.0, shear_degrees=0.0)  # isolate the default flip
    outputs = build_transforms(ATTACKNET, no_affine, train=True)(image.repeat(200, 1, 1, 1))
    plain = build_transforms(ATTACKNET, train=False)(image)
    mirrored = sum(torch.equal(out, plain.flip(-1)) for out in outputs)
    unchanged = sum(torch.equal(out, plain) for out in outputs)
    assert mirrored + unchanged == 200  # left-right only, never upside down
    assert 70 <= mirrored <= 130  # p = 0.5 (seed 0 gives 94)


def test_default_augmentation_keeps_the_face_centre_within_a_fifth_of_the_image():
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[:, 14:18, 14:18] = 255  # a bright square around the centre (15.5, 15.5)
    outputs = build_transforms(ATTACKNET, AugmentConfig(), train=True)(image.repeat(300, 1, 1, 1))
    shifts = []
    for out in outputs:
        ys, xs = torch.nonzero(out[0] > 0, as_tuple=True)  # normalised to [-1, 1]: bright is > 0
        assert len(xs) > 0, "the face left the image"
        shifts.append((xs.float().mean().item() - 15.5, ys.float().mean().item() - 15.5))
    largest = np.abs(np.array(shifts)).max(axis=0)
    # rotation, shear and zoom turn about the centre; only the shift moves it, by up to
    # 0.2 of the width/height (Keras semantics: a fraction, not pixels), plus sampling
    assert np.all(largest <= 0.2 * 32 + 1), largest
    assert np.all(largest >= 4), largest  # and it does move the face


def _encode(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def test_decode_crop_png_roundtrip():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    decoded = decode_crop(_encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    assert decoded.dtype == np.uint8 and decoded.shape == (16, 24, 3)
    assert np.array_equal(decoded, rgb)  # RGB order restored, lossless


def test_decode_crop_jpeg_and_grey():
    assert decode_crop(_encode(".jpg", np.full((8, 8, 3), 200, dtype=np.uint8))).shape == (8, 8, 3)
    assert decode_crop(_encode(".png", np.zeros((8, 8), dtype=np.uint8))).shape == (8, 8, 3)


@pytest.mark.parametrize("data", [b"", b"not an image"])
def test_decode_crop_rejects_garbage(data):
    with pytest.raises(ValueError):
        decode_crop(data)


def test_read_only_numpy_batch_is_accepted(batch, recwarn):
    array = batch.permute(0, 2, 3, 1).numpy().copy()
    array.flags.writeable = False  # as zero-copy Arrow/Ray Data batches are
    out = build_transforms(ATTACKNET)(array)
    assert out.shape == (2, 3, 32, 32)
    assert not [w for w in recwarn if "not writable" in str(w.message)]


def _parts(**changes) -> list[str]:
    from raypipe.models.transforms import build_augmentation

    built = build_augmentation(AugmentConfig(**changes))
    return [type(t).__name__ for t in built.transforms] if built is not None else []


def test_each_augmentation_part_has_its_own_switch():
    assert _parts() == ["RandomAffine", "RandomHorizontalFlip"]  # the paper's set, nothing else
    assert _parts(affine=False, horizontal_flip_p=0.0) == []
    assert _parts(affine=False, brightness=0.2, gamma=0.2, blur_p=0.5, jpeg_p=0.5) == [
        "RandomHorizontalFlip", "ColorJitter", "RandomGamma", "RandomApply", "RandomApply"]
    assert _parts(enabled=False, brightness=0.5) == []


@pytest.mark.parametrize("change", [{"brightness": 0.5}, {"gamma": 0.5}, {"blur_p": 1.0}, {"jpeg_p": 1.0}])
def test_capture_augmentations_change_pixels_but_not_shape_or_dtype(change):
    from raypipe.models.transforms import build_augmentation

    torch.manual_seed(0)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8))
    augment = build_augmentation(AugmentConfig(affine=False, horizontal_flip_p=0.0, **change))
    outs = [augment(image) for _ in range(4)]
    assert all(o.shape == image.shape and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(o, image) for o in outs)
