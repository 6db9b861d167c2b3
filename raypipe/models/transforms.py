"""From stored face crops (encoded bytes, 256x256 RGB) to normalised model inputs.

``build_transforms(spec, augment, train)`` returns a callable taking uint8
images -- a CHW / BCHW tensor, or an HWC / BHWC numpy array as produced by
:func:`decode_crop` -- and returning float32 tensors normalised with the
model's mean/std at ``spec.input_size``. Tensors stay on their device, so the
same transform runs on a GPU batch.

Order: resize (antialiased) -> augment -> to float -> normalise. Augmenting
after the resize is cheaper (AttackNet works at 32x32) and matches the paper,
whose Keras ImageDataGenerator augments images already at the network's size.
In a batch every image gets its own random augmentation (torchvision v2 would
otherwise draw one set of parameters for the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from raypipe.models.base import ModelSpec


@dataclass
class AugmentConfig:
    """The paper's augmentation (Keras ImageDataGenerator style), in torchvision terms.

    - rotation: uniform in +-``rotation_degrees``.
    - shift: up to ``width_shift`` / ``height_shift`` of the width / height.
    - shear: the paper's 0.2 is read as radians (old Keras semantics), 0.2 rad = 11.5 deg.
    - zoom: scale uniform in [1 - zoom, 1 + zoom] (Keras ``zoom_range=0.2``).
    - horizontal flip with probability ``horizontal_flip_p`` (faces are left-right symmetric).
    Areas uncovered by the affine transform are filled with black (Keras would
    repeat the edge pixels; torchvision only fills with a constant).
    """

    enabled: bool = True
    rotation_degrees: float = 20.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear_degrees: float = 11.5
    zoom: float = 0.2
    horizontal_flip_p: float = 0.5

    def build(self) -> v2.Compose | None:
        """The random part of the pipeline, or None when disabled."""
        if not self.enabled:
            return None
        return v2.Compose(
            [
                v2.RandomAffine(
                    degrees=self.rotation_degrees,
                    translate=(self.width_shift, self.height_shift),
                    scale=(1.0 - self.zoom, 1.0 + self.zoom),
                    shear=self.shear_degrees,
                ),
                v2.RandomHorizontalFlip(p=self.horizontal_flip_p),
            ]
        )


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
        x = self.resize(_as_tensor(images))
        if self.augment is not None:
            x = torch.stack([self.augment(img) for img in x]) if x.ndim == 4 else self.augment(x)
        return self.to_input(x)


def build_transforms(spec: ModelSpec, augment: AugmentConfig | None = None, train: bool = False) -> FaceTransform:
    """Input transform for ``spec``; random augmentation only when ``train`` and ``augment.enabled``.

    Eval mode (``train=False``) is deterministic: resize and normalise only.
    """
    return FaceTransform(spec, augment.build() if (train and augment is not None) else None)


def decode_crop(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Encoded crop (PNG/JPEG/WebP as stored in Parquet) -> uint8 HxWx3 RGB array.

    OpenCV rather than torchvision.io, whose codecs are deprecated since 0.29.
    Grey or RGBA images come out as 3-channel RGB. Raises ValueError if the
    bytes do not decode.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if bgr is None:
        raise ValueError("cannot decode crop bytes (empty or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR; the crops are RGB
