"""One scoring path: a model, its input transform and a device -> spoof probabilities.

Training (dev scores), evaluation, Grad-CAM and serving all score through this module,
so "the score" means one thing everywhere: the softmax probability of the attack class
(index :data:`ATTACK`), computed on the model's own input (:func:`raypipe.models.model_inputs`
cut from the stored crop, then its eval transform). "spoof" iff score >= threshold.
No Ray and no MLflow at import time: a GPU box or a Serve replica imports it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from raypipe.labels import ATTACK
from raypipe.models import ModelSpec, build_transforms, model_inputs


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None): CUDA when present, else CPU; anything else as torch reads it."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("auto", "float32", "float16", "bfloat16")


def inference_dtype(device_type: str, precision: str = "auto", bf16_supported: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for inference on ``device_type``; None = plain float32.

    ``auto``: on CUDA bfloat16 where the GPU supports it (Ampere and newer: float32's range,
    no overflow), else float16 (T4, V100: tensor cores, half the memory traffic); on CPU
    float32 (CPU autocast speeds up little and costs accuracy here).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32" or (device_type != "cuda" and precision == "auto"):
        return None
    if precision == "auto":
        supported = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        return torch.bfloat16 if supported else torch.float16
    if device_type != "cuda" and precision == "float16":
        raise ValueError("float16 inference needs a CUDA device; on CPU use float32 or bfloat16")
    return torch.float16 if precision == "float16" else torch.bfloat16


def spoof_scores(logits: torch.Tensor) -> torch.Tensor:
    """Logits (B, 2) -> spoof probability (B,): the score every raypipe threshold applies to."""
    return torch.softmax(logits.float(), dim=1)[:, ATTACK]


def spoof_probabilities(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Spoof probabilities of already transformed ``inputs`` (no gradients)."""
    with torch.inference_mode():
        return spoof_scores(model(inputs)).cpu().numpy()


@dataclass
class Scored:
    """Scores of a labelled set, in batch order."""

    labels: np.ndarray  # int64, 0 live / 1 attack
    scores: np.ndarray  # float64 spoof probabilities
    attack_types: np.ndarray  # object


class Predictor:
    """A model ready to score: eval mode, on its device, with its eval transform."""

    def __init__(self, model: nn.Module, spec: ModelSpec, device: str | torch.device | None = "auto",
                 precision: str = "float32") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.spec = spec
        self.transform = build_transforms(spec, None, train=False)
        self.dtype = inference_dtype(self.device.type, precision)

    def score_inputs(self, images: np.ndarray) -> np.ndarray:
        """uint8 B x S x S x 3 model inputs (:func:`raypipe.models.model_inputs`) -> spoof probabilities."""
        # uint8 goes to the device first (4x less to copy than float); the transform runs there.
        tensor = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            return spoof_probabilities(self.model, self.transform(tensor)).astype(np.float64)

    def score_crops(self, crops: np.ndarray, boxes_in_crop: np.ndarray) -> np.ndarray:
        """Stored-style context crops and their face boxes (serving) -> spoof probabilities."""
        return self.score_inputs(model_inputs(crops, boxes_in_crop, self.spec))

    def score_batches(self, batches: Iterable[dict[str, np.ndarray]]) -> Scored:
        """Decoded batches (``image`` = model inputs, ``label``, ``attack_type``) -> scores in order.

        Any iterable works (:func:`raypipe.crops.iter_local_batches`, a Ray Data iterator).
        """
        labels, scores, types = [], [], []
        for batch in batches:
            scores.append(self.score_inputs(batch["image"]))
            labels.append(np.asarray(batch["label"], dtype=np.int64))
            types.append(np.asarray(batch["attack_type"], dtype=object))
        if not labels:
            return Scored(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, object))
        return Scored(np.concatenate(labels), np.concatenate(scores), np.concatenate(types))
