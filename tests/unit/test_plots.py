"""Evaluation and training figures: a real PNG per call, degenerate inputs included."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raypipe import plots


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 40)
    scores = np.clip(np.concatenate([rng.normal(0.3, 0.15, 40), rng.normal(0.7, 0.15, 40)]), 0, 1)
    return labels, scores


def _assert_png(path, expected) -> None:
    assert path == expected and path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_each_figure_writes_a_png(scored, tmp_path):
    labels, scores = scored
    _assert_png(plots.confusion_matrix_figure(labels, scores, 0.5, tmp_path / "cm.png"), tmp_path / "cm.png")
    _assert_png(plots.roc_figure(labels, scores, tmp_path / "roc.png"), tmp_path / "roc.png")
    _assert_png(plots.det_figure(labels, scores, tmp_path / "det.png"), tmp_path / "det.png")


def test_figures_create_missing_parent_directories(scored, tmp_path):
    labels, scores = scored
    target = tmp_path / "a" / "b" / "roc.png"
    assert plots.roc_figure(labels, scores, str(target)) == target and target.is_file()


@pytest.mark.parametrize("labels", [np.zeros(5, int), np.ones(5, int)], ids=["live-only", "attack-only"])
def test_one_class_still_draws(labels, tmp_path):
    scores = np.linspace(0.1, 0.9, 5)
    for fn, name in ((plots.roc_figure, "roc"), (plots.det_figure, "det")):
        _assert_png(fn(labels, scores, tmp_path / f"{name}.png"), tmp_path / f"{name}.png")
    cm = plots.confusion_matrix_figure(labels, scores, 0.5, tmp_path / "cm.png")
    _assert_png(cm, tmp_path / "cm.png")


def test_perfect_and_tied_scores_draw(tmp_path):
    labels = np.array([0, 0, 1, 1])
    for scores in (np.array([0.0, 0.1, 0.9, 1.0]), np.full(4, 0.5)):
        _assert_png(plots.det_figure(labels, scores, tmp_path / "det.png"), tmp_path / "det.png")
        _assert_png(plots.roc_figure(labels, scores, tmp_path / "roc.png"), tmp_path / "roc.png")


def test_training_curves_tolerate_missing_and_undefined_values(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.7, "dev_loss": 0.69, "train_accuracy": 0.5, "dev_accuracy": 0.5,
         "dev_hter": None},
        {"epoch": 2, "train_loss": 0.5, "dev_loss": 0.55, "train_accuracy": 0.8, "dev_hter": float("nan")},
        {"epoch": 3, "train_loss": 0.3, "dev_loss": 0.4, "dev_hter": 0.1},
    ]
    path = plots.training_curves_figure(history, tmp_path / "curves.png")
    _assert_png(path, tmp_path / "curves.png")
    assert plots._series(history, "dev_hter") == ([3.0], [0.1])
    assert plots._series(history, "dev_accuracy") == ([1.0], [0.5])
    assert plots._series([{"train_loss": 1.0}, {"train_loss": 0.5}], "train_loss") == ([1.0, 2.0], [1.0, 0.5])


def test_training_curves_with_empty_history(tmp_path):
    _assert_png(plots.training_curves_figure([], tmp_path / "c.png"), tmp_path / "c.png")


def test_no_figures_leak(scored, tmp_path):
    import matplotlib.pyplot as plt

    labels, scores = scored
    before = len(plt.get_fignums())
    plots.roc_figure(labels, scores, tmp_path / "roc.png")
    plots.training_curves_figure([{"train_loss": 1.0}], tmp_path / "c.png")
    assert len(plt.get_fignums()) == before


def test_det_axis_is_the_normal_deviate():
    from scipy.stats import norm

    assert plots._deviate([0.5])[0] == pytest.approx(0.0)
    assert plots._deviate([0.1])[0] == pytest.approx(norm.ppf(0.1))
    assert np.isfinite(plots._deviate([0.0, 1.0])).all()  # clipped, never +-inf
