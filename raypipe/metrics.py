"""Presentation attack detection (PAD) metrics for face anti-spoofing, numpy + scikit-learn.

Conventions used by every function here
---------------------------------------
* ``labels``: 0 = live (bona fide), 1 = attack. Anything else is a ``ValueError``.
* ``scores``: spoof scores, higher = more likely an attack (e.g. the softmax
  probability of the attack class). They must be finite.
* Decision at a threshold ``t``: a sample is **rejected** (predicted attack)
  iff ``score >= t`` and **accepted** (predicted live) iff ``score < t``.

The metrics
-----------
* Confusion counts with **live as the positive class**, as in the AttackNet paper:
  TP = live accepted, FN = live rejected, FP = attack accepted, TN = attack rejected.
* FAR = FP / (FP + TN), the attacks accepted; FRR = FN / (TP + FN), the live
  samples rejected; HTER = (FAR + FRR) / 2, the half total error rate.
* ISO/IEC 30107-3: APCER of one attack type (print, replay, ...) = fraction of that
  type's attacks accepted; the reported APCER is the worst (largest) type's. BPCER =
  fraction of live samples rejected; ACER = (APCER + BPCER) / 2. With a single attack
  type APCER == FAR, BPCER == FRR and ACER == HTER.
* EER: the error rate where FAR == FRR, read off the ROC; BPCER@APCER: the smallest
  BPCER among thresholds whose APCER is at most a target (1 %, 5 %, 10 %).
* :func:`iso_30107_3`: the same over presentation attack instrument *species* (``pai_type``;
  a missing one is "unknown"): APCER per species, their maximum (the headline APCER), the
  pooled APCER (= FAR) and ACER beside them, and BPCER100/BPCER20/BPCER10 (BPCER at
  APCER <= 1/5/10 %).
* :func:`video_scores`: a video's score from its frames' (mean, median or max), so every
  metric can be computed per video.
* ROC in the same live-positive view: ``fpr = FAR(t)`` (attacks accepted),
  ``tpr = 1 - FRR(t)`` (live accepted). A perfect detector (every attack scores
  above every live sample) has AUC 1.0; ties count one half.
* Precision, recall and F1 per class and accuracy, for the report.

ROC, AUC, the confusion counts and precision/recall/F1 come from ``sklearn.metrics``;
the PAD-specific ones (FAR/FRR/HTER, APCER/BPCER/ACER, EER, BPCER@APCER and the
operating thresholds) are computed here.

Candidate thresholds
--------------------
Decisions only change at the observed scores, so the curve functions evaluate
the thresholds ``u_1 < u_2 < ... < u_k`` (the distinct scores) plus one finite
value just above the maximum (``np.nextafter(u_k, inf)``, which accepts every
sample). ``t = u_1`` accepts nothing. All returned thresholds are finite and can
be used as-is with the decision rule above.

Operating threshold on a dev split
----------------------------------
:func:`choose_threshold` applies a rule: ``"eer"`` (default), ``"apcer:T"`` (lowest
BPCER at APCER <= T) or a fixed number such as ``"0.5"``. Where the rule's optimum is a
whole range of thresholds (a separable dev set has zero error from its highest live score
to its lowest attack score), it returns the middle of that range in logit space rather
than an end, so unseen data gets a margin on both sides.

Undefined values
----------------
A ratio whose denominator is zero is ``nan`` (never silently 0): FAR and APCER
without attacks, FRR and BPCER without live samples, the precision of a class
that is never predicted, AUC and EER unless both classes are present.
``compute_all`` turns every non-finite float into ``None`` for JSON. The
``threshold_at_*`` helpers and :func:`choose_threshold` raise ``ValueError``
instead, because a ``nan`` threshold would silently accept everything. Empty
input, length mismatch, labels other than 0/1, non-finite scores and non-1-D arrays
raise ``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from raypipe.labels import ATTACK, LIVE  # noqa: F401 - re-exported: the one definition is raypipe.labels

DEFAULT_APCER_TARGETS = (0.01, 0.05, 0.10)
DEFAULT_THRESHOLD_RULE = "eer"
LOGIT_CLIP = 1e-6  # logit(p) uses p clipped to [1e-6, 1 - 1e-6]
_SINGLE_TYPE = "attack"
UNKNOWN_SPECIES = "unknown"  # the PAI species of an attack whose data does not name one
#: ISO/IEC 30107-3's names for BPCER at APCER <= 1 %, 5 %, 10 % (BPCER100 = BPCER at APCER 1/100).
ISO_BPCER_TARGETS = {"bpcer100": 0.01, "bpcer20": 0.05, "bpcer10": 0.10}
VIDEO_SCORE_RULES = ("mean", "median", "max")  # also raypipe.config.EvaluateConfig.video_score's choices


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


def _predicted(s: np.ndarray, threshold: float) -> np.ndarray:
    """Predicted class per sample: ATTACK (rejected) iff score >= threshold, else LIVE."""
    return np.where(s >= _check_threshold(threshold), ATTACK, LIVE)


def confusion_counts(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, int]:
    """Counts with live as positive: tp live accepted, fn live rejected,
    fp attack accepted, tn attack rejected (rejected iff score >= threshold)."""
    y, s = _check_inputs(labels, scores)
    # rows = true class, columns = predicted class, both in the order (LIVE, ATTACK)
    (tp, fn), (fp, tn) = skm.confusion_matrix(y, _predicted(s, threshold), labels=[LIVE, ATTACK])
    return {"tp": int(tp), "fn": int(fn), "fp": int(fp), "tn": int(tn)}


def classification_report(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Precision/recall/F1 per class and accuracy (``sklearn.metrics.precision_recall_fscore_support``).

    Live: precision = TP/(TP+FP), recall = TP/(TP+FN) = 1 - FRR.
    Attack: precision = TN/(TN+FN), recall = TN/(TN+FP) = 1 - FAR.
    F1 = 2tp/(2tp+fp+fn) of that class, which is the harmonic mean when both
    are defined and 0 when the class has no true positive. A precision or recall
    with a zero denominator is nan (``zero_division=np.nan``).
    """
    y, s = _check_inputs(labels, scores)
    pred = _predicted(s, threshold)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, pred, labels=[LIVE, ATTACK], zero_division=np.nan
    )
    out = {"accuracy": float(np.mean(pred == y))}
    for cls, name in ((LIVE, "live"), (ATTACK, "attack")):
        out.update({f"precision_{name}": float(precision[cls]), f"recall_{name}": float(recall[cls]),
                    f"f1_{name}": float(f1[cls])})
    return out


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
    """Attacks accepted and live accepted (integer counts) at each candidate threshold.

    The EER search uses these exact counts rather than sklearn's float rates, so a tie
    between FAR and FRR is an exact tie.
    """
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

    Computed by ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``,
    whose attack-positive view uses the same decision rule (attack iff score >= t):
    its fpr is our FRR and its tpr our 1 - FAR, in reverse order, and its top
    threshold ``inf`` becomes our finite one.
    """
    y, s = _check_inputs(labels, scores)
    with warnings.catch_warnings():
        # one class only: sklearn warns and gives a nan axis, which is what we document
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, s, pos_label=ATTACK, drop_intermediate=False)
    thresholds = sk_thr[::-1].astype(np.float64)
    thresholds[-1] = np.nextafter(thresholds[-2], np.inf)  # sklearn's inf: accept every sample
    return (1.0 - sk_tpr[::-1]).astype(np.float64), (1.0 - sk_fpr[::-1]).astype(np.float64), thresholds


def _both_classes(y: np.ndarray) -> bool:
    return bool(np.any(y == LIVE) and np.any(y == ATTACK))


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC (``sklearn.metrics.roc_auc_score``) = P(attack score > live score) + P(tie)/2.

    1.0 for a perfect detector, 0.5 for chance or all-tied scores, 0.0 for a
    perfectly inverted one; nan unless both classes are present.
    """
    y, s = _check_inputs(labels, scores)
    if not _both_classes(y):
        return float("nan")  # sklearn raises on one class; nan like the other undefined ratios
    return float(skm.roc_auc_score(y, s))


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
    far = att_acc / n_att
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


# ----------------------------------------------------------------------------- ISO/IEC 30107-3


def species_labels(labels: ArrayLike, species: ArrayLike | None) -> np.ndarray:
    """Each attack's presentation attack instrument species as a str: a missing one (None,
    NaN, "") is :data:`UNKNOWN_SPECIES`, so such attacks still count, as one species of
    their own; live samples get "" (ignored). ``species=None``: every attack is unknown."""
    y = np.asarray(labels)
    if species is None:
        out = np.full(y.size, UNKNOWN_SPECIES, dtype=object)
    else:
        values = np.asarray(species, dtype=object)
        if values.ndim != 1 or values.size != y.size:
            raise ValueError(f"species must be 1-D with {y.size} entries, got shape {values.shape}")
        out = np.array([_species_name(v) for v in values], dtype=object)
    out[y == LIVE] = ""
    return out


def _species_name(value: Any) -> str:
    missing = pd.isna(value) if not isinstance(value, str) else not value.strip()  # None, NaN, pd.NA, ""
    return UNKNOWN_SPECIES if missing else str(value)


def iso_30107_3(
    labels: ArrayLike, scores: ArrayLike, threshold: float, species: ArrayLike | None = None
) -> dict[str, Any]:
    """The ISO/IEC 30107-3 figures at ``threshold``, species by species, with the pooled ones beside them.

    * ``apcer_per_species``: the fraction of each species' attacks accepted (score < threshold).
    * ``apcer_max`` (the standard's headline APCER) = the largest of them, reached by
      ``apcer_max_species`` (ties: the first name in sorted order).
    * ``apcer_pooled``: every attack as one species (= FAR), what many papers call APCER.
    * ``bpcer``: live rejected (= FRR); ``acer`` = (apcer_max + bpcer) / 2 (the standard's);
      ``acer_pooled`` = (apcer_pooled + bpcer) / 2 (= HTER).
    * ``bpcer100``, ``bpcer20``, ``bpcer10``: threshold-free, the lowest BPCER over the
      thresholds where ``apcer_max`` <= 1 %, 5 %, 10 % (:func:`bpcer_at_apcer` with species).

    ``species``: one PAI species per sample (``pai_type``: print, replay, mask, ...; missing
    = "unknown", see :func:`species_labels`). nan where undefined: every APCER figure and
    both ACERs without attacks, BPCER and both ACERs without live samples, BPCERxx unless
    both classes are present.
    """
    y, s = _check_inputs(labels, scores)
    kinds = species_labels(y, species)
    by_species = apcer_bpcer_acer(y, s, threshold, kinds)
    pooled = apcer_bpcer_acer(y, s, threshold)
    per_species = by_species["apcer_per_type"]
    worst = max(per_species, key=per_species.get) if per_species else None  # keys sorted: ties go to the first
    at = bpcer_at_apcer(y, s, kinds, tuple(ISO_BPCER_TARGETS.values()))
    bpcer = by_species["bpcer"]
    return {
        "apcer_per_species": per_species, "apcer_max": by_species["apcer"], "apcer_max_species": worst,
        "apcer_pooled": pooled["apcer"], "bpcer": bpcer, "acer": by_species["acer"],
        "acer_pooled": pooled["acer"],
        **{name: at[_target_key(target)] for name, target in ISO_BPCER_TARGETS.items()},
    }


# ----------------------------------------------------------------------------- video-level scores


def video_scores(frames: pd.DataFrame, rule: str = "mean") -> pd.DataFrame:
    """One row per video from a frame table: the video's score is ``rule`` (mean, median or
    max) of its frames' spoof probabilities.

    ``frames`` has a ``video`` column (the video's identity), ``score`` and any columns that
    describe the video rather than the frame (``label``, ``attack_type``, ``species``, ...):
    the first frame's value is kept. Returns columns ``video``, ``score``, ``n_frames`` and
    those, sorted by video. A still image is a video of one frame (its score unchanged).
    Raises ValueError for an unknown rule, an empty table or a video whose frames disagree
    on ``label`` (its rows would be mislabelled data, not one presentation).
    """
    if rule not in VIDEO_SCORE_RULES:
        raise ValueError(f"video score rule must be one of {VIDEO_SCORE_RULES}, got {rule!r}")
    if frames.empty:
        raise ValueError("no frames to aggregate")
    groups = frames.groupby("video", sort=True)
    if "label" in frames and bool((groups["label"].nunique() > 1).any()):
        mixed = groups["label"].nunique()
        raise ValueError(f"frames of one video carry different labels: {mixed[mixed > 1].index[:5].tolist()}")
    out = groups["score"].agg(rule).rename("score").to_frame()
    out["n_frames"] = groups.size()
    # the first frame's values, nulls included (groupby.first would skip a null for a later value)
    described = frames.drop(columns="score").drop_duplicates("video").set_index("video")
    return out.join(described).reset_index()


# ----------------------------------------------------------------------------- threshold rules


def parse_threshold_rule(rule: str | float) -> tuple[str, float | None]:
    """``"eer"`` -> ("eer", None); ``"apcer:T"`` -> ("apcer", T); ``"0.5"`` or 0.5 -> ("fixed", 0.5).

    T and a fixed threshold must lie in [0, 1]; anything else is a ValueError, so a
    config can be checked before training rather than after it.
    """
    if isinstance(rule, (int, float)) and not isinstance(rule, bool):
        return "fixed", _unit_number(rule, "fixed threshold")
    if not isinstance(rule, str):
        raise TypeError(f"threshold rule must be a string or a number, got {type(rule).__name__}")
    text = rule.strip().lower()
    if text == "eer":
        return "eer", None
    if text.startswith("apcer:"):
        return "apcer", _unit_number(text.removeprefix("apcer:"), f"APCER target in {rule!r}")
    if text.startswith("bpcer:"):
        return "bpcer", _unit_number(text.removeprefix("bpcer:"), f"BPCER target in {rule!r}")
    try:
        return "fixed", _unit_number(float(text), "fixed threshold")
    except ValueError:
        raise ValueError(
            f"threshold rule must be 'eer', 'apcer:<target in [0, 1]>', 'bpcer:<target in [0, 1]>' or a "
            f"threshold in [0, 1]; got {rule!r}"
        ) from None


def _unit_number(value: str | float, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not 0.0 <= x <= 1.0:  # also rejects nan
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return x


def describe_threshold_rule(rule: str | float) -> str:
    """One line saying what :func:`choose_threshold` does with ``rule`` (for logs and run tags)."""
    kind, value = parse_threshold_rule(rule)
    if kind == "fixed":
        return f"fixed threshold {value:g}"
    if kind == "eer":
        return "EER point on dev; on a separable dev set the logit-space middle of the zero-error range"
    return (f"lowest BPCER at worst-type APCER <= {value:g} on dev, at the logit-space middle "
            "of the thresholds giving that APCER and BPCER")


def choose_threshold(
    labels: ArrayLike, scores: ArrayLike, rule: str | float = DEFAULT_THRESHOLD_RULE,
    attack_types: ArrayLike | None = None,
) -> float:
    """The operating threshold chosen on a dev split by ``rule`` (see :func:`parse_threshold_rule`).

    * ``"eer"``: the EER threshold (:func:`eer`) when live and attack scores overlap.
      When the dev set is separable every threshold in (highest live score, lowest
      attack score] has zero error; the EER point would be its upper end, which lets
      through any unseen attack scoring just below the dev attacks, so the middle of
      that range in logit space is returned instead.
    * ``"apcer:T"``: the lowest BPCER among thresholds with worst-type APCER <= T
      (as :func:`threshold_at_apcer`), at the logit-space middle of all thresholds
      that give that same APCER and BPCER.
    * ``"bpcer:T"``: security first, for attacks dev has never shown: the lowest threshold
      (so the lowest APCER) whose dev BPCER is <= T, at the logit-space middle of the
      thresholds that give the same APCER and BPCER. With T = 0.01 it sits just above the
      99th percentile of the dev live scores, whatever the dev attacks score.
    * a number: that fixed threshold; the dev set is not looked at.

    ``logit(p) = log(p / (1 - p))`` with p clipped to [1e-6, 1 - 1e-6], so scores must be
    probabilities in [0, 1]. Raises ValueError for a bad rule, scores outside [0, 1] or a dev
    set without live or without attack samples (no boundary between the two can be placed).
    """
    kind, value = parse_threshold_rule(rule)
    if kind == "fixed":
        return float(value)
    y, s = _check_dev_set(labels, scores)
    if kind == "eer":
        return _eer_rule(y, s)
    if kind == "bpcer":
        return _bpcer_rule(y, s, float(value), attack_types)
    return _apcer_rule(y, s, float(value), attack_types)


def _check_dev_set(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y, s = _check_inputs(labels, scores)
    n_live, n_attack = int(np.sum(y == LIVE)), int(np.sum(y == ATTACK))
    if n_live == 0 or n_attack == 0:
        raise ValueError(
            f"choosing a threshold needs live and attack samples on dev; got {n_live} live and "
            f"{n_attack} attack (a one-class dev split cannot place the live/attack boundary)"
        )
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("threshold rules work in logit space: scores must be probabilities in [0, 1]")
    return y, s


def _eer_rule(y: np.ndarray, s: np.ndarray) -> float:
    _, t = eer(y, s)
    highest_live, lowest_attack = s[y == LIVE].max(), s[y == ATTACK].min()
    if highest_live >= lowest_attack:
        return t  # overlapping scores: the EER point is a point
    return _middle(highest_live, lowest_attack, fallback=t)


def _apcer_rule(y: np.ndarray, s: np.ndarray, target: float, attack_types: ArrayLike | None) -> float:
    apcer, bpcer, thr = _apcer_bpcer_curve(y, s, attack_types)
    best = _best_index_at_apcer(apcer, target)
    # Candidates are ordered, APCER rises and BPCER falls along them, so the candidates tied
    # with the best one form a run ending at it; each candidate i stands for (thr[i-1], thr[i]].
    tied = (apcer == apcer[best]) & (bpcer == bpcer[best])
    breaks = np.flatnonzero(~tied[:best])
    first = int(breaks[-1]) + 1 if breaks.size else 0
    low = thr[first - 1] if first > 0 else -np.inf
    high = thr[best] if best < thr.size - 1 else np.inf  # the last candidate accepts everything above
    return _middle(low, high, fallback=thr[best])


def _logit(p: float) -> float:
    p = min(max(p, LOGIT_CLIP), 1.0 - LOGIT_CLIP)
    return math.log(p / (1.0 - p))


def _bpcer_rule(y: np.ndarray, s: np.ndarray, target: float, attack_types: ArrayLike | None) -> float:
    apcer, bpcer, thr = _apcer_bpcer_curve(y, s, attack_types)
    best = int(np.flatnonzero(bpcer <= target + 1e-12)[0])  # the last candidate rejects nothing: BPCER 0
    # Along the candidates APCER rises and BPCER falls: the candidates tied with the first
    # feasible one follow it; candidate i stands for (thr[i-1], thr[i]].
    tied = (apcer == apcer[best]) & (bpcer == bpcer[best])
    breaks = np.flatnonzero(~tied[best:])
    last = best + int(breaks[0]) - 1 if breaks.size else thr.size - 1
    low = thr[best - 1] if best > 0 else -np.inf
    high = thr[last] if last < thr.size - 1 else np.inf
    return _middle(low, high, fallback=thr[best])


def _middle(low: float, high: float, fallback: float) -> float:
    """A threshold in the range (low, high]: the logit-space middle, else the plain middle
    (clipping squeezes a range within 1e-6 of 0 or 1 to a point), else ``fallback``."""
    logit_mid = (_logit(low) + _logit(high)) / 2
    for t in (1.0 / (1.0 + math.exp(-logit_mid)), (low + high) / 2):
        if math.isfinite(t) and low < t <= high:
            return float(t)
    return float(fallback)


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
    labels: ArrayLike, scores: ArrayLike, threshold: float, attack_types: ArrayLike | None = None,
    species: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every metric of this module in one JSON-serialisable dict.

    Threshold-dependent values use ``threshold``; eer/eer_threshold, auc and
    bpcer_at_apcer_{1,5,10} are threshold-free. Python ints/floats only,
    ``apcer_per_type`` is a nested dict, and undefined (nan or infinite)
    values are ``None``. With ``species`` (one PAI species per sample, None allowed) the
    nested ``iso`` section holds :func:`iso_30107_3`; ``apcer``/``apcer_per_type`` stay per
    ``attack_types``, the dataset's own attack labels, which may be finer than species.
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
    if species is not None:
        out["iso"] = iso_30107_3(y, s, t, species)
    return _jsonable(out)
