"""Video-level scores from frame scores (metrics.video_scores) and the evaluation flag that picks the rule."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from raypipe import metrics as M
from raypipe.config import EvaluateConfig

# three videos, frames deliberately out of order: a (live) 0.1 0.2 0.6, b (print) 0.9 0.4, c (replay) 0.3
FRAMES = pd.DataFrame({
    "video": ["b", "a", "c", "a", "b", "a"],
    "score": [0.9, 0.1, 0.3, 0.6, 0.4, 0.2],
    "label": [1, 0, 1, 0, 1, 0],
    "species": ["print", None, "replay", None, "print", None],
})


@pytest.mark.parametrize("rule, expected", [
    ("mean", [0.3, 0.65, 0.3]),     # a: (0.1 + 0.2 + 0.6) / 3, b: (0.9 + 0.4) / 2
    ("median", [0.2, 0.65, 0.3]),   # a: middle of 0.1 0.2 0.6; b: two frames, their mean
    ("max", [0.6, 0.9, 0.3]),
])
def test_a_video_score_is_the_rule_over_its_frames(rule, expected):
    videos = M.video_scores(FRAMES, rule)
    assert videos["video"].tolist() == ["a", "b", "c"]
    assert videos["score"].tolist() == pytest.approx(expected)
    assert videos["n_frames"].tolist() == [3, 2, 1]
    assert videos["label"].tolist() == [0, 1, 1]
    assert videos["species"].isna().tolist() == [True, False, False]  # live: no species
    assert videos["species"].tolist()[1:] == ["print", "replay"]


def test_video_metrics_differ_from_frame_metrics():
    """At 0.5, frames: live 0.6 rejected (BPCER 1/3), print 0.4 and replay 0.3 accepted (APCER 1/2, 1);
    videos (mean): a 0.3 accepted (BPCER 0), b 0.65 rejected (print 0), c 0.3 accepted (replay 1)."""
    videos = M.video_scores(FRAMES)
    frame = M.iso_30107_3(FRAMES["label"], FRAMES["score"], 0.5, FRAMES["species"])
    video = M.iso_30107_3(videos["label"], videos["score"], 0.5, videos["species"])
    assert (frame["bpcer"], frame["apcer_per_species"]) == (pytest.approx(1 / 3),
                                                           pytest.approx({"print": 0.5, "replay": 1.0}))
    assert (video["bpcer"], video["apcer_per_species"]) == (0.0, pytest.approx({"print": 0.0, "replay": 1.0}))


def test_still_images_are_one_frame_videos():
    images = pd.DataFrame({"video": ["x", "y"], "score": [0.25, 0.75], "label": [0, 1]})
    videos = M.video_scores(images, "max")
    assert videos["score"].tolist() == [0.25, 0.75] and videos["n_frames"].tolist() == [1, 1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="rule"):
        M.video_scores(FRAMES, "min")
    with pytest.raises(ValueError, match="no frames"):
        M.video_scores(FRAMES.iloc[:0])
    mixed = FRAMES.assign(label=[1, 0, 1, 1, 1, 0])  # a frame of live video "a" labelled attack
    with pytest.raises(ValueError, match="different labels.*'a'"):
        M.video_scores(mixed)


def test_the_evaluate_flag_offers_exactly_the_rules_metrics_knows():
    field = {f.name: f for f in dataclasses.fields(EvaluateConfig)}["video_score"]
    assert field.default == "mean" and field.metadata["choices"] == M.VIDEO_SCORE_RULES
