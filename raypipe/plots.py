"""Evaluation and training figures as PNG files (matplotlib, Agg backend; no Ray).

Every function writes one PNG and returns its path. Numbers drawn on the curves
come from :mod:`raypipe.metrics`, so a plot never disagrees with the metrics JSON
logged beside it. Conventions are those of that module: labels 0 live / 1 attack,
scores = spoof probability, a sample is rejected (called attack) iff
``score >= threshold``.

Degenerate inputs (one class only) still produce a figure, with a note in place
of the curve, because an evaluation of a live-only split must not crash on its plots.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402
from scipy.stats import norm  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from raypipe import metrics  # noqa: E402

CLASS_NAMES = ("live", "attack")
DPI = 100
# DET axis ticks (error rates), as in ISO/IEC 19795-1 DET plots and sklearn's DetCurveDisplay.
DET_TICKS = (0.001, 0.01, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.95, 0.99)
DET_VIEW = (5e-4, 0.995)  # the visible range of both axes
DET_CLIP = 1e-6  # ppf(0) is -inf: rates of exactly 0 or 1 are drawn just outside the view


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)  # figures are global state in pyplot: leaking them grows memory per evaluation
    return path


def _both_classes(labels: ArrayLike) -> bool:
    y = np.asarray(labels)
    return bool(np.any(y == metrics.LIVE) and np.any(y == metrics.ATTACK))


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.3")


def confusion_matrix_figure(labels: ArrayLike, scores: ArrayLike, threshold: float, path: str | Path) -> Path:
    """Counts and row-normalised rates at ``threshold`` (rows: true class, columns: decision)."""
    y = np.asarray(labels, dtype=np.int64)
    predicted = (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int64)
    hter = metrics.far_frr_hter(y, scores, threshold)["hter"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), layout="constrained")
    for ax, normalize, fmt in ((axes[0], None, "d"), (axes[1], "true", ".2f")):
        ConfusionMatrixDisplay.from_predictions(
            y, predicted, labels=[metrics.LIVE, metrics.ATTACK], display_labels=CLASS_NAMES,
            normalize=normalize, values_format=fmt, cmap="Blues", colorbar=False, ax=ax)
        ax.set_title("counts" if normalize is None else "rate per true class")
    hter_text = "n/a" if math.isnan(hter) else f"{hter:.2%}"
    fig.suptitle(f"threshold {threshold:.4g}  HTER {hter_text}")
    return _save(fig, path)


def roc_figure(labels: ArrayLike, scores: ArrayLike, path: str | Path) -> Path:
    """ROC in the live-positive view (x = FAR, y = 1 - FRR) with its AUC and the EER point."""
    fig, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="0.6", label="chance")
    if _both_classes(labels):
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        eer, eer_threshold = metrics.eer(labels, scores)
        ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC {metrics.auc(labels, scores):.4f})")
        ax.plot([eer], [1 - eer], "o", color="C3", label=f"EER {eer:.2%} (t={eer_threshold:.3g})")
        ax.legend(loc="lower right")
    else:
        _note(ax, "ROC needs live and attack samples")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FAR (attacks accepted)", ylabel="1 - FRR (live accepted)",
           title="ROC", aspect="equal")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _deviate(rates: ArrayLike) -> np.ndarray:
    return norm.ppf(np.clip(np.asarray(rates, dtype=np.float64), DET_CLIP, 1 - DET_CLIP))


def det_figure(labels: ArrayLike, scores: ArrayLike, path: str | Path) -> Path:
    """DET curve: APCER (x) against BPCER (y), both on normal-deviate (probit) axes.

    Attacks are pooled (APCER here is the FAR of all attacks, not the worst type's),
    as in the usual DET plot; the EER point lies on the diagonal.
    """
    fig, ax = plt.subplots(figsize=(5.5, 5.5), layout="constrained")
    if _both_classes(labels):
        fpr, tpr, _ = metrics.roc_curve(labels, scores)
        apcer, bpcer = fpr, 1.0 - tpr
        eer, _ = metrics.eer(labels, scores)
        ax.plot(_deviate(apcer), _deviate(bpcer), lw=2, label="DET")
        ax.plot(_deviate([eer]), _deviate([eer]), "o", color="C3", label=f"EER {eer:.2%}")
        ax.legend(loc="upper right")
    else:
        _note(ax, "DET needs live and attack samples")
    ticks = _deviate(DET_TICKS)
    labels_text = [f"{t:.1%}".replace(".0%", "%") for t in DET_TICKS]
    limits = tuple(_deviate(DET_VIEW))
    ax.plot(limits, limits, ls="--", lw=0.8, color="0.6")
    ax.set_xticks(ticks, labels_text, rotation=45)
    ax.set_yticks(ticks, labels_text)
    ax.set(xlim=limits, ylim=limits, xlabel="APCER (attacks accepted)", ylabel="BPCER (live rejected)",
           title="DET", aspect="equal")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# Per-epoch keys read from each history entry; missing keys are simply not drawn.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train_loss", "dev_loss")),
    ("accuracy", ("train_accuracy", "dev_accuracy")),
    ("dev HTER", ("dev_hter",)),
)


def _series(history: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for index, entry in enumerate(history):
        value = entry.get(key)
        if value is not None and math.isfinite(float(value)):
            xs.append(float(entry.get("epoch", index + 1)))
            ys.append(float(value))
    return xs, ys


def training_curves_figure(history: Sequence[dict], path: str | Path) -> Path:
    """Loss, accuracy and dev HTER per epoch, one panel each.

    ``history``: one dict per epoch with any of ``epoch`` (default: position + 1),
    ``train_loss``, ``dev_loss``, ``train_accuracy``, ``dev_accuracy``, ``dev_hter``;
    ``None``/NaN values (e.g. an undefined HTER) are skipped.
    """
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(13, 3.8), layout="constrained")
    for ax, (title, keys) in zip(axes, CURVE_PANELS):
        drawn = False
        for key in keys:
            xs, ys = _series(history, key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=key)
                drawn = True
        if drawn:
            ax.legend()
        else:
            _note(ax, "no data")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
    return _save(fig, path)
