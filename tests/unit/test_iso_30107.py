"""ISO/IEC 30107-3 figures per presentation attack instrument species (metrics.iso_30107_3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from raypipe import metrics as M

# 11 live, 20 print and 10 replay attacks; accepted (called live) iff score < threshold.
LIVE_SCORES = [0.10, 0.20, 0.30, 0.35, 0.45, 0.55, 0.58, 0.65, 0.70, 0.80, 0.92]
PRINT_SCORES = [0.40, 0.60] + [0.90] * 18
REPLAY_SCORES = [0.50] + [0.95] * 9
LABELS = [0] * 11 + [1] * 30
SCORES = LIVE_SCORES + PRINT_SCORES + REPLAY_SCORES
SPECIES = [None] * 11 + ["print"] * 20 + ["replay"] * 10


def test_apcer_is_the_worst_species_and_acer_uses_it():
    r = M.iso_30107_3(LABELS, SCORES, 0.5, SPECIES)
    # at 0.5: print 0.40 accepted (1/20), replay 0.50 is not (0/10); live 0.55 .. 0.92 rejected (6/11)
    assert r["apcer_per_species"] == pytest.approx({"print": 0.05, "replay": 0.0})
    assert (r["apcer_max"], r["apcer_max_species"]) == (pytest.approx(0.05), "print")
    assert r["apcer_pooled"] == pytest.approx(1 / 30)
    assert r["bpcer"] == pytest.approx(6 / 11)
    assert r["acer"] == pytest.approx((0.05 + 6 / 11) / 2)
    assert r["acer_pooled"] == pytest.approx((1 / 30 + 6 / 11) / 2)
    assert r["acer_pooled"] == pytest.approx(M.far_frr_hter(LABELS, SCORES, 0.5)["hter"])


def test_bpcer100_20_10_are_the_lowest_bpcer_at_worst_species_apcer_at_most_1_5_10_percent():
    r = M.iso_30107_3(LABELS, SCORES, 0.5, SPECIES)
    # <= 1 %: no attack accepted: highest threshold 0.40, live >= 0.40: 7 of 11
    # <= 5 %: one print (1/20) but no replay (1/10 > 5 %): threshold 0.50, live >= 0.50: 6 of 11
    # <= 10 %: two prints and one replay: threshold 0.90, live >= 0.90: 1 of 11
    assert (r["bpcer100"], r["bpcer20"], r["bpcer10"]) == pytest.approx((7 / 11, 6 / 11, 1 / 11))


def test_pooled_species_would_hide_the_worst_one():
    """Replay accepted at 1/3, print at 0: pooled APCER 1/6, the standard's APCER 1/3."""
    labels, scores = [0, 0, 1, 1, 1, 1, 1, 1], [0.1, 0.7, 0.9, 0.9, 0.9, 0.2, 0.8, 0.9]
    species = [None, None, "print", "print", "print", "replay", "replay", "replay"]
    r = M.iso_30107_3(labels, scores, 0.5, species)
    assert r["apcer_per_species"] == pytest.approx({"print": 0.0, "replay": 1 / 3})
    assert (r["apcer_max"], r["apcer_max_species"], r["apcer_pooled"]) == (pytest.approx(1 / 3), "replay",
                                                                           pytest.approx(1 / 6))
    assert (r["acer"], r["acer_pooled"]) == pytest.approx(((1 / 3 + 1 / 2) / 2, (1 / 6 + 1 / 2) / 2))
    # BPCER10: replay may accept nothing (1/3 > 10 %): highest threshold 0.2, where live 0.7 is rejected
    assert r["bpcer10"] == pytest.approx(1 / 2)


def test_missing_species_is_unknown_and_counts():
    labels, scores = [0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9]
    r = M.iso_30107_3(labels, scores, 0.5, ["print", None, float("nan"), "", "print"])
    assert r["apcer_per_species"] == pytest.approx({"print": 0.0, "unknown": 2 / 3})  # live's value ignored
    assert r["apcer_max_species"] == "unknown"
    assert M.iso_30107_3(labels, scores, 0.5)["apcer_per_species"] == pytest.approx({"unknown": 0.5})


def test_one_species_gives_the_pooled_figures():
    r = M.iso_30107_3(LABELS, SCORES, 0.5, ["print"] * 41)
    h = M.far_frr_hter(LABELS, SCORES, 0.5)
    assert r["apcer_max"] == pytest.approx(r["apcer_pooled"]) and r["apcer_max"] == pytest.approx(h["far"])
    assert r["acer"] == pytest.approx(r["acer_pooled"]) and r["acer"] == pytest.approx(h["hter"])
    # pooled 30 attacks: <= 1 %: none (t = .40: 7/11); <= 5 %: one (t = .50: 6/11); <= 10 %: three (t = .90: 1/11)
    assert (r["bpcer100"], r["bpcer20"], r["bpcer10"]) == pytest.approx((7 / 11, 6 / 11, 1 / 11))


def test_no_attacks_and_no_live_are_undefined_not_errors():
    no_attack = M.iso_30107_3([0, 0, 0], [0.2, 0.6, 0.7], 0.5, [None] * 3)
    assert no_attack["apcer_per_species"] == {} and no_attack["apcer_max_species"] is None
    assert no_attack["bpcer"] == pytest.approx(2 / 3)
    assert all(math.isnan(no_attack[k]) for k in ("apcer_max", "apcer_pooled", "acer", "acer_pooled",
                                                   "bpcer100", "bpcer20", "bpcer10"))
    no_live = M.iso_30107_3([1, 1, 1, 1], [0.2, 0.6, 0.7, 0.9], 0.5, ["print", "print", "mask", "mask"])
    assert no_live["apcer_per_species"] == pytest.approx({"mask": 0.0, "print": 0.5})
    assert all(math.isnan(no_live[k]) for k in ("bpcer", "acer", "acer_pooled", "bpcer100", "bpcer20", "bpcer10"))
    out = M.compute_all([1, 1], [0.2, 0.9], 0.5, species=["print", "replay"])["iso"]  # JSON: nan -> None
    assert out["bpcer"] is None and out["acer"] is None
    assert (out["apcer_max"], out["apcer_max_species"], out["apcer_pooled"]) == (1.0, "print", 0.5)


def test_compute_all_adds_the_iso_section_only_with_species():
    assert "iso" not in M.compute_all(LABELS, SCORES, 0.5, SPECIES)
    out = M.compute_all(LABELS, SCORES, 0.5, attack_types=SPECIES, species=SPECIES)
    assert out["iso"]["apcer_max"] == pytest.approx(out["apcer"])  # same grouping: same worst APCER
    assert out["iso"]["bpcer20"] == pytest.approx(out["bpcer_at_apcer_5"])


@pytest.mark.parametrize("seed", range(5))
def test_bpcer_at_apcer_agrees_with_sklearn_roc_curve(seed):
    """One species: APCER = 1 - tpr and BPCER = fpr of sklearn's attack-positive ROC, so
    BPCERxx = min fpr over points with 1 - tpr <= target (ties in the scores included)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)  # rounded: many ties
    fpr, tpr, _ = skm.roc_curve(labels, scores, pos_label=1, drop_intermediate=False)
    r = M.iso_30107_3(labels, scores, 0.5, ["print"] * labels.size)
    for name, target in M.ISO_BPCER_TARGETS.items():
        assert r[name] == pytest.approx(fpr[1 - tpr <= target + 1e-12].min())


def test_species_length_must_match():
    with pytest.raises(ValueError, match="species"):
        M.iso_30107_3([0, 1], [0.1, 0.9], 0.5, ["print"])
