"""Models for face anti-spoofing, by name: ``create_model("attacknet")``.

Plain PyTorch and torchvision only (no Ray), so models, losses and one
training step can be checked on any box. Every model is a
:class:`~raypipe.models.base.FaceClassifier` with ``.spec``, ``forward(x)``
-> logits, ``forward_features(x)`` -> embedding ``(B, spec.embedding_dim)``,
``.head`` and ``.pretrained_source``.
"""

from __future__ import annotations

from raypipe.models.base import (
    DEFAULT_COSINE_SCALE,
    HEAD_TYPES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CosineHead,
    FaceClassifier,
    ModelSpec,
    gradcam_target_layer,
    unwrap_model,
)
from raypipe.models.efficiency import count_flops, count_parameters, cpu_ms_per_face, efficiency_report
from raypipe.models.losses import build_loss, head_for_loss
from raypipe.models.registry import create_model, get_spec, model_names
from raypipe.models.transforms import AugmentConfig, build_transforms, model_inputs
from raypipe.models.weights import WEIGHTS_DIR_ENV, WeightsUnavailable, resolve_weights

__all__ = [
    "DEFAULT_COSINE_SCALE",
    "HEAD_TYPES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "WEIGHTS_DIR_ENV",
    "AugmentConfig",
    "CosineHead",
    "FaceClassifier",
    "ModelSpec",
    "WeightsUnavailable",
    "build_loss",
    "build_transforms",
    "count_flops",
    "count_parameters",
    "cpu_ms_per_face",
    "create_model",
    "efficiency_report",
    "get_spec",
    "gradcam_target_layer",
    "head_for_loss",
    "model_inputs",
    "model_names",
    "resolve_weights",
    "unwrap_model",
]
