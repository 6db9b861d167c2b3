"""Models by name, timm-style: ``create_model("attacknet")``.

Adding a model = a builder returning a :class:`FaceClassifier` + one entry in ``_ENTRIES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torchvision.models import WeightsEnum

from raypipe.models import attacknet, minifasnet
from raypipe.models import torchvision_models as tv
from raypipe.models.base import DEFAULT_COSINE_SCALE, HEAD_TYPES, FaceClassifier, ModelSpec
from raypipe.models.pretrained import PretrainedArg, PublishedLoader, apply_pretrained


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    builder: Callable[..., FaceClassifier]
    imagenet_weights: WeightsEnum | None = None
    dropped_prefix: str | None = None  # ImageNet layer replaced by the head
    published: Mapping[str, PublishedLoader] | None = None  # released weights: pretrained="silentface"


_ENTRIES: dict[str, ModelEntry] = {
    e.spec.name: e
    for e in (
        ModelEntry(attacknet.SPEC, attacknet.build_attacknet),
        ModelEntry(tv.RESNET18_SPEC, tv.build_resnet18, tv.RESNET18_IMAGENET, tv.FC_PREFIX),
        ModelEntry(
            tv.MOBILENET_V3_SMALL_SPEC,
            tv.build_mobilenet_v3_small,
            tv.MOBILENET_V3_SMALL_IMAGENET,
            tv.MOBILENET_CLASSIFIER_PREFIX,
        ),
        ModelEntry(
            tv.SHUFFLENET_V2_X0_5_SPEC, tv.build_shufflenet_v2_x0_5, tv.SHUFFLENET_V2_X0_5_IMAGENET, tv.FC_PREFIX
        ),
        ModelEntry(minifasnet.V2_SPEC, minifasnet.build_minifasnet_v2, published=minifasnet.PUBLISHED_V2),
        ModelEntry(minifasnet.V1SE_SPEC, minifasnet.build_minifasnet_v1se, published=minifasnet.PUBLISHED_V1SE),
        ModelEntry(
            minifasnet.ENSEMBLE_SPEC, minifasnet.build_minifasnet_ensemble, published=minifasnet.PUBLISHED_ENSEMBLE
        ),
    )
}


def model_names() -> list[str]:
    return sorted(_ENTRIES)


def _entry(name: str) -> ModelEntry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(model_names())}") from None


def get_spec(name: str) -> ModelSpec:
    """The default spec of ``name`` (a model built with ``input_size=`` carries its own in ``.spec``)."""
    return _entry(name).spec


def create_model(
    name: str,
    num_classes: int = 2,
    head: str = "linear",
    pretrained: PretrainedArg = None,
    *,
    scale: float = DEFAULT_COSINE_SCALE,
    **kwargs: Any,
) -> FaceClassifier:
    """Build model ``name`` with a ``head`` ("linear" or "cosine", the latter with logit ``scale``).

    ``pretrained``: see :mod:`raypipe.models.pretrained` (``"silentface"``: the released
    MiniFASNet weights); the outcome is in ``model.pretrained_source``. ``kwargs`` go to the
    builder (e.g. ``input_size=`` for torchvision models, ``block_dropout=`` for AttackNet).
    """
    entry = _entry(name)
    if head not in HEAD_TYPES:
        raise ValueError(f"unknown head {head!r}; expected one of {HEAD_TYPES}")
    model = entry.builder(num_classes=num_classes, head=head, scale=scale, **kwargs)
    return apply_pretrained(model, pretrained, entry.imagenet_weights, entry.dropped_prefix, entry.published)
