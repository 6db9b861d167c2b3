"""Input transforms: shapes, normalisation, determinism, augmentation, crop decoding."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from raypipe.models import AugmentConfig, build_transforms, decode_crop, get_spec

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


def test_paper_defaults():
    cfg = AugmentConfig()
    assert (cfg.rotation_degrees, cfg.width_shift, cfg.height_shift, cfg.zoom) == (20.0, 0.2, 0.2, 0.2)
    assert cfg.shear_degrees == pytest.approx(np.degrees(0.2), abs=0.1)
    assert cfg.horizontal_flip_p == 0.5 and cfg.enabled


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
