"""Grad-CAM grids for the registry models, on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from raypipe.explain import CAPTION_PX, CELL_PX, gradcam_grid, gradcam_maps
from raypipe.models import create_model, gradcam_target_layer
from tests.fixtures.crops import face_window, recapture, photos


@pytest.fixture(autouse=True)
def _no_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # never pick up machine downloads


def faces(size: int, n_live: int, n_attack: int) -> tuple[np.ndarray, np.ndarray]:
    """Live face windows and their "recaptured" attacks, at the model's input size."""
    import cv2

    rng = np.random.default_rng(0)
    live = [face_window(photos()[i % 2], rng) for i in range(max(n_live, n_attack))]
    images = live[:n_live] + [recapture(img, rng) for img in live[:n_attack]]
    images = np.stack([cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA) for img in images])
    return images, np.array([0] * n_live + [1] * n_attack)


@pytest.mark.parametrize("name", ["attacknet", "resnet18"])
def test_grid_written_with_the_documented_size(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    images, labels = faces(model.spec.input_size, 3, 3)
    path = gradcam_grid(model, model.spec, images, labels, tmp_path / "cam.png", n_per_class=3)
    assert path == tmp_path / "cam.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (3 * CELL_PX, 2 * (CELL_PX + CAPTION_PX))
    assert not gradcam_target_layer(model)._forward_hooks  # grad-cam released its hooks


def test_missing_cells_are_blank_and_the_overlay_changes_pixels(tmp_path):
    torch.manual_seed(0)
    model = create_model("attacknet")
    images, labels = faces(32, 2, 1)
    path = gradcam_grid(model, model.spec, images, labels, tmp_path / "cam.png", n_per_class=3)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert grid.shape == (2 * (CELL_PX + CAPTION_PX), 3 * CELL_PX, 3)
    live_row_last = grid[:CELL_PX, 2 * CELL_PX:]
    assert (live_row_last == 235).all()  # only two live crops: the third cell is grey
    first = grid[:CELL_PX, :CELL_PX].astype(int)
    import cv2

    plain = cv2.resize(images[0], (CELL_PX, CELL_PX), interpolation=cv2.INTER_NEAREST).astype(int)
    assert np.abs(first - plain).mean() > 5  # the heat map is really overlaid


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "shufflenet_v2_x0_5"])
def test_maps_for_the_baselines(name):
    torch.manual_seed(0)
    model = create_model(name, input_size=64)  # adaptive pooling: a small input keeps the test fast
    images, labels = faces(64, 1, 1)
    maps = gradcam_maps(model, model.spec, images, labels)
    assert maps.shape == (2, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1


def test_target_and_shapes_are_validated(tmp_path):
    model = create_model("attacknet")
    images, labels = faces(32, 1, 1)
    with pytest.raises(ValueError, match="target"):
        gradcam_grid(model, model.spec, images, labels, tmp_path / "x.png", target="everything")
    with pytest.raises(ValueError, match="one label each"):
        gradcam_grid(model, model.spec, images, labels[:1], tmp_path / "x.png")


@pytest.mark.parametrize("target", ["label", "predicted"])
def test_other_targets(target, tmp_path):
    model = create_model("attacknet")
    images, labels = faces(32, 2, 2)
    assert gradcam_grid(model, model.spec, images, labels, tmp_path / "x.png", n_per_class=2,
                        target=target).is_file()
