"""Grad-CAM maps (the ``grad-cam`` package) for a sample of live and attack crops.

The CAM explains the **attack** logit by default: warm areas are where the model
finds spoof evidence (print texture, screen moire, paper edges), so live and
attack rows are read on the same scale. ``target="label"`` explains each crop's
true class and ``target="predicted"`` the model's decision instead.

Works for every registry model (the layer comes from
:func:`raypipe.models.gradcam_target_layer`) on CPU or GPU; inputs go through
the model's own eval transform, exactly as in scoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from numpy.typing import ArrayLike
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from raypipe.labels import ATTACK, LIVE
from raypipe.models import ModelSpec, build_transforms, gradcam_target_layer
from raypipe.predict import spoof_probabilities

Target = Literal["attack", "label", "predicted"]
CELL_PX = 160  # each grid cell is drawn at this size (AttackNet's 32x32 would be unreadable)
CAPTION_PX = 22
ROW_NAMES = {LIVE: "live", ATTACK: "attack"}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _inputs(spec: ModelSpec, images_uint8: np.ndarray, device: torch.device) -> torch.Tensor:
    return build_transforms(spec, None, train=False)(np.asarray(images_uint8, dtype=np.uint8)).to(device)


def gradcam_maps(model: nn.Module, spec: ModelSpec, images_uint8: np.ndarray,
                 classes: ArrayLike) -> np.ndarray:
    """Grad-CAM maps in [0, 1], one (S, S) map per image, explaining ``classes[i]`` for image i."""
    model.eval()  # BatchNorm/dropout as in scoring
    inputs = _inputs(spec, images_uint8, _device(model))
    targets = [ClassifierOutputTarget(int(c)) for c in np.asarray(classes)]
    with torch.enable_grad(), GradCAM(model=model, target_layers=[gradcam_target_layer(model)]) as cam:
        return cam(input_tensor=inputs, targets=targets)


def _pick(labels: np.ndarray, n_per_class: int) -> list[np.ndarray]:
    """The first ``n_per_class`` indices of each class (deterministic: same cells every run)."""
    return [np.flatnonzero(labels == cls)[:n_per_class] for cls in (LIVE, ATTACK)]


def _classes(target: Target, labels: np.ndarray, probs: np.ndarray, threshold: float) -> np.ndarray:
    if target == "attack":
        return np.full(labels.size, ATTACK)
    if target == "label":
        return labels
    if target == "predicted":
        return (probs >= threshold).astype(np.int64)
    raise ValueError(f"target must be 'attack', 'label' or 'predicted', got {target!r}")


def _overlay(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """Crop + CAM heat map, upscaled to CELL_PX (nearest for the crop, so tiny inputs look tiny)."""
    base = cv2.resize(image, (CELL_PX, CELL_PX), interpolation=cv2.INTER_NEAREST).astype(np.float32) / 255.0
    mask = cv2.resize(cam.astype(np.float32), (CELL_PX, CELL_PX), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(base, np.clip(mask, 0.0, 1.0), use_rgb=True, image_weight=0.6)


def _caption(cell: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((CAPTION_PX, cell.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, CAPTION_PX - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([cell, bar])


def _blank() -> np.ndarray:
    return _caption(np.full((CELL_PX, CELL_PX, 3), 235, np.uint8), "(none)")


def gradcam_grid(model: nn.Module, spec: ModelSpec, images_uint8: np.ndarray, labels: ArrayLike,
                 path: str | Path, n_per_class: int = 4, *, target: Target = "attack",
                 threshold: float = 0.5) -> Path:
    """Write one PNG grid: row 0 live, row 1 attack, ``n_per_class`` cells each.

    ``images_uint8``: B x S x S x 3 RGB model inputs (:func:`raypipe.models.model_inputs`); ``labels``: 0 live / 1 attack. Each cell is the crop with its CAM
    overlay, captioned with the spoof probability ``p``. Missing cells (a class
    with fewer samples) are grey. The image is exactly
    ``n_per_class * CELL_PX`` wide and ``2 * (CELL_PX + CAPTION_PX)`` high.
    ``threshold`` only matters for ``target="predicted"``.
    """
    images = np.asarray(images_uint8, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[0] != labels.size:
        raise ValueError(f"expected B x H x W x 3 images with one label each, got {images.shape} and {labels.shape}")
    if n_per_class < 1:
        raise ValueError("n_per_class must be >= 1")
    picked = _pick(labels, n_per_class)
    chosen = np.concatenate(picked)
    rows = []
    if chosen.size:
        probs = spoof_probabilities(model.eval(), _inputs(spec, images[chosen], _device(model)))
        cams = gradcam_maps(model, spec, images[chosen], _classes(target, labels[chosen], probs, threshold))
    offset = 0
    for cls, indices in zip((LIVE, ATTACK), picked):
        cells = []
        for k in range(indices.size):
            j = offset + k
            cells.append(_caption(_overlay(images[chosen[j]], cams[j]), f"{ROW_NAMES[cls]}  p={probs[j]:.3f}"))
        cells += [_blank()] * (n_per_class - indices.size)
        rows.append(np.hstack(cells))
        offset += indices.size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
