"""Building blocks shared by every model: the spec, the heads, the classifier wrapper.

Every model in the registry is a :class:`FaceClassifier`:

    embedding = model.forward_features(x)        # (B, spec.embedding_dim)
    logits    = model.head(model.dropout(embedding))
    logits    = model(x)                          # the same, in one call

so the losses (which need the embedding), Grad-CAM (which needs a conv layer)
and serving (which needs logits) all find what they need by the same names,
whatever the backbone. Plain PyTorch only: no Ray here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Cosine-head logits are scale * cos(theta). 30 is the value of the AM-Softmax
# paper (Wang et al., 2018); the AM-Softmax loss must use the same scale, see
# raypipe.models.losses.build_loss.
DEFAULT_COSINE_SCALE = 30.0
HEAD_TYPES = ("linear", "cosine")


CROP_SHAPES = ("square", "box")
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class CropSpec:
    """The face region a model looks at, relative to the detector's box.

    ``scale``: the box scaled about its centre (context around the face); ``shape``:
    ``"square"`` (a square of the box's longer side, as preprocessing cuts) or ``"box"``
    (the box's own aspect, stretched to the square input, as Silent-Face's MiniFASNet
    crops). Every model's input is cut from the stored context crop by
    :func:`raypipe.models.transforms.model_inputs` with this spec, in training,
    evaluation and serving alike.
    """

    scale: float = 1.5
    shape: str = "square"

    def __post_init__(self) -> None:
        if self.scale < 1.0 or self.shape not in CROP_SHAPES:
            raise ValueError(f"crop scale must be >= 1 and shape one of {CROP_SHAPES}, got {self}")


@dataclass(frozen=True)
class ModelSpec:
    """What the data pipeline needs to know to feed a model."""

    name: str
    input_size: int  # square side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    description: str = ""
    crop: CropSpec = CropSpec()  # the face region the model was designed for
    channels: str = "rgb"  # "bgr": weights trained on OpenCV's channel order (Silent-Face)

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_ORDERS:
            raise ValueError(f"channels must be one of {CHANNEL_ORDERS}, got {self.channels!r}")


class CosineHead(nn.Module):
    """Logits = scale * cos(embedding, class weight): both sides L2-normalised.

    Bounded in [-scale, scale], which is what AM-Softmax's additive margin
    assumes (the margin is subtracted in cosine units, times the same scale).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = DEFAULT_COSINE_SCALE) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"cosine head scale must be > 0, got {scale}")
        self.in_features = in_features
        self.out_features = out_features
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))
        return self.scale * cosine

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"


def build_head(kind: str, in_features: int, num_classes: int, scale: float = DEFAULT_COSINE_SCALE) -> nn.Module:
    """The final layer: ``"linear"`` (nn.Linear) or ``"cosine"`` (:class:`CosineHead`)."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "cosine":
        return CosineHead(in_features, num_classes, scale=scale)
    raise ValueError(f"unknown head {kind!r}; expected one of {HEAD_TYPES}")


class FaceClassifier(nn.Module):
    """backbone (image -> embedding) + dropout + head (embedding -> logits).

    ``gradcam_layer`` is the dotted name (as in ``named_modules()``) of the
    module whose output Grad-CAM should explain: the last conv feature map.
    ``pretrained_source`` says where the initial weights came from
    ("scratch", "imagenet-cache" or a file path) so training can log it.
    """

    def __init__(
        self,
        spec: ModelSpec,
        backbone: nn.Module,
        head: nn.Module,
        *,
        dropout: float = 0.0,
        gradcam_layer: str,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = head
        self.gradcam_layer = gradcam_layer
        self.pretrained_source = "scratch"
        self.get_submodule(gradcam_layer)  # fail at construction, not at explanation time

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward_with_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding) from one backbone pass: what the losses take."""
        embedding = self.forward_features(x)
        return self.head(self.dropout(embedding)), embedding

    def forward(self, x: torch.Tensor, return_embeddings: bool = False):
        """Logits; ``(logits, embedding)`` with ``return_embeddings=True``.

        The flag exists for DDP: gradients are only synchronised through ``forward``,
        so training must get the embeddings (for similarity losses) from this call.
        """
        logits, embedding = self.forward_with_embeddings(x)
        return (logits, embedding) if return_embeddings else logits

    def gradcam_target_layer(self) -> nn.Module:
        return self.get_submodule(self.gradcam_layer)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def gradcam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should hook for ``model`` (its last conv feature map)."""
    inner = unwrap_model(model)
    if not isinstance(inner, FaceClassifier):
        raise TypeError(f"expected a raypipe FaceClassifier, got {type(inner).__name__}")
    return inner.gradcam_target_layer()
