"""Training losses, all called as ``loss(logits, embeddings, targets)``.

- ``ce``: cross-entropy on the logits.
- ``am_softmax``: additive-margin softmax (Wang et al., 2018). The logits must
  come from the cosine head (``create_model(..., head="cosine", scale=s)``),
  i.e. ``logits = s * cos(theta)``. The loss subtracts ``s * m`` from the
  target-class logit, i.e. ``s * (cos(theta_y) - m)``, then applies CE. The
  loss cannot recover ``s`` from the logits, so **build it with the same
  scale as the head**: ``build_loss(spec, scale=s)`` and
  ``create_model(..., head=head_for_loss(spec), scale=s)`` (both default to
  :data:`DEFAULT_COSINE_SCALE` = 30).
- ``similarity``: a cosine contrastive loss on the embeddings over all pairs
  ``i < j`` of the batch, with ``c_ij = cos(e_i, e_j)``::

      L = mean_{same class} (1 - c_ij) + mean_{different class} max(0, c_ij - margin)

  Same-class pairs are pulled together (towards cos 1); live-vs-attack pairs are
  pushed apart until their cosine is at most ``margin`` (default 0: orthogonal).
  Each mean is taken over its own pairs so the two terms weigh the same whatever
  the class balance; a term with no pairs (one-class batch, batch of one) is 0.

``build_loss("ce+0.1*similarity")`` combines terms with weights;
``head_for_loss(spec)`` says which head the combination needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raypipe.models.base import DEFAULT_COSINE_SCALE

DEFAULT_AM_MARGIN = 0.35  # the AM-Softmax paper's value for face verification
DEFAULT_SIMILARITY_MARGIN = 0.0


class CrossEntropyLoss(nn.Module):
    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets)


class AMSoftmaxLoss(nn.Module):
    """CE on ``logits - scale * margin * onehot(targets)``; logits from a cosine head of the same scale."""

    def __init__(self, scale: float = DEFAULT_COSINE_SCALE, margin: float = DEFAULT_AM_MARGIN) -> None:
        super().__init__()
        if scale <= 0 or margin < 0:
            raise ValueError(f"AM-Softmax needs scale > 0 and margin >= 0, got scale={scale}, margin={margin}")
        self.scale = float(scale)
        self.margin = float(margin)

    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(targets, num_classes=logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(logits - (self.scale * self.margin) * onehot, targets)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin={self.margin}"


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Empty mask -> 0 (still attached to the graph), never 0/0 = NaN.
    return (values * mask).sum() / mask.sum().clamp_min(1)


class SimilarityLoss(nn.Module):
    """Cosine contrastive loss over all pairs of the batch (formula in the module docstring)."""

    def __init__(self, margin: float = DEFAULT_SIMILARITY_MARGIN) -> None:
        super().__init__()
        if not -1.0 <= margin <= 1.0:
            raise ValueError(f"similarity margin is a cosine, in [-1, 1]; got {margin}")
        self.margin = float(margin)

    def forward(self, logits: torch.Tensor | None, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings.float(), dim=1)  # float32 even under AMP: cosines near 1 matter
        cos = z @ z.T
        pairs = torch.ones_like(cos, dtype=torch.bool).triu(diagonal=1)
        same = targets[:, None] == targets[None, :]
        pull = _masked_mean(1.0 - cos, (pairs & same).to(cos.dtype))
        push = _masked_mean(F.relu(cos - self.margin), (pairs & ~same).to(cos.dtype))
        return pull + push

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


LOSS_NAMES = ("ce", "am_softmax", "similarity")
_ALIASES = {"cross_entropy": "ce", "amsoftmax": "am_softmax", "am": "am_softmax", "sim": "similarity"}


def parse_loss_spec(spec: str) -> list[tuple[float, str]]:
    """``"am_softmax+0.5*similarity"`` -> ``[(1.0, "am_softmax"), (0.5, "similarity")]``."""
    terms: list[tuple[float, str]] = []
    for raw in spec.replace(" ", "").lower().split("+"):
        weight, name = _parse_term(raw, spec)
        if name in {n for _, n in terms}:
            raise ValueError(f"loss {name!r} appears twice in {spec!r}")
        terms.append((weight, name))
    return terms


def _parse_term(raw: str, spec: str) -> tuple[float, str]:
    weight_text, _, name = raw.rpartition("*")
    name = _ALIASES.get(name, name)
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r} in {spec!r}; known: {', '.join(LOSS_NAMES)}")
    try:
        weight = float(weight_text) if weight_text else 1.0
    except ValueError:
        raise ValueError(f"bad weight {weight_text!r} in {spec!r}; write e.g. 0.1*similarity") from None
    if weight < 0:
        raise ValueError(f"negative weight in {spec!r}")
    return weight, name


def head_for_loss(spec: str) -> str:
    """``"cosine"`` when the combination includes AM-Softmax, else ``"linear"``."""
    return "cosine" if any(name == "am_softmax" for _, name in parse_loss_spec(spec)) else "linear"


class CombinedLoss(nn.Module):
    """Weighted sum of loss terms; ``last_components`` keeps each (unweighted, detached) term for logging."""

    def __init__(self, spec: str, terms: list[tuple[float, str, nn.Module]]) -> None:
        super().__init__()
        self.spec = spec
        self.weights = {name: weight for weight, name, _ in terms}
        self.terms = nn.ModuleDict({name: module for _, name, module in terms})
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def head(self) -> str:
        return head_for_loss(self.spec)

    def forward(self, logits: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        values = {name: term(logits, embeddings, targets) for name, term in self.terms.items()}
        # detached tensors, not floats: .item() here would sync the GPU every step
        self.last_components = {name: v.detach() for name, v in values.items()}
        return sum(self.weights[name] * v for name, v in values.items())


def build_loss(
    spec: str = "ce",
    scale: float = DEFAULT_COSINE_SCALE,
    margin: float = DEFAULT_AM_MARGIN,
    similarity_margin: float = DEFAULT_SIMILARITY_MARGIN,
) -> CombinedLoss:
    """Loss from a spec such as ``"ce"``, ``"am_softmax"``, ``"ce+0.1*similarity"``.

    ``scale``/``margin`` are AM-Softmax's (``scale`` must equal the cosine head's);
    ``similarity_margin`` is the cosine below which live/attack pairs stop being pushed.
    """
    factories = {
        "ce": CrossEntropyLoss,
        "am_softmax": lambda: AMSoftmaxLoss(scale=scale, margin=margin),
        "similarity": lambda: SimilarityLoss(margin=similarity_margin),
    }
    terms = [(weight, name, factories[name]()) for weight, name in parse_loss_spec(spec)]
    return CombinedLoss(spec, terms)
