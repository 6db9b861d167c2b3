"""torchvision backbones with a face anti-spoofing head: ResNet-18 and the paper's light baselines.

Each torchvision network keeps its own layers (so torchvision/ImageNet state
dicts load by their usual keys) minus its 1000-class ImageNet layer, which
the :class:`FaceClassifier` head replaces.

Input sizes:
- ``resnet18``: 256x256, the crop size itself, as in the serverless source.
- ``mobilenet_v3_small``, ``shufflenet_v2_x0_5``: 224x224, the resolution of
  their ImageNet weights and of the FLOP figures published for them
  (~56M / ~41M multiply-adds), so the efficiency table compares like with like.
  All three pool adaptively, so ``input_size=`` may override the size (e.g.
  128 for faster CPU training).
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torchvision import models as tvm

from raypipe.models.base import (
    DEFAULT_COSINE_SCALE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    FaceClassifier,
    ModelSpec,
    build_head,
)

RESNET18_SPEC = ModelSpec(
    name="resnet18",
    input_size=256,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    embedding_dim=512,
    description="torchvision ResNet-18, 256x256, 2-class head (serverless source)",
)
MOBILENET_V3_SMALL_SPEC = ModelSpec(
    name="mobilenet_v3_small",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    embedding_dim=1024,
    description="torchvision MobileNetV3-Small, 224x224 (paper efficiency baseline)",
)
SHUFFLENET_V2_X0_5_SPEC = ModelSpec(
    name="shufflenet_v2_x0_5",
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    embedding_dim=1024,
    description="torchvision ShuffleNetV2 0.5x, 224x224 (paper efficiency baseline)",
)

# ImageNet weights looked up in the hub cache, and the state-dict prefix of the
# ImageNet layer that the head replaces (dropped when loading such weights).
RESNET18_IMAGENET = tvm.ResNet18_Weights.IMAGENET1K_V1
MOBILENET_V3_SMALL_IMAGENET = tvm.MobileNet_V3_Small_Weights.IMAGENET1K_V1
SHUFFLENET_V2_X0_5_IMAGENET = tvm.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
FC_PREFIX = "fc."
MOBILENET_CLASSIFIER_PREFIX = "classifier.3."


def _spec(base: ModelSpec, input_size: int | None) -> ModelSpec:
    return base if input_size is None else dataclasses.replace(base, input_size=int(input_size))


def build_resnet18(
    num_classes: int = 2, head: str = "linear", scale: float = DEFAULT_COSINE_SCALE, *, input_size: int | None = None
) -> FaceClassifier:
    net = tvm.resnet18(weights=None)
    net.fc = nn.Identity()  # embedding = the 512-d global-average-pooled features
    spec = _spec(RESNET18_SPEC, input_size)
    return FaceClassifier(
        spec, net, build_head(head, spec.embedding_dim, num_classes, scale), gradcam_layer="backbone.layer4.1"
    )


def build_mobilenet_v3_small(
    num_classes: int = 2, head: str = "linear", scale: float = DEFAULT_COSINE_SCALE, *, input_size: int | None = None
) -> FaceClassifier:
    net = tvm.mobilenet_v3_small(weights=None)
    # Keep Linear(576, 1024) + Hardswish as the embedding (same keys as torchvision:
    # classifier.0); torchvision's Dropout(0.2) moves to the wrapper, before the head.
    net.classifier = nn.Sequential(net.classifier[0], net.classifier[1])
    spec = _spec(MOBILENET_V3_SMALL_SPEC, input_size)
    return FaceClassifier(
        spec,
        net,
        build_head(head, spec.embedding_dim, num_classes, scale),
        dropout=0.2,
        gradcam_layer=f"backbone.features.{len(net.features) - 1}",
    )


def build_shufflenet_v2_x0_5(
    num_classes: int = 2, head: str = "linear", scale: float = DEFAULT_COSINE_SCALE, *, input_size: int | None = None
) -> FaceClassifier:
    net = tvm.shufflenet_v2_x0_5(weights=None)
    net.fc = nn.Identity()  # embedding = the 1024-d pooled conv5 features
    spec = _spec(SHUFFLENET_V2_X0_5_SPEC, input_size)
    return FaceClassifier(
        spec, net, build_head(head, spec.embedding_dim, num_classes, scale), gradcam_layer="backbone.conv5"
    )
