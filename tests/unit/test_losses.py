"""Losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from raypipe.models import create_model
from raypipe.models.losses import (
    AMSoftmaxLoss,
    CrossEntropyLoss,
    SimilarityLoss,
    build_loss,
    head_for_loss,
    parse_loss_spec,
)

NO_EMB = torch.zeros(2, 4)


def test_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([0, 1])
    # row 0: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2) = 0.126928
    # row 1: -log(e^0 / (e^2 + e^0)) = log(1 + e^2)  = 2.126928
    # mean = 1.126928
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(2))) / 2
    assert CrossEntropyLoss()(logits, NO_EMB, targets).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.126928, abs=1e-6)


def test_am_softmax_by_hand():
    loss = AMSoftmaxLoss(scale=10.0, margin=0.5)  # subtracts s*m = 5 from the target logit
    # cosines (0.3, 0.1) -> logits 10 * cos = (3, 1)
    logits = torch.tensor([[3.0, 1.0]])
    # target 0: adjusted (3 - 5, 1) = (-2, 1): -log(e^-2 / (e^-2 + e^1)) = log(1 + e^3) = 3.048587
    assert loss(logits, None, torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(3)), abs=1e-5)
    # target 1: adjusted (3, 1 - 5) = (3, -4): log(1 + e^7) = 7.000912
    assert loss(logits, None, torch.tensor([1])).item() == pytest.approx(math.log(1 + math.exp(7)), abs=1e-5)


def test_am_softmax_with_zero_margin_is_cross_entropy():
    logits = torch.tensor([[3.0, 1.0], [-2.0, 0.5]])
    targets = torch.tensor([1, 0])
    am = AMSoftmaxLoss(scale=10.0, margin=0.0)(logits, None, targets)
    assert am.item() == pytest.approx(CrossEntropyLoss()(logits, None, targets).item(), abs=1e-6)


def test_similarity_by_hand():
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    # pairs: (0,1) same, cos = 1/sqrt2 = 0.707107 -> pull = 1 - 0.707107 = 0.292893
    #        (0,2) diff, cos = 0          -> relu(0 - 0)        = 0
    #        (1,2) diff, cos = 0.707107   -> relu(0.707107 - 0) = 0.707107
    # margin 0:   0.292893 + (0 + 0.707107) / 2 = 0.646447
    r = 1 / math.sqrt(2)
    assert SimilarityLoss(margin=0.0)(None, emb, targets).item() == pytest.approx((1 - r) + r / 2, abs=1e-6)
    # margin 0.5: 0.292893 + (0 + 0.207107) / 2 = 0.396447
    assert SimilarityLoss(margin=0.5)(None, emb, targets).item() == pytest.approx((1 - r) + (r - 0.5) / 2, abs=1e-6)


def test_similarity_is_scale_invariant():
    emb = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([0, 0, 1])
    loss = SimilarityLoss()
    assert loss(None, emb * 7, targets).item() == pytest.approx(loss(None, emb, targets).item(), abs=1e-6)


@pytest.mark.parametrize(
    "emb, targets",
    [
        (torch.randn(4, 3), torch.tensor([1, 1, 1, 1])),  # one class: no live/attack pair
        (torch.randn(1, 3), torch.tensor([0])),  # batch of one: no pair at all
        (torch.zeros(3, 3), torch.tensor([0, 1, 0])),  # degenerate zero embeddings
        (torch.randn(2, 3), torch.tensor([0, 1])),  # no same-class pair
    ],
)
def test_similarity_edge_cases_are_finite_with_finite_gradients(emb, targets):
    emb = emb.clone().requires_grad_(True)
    value = SimilarityLoss()(None, emb, targets)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()


def test_one_class_batch_only_pulls():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # single pair, same class, cos 0 -> 1 - 0 = 1; no push pairs -> 0
    assert SimilarityLoss()(None, emb, torch.tensor([0, 0])).item() == pytest.approx(1.0)


def test_build_loss_combination_by_hand():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    emb = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    targets = torch.tensor([0, 1])
    # ce = 1.126928 (see test_cross_entropy_by_hand)
    # similarity: no same-class pair -> pull 0; one live/attack pair, cos = 0.6 -> push 0.6
    # total = 1.126928 + 0.1 * 0.6 = 1.186928
    loss = build_loss("ce+0.1*similarity")
    expected = 1.126928 + 0.1 * 0.6
    assert loss(logits, emb, targets).item() == pytest.approx(expected, abs=1e-5)
    assert loss.last_components["similarity"].item() == pytest.approx(0.6, abs=1e-6)
    assert loss.head == "linear"


def test_build_loss_am_softmax_uses_scale_and_margin():
    logits = torch.tensor([[3.0, 1.0]])
    loss = build_loss("am_softmax", scale=10.0, margin=0.5)
    assert loss(logits, torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(3)), abs=1e-5)


def test_parse_loss_spec():
    assert parse_loss_spec("ce") == [(1.0, "ce")]
    assert parse_loss_spec("am_softmax + 0.5*similarity") == [(1.0, "am_softmax"), (0.5, "similarity")]
    assert parse_loss_spec("cross_entropy+1e-1*sim") == [(1.0, "ce"), (0.1, "similarity")]


@pytest.mark.parametrize("spec", ["", "focal", "ce+ce", "x*ce", "ce+-1*similarity"])
def test_bad_loss_specs_raise(spec):
    with pytest.raises(ValueError):
        build_loss(spec)


def test_head_for_loss():
    assert head_for_loss("ce") == "linear"
    assert head_for_loss("ce+0.1*similarity") == "linear"
    assert head_for_loss("am_softmax") == "cosine"
    assert head_for_loss("am_softmax+0.5*similarity") == "cosine"


def test_one_training_step_with_matching_head():
    spec = "am_softmax+0.5*similarity"
    model = create_model("attacknet", head=head_for_loss(spec), scale=30.0)
    loss_fn = build_loss(spec, scale=30.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    logits, emb = model.forward_with_embeddings(torch.randn(4, 3, 32, 32))
    value = loss_fn(logits, emb, torch.tensor([0, 1, 0, 1]))
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_training_step_on_cuda():
    spec = "am_softmax+0.5*similarity"
    model = create_model("resnet18", head=head_for_loss(spec)).cuda()
    loss_fn = build_loss(spec)
    x = torch.randn(4, 3, 256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, emb = model.forward_with_embeddings(x)
        value = loss_fn(logits, emb, torch.tensor([0, 1, 0, 1], device="cuda"))
    value.backward()
    assert torch.isfinite(value)
    assert logits.abs().max().item() <= 30.0 * 1.01  # bf16 rounding of scale * cos
