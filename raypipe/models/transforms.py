"""From stored face crops (256x256 RGB with generous context) to normalised model inputs.

Two steps: :func:`model_inputs` cuts each model's own face region from the stored
crop (its ``spec.crop``) at ``spec.input_size`` (uint8, numpy), then
``build_transforms(spec, augment, train)`` returns a callable taking those uint8
images -- a CHW / BCHW tensor, or an HWC / BHWC numpy array -- and returning float32
tensors normalised with the model's mean/std (and channel order). Tensors stay on
their device, so the same transform runs on a GPU batch.

Order: resize (antialiased) -> augment -> to float -> normalise. Augmenting
after the resize is cheaper (AttackNet works at 32x32) and matches the paper,
whose Keras ImageDataGenerator augments images already at the network's size.
In a batch every image gets its own random augmentation (torchvision v2 would
otherwise draw one set of parameters for the whole batch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from raypipe.config import AugmentConfig
from raypipe.face import cut_face_regions
from raypipe.models.base import ModelSpec


class RandomGamma(nn.Module):
    """Gamma in [1 - g, 1 + g] (torchvision v2 has the function, not a random transform)."""

    def __init__(self, spread: float) -> None:
        super().__init__()
        self.spread = spread

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        gamma = 1.0 + (2 * torch.rand(()).item() - 1) * self.spread
        return v2.functional.adjust_gamma(image, gamma)


def build_augmentation(config: AugmentConfig) -> v2.Compose | None:
    """The random part of the training pipeline (see :class:`raypipe.config.AugmentConfig`),
    or None when disabled. Runs on uint8 images at the model's input size."""
    if not config.enabled:
        return None
    parts: list[nn.Module] = []
    if config.affine:
        parts.append(v2.RandomAffine(degrees=config.rotation_degrees,
                                     translate=(config.width_shift, config.height_shift),
                                     scale=(1.0 - config.zoom, 1.0 + config.zoom), shear=config.shear_degrees))
    if config.horizontal_flip_p > 0:
        parts.append(v2.RandomHorizontalFlip(p=config.horizontal_flip_p))
    if config.brightness > 0:
        parts.append(v2.ColorJitter(brightness=config.brightness, contrast=config.brightness))
    if config.gamma > 0:
        parts.append(RandomGamma(config.gamma))
    if config.blur_p > 0:
        parts.append(v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.5))], p=config.blur_p))
    if config.jpeg_p > 0:
        parts.append(v2.RandomApply([v2.JPEG(quality=(40, 95))], p=config.jpeg_p))
    return v2.Compose(parts) if parts else None


def _as_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Tensors are CHW/BCHW already; numpy arrays are HWC/BHWC (decode_crop, Parquet batches)."""
    if isinstance(images, torch.Tensor):
        return images
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # e.g. zero-copy Arrow batches; torch.from_numpy warns on those
        array = array.copy()
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 or BxHxWx3 array, got shape {array.shape}")
    return torch.from_numpy(array).movedim(-1, -3)


class FaceTransform(nn.Module):
    """resize -> (per-image) augmentation -> float -> normalise; see the module docstring."""

    def __init__(self, spec: ModelSpec, augment: v2.Compose | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.resize = v2.Resize((spec.input_size, spec.input_size), antialias=True)
        self.augment = augment
        self.to_input = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)])

    def forward(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = self.resize(_as_tensor(images))  # a no-op on model_inputs() output, already at size
        if self.augment is not None:
            x = torch.stack([self.augment(img) for img in x]) if x.ndim == 4 else self.augment(x)
        if self.spec.channels == "bgr":  # weights trained on OpenCV's channel order
            x = x.flip(-3)
        return self.to_input(x)


def build_transforms(spec: ModelSpec, augment: AugmentConfig | None = None, train: bool = False) -> FaceTransform:
    """Input transform for ``spec``; random augmentation only when ``train`` and ``augment.enabled``.

    Eval mode (``train=False``) is deterministic: resize and normalise only.
    """
    return FaceTransform(spec, build_augmentation(augment) if (train and augment is not None) else None)


def model_inputs(crops: np.ndarray, boxes_in_crop: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Stored context crops -> the model's own face regions, uint8 B x S x S x 3 (S = input size).

    THE one function from a stored crop to what a model sees (before float conversion and
    normalisation): training (:mod:`raypipe.crops`), evaluation and serving all call it, so
    a served model gets pixel for pixel the input it was trained on. ``boxes_in_crop``
    holds each crop's detector box in crop pixels (:func:`raypipe.face.box_in_crop`); the
    region is that box enlarged by ``spec.crop`` with the same rule that cut the stored crop.
    """
    return cut_face_regions(crops, boxes_in_crop, spec.input_size, spec.crop.scale, spec.crop.shape)
