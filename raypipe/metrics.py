"""Presentation attack detection metrics (DESIGN section 7), pure numpy.

Conventions used by every function here
---------------------------------------
* ``labels``: 0 = live (bona fide), 1 = attack. Anything else is a ``ValueError``.
* ``scores``: spoof scores, higher = more likely an attack (e.g. the softmax
  probability of the attack class). They must be finite.
* Decision at a threshold ``t``: a sample is **rejected** (predicted attack)
  iff ``score >= t`` and **accepted** (predicted live) iff ``score < t``.
* The positive class is **live**, as in the AttackNet paper:
  TP = live accepted, FN = live rejected, FP = attack accepted, TN = attack rejected.
  FAR = FP / (FP + TN), FRR = FN / (TP + FN), HTER = (FAR + FRR) / 2.
* ISO/IEC 30107-3: APCER of one attack type = fraction of that type's attacks
  accepted; the reported APCER is the worst (largest) type's. BPCER = fraction
  of live samples rejected; ACER = (APCER + BPCER) / 2. With a single attack
  type APCER == FAR, BPCER == FRR and ACER == HTER.
* ROC in the same live-positive view: ``fpr = FAR(t)`` (attacks accepted),
  ``tpr = 1 - FRR(t)`` (live accepted). A perfect detector (every attack scores
  above every live sample) has AUC 1.0; ties count one half.

Candidate thresholds
--------------------
Decisions only change at the observed scores, so the curve functions evaluate
the thresholds ``u_1 < u_2 < ... < u_k`` (the distinct scores) plus one finite
value just above the maximum (``np.nextafter(u_k, inf)``, which accepts every
sample). ``t = u_1`` accepts nothing. All returned thresholds are finite and can
be used as-is with the decision rule above.

Undefined values
----------------
A ratio whose denominator is zero is ``nan`` (never silently 0): FAR and APCER
without attacks, FRR and BPCER without live samples, the precision of a class
that is never predicted, AUC and EER unless both classes are present.
``compute_all`` turns every non-finite float into ``None`` for JSON. The
``threshold_at_*`` helpers raise ``ValueError`` instead, because a ``nan``
threshold would silently accept everything. Empty input, length mismatch,
labels other than 0/1, non-finite scores and non-1-D arrays raise ``ValueError``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike

LIVE, ATTACK = 0, 1
DEFAULT_APCER_TARGETS = (0.01, 0.05, 0.10)
_SINGLE_TYPE = "attack"


# ----------------------------------------------------------------------------- validation


def _check_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (labels as int64, scores as float64), both 1-D, same length."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(
            f"labels and scores must be 1-D (got shapes {y.shape} and {s.shape}); "
            "pass the attack-class probability, not the whole softmax matrix"
        )
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if y.size != s.size:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.dtype.kind not in "biuf" or s.dtype.kind not in "biuf":
        raise ValueError(f"labels and scores must be numeric (got dtypes {y.dtype} and {s.dtype})")
    yf, sf = y.astype(np.float64), s.astype(np.float64)
    if not np.all((yf == LIVE) | (yf == ATTACK)):
        bad = np.unique(y[~((yf == LIVE) | (yf == ATTACK))])[:5]
        raise ValueError(f"labels must be 0 (live) or 1 (attack); found {bad.tolist()}")
    if not np.all(np.isfinite(sf)):
        raise ValueError("scores must be finite (no NaN or inf)")
    return yf.astype(np.int64), sf


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return t


def _attack_types(y: np.ndarray, attack_types: ArrayLike | None) -> np.ndarray:
    """Per-sample attack type as str; live samples get '' (ignored)."""
    if attack_types is None:
        types = np.full(y.size, _SINGLE_TYPE, dtype=object)
    else:
        types = np.asarray(attack_types, dtype=object)
        if types.ndim != 1 or types.size != y.size:
            raise ValueError(f"attack_types must be 1-D with {y.size} entries, got shape {types.shape}")
        types = np.array([str(t) for t in types], dtype=object)
    types[y == LIVE] = ""
    return types


def _div(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _accepted_below(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``sorted_scores`` are accepted (score < t) at each threshold."""
    return np.searchsorted(sorted_scores, thresholds, side="left")


def _candidate_thresholds(s: np.ndarray) -> np.ndarray:
    u = np.unique(s)
    return np.append(u, np.nextafter(u[-1], np.inf))


# ----------------------------------------------------------------------------- at a threshold


def confusion_counts(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, int]:
    """Counts with live as positive: tp live accepted, fn live rejected,
    fp attack accepted, tn attack rejected (rejected iff score >= threshold)."""
    y, s = _check_inputs(labels, scores)
    t = _check_threshold(threshold)
    rejected = s >= t
    live = y == LIVE
    return {
        "tp": int(np.sum(live & ~rejected)),
        "fn": int(np.sum(live & rejected)),
        "fp": int(np.sum(~live & ~rejected)),
        "tn": int(np.sum(~live & rejected)),
    }


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1 of one class; F1 = 2tp / (2tp + fp + fn) (nan only if 0/0)."""
    return _div(tp, tp + fp), _div(tp, tp + fn), _div(2 * tp, 2 * tp + fp + fn)


def classification_report(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Precision/recall/F1 per class and accuracy.

    Live: precision = TP/(TP+FP), recall = TP/(TP+FN) = 1 - FRR.
    Attack: precision = TN/(TN+FN), recall = TN/(TN+FP) = 1 - FAR.
    F1 = 2tp/(2tp+fp+fn) of that class, which is the harmonic mean when both
    are defined and 0 when the class has no true positive. A precision or recall
    with a zero denominator is nan (scikit-learn's ``zero_division=np.nan``).
    """
    c = confusion_counts(labels, scores, threshold)
    tp, fn, fp, tn = c["tp"], c["fn"], c["fp"], c["tn"]
    p_l, r_l, f_l = _prf(tp, fp, fn)
    p_a, r_a, f_a = _prf(tn, fn, fp)
    return {
        "accuracy": _div(tp + tn, tp + fn + fp + tn),
        "precision_live": p_l,
        "recall_live": r_l,
        "f1_live": f_l,
        "precision_attack": p_a,
        "recall_attack": r_a,
        "f1_attack": f_a,
    }


def far_frr_hter(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """FAR = FP/(FP+TN) (attacks accepted), FRR = FN/(TP+FN) (live rejected),
    HTER = (FAR+FRR)/2; nan where a class is absent."""
    c = confusion_counts(labels, scores, threshold)
    far = _div(c["fp"], c["fp"] + c["tn"])
    frr = _div(c["fn"], c["tp"] + c["fn"])
    return {"far": far, "frr": frr, "hter": (far + frr) / 2}


def apcer_bpcer_acer(
    labels: ArrayLike, scores: ArrayLike, threshold: float, attack_types: ArrayLike | None = None
) -> dict[str, Any]:
    """ISO/IEC 30107-3 at a threshold.

    ``apcer_per_type[type]`` = fraction of that type's attacks accepted
    (score < threshold); ``apcer`` = the worst type's (nan without attacks);
    ``bpcer`` = fraction of live rejected (nan without live); ``acer`` =
    (apcer+bpcer)/2. ``attack_types`` holds one label per sample (live entries
    are ignored); ``None`` means one type called ``"attack"``.
    """
    y, s = _check_inputs(labels, scores)
    t = _check_threshold(threshold)
    types = _attack_types(y, attack_types)
    accepted = s < t
    per_type = {
        str(k): float(np.mean(accepted[(y == ATTACK) & (types == k)]))
        for k in sorted(set(types[y == ATTACK].tolist()))
    }
    apcer = max(per_type.values()) if per_type else float("nan")
    live = y == LIVE
    bpcer = float(np.mean(~accepted[live])) if live.any() else float("nan")
    return {"apcer": apcer, "apcer_per_type": per_type, "bpcer": bpcer, "acer": (apcer + bpcer) / 2}


# ----------------------------------------------------------------------------- curves


def _roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Attacks accepted and live accepted (integer counts) at each candidate threshold."""
    thr = _candidate_thresholds(s)
    att_acc = _accepted_below(np.sort(s[y == ATTACK]), thr)
    live_acc = _accepted_below(np.sort(s[y == LIVE]), thr)
    return att_acc, live_acc, thr


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC with live as positive over the candidate thresholds (ascending).

    ``fpr[i] = FAR(thresholds[i])`` (attacks accepted), ``tpr[i] = 1 - FRR(thresholds[i])``
    (live accepted). The first point (threshold = min score) is (0, 0), the
    last (threshold just above the max score) is (1, 1); tied scores form one
    diagonal step; no point is dropped. An absent class makes its axis all nan.
    Same points as ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``
    (attack-positive: its fpr is our FRR, its tpr our 1 - FAR) in reverse order,
    with the same thresholds except sklearn's ``inf`` is our finite top one.
    """
    y, s = _check_inputs(labels, scores)
    att_acc, live_acc, thr = _roc_counts(y, s)
    n_att, n_live = int(np.sum(y == ATTACK)), int(np.sum(y == LIVE))
    fpr = att_acc / n_att if n_att else np.full(thr.size, np.nan)
    tpr = live_acc / n_live if n_live else np.full(thr.size, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), thr


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC (trapezoids) = P(attack score > live score) + P(tie)/2.

    1.0 for a perfect detector, 0.5 for chance or all-tied scores, 0.0 for a
    perfectly inverted one; nan unless both classes are present.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return float("nan")
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def eer(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold; ``(nan, nan)`` unless both classes are present.

    Along the candidate thresholds FAR rises from 0 to 1 and FRR falls from 1
    to 0, so ``d = FAR - FRR`` is strictly increasing and changes sign once,
    between candidates ``i-1`` (d < 0) and ``i`` (d >= 0). The EER is where the
    straight ROC segment between them meets FAR == FRR (linear interpolation,
    exact when some threshold has FAR == FRR; the usual ``brentq``/``interp1d``
    recipe). The threshold is the one of those two real candidates with the
    smaller ``|FAR - FRR|`` (ties: the lower, stricter one), so it is usable
    as-is; at it the EER lies between its FAR and its FRR.
    """
    y, s = _check_inputs(labels, scores)
    n_att, n_live = int(np.sum(y == ATTACK)), int(np.sum(y == LIVE))
    if n_att == 0 or n_live == 0:
        return float("nan"), float("nan")
    att_acc, live_acc, thr = _roc_counts(y, s)
    far, frr = att_acc / n_att, 1.0 - live_acc / n_live
    # d = FAR - FRR scaled by n_att * n_live: exact integers, so ties are exact
    d = att_acc * n_live - (n_live - live_acc) * n_att
    i = int(np.argmax(d >= 0))  # d[0] < 0 and d[-1] > 0, so 1 <= i <= len-1
    alpha = -d[i - 1] / (d[i] - d[i - 1])
    value = far[i - 1] + alpha * (far[i] - far[i - 1])
    j = i - 1 if abs(d[i - 1]) <= abs(d[i]) else i
    return float(value), float(thr[j])


def threshold_at_eer(labels: ArrayLike, scores: ArrayLike) -> float:
    """Operating threshold at the EER point (see :func:`eer`), for a dev split.

    Raises ValueError unless both classes are present.
    """
    _, t = eer(labels, scores)
    if math.isnan(t):
        raise ValueError("threshold_at_eer needs both live and attack samples")
    return t


def _apcer_bpcer_curve(
    labels: ArrayLike, scores: ArrayLike, attack_types: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Worst-type APCER (non-decreasing) and BPCER (non-increasing) at each candidate threshold."""
    y, s = _check_inputs(labels, scores)
    types = _attack_types(y, attack_types)
    thr = _candidate_thresholds(s)
    worst = np.full(thr.size, np.nan)
    for k in set(types[y == ATTACK].tolist()):
        ts = np.sort(s[(y == ATTACK) & (types == k)])
        worst = np.fmax(worst, _accepted_below(ts, thr) / ts.size)
    live_s = np.sort(s[y == LIVE])
    bpcer = 1.0 - _accepted_below(live_s, thr) / live_s.size if live_s.size else np.full(thr.size, np.nan)
    return worst, bpcer, thr


def _check_target(target: float) -> float:
    t = float(target)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"APCER target must be in [0, 1], got {target}")
    return t


def _best_index_at_apcer(apcer: np.ndarray, target: float) -> int | None:
    """Largest candidate index with APCER <= target (it has the smallest BPCER)."""
    if np.isnan(apcer).any():
        return None
    ok = np.flatnonzero(apcer <= target + 1e-12)
    return int(ok[-1])  # index 0 (accept nothing) always has APCER 0


def _target_key(target: float) -> str:
    return f"bpcer_at_apcer_{round(target * 100, 6):g}"


def bpcer_at_apcer(
    labels: ArrayLike,
    scores: ArrayLike,
    attack_types: ArrayLike | None = None,
    targets: Sequence[float] = DEFAULT_APCER_TARGETS,
) -> dict[str, float]:
    """Smallest BPCER over thresholds whose worst-type APCER <= each target.

    Keys ``bpcer_at_apcer_<percent>`` (0.01 -> ``bpcer_at_apcer_1``). Always
    achievable (accepting nothing gives APCER 0); nan without attacks or without
    live samples.
    """
    apcer, bpcer, _ = _apcer_bpcer_curve(labels, scores, attack_types)
    out = {}
    for target in targets:
        idx = _best_index_at_apcer(apcer, _check_target(target))
        out[_target_key(target)] = float("nan") if idx is None else float(bpcer[idx])
    return out


def threshold_at_apcer(
    labels: ArrayLike, scores: ArrayLike, target: float, attack_types: ArrayLike | None = None
) -> float:
    """Largest candidate threshold whose worst-type APCER <= target (i.e. the
    smallest BPCER at that APCER), for choosing an operating point on a dev split.

    Raises ValueError without attack samples.
    """
    apcer, _, thr = _apcer_bpcer_curve(labels, scores, attack_types)
    idx = _best_index_at_apcer(apcer, _check_target(target))
    if idx is None:
        raise ValueError("threshold_at_apcer needs attack samples")
    return float(thr[idx])


# ----------------------------------------------------------------------------- everything


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def compute_all(
    labels: ArrayLike, scores: ArrayLike, threshold: float, attack_types: ArrayLike | None = None
) -> dict[str, Any]:
    """Every metric of this module in one JSON-serialisable dict.

    Threshold-dependent values use ``threshold``; eer/eer_threshold, auc and
    bpcer_at_apcer_{1,5,10} are threshold-free. Python ints/floats only,
    ``apcer_per_type`` is a nested dict, and undefined (nan or infinite)
    values are ``None``.
    """
    y, s = _check_inputs(labels, scores)
    t = _check_threshold(threshold)
    e, e_thr = eer(y, s)
    out: dict[str, Any] = {"threshold": t, "n_live": int(np.sum(y == LIVE)), "n_attack": int(np.sum(y == ATTACK))}
    out.update(confusion_counts(y, s, t))
    out.update(classification_report(y, s, t))
    out.update(far_frr_hter(y, s, t))
    out.update(apcer_bpcer_acer(y, s, t, attack_types))
    out.update(eer=e, eer_threshold=e_thr, auc=auc(y, s))
    out.update(bpcer_at_apcer(y, s, attack_types))
    return _jsonable(out)
