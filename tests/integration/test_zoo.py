"""`raypipe register-pretrained`: the published MiniFASNet weights registered without training,
on a real MLflow store, calibrated on real Parquet crops (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from raypipe import crops, metrics
from raypipe.cli import main
from raypipe.config import EvaluateConfig, RegisterPretrainedConfig
from raypipe.evaluate import evaluate_model
from raypipe.face import FaceConfig
from raypipe.models.store import load_model, model_face_settings
from raypipe.predict import Predictor
from raypipe.zoo import register_pretrained
from tests.fixtures.crops import make_crops_dir

WEIGHTS = Path(__file__).resolve().parents[3] / "shared" / "weights"
pytestmark = pytest.mark.skipif(not (WEIGHTS / "silentface").is_dir(), reason="needs ../shared/weights")


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAYPIPE_WEIGHTS_DIR", str(WEIGHTS))
    monkeypatch.chdir(tmp_path)
    yield uri
    mlflow.set_tracking_uri(None)


def test_zero_shot_model_is_registered_with_the_published_threshold(store, capsys):
    assert main(["register-pretrained", "--model", "minifasnet_v2", "--register", "zs", "--promote"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["threshold"] == 0.5 and summary["threshold_rule"] == "published 0.5"
    assert summary["pretrained_source"].startswith("silentface:2.7_80x80_MiniFASNetV2.pth:")
    champion = load_model("models:/zs@champion")
    assert champion.spec.name == "minifasnet_v2" and champion.threshold == 0.5
    assert model_face_settings("models:/zs@champion") == FaceConfig().crop_settings()  # serving crops like this


def test_calibrated_threshold_is_chosen_on_the_users_dev_split(store, tmp_path):
    data = make_crops_dir(tmp_path / "prep", splits=("train", "test"), subjects=4, images_per_subject=3)
    config = RegisterPretrainedConfig(model="minifasnet_v2", register="cal", calibration_data=str(data.root),
                                      dev_by="subject")
    summary = register_pretrained(config)
    # the same choice, made independently: the model's dev scores and training's threshold rule
    loaded = load_model("models:/cal/1")
    plan = crops.plan_splits(crops.read_index(data.root), 0.2, 0, "subject")
    dev = Predictor(loaded.model, loaded.spec, "cpu").score_batches(
        crops.iter_local_batches(data.root, "dev", plan, loaded.spec))
    expected = metrics.choose_threshold(dev.labels, dev.scores, "eer", dev.attack_types)
    assert summary["threshold"] == pytest.approx(expected) and loaded.threshold == pytest.approx(expected)
    assert summary["dev"]["n_live"] + summary["dev"]["n_attack"] == dev.labels.size > 0
    assert "subject" in summary["dev_rule"] and summary["threshold_rule"] == "eer on dev"
    evaluation = evaluate_model(EvaluateConfig(model_uri="models:/cal/1", data=str(data.root), log_to_mlflow=False,
                                               gradcam_per_class=1))
    assert evaluation["threshold"] == pytest.approx(expected) and evaluation["n"] == data.n(split="test")


def test_missing_weights_are_a_clear_error(store, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAYPIPE_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    assert main(["register-pretrained", "--model", "minifasnet_v2", "--register", "x"]) == 2
    assert "RAYPIPE_WEIGHTS_DIR" in capsys.readouterr().err
