"""Initial weights without a network: ImageNet from the local torch hub cache, or a local file.

``pretrained`` as accepted by :func:`raypipe.models.create_model`:

- ``None`` / ``False``: random init, ``pretrained_source = "scratch"``.
- ``True`` (or the string ``"imagenet"``): torchvision's ImageNet weights *if the
  file is already in the torch hub cache* (``$TORCH_HOME/hub/checkpoints``);
  nothing is downloaded (these machines have no network). Absent ->
  ``"scratch"``, with a warning. Models without ImageNet weights (AttackNet)
  also fall back to ``"scratch"``.
- a published source's name (``"silentface"``): the weights its authors released for
  this model (MiniFASNet), resolved by :mod:`raypipe.models.weights` (a configured
  folder, the cache, or a verified download) and loaded exactly; ``pretrained_source``
  names the file and its sha256. A model without such weights is an error.
- a path: a local ``.pth``; either a torchvision-style backbone state dict
  (ImageNet head keys are dropped) or a whole raypipe model state dict
  (``backbone.*`` / ``head.*`` keys, e.g. from a training checkpoint).
  A missing file is an error: the caller asked for that file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum

from raypipe.models.base import FaceClassifier

log = logging.getLogger(__name__)

PretrainedArg = bool | str | os.PathLike | None
# Loads a model's released weights from one published source; returns its pretrained_source.
PublishedLoader = Callable[[FaceClassifier], str]
PUBLISHED_SOURCES = ("silentface",)
# Keys under which training checkpoints commonly nest the state dict.
_NESTED_KEYS = ("model_state_dict", "state_dict", "model")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def imagenet_cache_path(weights: WeightsEnum) -> Path:
    """Where ``torch.hub`` keeps ``weights`` once downloaded (read at call time: honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint, unwrapped from common nestings and wrapper prefixes."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: not a state dict (got {type(state).__name__})")
    return {_strip_prefixes(k): v for k, v in state.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def load_backbone_state(backbone: nn.Module, state: Mapping[str, torch.Tensor], dropped_prefix: str | None) -> None:
    """Load a torchvision-style state dict into a backbone whose ImageNet head was removed.

    Only keys of the removed head (``dropped_prefix``) may be left over, and every
    backbone tensor must be provided: anything else means the file is for another model.
    """
    result = backbone.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not (dropped_prefix and k.startswith(dropped_prefix))]
    if result.missing_keys or unexpected:
        raise ValueError(
            f"state dict does not fit the backbone: missing {result.missing_keys[:5]}, unexpected {unexpected[:5]}"
        )


def apply_pretrained(
    model: FaceClassifier,
    pretrained: PretrainedArg,
    imagenet_weights: WeightsEnum | None,
    dropped_prefix: str | None,
    published: Mapping[str, PublishedLoader] | None = None,
) -> FaceClassifier:
    """Initialise ``model`` as ``pretrained`` asks and record it in ``model.pretrained_source``.

    ``published``: the model's loaders by published source name (see ``PUBLISHED_SOURCES``).
    """
    if pretrained is None or pretrained is False:
        model.pretrained_source = "scratch"
    elif pretrained is True or pretrained == "imagenet":
        model.pretrained_source = _load_imagenet_cache(model, imagenet_weights, dropped_prefix)
    elif isinstance(pretrained, str) and pretrained in PUBLISHED_SOURCES:
        loader = (published or {}).get(pretrained)
        if loader is None:
            raise ValueError(f"{model.spec.name} has no {pretrained!r} weights (pretrained= takes None, "
                             f"'imagenet', a file, or a published source the model was released with)")
        model.pretrained_source = loader(model)
    else:
        _load_file(model, Path(pretrained), dropped_prefix)
        model.pretrained_source = str(pretrained)
    return model


def _load_imagenet_cache(model: FaceClassifier, weights: WeightsEnum | None, dropped_prefix: str | None) -> str:
    if weights is None:
        log.warning("%s has no ImageNet weights; training from scratch", model.spec.name)
        return "scratch"
    path = imagenet_cache_path(weights)
    if not path.is_file():
        log.warning("ImageNet weights for %s not in the torch hub cache (%s); training from scratch", model.spec.name, path)
        return "scratch"
    load_backbone_state(model.backbone, read_state_dict(path), dropped_prefix)
    log.info("%s: ImageNet weights from %s", model.spec.name, path)
    return "imagenet-cache"


def _load_file(model: FaceClassifier, path: Path, dropped_prefix: str | None) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = read_state_dict(path)
    if any(k.startswith(("backbone.", "head.")) for k in state):
        model.load_state_dict(state)  # a whole raypipe model: strict, head included
    else:
        load_backbone_state(model.backbone, state, dropped_prefix)
    log.info("%s: weights from %s", model.spec.name, path)
