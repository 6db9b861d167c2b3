"""MiniFASNetV2 / MiniFASNetV1SE (Silent-Face-Anti-Spoofing, minivision-ai) as raypipe models.

Our own implementation of the published architecture, laid out so that the released
weights (``raypipe.models.weights``) load exactly: every tensor of the file is consumed
and every tensor of the model is set, or loading fails (:func:`load_silentface`).

Network (80x80 input; the channel widths are the released pruned models' ``keep`` lists):

    conv1 3x3/2 -> conv2_dw 3x3 -> conv_23 (bottleneck /2) -> conv_3 (4 residual)
    -> conv_34 (/2) -> conv_4 (6 residual) -> conv_45 (/2) -> conv_5 (2 residual)
    -> conv_6_sep 1x1 (512, 5x5 map) -> conv_6_dw 5x5 depthwise (global, 512x1x1)
    -> linear 512->128 -> BatchNorm1d                      = backbone, the 128-d embedding
    -> dropout -> prob 128->3 (2D attack, live, 3D attack) = head (+ the 2-class reduction)

A bottleneck is 1x1 expand (conv, BN, PReLU) -> 3x3 depthwise (conv, BN, PReLU) -> 1x1
project (conv, BN); V1SE adds squeeze-excitation to the last residual block of each
stage. The final depthwise kernel covers the whole last map: ``ceil(80 / 16) = 5``.

Inputs: BGR, 0-255 floats, no mean/std (Silent-Face feeds OpenCV images straight to the
network); raypipe's transform scales uint8 to [0, 1] then divides by std = 1/255, and
``spec.channels = "bgr"`` makes it swap the channels. Crop: the detector's box (not made
square) scaled 2.7x (V2) / 4.0x (V1SE) about its centre, capped to fit the image, shifted
inside it, stretched to 80x80: ``CropSpec(scale, "box")``.

2-class output (raypipe: index 0 = live, 1 = attack), exact, inside the head:

    logits = [l_live, logsumexp(l_2d, l_3d)]

so ``softmax(logits) = [p_live, p_2d + p_3d]`` of the 3-class softmax: p(attack) is the
probability of either attack class, nothing is re-weighted or dropped, and the
cross-entropy on the 2 logits is the negative log of the summed attack probability.

``minifasnet_ensemble``: both models on one 4.0x crop, averaging their probabilities as
Silent-Face's release does; the V2 member's 2.7x crop is approximated from it (see
:func:`build_minifasnet_ensemble`). Released weights: ``create_model(name,
pretrained="silentface")``, resolved by :mod:`raypipe.models.weights`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from raypipe.labels import ATTACK, LIVE
from raypipe.models.base import (
    DEFAULT_COSINE_SCALE,
    CropSpec,
    FaceClassifier,
    ModelSpec,
    build_head,
)
from raypipe.models.pretrained import read_state_dict
from raypipe.models.weights import (
    SILENTFACE_V1SE,
    SILENTFACE_V2,
    WeightFile,
    resolve_weights,
)

log = logging.getLogger(__name__)

# Silent-Face's class order; raypipe's 2 classes (raypipe.labels) are derived in live_attack_logits.
SF_ATTACK_2D, SF_LIVE, SF_ATTACK_3D = 0, 1, 2
SILENTFACE_CLASSES = ("attack_2d", "live", "attack_3d")
EMBEDDING_DIM = 128
INPUT_SIZE = 80
V2_CROP_SCALE, V1SE_CROP_SCALE = 2.7, 4.0

# Channel widths of the released (pruned) models, indexed as in the reference code:
# block j of the chain has widths (keep[j], keep[j + 1], keep[j + 3]) = in, expanded, out.
KEEP_V1 = (32, 32, 103, 103, 64, 13, 13, 64, 26, 26, 64, 13, 13, 64, 52, 52, 64, 231, 231, 128,
           154, 154, 128, 52, 52, 128, 26, 26, 128, 52, 52, 128, 26, 26, 128, 26, 26, 128, 308, 308,
           128, 26, 26, 128, 26, 26, 128, 512, 512)
KEEP_V2 = (32, 32, 103, 103, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 13, 13, 64, 231, 231, 128,
           231, 231, 128, 52, 52, 128, 26, 26, 128, 77, 77, 128, 26, 26, 128, 26, 26, 128, 308, 308,
           128, 26, 26, 128, 26, 26, 128, 512, 512)
# (stage name, first keep index, residual blocks); each stage follows a stride-2 bottleneck.
_STAGES = (("conv_3", 4, 4), ("conv_4", 19, 6), ("conv_5", 40, 2))
_DOWNSAMPLES = (("conv_23", 1), ("conv_34", 16), ("conv_45", 37))

# 0-255 BGR floats out of raypipe's [0, 1] scaling: (x - 0) / (1 / 255).
_MEAN = (0.0, 0.0, 0.0)
_STD = (1.0 / 255.0,) * 3
V2_SPEC = ModelSpec(
    name="minifasnet_v2",
    input_size=INPUT_SIZE,
    mean=_MEAN,
    std=_STD,
    embedding_dim=EMBEDDING_DIM,
    description="MiniFASNetV2 (Silent-Face, 0.43M params, box crop 2.7x, BGR 0-255)",
    crop=CropSpec(scale=V2_CROP_SCALE, shape="box"),
    channels="bgr",
)
V1SE_SPEC = dataclasses.replace(
    V2_SPEC, name="minifasnet_v1se", crop=CropSpec(scale=V1SE_CROP_SCALE, shape="box"),
    description="MiniFASNetV1SE (Silent-Face, 0.43M params, box crop 4.0x, BGR 0-255)")
ENSEMBLE_SPEC = ModelSpec(
    name="minifasnet_ensemble",
    input_size=2 * INPUT_SIZE,
    mean=_MEAN,
    std=_STD,
    embedding_dim=2 * EMBEDDING_DIM,
    description="MiniFASNetV2 + V1SE averaging live probabilities (Silent-Face's release), one 4.0x box crop",
    crop=CropSpec(scale=V1SE_CROP_SCALE, shape="box"),
    channels="bgr",
)


# --------------------------------------------------------------------------------------
# Architecture


class ConvBNPReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.prelu = nn.PReLU(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """Conv + BN without activation (the linear bottleneck projection, the global depthwise conv)."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, groups: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel gates from the global average; BN inside, as in the released V1SE."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = F.adaptive_avg_pool2d(x, 1)
        gate = torch.sigmoid(self.bn2(self.fc2(F.relu(self.bn1(self.fc1(gate))))))
        return x * gate


class Bottleneck(nn.Module):
    """1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear project [-> SE] [+ input]."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.residual = stride == 1 and c_in == c_out
        self.conv = ConvBNPReLU(c_in, c_mid, 1)
        self.conv_dw = ConvBNPReLU(c_mid, c_mid, 3, stride, groups=c_mid)
        self.project = ConvBN(c_mid, c_out, 1)
        if se:
            self.se_module = SqueezeExcite(c_out)
        self.se = se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        if self.se:
            out = self.se_module(out)
        return x + out if self.residual else out


def _block(keep: tuple[int, ...], j: int, stride: int = 1, se: bool = False) -> Bottleneck:
    return Bottleneck(keep[j], keep[j + 1], keep[j + 3], stride=stride, se=se)


class MiniFASNetFeatures(nn.Module):
    """Image (B, 3, 80, 80), BGR 0-255 -> 128-d embedding (the BatchNorm1d output before ``prob``)."""

    def __init__(self, keep: tuple[int, ...], se: bool, input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        self.conv1 = ConvBNPReLU(3, keep[0], 3, stride=2)
        self.conv2_dw = ConvBNPReLU(keep[0], keep[1], 3, groups=keep[1])
        for (down, j), (stage, start, blocks) in zip(_DOWNSAMPLES, _STAGES):
            setattr(self, down, _block(keep, j, stride=2))
            # SE only on the last block of a stage (the released V1SE layout)
            setattr(self, stage, nn.Sequential(*(_block(keep, start + 3 * i, se=se and i == blocks - 1)
                                                  for i in range(blocks))))
        last = math.ceil(input_size / 16)  # four stride-2 layers; Silent-Face's get_kernel
        self.conv_6_sep = ConvBNPReLU(keep[46], keep[47], 1)
        self.conv_6_dw = ConvBN(keep[47], keep[48], kernel=last, groups=keep[48])
        self.linear = nn.Linear(keep[48], EMBEDDING_DIM, bias=False)
        self.bn = nn.BatchNorm1d(EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        x = self.conv_45(self.conv_4(self.conv_34(self.conv_3(x))))
        x = self.conv_6_dw(self.conv_6_sep(self.conv_5(x)))
        return self.bn(self.linear(x.flatten(1)))


def live_attack_logits(class_logits: torch.Tensor) -> torch.Tensor:
    """Silent-Face's 3 logits (or log-probabilities) -> raypipe's 2: ``[l_live, logsumexp(l_2d, l_3d)]``.

    Exact: ``softmax`` of the result is ``[p_live, p_2d + p_3d]`` of the 3-class softmax.
    """
    by_label = {
        LIVE: class_logits[:, SF_LIVE],
        ATTACK: torch.logsumexp(class_logits[:, [SF_ATTACK_2D, SF_ATTACK_3D]], dim=1),
    }
    return torch.stack([by_label[index] for index in sorted(by_label)], dim=1)


class SilentFaceHead(nn.Module):
    """The released 3-class linear layer (``prob``, no bias) reduced exactly to 2 logits."""

    def __init__(self, in_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.prob = nn.Linear(in_features, len(SILENTFACE_CLASSES), bias=False)

    def class_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        """The 3 raw logits: 2D attack, live, 3D attack."""
        return self.prob(embedding)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return live_attack_logits(self.prob(embedding))


def _head(kind: str, num_classes: int, scale: float) -> nn.Module:
    if num_classes != 2:
        raise ValueError(f"MiniFASNet models output raypipe's 2 classes (live, attack); num_classes={num_classes}")
    if kind == "linear":
        return SilentFaceHead()
    # A cosine head must stay scale * cos for AM-Softmax, so no 3->2 reduction: a plain 2-class
    # cosine head (pretrained="silentface" then loads the backbone only, see load_silentface).
    return build_head(kind, EMBEDDING_DIM, num_classes, scale)


def _build(spec: ModelSpec, keep: tuple[int, ...], se: bool, num_classes: int, head: str, scale: float,
           head_dropout: float) -> FaceClassifier:
    # Grad-CAM: conv_6_sep's 512 x 5 x 5 map, the last one with spatial extent (conv_6_dw is global).
    return FaceClassifier(spec, MiniFASNetFeatures(keep, se), _head(head, num_classes, scale),
                          dropout=head_dropout, gradcam_layer="backbone.conv_6_sep")


def build_minifasnet_v2(num_classes: int = 2, head: str = "linear", scale: float = DEFAULT_COSINE_SCALE, *,
                        head_dropout: float = 0.2) -> FaceClassifier:
    """MiniFASNetV2; ``head_dropout`` 0.2 is the reference's dropout before ``prob``."""
    return _build(V2_SPEC, KEEP_V2, False, num_classes, head, scale, head_dropout)


def build_minifasnet_v1se(num_classes: int = 2, head: str = "linear", scale: float = DEFAULT_COSINE_SCALE, *,
                          head_dropout: float = 0.75) -> FaceClassifier:
    """MiniFASNetV1SE; ``head_dropout`` 0.75 is the reference's dropout before ``prob``."""
    return _build(V1SE_SPEC, KEEP_V1, True, num_classes, head, scale, head_dropout)


# --------------------------------------------------------------------------------------
# Ensemble


class EnsembleFeatures(nn.Module):
    """One 4.0x box crop (B, 3, S, S) -> both members' embeddings, concatenated (B, 256).

    V1SE sees the whole input resized to 80x80; V2 sees its central 2.7/4.0 fraction (the
    2.7x box region when the face box is centred) resized to 80x80 (see :func:`_resize`).
    """

    def __init__(self, v2: MiniFASNetFeatures, v1se: MiniFASNetFeatures) -> None:
        super().__init__()
        self.v2 = v2
        self.v1se = v1se
        self.v2_fraction = V2_CROP_SCALE / V1SE_CROP_SCALE

    def member_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(V2 input, V1SE input), each (B, 3, 80, 80)."""
        height, width = x.shape[-2:]
        inner_h, inner_w = round(height * self.v2_fraction), round(width * self.v2_fraction)
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        centre = x[..., top : top + inner_h, left : left + inner_w]
        return _resize(centre), _resize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v2_input, v1se_input = self.member_inputs(x)
        return torch.cat([self.v2(v2_input), self.v1se(v1se_input)], dim=1)


def _resize(x: torch.Tensor) -> torch.Tensor:
    """Bilinear without antialiasing, on purpose: at these factors (160 -> 80, 108 -> 80) it
    averages 2x2 pixels (= OpenCV's INTER_AREA) or barely reduces, while torch's antialiased
    bilinear is a wider triangle filter whose blur the released models read as attack
    evidence (measured on NUAA live faces: V1SE 23/30 called live against 28/30)."""
    if x.shape[-2:] == (INPUT_SIZE, INPUT_SIZE):
        return x
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)


class EnsembleHead(nn.Module):
    """Both members' 3-class heads; the mean of their softmax outputs, as 2 log-probabilities.

    Averaging the 3-class probabilities then summing the attack classes equals averaging
    the members' live probabilities (p_attack = 1 - p_live for each). The logits returned
    are ``log [p_live, p_attack]`` of that mean, so ``softmax`` gives the mean back exactly.
    """

    def __init__(self, v2: SilentFaceHead, v1se: SilentFaceHead) -> None:
        super().__init__()
        self.v2 = v2
        self.v1se = v1se

    def class_log_probs(self, embedding: torch.Tensor) -> torch.Tensor:
        """log of the members' mean 3-class softmax (2D attack, live, 3D attack)."""
        v2_emb, v1se_emb = embedding.split(EMBEDDING_DIM, dim=1)
        per_member = torch.stack([F.log_softmax(self.v2.class_logits(v2_emb), dim=1),
                                  F.log_softmax(self.v1se.class_logits(v1se_emb), dim=1)])
        return torch.logsumexp(per_member, dim=0) - math.log(2.0)  # log-mean-exp: stable

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return live_attack_logits(self.class_log_probs(embedding))


def build_minifasnet_ensemble(num_classes: int = 2, head: str = "linear",
                              scale: float = DEFAULT_COSINE_SCALE) -> FaceClassifier:
    """MiniFASNetV2 + V1SE fed from one crop: the 4.0x box region at 160x160.

    Silent-Face crops each member from the source image (2.7x and 4.0x box, each capped
    to fit the image and shifted inside it). Here the V2 crop is approximated by the
    central 2.7/4.0 fraction of the 4.0x region, resized again to 80x80. The approximation
    is exact in geometry when the 4.0x region fits the image uncapped and unshifted; near
    the image border (face close to an edge, or a close-up where 4.0x is capped) the V2
    member sees a region off-centre or with less context than 2.7x. Pixels go through one
    more resampling (source -> 160 -> 80) than in Silent-Face (source -> 80).
    Measured zero-shot (BlazeFace boxes, 40 live + 38 print frames of NUAA, 640x480, where
    4.0x is usually capped): AUC 1.000 either way; at 0.5 this ensemble calls 35/40 live
    faces live against 40/40 with Silent-Face's per-model crops (39/40 had the V2 fraction
    followed the cap), all attacks attack. MSU client 001 (40 + 40): AUC 1.000 / 1.000.
    Grad-CAM looks at the V1SE member, whose input is the whole crop.
    """
    if head != "linear":
        raise ValueError(
            "minifasnet_ensemble averages its members' softmax outputs and has no single "
            f"{head!r} head; use head='linear', or train minifasnet_v2 / minifasnet_v1se with a {head} head"
        )
    if num_classes != 2:
        raise ValueError(f"MiniFASNet models output raypipe's 2 classes (live, attack); num_classes={num_classes}")
    backbone = EnsembleFeatures(MiniFASNetFeatures(KEEP_V2, se=False), MiniFASNetFeatures(KEEP_V1, se=True))
    return FaceClassifier(ENSEMBLE_SPEC, backbone, EnsembleHead(SilentFaceHead(), SilentFaceHead()),
                          gradcam_layer="backbone.v1se.conv_6_sep")


# --------------------------------------------------------------------------------------
# Released weights


def silentface_key(key: str) -> str:
    """A released state-dict key -> ours: ``module.`` (DataParallel) dropped, ``prob.*`` ->
    ``head.prob.*``, the rest under ``backbone.``, stages as plain Sequentials
    (``conv_3.model.0.x`` -> ``conv_3.0.x``)."""
    key = key.removeprefix("module.")
    if key.startswith("prob."):
        return f"head.{key}"
    return "backbone." + re.sub(r"^(conv_\d)\.model\.", r"\1.", key)


def _split_silentface(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Released state dict -> {"backbone": {...}, "head": {...}} in our key names."""
    parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "head": {}}
    for key, value in state.items():
        part, _, rest = silentface_key(key).partition(".")
        if rest in parts[part]:
            raise ValueError(f"two released keys map to {part}.{rest}")
        parts[part][rest] = value
    return parts


def load_exact(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``module`` only if it consumes every key and sets every tensor (shapes too)."""
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{what} does not fit: {len(missing)} missing {missing[:5]}, "
                         f"{len(unexpected)} unexpected {unexpected[:5]}")
    module.load_state_dict(state, strict=True)  # raises on a shape mismatch


def _load_member(backbone: nn.Module, head: nn.Module, weights: WeightFile) -> bool:
    """Released ``weights`` into a (backbone, head) pair; False when the head is not the
    released linear layer (a cosine head: left as initialised, the file's ``prob`` unused)."""
    parts = _split_silentface(read_state_dict(resolve_weights(weights)))
    load_exact(backbone, parts["backbone"], f"{weights.file} (backbone)")
    if not isinstance(head, SilentFaceHead):
        return False
    load_exact(head, parts["head"], f"{weights.file} (head)")
    return True


def load_silentface(model: FaceClassifier, weights: WeightFile) -> str:
    """The released ``weights`` into a single MiniFASNet; returns its ``pretrained_source``."""
    if model.spec.input_size != INPUT_SIZE:
        raise ValueError(f"the released MiniFASNet weights are for {INPUT_SIZE}x{INPUT_SIZE} inputs")
    source = weights.tag()
    if not _load_member(model.backbone, model.head, weights):
        log.warning("%s: released backbone loaded; the %s head is freshly initialised (the release's is linear)",
                    model.spec.name, type(model.head).__name__)
        source += ":backbone-only"
    log.info("%s: weights %s", model.spec.name, source)
    return source


def load_silentface_ensemble(model: FaceClassifier) -> str:
    """Both released files into the ensemble's members; returns its ``pretrained_source``."""
    if not isinstance(model.backbone, EnsembleFeatures):
        raise TypeError(f"{model.spec.name} is not a MiniFASNet ensemble")
    for name, weights in (("v2", SILENTFACE_V2), ("v1se", SILENTFACE_V1SE)):
        _load_member(getattr(model.backbone, name), getattr(model.head, name), weights)
    return f"{SILENTFACE_V2.tag()}+{SILENTFACE_V1SE.tag()}"


# Released weight loaders by ``pretrained=`` name, for the registry.
PUBLISHED_V2 = {"silentface": functools.partial(load_silentface, weights=SILENTFACE_V2)}
PUBLISHED_V1SE = {"silentface": functools.partial(load_silentface, weights=SILENTFACE_V1SE)}
PUBLISHED_ENSEMBLE = {"silentface": load_silentface_ensemble}
