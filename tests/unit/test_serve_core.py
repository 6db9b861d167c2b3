"""Verdicts, fusion and the serving face pipeline of the serving core, as plain functions."""

import pytest

from raypipe.face import FaceConfig
from raypipe.serve.core import fuse, serving_face_config, verdict


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


def test_one_bad_frame_does_not_decide_a_burst_alone():
    live_burst_with_a_blurred_frame = [0.05, 0.1, 0.08, 0.97]
    assert verdict(fuse(live_burst_with_a_blurred_frame), 0.5)[0] == "real"
    assert verdict(fuse([0.9, 0.7, 0.95, 0.2]), 0.5)[0] == "spoof"


MODEL_FACE = FaceConfig(expand=2.5, crop_size=128).crop_settings()
GUARDS = {"max_bytes": 1000, "max_pixels": 10_000}


def test_serving_cuts_the_crops_the_model_was_trained_on():
    config = serving_face_config(MODEL_FACE, {}, GUARDS)
    assert config.crop_settings() == MODEL_FACE
    assert config.version() == FaceConfig(expand=2.5, crop_size=128).version()  # guards never change crops
    assert (config.max_bytes, config.max_pixels) == (1000, 10_000)


def test_a_face_override_that_disagrees_with_the_model_fails_the_deploy():
    assert serving_face_config(MODEL_FACE, {"expand": 2.5, "model_path": None}, GUARDS).expand == 2.5
    with pytest.raises(ValueError, match="expand: yaml 4.0 != model 2.5"):
        serving_face_config(MODEL_FACE, {"expand": 4.0}, GUARDS)


def test_a_model_without_stored_settings_takes_the_yaml_or_the_default():
    assert serving_face_config(None, {}, GUARDS).version() == FaceConfig().version()
    assert serving_face_config(None, {"expand": 3.0}, GUARDS).expand == 3.0
