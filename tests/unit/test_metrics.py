"""Tests for raypipe.metrics: hand-computed cases, degenerate inputs, threshold rules,
brute-force and independent cross-checks of the metrics computed here (EER, BPCER@APCER).

Conventions under test: label 0 = live, 1 = attack; scores are spoof scores;
rejected (predicted attack) iff score >= threshold; live is the positive class.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from raypipe import metrics as M

# ----------------------------------------------------------------------------- hand-made case A
#   idx    0    1    2    3  |  4      5       6      7       8      9
#   label  0    0    0    0  |  1      1       1      1       1      1
#   score .1   .2   .6   .3  | .9     .8      .4     .7      .2     .95
#   type   -    -    -    -  | print  replay  print  replay  print  mask
LABELS_A = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES_A = np.array([0.1, 0.2, 0.6, 0.3, 0.9, 0.8, 0.4, 0.7, 0.2, 0.95])
TYPES_A = np.array(["", "", "", "", "print", "replay", "print", "replay", "print", "mask"])


def test_confusion_counts_hand():
    # threshold 0.5: live .1 .2 .3 accepted, .6 rejected -> tp=3 fn=1
    # attacks .4 .2 accepted (fp=2); .9 .8 .7 .95 rejected (tn=4)
    assert M.confusion_counts(LABELS_A, SCORES_A, 0.5) == {"tp": 3, "fn": 1, "fp": 2, "tn": 4}


def test_score_equal_to_threshold_is_rejected():
    # both samples score exactly 0.5: both rejected -> live is a FN, attack a TN
    assert M.confusion_counts([0, 1], [0.5, 0.5], 0.5) == {"tp": 0, "fn": 1, "fp": 0, "tn": 1}
    # just above -> both accepted
    assert M.confusion_counts([0, 1], [0.5, 0.5], 0.5000001) == {"tp": 1, "fn": 0, "fp": 1, "tn": 0}


def test_classification_report_hand():
    r = M.classification_report(LABELS_A, SCORES_A, 0.5)
    # tp=3 fn=1 fp=2 tn=4
    assert r["precision_live"] == pytest.approx(3 / 5)  # 3 / (3 + 2)
    assert r["recall_live"] == pytest.approx(3 / 4)  # 3 / (3 + 1)
    assert r["f1_live"] == pytest.approx(2 / 3)  # 2*.6*.75/(1.35) = 6/9
    assert r["precision_attack"] == pytest.approx(4 / 5)  # tn / (tn + fn)
    assert r["recall_attack"] == pytest.approx(4 / 6)  # tn / (tn + fp)
    assert r["f1_attack"] == pytest.approx(8 / 11)  # 2*4 / (8 + 2 + 1)
    assert r["accuracy"] == pytest.approx(7 / 10)


def test_far_frr_hter_hand():
    r = M.far_frr_hter(LABELS_A, SCORES_A, 0.5)
    assert r["far"] == pytest.approx(2 / 6)  # fp / (fp + tn)
    assert r["frr"] == pytest.approx(1 / 4)  # fn / (tp + fn)
    assert r["hter"] == pytest.approx(7 / 24)  # (1/3 + 1/4) / 2


def test_apcer_bpcer_acer_hand_per_type():
    r = M.apcer_bpcer_acer(LABELS_A, SCORES_A, 0.5, attack_types=TYPES_A)
    # print: .9 rej, .4 acc, .2 acc -> 2/3; replay: .8 .7 rejected -> 0; mask: .95 -> 0
    assert r["apcer_per_type"] == pytest.approx({"mask": 0.0, "print": 2 / 3, "replay": 0.0})
    assert r["apcer"] == pytest.approx(2 / 3)  # worst type
    assert r["bpcer"] == pytest.approx(1 / 4)  # the live .6
    assert r["acer"] == pytest.approx(11 / 24)  # (2/3 + 1/4) / 2


def test_single_type_apcer_equals_far():
    r = M.apcer_bpcer_acer(LABELS_A, SCORES_A, 0.5)
    h = M.far_frr_hter(LABELS_A, SCORES_A, 0.5)
    assert r["apcer_per_type"] == pytest.approx({"attack": 2 / 6})
    assert (r["apcer"], r["bpcer"], r["acer"]) == pytest.approx((h["far"], h["frr"], h["hter"]))


def test_live_attack_type_values_are_ignored():
    types = TYPES_A.copy()
    types[:4] = ["print", "zzz", None, "replay"]  # junk on live rows
    r = M.apcer_bpcer_acer(LABELS_A, SCORES_A, 0.5, attack_types=types)
    assert set(r["apcer_per_type"]) == {"mask", "print", "replay"}
    assert r["apcer_per_type"]["print"] == pytest.approx(2 / 3)


def test_roc_curve_hand():
    fpr, tpr, thr = M.roc_curve(LABELS_A, SCORES_A)
    # candidates: distinct scores ascending, then one just above the max
    np.testing.assert_allclose(thr[:-1], [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
    assert 0.95 < thr[-1] < 0.95 + 1e-12 and np.isfinite(thr[-1])
    # fpr = FAR(t) = attacks with score < t, out of 6 (attack scores .2 .4 .7 .8 .9 .95)
    np.testing.assert_allclose(fpr, np.array([0, 0, 1, 1, 2, 2, 3, 4, 5, 6]) / 6)
    # tpr = live with score < t, out of 4 (live scores .1 .2 .3 .6)
    np.testing.assert_allclose(tpr, np.array([0, 1, 2, 3, 3, 4, 4, 4, 4, 4]) / 4)


def test_auc_hand():
    # Per attack: live scores strictly below it (+0.5 per tie):
    # .9 -> 4, .8 -> 4, .4 -> 3, .7 -> 4, .2 -> 1 + 0.5 (tie with live .2), .95 -> 4 = 20.5 of 24 pairs
    assert M.auc(LABELS_A, SCORES_A) == pytest.approx(20.5 / 24)


def test_eer_hand():
    # FAR/FRR at candidates: .3 -> 1/6, 2/4 ; .4 -> 1/6, 1/4 ; .6 -> 2/6, 1/4 ; .7 -> 2/6, 0
    # sign change of FAR-FRR between .4 (-1/12) and .6 (+1/12); FRR is 1/4 on that segment,
    # so FAR == FRR at 1/4 (alpha = 0.5). |FAR-FRR| ties (1/12 both) -> the lower threshold .4.
    e, t = M.eer(LABELS_A, SCORES_A)
    assert e == pytest.approx(0.25)
    assert t == pytest.approx(0.4)
    assert M.threshold_at_eer(LABELS_A, SCORES_A) == t


def test_eer_interpolates_between_candidates():
    # live .1 .3, attack .2 .4. Candidates .1 .2 .3 .4 top:
    #  t=.2: FAR 0, FRR 1/2 (d=-1/2);  t=.3: FAR 1/2, FRR 1/2 (d=0)  -> EER exactly 1/2 at .3
    assert M.eer([0, 0, 1, 1], [0.1, 0.3, 0.2, 0.4]) == pytest.approx((0.5, 0.3))
    # live .1 .2 .3, attack .15 .35 .4:
    #  t=.15: FAR 0, FRR 2/3 ; t=.2: FAR 1/3, FRR 2/3 (d=-1/3); t=.3: FAR 1/3, FRR 1/3 (d=0)
    assert M.eer([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.15, 0.35, 0.4]) == pytest.approx((1 / 3, 0.3))
    # live .1 .2 .3 .4, attack .35 .5:
    #  t=.35: FAR 0, FRR 1/4 (d=-1/4); t=.4: FAR 1/2, FRR 1/4 (d=+1/4)
    #  segment FAR 0 -> 1/2 at FRR 1/4 -> EER = 1/4; |d| tie -> lower threshold .35
    assert M.eer([0, 0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.35, 0.5]) == pytest.approx((0.25, 0.35))
    # live .1 .5, attack .2 .3 .4 .6:
    #  t=.5: FAR 3/4, FRR 1/2 (d=+1/4); t=.4: FAR 2/4, FRR 1/2 (d=0) -> EER 1/2 at .4
    assert M.eer([0, 0, 1, 1, 1, 1], [0.1, 0.5, 0.2, 0.3, 0.4, 0.6]) == pytest.approx((0.5, 0.4))


def test_eer_non_tie_picks_closer_candidate():
    # live .1 .2 .3 .4 .5, attack .25 .6 .7
    #  t=.3: FAR 1/3, FRR 3/5 (d=-4/15); t=.4: FAR 1/3, FRR 2/5 (d=-1/15);
    #  t=.5: FAR 1/3, FRR 1/5 (d=+2/15)  -> crossing between .4 and .5 on FAR = 1/3 -> EER 1/3,
    #  closer candidate is .4 (|d| = 1/15 < 2/15)
    e, t = M.eer([0, 0, 0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.25, 0.6, 0.7])
    assert e == pytest.approx(1 / 3)
    assert t == pytest.approx(0.4)


def test_bpcer_at_apcer_hand():
    # single type: APCER == FAR; FAR = 0 up to t = .2 where BPCER = 3/4 (live .2 .3 .6 rejected)
    r = M.bpcer_at_apcer(LABELS_A, SCORES_A)
    assert r == pytest.approx({"bpcer_at_apcer_1": 0.75, "bpcer_at_apcer_5": 0.75, "bpcer_at_apcer_10": 0.75})
    # target 0.34: FAR <= .34 up to t = .7 (FAR 2/6), where BPCER = 0
    assert M.bpcer_at_apcer(LABELS_A, SCORES_A, targets=(0.34,)) == pytest.approx({"bpcer_at_apcer_34": 0.0})
    assert M.threshold_at_apcer(LABELS_A, SCORES_A, 0.34) == pytest.approx(0.7)
    # per type, the worst type decides: print APCER at .4 = 1/3 (.2), at .6 = 2/3 (.2 .4)
    # -> largest feasible t = .4, BPCER there = 1/4
    r = M.bpcer_at_apcer(LABELS_A, SCORES_A, attack_types=TYPES_A, targets=(0.34,))
    assert r == pytest.approx({"bpcer_at_apcer_34": 0.25})
    assert M.threshold_at_apcer(LABELS_A, SCORES_A, 0.34, attack_types=TYPES_A) == pytest.approx(0.4)
    # target 0: accept no attack at all -> t = .2 (lowest attack), BPCER 3/4
    assert M.threshold_at_apcer(LABELS_A, SCORES_A, 0.0) == pytest.approx(0.2)


def test_threshold_at_apcer_exact_target_is_feasible():
    # 10 attacks scoring .01 .. .10, 1 live at .5; APCER 1/10 exactly at t=.02 ... t=.02 accepts .01 only
    scores = np.r_[np.arange(1, 11) / 100, 0.5]
    labels = np.r_[np.ones(10, int), 0]
    assert M.threshold_at_apcer(labels, scores, 0.10) == pytest.approx(0.02)
    assert M.threshold_at_apcer(labels, scores, 0.20) == pytest.approx(0.03)


def test_target_keys_and_validation():
    r = M.bpcer_at_apcer(LABELS_A, SCORES_A, targets=(0.001, 0.005, 0.2))
    assert set(r) == {"bpcer_at_apcer_0.1", "bpcer_at_apcer_0.5", "bpcer_at_apcer_20"}
    with pytest.raises(ValueError):
        M.bpcer_at_apcer(LABELS_A, SCORES_A, targets=(1.5,))
    with pytest.raises(ValueError):
        M.threshold_at_apcer(LABELS_A, SCORES_A, -0.1)


# ----------------------------------------------------------------------------- degenerate cases


def test_only_live():
    y, s = [0, 0, 0], [0.1, 0.2, 0.9]
    assert M.confusion_counts(y, s, 0.5) == {"tp": 2, "fn": 1, "fp": 0, "tn": 0}
    h = M.far_frr_hter(y, s, 0.5)
    assert math.isnan(h["far"]) and h["frr"] == pytest.approx(1 / 3) and math.isnan(h["hter"])
    r = M.classification_report(y, s, 0.5)
    assert r["precision_live"] == 1.0 and r["recall_live"] == pytest.approx(2 / 3)
    assert r["f1_live"] == pytest.approx(0.8)
    assert r["precision_attack"] == 0.0  # 0 / (0 + 1): one live was predicted attack
    assert math.isnan(r["recall_attack"])  # no attacks at all
    assert r["f1_attack"] == 0.0  # 0 / (0 + 0 + 1)
    a = M.apcer_bpcer_acer(y, s, 0.5)
    assert a["apcer_per_type"] == {} and math.isnan(a["apcer"]) and math.isnan(a["acer"])
    assert a["bpcer"] == pytest.approx(1 / 3)
    assert math.isnan(M.auc(y, s))
    assert all(math.isnan(v) for v in M.eer(y, s))
    fpr, tpr, _ = M.roc_curve(y, s)
    assert np.isnan(fpr).all() and not np.isnan(tpr).any()
    assert all(math.isnan(v) for v in M.bpcer_at_apcer(y, s).values())
    with pytest.raises(ValueError):
        M.threshold_at_eer(y, s)
    with pytest.raises(ValueError):
        M.threshold_at_apcer(y, s, 0.05)
    out = M.compute_all(y, s, 0.5)
    assert out["far"] is None and out["auc"] is None and out["eer"] is None and out["eer_threshold"] is None
    assert out["apcer"] is None and out["bpcer_at_apcer_5"] is None
    assert out["n_live"] == 3 and out["n_attack"] == 0
    json.dumps(out, allow_nan=False)


def test_only_attack():
    y, s = [1, 1], [0.3, 0.8]
    h = M.far_frr_hter(y, s, 0.5)
    assert h["far"] == 0.5 and math.isnan(h["frr"]) and math.isnan(h["hter"])
    a = M.apcer_bpcer_acer(y, s, 0.5)
    assert a["apcer"] == 0.5 and math.isnan(a["bpcer"])
    r = M.classification_report(y, s, 0.5)
    assert math.isnan(r["recall_live"]) and r["precision_live"] == 0.0 and r["accuracy"] == 0.5
    assert math.isnan(M.auc(y, s))
    _, tpr, _ = M.roc_curve(y, s)
    assert np.isnan(tpr).all()
    # a threshold can still be chosen for a target APCER without live samples
    assert M.threshold_at_apcer(y, s, 0.5) == pytest.approx(0.8)
    assert math.isnan(M.bpcer_at_apcer(y, s)["bpcer_at_apcer_5"])
    json.dumps(M.compute_all(y, s, 0.5), allow_nan=False)


def test_precision_undefined_when_class_never_predicted():
    # threshold 0 rejects everything: nothing accepted -> live precision 0/0
    r = M.classification_report([0, 1, 1], [0.2, 0.4, 0.9], 0.0)
    assert math.isnan(r["precision_live"]) and r["recall_live"] == 0.0 and r["f1_live"] == 0.0
    assert r["precision_attack"] == pytest.approx(2 / 3) and r["recall_attack"] == 1.0


def test_all_right():
    y, s = [0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]
    assert M.auc(y, s) == 1.0
    # candidates .1 .2 .8: FAR 0 and FRR 1, 1/2, 0 -> EER 0 exactly at t = .8
    assert M.eer(y, s) == (0.0, 0.8)
    out = M.compute_all(y, s, M.threshold_at_eer(y, s))
    assert out["hter"] == 0.0 and out["acer"] == 0.0 and out["accuracy"] == 1.0
    assert out["f1_live"] == 1.0 and out["f1_attack"] == 1.0
    assert out["bpcer_at_apcer_1"] == 0.0


def test_all_wrong():
    y, s = [0, 0, 1, 1], [0.8, 0.9, 0.1, 0.2]
    assert M.auc(y, s) == 0.0
    # candidates .1 .2 .8: FAR 0, 1/2, 1 with FRR 1 -> EER 1 at t = .8
    assert M.eer(y, s) == (1.0, 0.8)
    out = M.compute_all(y, s, 0.5)
    assert out["far"] == 1.0 and out["frr"] == 1.0 and out["hter"] == 1.0 and out["accuracy"] == 0.0
    assert out["precision_live"] == 0.0 and out["f1_live"] == 0.0 and out["f1_attack"] == 0.0
    # APCER <= 1% only when nothing is accepted -> every live rejected
    assert out["bpcer_at_apcer_1"] == 1.0


def test_all_scores_tied():
    y, s = [0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]
    fpr, tpr, thr = M.roc_curve(y, s)
    np.testing.assert_array_equal(fpr, [0.0, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 1.0])
    assert thr[0] == 0.5 and thr[1] > 0.5
    assert M.auc(y, s) == 0.5
    # FAR-FRR: -1 at .5, +1 just above -> EER 1/2; |d| tie -> the lower (stricter) threshold .5
    assert M.eer(y, s) == (0.5, 0.5)
    assert M.far_frr_hter(y, s, 0.5) == {"far": 0.0, "frr": 1.0, "hter": 0.5}


def test_single_sample_and_input_types():
    out = M.compute_all([1], [0.3], 0.5)
    assert out["fp"] == 1 and out["far"] == 1.0 and out["auc"] is None
    # lists, bools, ints as floats and float32 scores are all fine
    a = M.confusion_counts([False, True], np.array([0.1, 0.9], np.float32), 0.5)
    b = M.confusion_counts(np.array([0.0, 1.0]), [0, 1], 0.5)
    assert a == b == {"tp": 1, "fn": 0, "fp": 0, "tn": 1}


@pytest.mark.parametrize(
    "labels, scores",
    [
        ([], []),  # empty
        ([0, 1], [0.1]),  # length mismatch
        ([0, 2], [0.1, 0.2]),  # bad label
        ([0, -1], [0.1, 0.2]),
        ([0, 0.5], [0.1, 0.2]),
        ([0, np.nan], [0.1, 0.2]),
        (["live", "attack"], [0.1, 0.2]),
        (["0", "1"], [0.1, 0.2]),  # strings are not labels
        ([0, 1], [0.1, np.nan]),  # non-finite scores
        ([0, 1], [0.1, np.inf]),
        ([0, 1], [[0.9, 0.1], [0.2, 0.8]]),  # softmax matrix instead of attack score
        ([0, 1], [[0.1], [0.9]]),  # column vector: same size, still not 1-D
    ],
)
@pytest.mark.parametrize(
    "fn",
    [
        lambda y, s: M.confusion_counts(y, s, 0.5),
        lambda y, s: M.classification_report(y, s, 0.5),
        lambda y, s: M.far_frr_hter(y, s, 0.5),
        lambda y, s: M.apcer_bpcer_acer(y, s, 0.5),
        M.roc_curve,
        M.auc,
        M.eer,
        M.bpcer_at_apcer,
        M.threshold_at_eer,
        lambda y, s: M.threshold_at_apcer(y, s, 0.05),
        lambda y, s: M.compute_all(y, s, 0.5),
    ],
)
def test_invalid_input_raises(fn, labels, scores):
    with pytest.raises(ValueError):
        fn(labels, scores)


def test_invalid_threshold_and_types():
    with pytest.raises(ValueError):
        M.confusion_counts([0, 1], [0.1, 0.2], float("nan"))
    with pytest.raises(ValueError):
        M.apcer_bpcer_acer([0, 1], [0.1, 0.2], 0.5, attack_types=["print"])
    with pytest.raises(ValueError):
        M.bpcer_at_apcer([0, 1], [0.1, 0.2], attack_types=["a", "b", "c"])


# ----------------------------------------------------------------------------- threshold rules


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


SEPARABLE = ([0, 0, 1, 1], [0.01, 0.2, 0.9, 0.999])  # zero error for every t in (0.2, 0.9]


def test_eer_rule_on_a_separable_dev_set_takes_the_logit_middle_of_the_zero_error_range():
    y, s = SEPARABLE
    t = M.choose_threshold(y, s, "eer")
    # logit(.2) = log(1/4), logit(.9) = log(9): middle log(3/2) -> odds 3/2 -> t = 0.6
    assert t == pytest.approx(sigmoid((logit(0.2) + logit(0.9)) / 2)) == pytest.approx(0.6)
    assert M.threshold_at_eer(y, s) == 0.9  # the EER point alone sits at the range's end
    assert M.far_frr_hter(y, s, t) == {"far": 0.0, "frr": 0.0, "hter": 0.0}
    assert M.choose_threshold(y, s) == t  # eer is the default rule


def test_eer_rule_middle_gives_unseen_attacks_a_margin():
    # dev attacks all score >= .9996; an unseen session's attacks score .98 to .999
    dev_y, dev_s = [0, 0, 0, 1, 1], [0.02, 0.1, 0.3, 0.9996, 0.9999]
    t = M.choose_threshold(dev_y, dev_s)
    # odds sqrt(3/7 * 9996/4) = sqrt(1071) -> t = 0.9703
    assert t == pytest.approx(math.sqrt(1071) / (1 + math.sqrt(1071)))
    unseen = np.array([0.98, 0.99, 0.995, 0.999])
    assert not np.any(unseen < t)  # all rejected
    assert np.all(unseen < M.threshold_at_eer(dev_y, dev_s))  # the range's end (.9996) accepts them all


def test_eer_rule_on_overlapping_scores_keeps_the_eer_point():
    assert M.choose_threshold(LABELS_A, SCORES_A, "eer") == pytest.approx(0.4)  # see test_eer_hand
    # touching (a live and an attack tie at .5) is not separable either:
    # FAR/FRR at .5: 0 / 1/2, just above .5: 1/2 / 0 -> EER 1/4, |d| tie -> the lower .5
    assert M.choose_threshold([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.5


def test_eer_rule_range_within_the_logit_clip_uses_the_plain_middle():
    # both ends clip to 1 - 1e-6, where the logit middle would not lie inside (.9999991, .9999995]
    t = M.choose_threshold([0, 1], [0.9999991, 0.9999995])
    assert t == pytest.approx(0.9999993, abs=1e-12)


def test_apcer_rule_takes_the_logit_middle_of_the_thresholds_with_the_same_apcer_and_bpcer():
    # pooled (see test_bpcer_at_apcer_hand): APCER <= .34 up to t = .7 (APCER 2/6, BPCER 0);
    # at .6 BPCER is 1/4, so exactly (.6, .7] gives (2/6, 0): odds sqrt(1.5 * 7/3) = sqrt(3.5)
    t = M.choose_threshold(LABELS_A, SCORES_A, "apcer:0.34")
    assert t == pytest.approx(math.sqrt(3.5) / (1 + math.sqrt(3.5)))  # 0.6517
    r = M.apcer_bpcer_acer(LABELS_A, SCORES_A, t)
    assert (r["apcer"], r["bpcer"]) == pytest.approx((2 / 6, 0.0))
    # per type the best is t = .4 (APCER 1/3, BPCER 1/4), and .3 gives BPCER 2/4: range (.3, .4]
    t = M.choose_threshold(LABELS_A, SCORES_A, "apcer:0.34", attack_types=TYPES_A)
    assert t == pytest.approx(sigmoid((logit(0.3) + logit(0.4)) / 2))  # 0.3483


def test_apcer_rule_range_can_span_several_scores_with_attack_types():
    # live .1 .2; print .3 .8; replay .5 .9. Worst-type APCER / BPCER at t = .3: 0 / 0,
    # t = .5: 1/2 / 0 (print .3 accepted), t = .8: 1/2 / 0 (+ replay .5), t = .9: 1 / 0.
    # APCER <= .5: best t = .8, tied with .5 -> the range is (.3, .8]
    y, s, types = [0, 0, 1, 1, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.5, 0.9], ["", "", "print", "print", "replay", "replay"]
    t = M.choose_threshold(y, s, "apcer:0.5", attack_types=types)
    assert t == pytest.approx(sigmoid((logit(0.3) + logit(0.8)) / 2))  # 0.5670
    # APCER <= .25: only t = .3 qualifies with BPCER 0; .2 has BPCER 1/2 -> (.2, .3]
    assert M.choose_threshold(y, s, "apcer:0.25", attack_types=types) == pytest.approx(
        sigmoid((logit(0.2) + logit(0.3)) / 2))


def test_apcer_rule_on_a_separable_set_matches_the_eer_rule_and_reaches_the_ends():
    y, s = SEPARABLE
    assert M.choose_threshold(y, s, "apcer:0") == pytest.approx(0.6)
    # APCER 1 allowed: accepting everything (every t above .999) is best; middle of (.999, 1 - 1e-6]
    t = M.choose_threshold(y, s, "apcer:1")
    assert t == pytest.approx(sigmoid((logit(0.999) + logit(1 - 1e-6)) / 2))
    assert M.apcer_bpcer_acer(y, s, t)["apcer"] == 1.0
    # APCER 0 when the lowest score is an attack: accept nothing, t in (-inf, .05] -> above 1e-6
    t = M.choose_threshold([1, 0], [0.05, 0.5], "apcer:0")
    assert t == pytest.approx(sigmoid((logit(1e-6) + logit(0.05)) / 2))
    # ... and when that score is 0 itself the range (-inf, 0] holds no clipped value: t = 0
    assert M.choose_threshold([1, 0], [0.0, 0.5], "apcer:0") == 0.0


@pytest.mark.parametrize("rule, expected", [("0.5", 0.5), (" 0.25 ", 0.25), ("1", 1.0), (0.7, 0.7)])
def test_fixed_rule_returns_the_number_whatever_the_dev_set(rule, expected):
    assert M.choose_threshold(LABELS_A, SCORES_A, rule) == expected
    assert M.choose_threshold([0, 0], [0.1, 0.2], rule) == expected  # a fixed threshold needs no dev set


@pytest.mark.parametrize("rule", ["eer", "apcer:0.05"])
@pytest.mark.parametrize("labels, missing", [([0, 0, 0], "0 attack"), ([1, 1, 1], "0 live")])
def test_one_class_dev_set_is_refused(rule, labels, missing):
    with pytest.raises(ValueError, match=missing):
        M.choose_threshold(labels, [0.1, 0.5, 0.9], rule)


@pytest.mark.parametrize("rule", ["median", "", "eer:0.1", "apcer", "apcer:", "apcer:x", "apcer:1.5",
                                  "apcer:-0.1", "1.5", "-0.1", "nan", "inf", 2.0])
def test_bad_threshold_rule_is_refused(rule):
    with pytest.raises(ValueError):
        M.parse_threshold_rule(rule)
    with pytest.raises(ValueError):
        M.choose_threshold(LABELS_A, SCORES_A, rule)


@pytest.mark.parametrize("rule", [None, True, ["eer"]])
def test_threshold_rule_of_the_wrong_type_is_refused(rule):
    with pytest.raises(TypeError):
        M.choose_threshold(LABELS_A, SCORES_A, rule)


def test_rules_need_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        M.choose_threshold([0, 1], [-2.0, 3.0], "eer")


def test_describe_threshold_rule():
    assert M.describe_threshold_rule("0.5") == "fixed threshold 0.5"
    assert "EER" in M.describe_threshold_rule("eer") and "0.05" in M.describe_threshold_rule("apcer:0.05")


# ----------------------------------------------------------------------------- compute_all

REQUIRED_KEYS = {
    "hter", "far", "frr", "apcer", "apcer_per_type", "bpcer", "acer", "eer", "eer_threshold", "auc",
    "bpcer_at_apcer_1", "bpcer_at_apcer_5", "bpcer_at_apcer_10", "accuracy", "precision_live",
    "recall_live", "f1_live", "precision_attack", "recall_attack", "f1_attack", "tp", "fn", "fp", "tn",
    "n_live", "n_attack", "threshold",
}  # fmt: skip


def test_compute_all_hand_and_json():
    out = M.compute_all(LABELS_A, SCORES_A, 0.5, attack_types=TYPES_A)
    assert REQUIRED_KEYS <= set(out)
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    for k, v in out.items():
        if k == "apcer_per_type":
            assert all(type(x) is float for x in v.values())
        elif k in ("tp", "fn", "fp", "tn", "n_live", "n_attack"):
            assert type(v) is int, k
        else:
            assert type(v) is float, k
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (3, 1, 2, 4)
    assert (out["n_live"], out["n_attack"], out["threshold"]) == (4, 6, 0.5)
    assert out["hter"] == pytest.approx(7 / 24) and out["acer"] == pytest.approx(11 / 24)
    assert out["apcer"] == pytest.approx(2 / 3) and out["far"] == pytest.approx(1 / 3)
    assert (out["eer"], out["eer_threshold"]) == pytest.approx((0.25, 0.4))
    assert out["auc"] == pytest.approx(20.5 / 24)
    assert out["f1_attack"] == pytest.approx(8 / 11)


# ----------------------------------------------------------------------------- scikit-learn cross-checks


def _random_case(seed: int, n: int = 400, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    if ties:
        s = np.round(s, 1)  # heavy ties, scores land exactly on thresholds
    types = rng.choice(["print", "replay", "mask"], size=n, p=[0.5, 0.35, 0.15])
    return y, s, types


CASES = [(seed, ties) for seed in (0, 1, 2) for ties in (False, True)]


@pytest.mark.parametrize("seed, ties", CASES)
def test_roc_points_are_the_decisions_at_their_thresholds(seed, ties):
    """The ROC thresholds are usable as-is with our rule (reject iff score >= t)."""
    y, s, _ = _random_case(seed, ties=ties)
    fpr, tpr, thr = M.roc_curve(y, s)
    np.testing.assert_array_equal(thr[:-1], np.unique(s))
    assert np.isfinite(thr[-1]) and thr[-1] > s.max()
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    for k in range(0, thr.size, max(1, thr.size // 25)):
        h = M.far_frr_hter(y, s, thr[k])
        assert (h["far"], 1 - h["frr"]) == pytest.approx((fpr[k], tpr[k]))
    assert M.auc(y, s) == pytest.approx(skm.auc(fpr, tpr), abs=1e-12)  # AUC is the area under it


def _eer_from_sklearn(y, s):
    """Independent EER: crossing of FAR = 1 - TPR and FRR = FPR on sklearn's attack-positive ROC."""
    a_fpr, a_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    far, frr = 1 - a_tpr, a_fpr  # thresholds descending: FAR falls, FRR rises
    d = frr - far
    i = int(np.argmax(d >= 0))
    t = -d[i - 1] / (d[i] - d[i - 1])
    return far[i - 1] + t * (far[i] - far[i - 1])


@pytest.mark.parametrize("seed, ties", CASES)
def test_eer_cross_check(seed, ties):
    y, s, _ = _random_case(seed, ties=ties)
    e, t = M.eer(y, s)
    assert e == pytest.approx(_eer_from_sklearn(y, s), abs=1e-12)
    h = M.far_frr_hter(y, s, t)
    assert min(h["far"], h["frr"]) - 1e-12 <= e <= max(h["far"], h["frr"]) + 1e-12
    # the threshold minimises |FAR - FRR| over every candidate (brute force)
    cands = np.r_[np.unique(s), s.max() + 1]
    gaps = [abs(d["far"] - d["frr"]) for d in (M.far_frr_hter(y, s, c) for c in cands)]
    assert abs(h["far"] - h["frr"]) == pytest.approx(min(gaps), abs=1e-12)
    assert M.threshold_at_eer(y, s) == t


@pytest.mark.parametrize("seed, ties", CASES)
@pytest.mark.parametrize("use_types", [False, True])
def test_bpcer_at_apcer_brute_force(seed, ties, use_types):
    y, s, types = _random_case(seed, ties=ties)
    types = types if use_types else None
    targets = (0.01, 0.05, 0.10, 0.3)
    got = M.bpcer_at_apcer(y, s, attack_types=types, targets=targets)
    cands = np.r_[np.unique(s), s.max() + 1]
    table = [M.apcer_bpcer_acer(y, s, c, attack_types=types) for c in cands]
    for target, key in zip(targets, ["bpcer_at_apcer_1", "bpcer_at_apcer_5", "bpcer_at_apcer_10", "bpcer_at_apcer_30"]):
        best = min(r["bpcer"] for r in table if r["apcer"] <= target)
        assert got[key] == pytest.approx(best)
        thr = M.threshold_at_apcer(y, s, target, attack_types=types)
        at = M.apcer_bpcer_acer(y, s, thr, attack_types=types)
        assert at["apcer"] <= target and at["bpcer"] == pytest.approx(best)
    # the three default targets are non-increasing in BPCER
    d = M.bpcer_at_apcer(y, s, attack_types=types)
    assert d["bpcer_at_apcer_1"] >= d["bpcer_at_apcer_5"] >= d["bpcer_at_apcer_10"]


def test_per_type_apcer_matches_subset_far():
    y, s, types = _random_case(5)
    r = M.apcer_bpcer_acer(y, s, 0.5, attack_types=types)
    for k in ("print", "replay", "mask"):
        keep = (y == 0) | (types == k)
        assert r["apcer_per_type"][k] == pytest.approx(M.far_frr_hter(y[keep], s[keep], 0.5)["far"])
    assert r["apcer"] == max(r["apcer_per_type"].values())
    assert r["apcer"] >= M.far_frr_hter(y, s, 0.5)["far"]  # worst type >= pooled


def test_compute_all_consistent_with_parts():
    y, s, types = _random_case(7)
    t = M.threshold_at_eer(y, s)
    out = M.compute_all(y, s, t, attack_types=types)
    json.dumps(out, allow_nan=False)
    assert out["threshold"] == t
    assert out["eer_threshold"] == t and out["eer"] == pytest.approx(M.eer(y, s)[0])
    assert out["auc"] == pytest.approx(M.auc(y, s))
    for k, v in M.classification_report(y, s, t).items():
        assert out[k] == pytest.approx(v)
    assert out["apcer_per_type"] == pytest.approx(M.apcer_bpcer_acer(y, s, t, types)["apcer_per_type"])
    assert out["n_live"] + out["n_attack"] == len(y) == out["tp"] + out["fn"] + out["fp"] + out["tn"]


def test_auc_invariant_to_monotone_transform():
    y, s, _ = _random_case(3)
    logit = np.log(s + 1e-3) - np.log(1 - s + 1e-3)
    assert M.auc(y, logit) == pytest.approx(M.auc(y, s))
    assert M.eer(y, logit)[0] == pytest.approx(M.eer(y, s)[0])


def test_bpcer_rule_is_the_lowest_threshold_within_the_live_budget():
    live = np.linspace(0.001, 0.1, 100)  # 100 live scores, the top three 0.098, 0.099, 0.1
    attack = np.linspace(0.5, 0.9, 10)
    y, s = np.r_[np.zeros(100, int), np.ones(10, int)], np.r_[live, attack]
    one_percent = M.choose_threshold(y, s, "bpcer:0.01")
    assert live[-2] < one_percent <= live[-1]  # exactly one live score (1 %) at or above it
    assert M.compute_all(y, s, one_percent)["bpcer"] == pytest.approx(0.01)
    # the middle of the tied range in logit space: between the 99th and the 100th live score
    expected = 1 / (1 + np.exp(-(np.log(live[-2] / (1 - live[-2])) + np.log(live[-1] / (1 - live[-1]))) / 2))
    assert one_percent == pytest.approx(expected)
    # a budget of zero on a separable dev: the same zero-error range as the eer rule
    assert M.choose_threshold(y, s, "bpcer:0") == pytest.approx(M.choose_threshold(y, s, "eer"))
    with pytest.raises(ValueError, match="BPCER target"):
        M.choose_threshold(y, s, "bpcer:2")
