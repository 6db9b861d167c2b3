"""Verdicts and fusion of the serving core, as plain functions."""

import pytest

from raypipe.serve.core import fuse, verdict


@pytest.mark.parametrize("p, t, label, confidence", [
    (0.66, 0.66, "spoof", 0.5),     # on the boundary: even odds
    (1.0, 0.66, "spoof", 1.0),
    (0.83, 0.66, "spoof", 0.75),    # half way from the threshold to 1
    (0.65, 0.66, "real", 0.5 + 0.5 * 0.01 / 0.66),  # just below: a weak "real", not a confident "spoof"
    (0.0, 0.66, "real", 1.0),
    (0.33, 0.66, "real", 0.75),
    (0.2, 0.5, "real", 0.8),        # threshold 0.5: the label's probability
])
def test_confidence_is_measured_from_the_threshold(p, t, label, confidence):
    assert verdict(p, t) == (label, pytest.approx(confidence))


def test_fusion_is_the_mean_of_frames():
    assert fuse([0.2, 0.4, 0.9]) == pytest.approx(0.5)
