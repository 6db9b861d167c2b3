"""AttackNet: the paper's 0.3M-parameter CNN for 32x32x3 face crops.

Layout (as the AttackNet paper describes it, see docs/training.md):

    phase 1: [conv3x3(16) -> LeakyReLU -> BatchNorm] x3, conv1 output + conv3 output,
             maxpool 2x2, dropout
    phase 2: the same with 32 filters
    flatten -> dense 128 + tanh (the embedding) -> dropout 0.5 -> dense 2

Padding: the convs use "same" padding (1 pixel). That is forced by the
residual (conv1 and conv3 outputs must have the same size) and it is the
choice that reproduces the paper's figures: 32 -> pool 16 -> pool 8 gives a
flatten of 8*8*32 = 2048, so the dense layer holds 2048*128 + 128 = 262,272
of the 291,042 parameters (0.29M), and the FLOPs come to 22.64M
(2 per multiply-add, measured with torch.utils.flop_counter). "Valid"
padding would shrink 32 -> 26 -> 13 -> 7 (flatten 1568, ~0.23M params) and
could not add conv1 to conv3 without cropping.
"""

from __future__ import annotations

import torch
from torch import nn

from raypipe.models.base import DEFAULT_COSINE_SCALE, FaceClassifier, ModelSpec, build_head

# Inputs scaled to [-1, 1]: the crops are not ImageNet photos and AttackNet
# has no pretrained weights to match, so a symmetric range around zero is the
# simplest normalisation that suits the tanh embedding.
SPEC = ModelSpec(
    name="attacknet",
    input_size=32,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    embedding_dim=128,
    description="AttackNet (paper CNN, 0.29M params, 22.6 MFLOPs at 32x32)",
)

# The paper's implementation is Keras, whose LeakyReLU defaults to a slope of 0.3
# (PyTorch's default is 0.01).
LEAKY_SLOPE = 0.3


def _conv_act_bn(in_channels: int, out_channels: int, slope: float) -> nn.Sequential:
    # Order as the paper states it: activation, then BatchNorm after each conv.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.LeakyReLU(slope),
        nn.BatchNorm2d(out_channels),
    )


class ResidualConvBlock(nn.Module):
    """Three conv/act/BN units; the first unit's output is added to the third's."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        self.conv1 = _conv_act_bn(in_channels, out_channels, slope)
        self.conv2 = _conv_act_bn(out_channels, out_channels, slope)
        self.conv3 = _conv_act_bn(out_channels, out_channels, slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv1(x)
        return first + self.conv3(self.conv2(first))


class AttackNetFeatures(nn.Module):
    """Image (B, 3, 32, 32) -> embedding (B, 128), the tanh output of the dense layer."""

    def __init__(self, block_dropout: float = 0.25, slope: float = LEAKY_SLOPE, input_size: int = 32) -> None:
        super().__init__()
        self.phase1 = nn.Sequential(ResidualConvBlock(3, 16, slope), nn.MaxPool2d(2), nn.Dropout(block_dropout))
        self.phase2 = nn.Sequential(ResidualConvBlock(16, 32, slope), nn.MaxPool2d(2), nn.Dropout(block_dropout))
        flat = 32 * (input_size // 4) ** 2  # two 2x2 pools, "same" convs
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(flat, SPEC.embedding_dim), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.phase2(self.phase1(x)))


def build_attacknet(
    num_classes: int = 2,
    head: str = "linear",
    scale: float = DEFAULT_COSINE_SCALE,
    *,
    block_dropout: float = 0.25,
    head_dropout: float = 0.5,
    slope: float = LEAKY_SLOPE,
) -> FaceClassifier:
    """AttackNet as a :class:`FaceClassifier`; Grad-CAM looks at phase 2's residual output (16x16).

    ``block_dropout`` (after each pool) is not given a rate in our description of
    the paper; 0.25 is the customary Keras-era value. ``head_dropout`` is the paper's 0.5.
    """
    return FaceClassifier(
        SPEC,
        AttackNetFeatures(block_dropout=block_dropout, slope=slope, input_size=SPEC.input_size),
        build_head(head, SPEC.embedding_dim, num_classes, scale),
        dropout=head_dropout,
        gradcam_layer="backbone.phase2.0",
    )
