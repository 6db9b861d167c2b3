"""`raypipe pipeline` (jobs/pipeline.py): the three stages chained on demo data, in one call."""

from __future__ import annotations

import json

import pytest

from raypipe.cli import main
from raypipe.datasets.demo import make_demo_dataset
from raypipe.face import FaceConfig
from raypipe.models.store import load_model, model_face_settings

pytestmark = pytest.mark.ray


def test_pipeline_preprocesses_trains_evaluates_and_promotes(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(tmp_path))
    made = make_demo_dataset(tmp_path / "demo", sessions=6, per_subject=1)  # 36 images, train/dev/test
    out = tmp_path / "crops"

    code = main(["pipeline", "--dataset", "folder", "--root", str(tmp_path / "demo"), "--out", str(out),
                 "--epochs", "1", "--workers", "1", "--register", "pipe"])
    assert code == 0
    stdout, stderr = capsys.readouterr()
    summary = json.loads(stdout.strip().splitlines()[-1])  # one JSON line, progress on stderr
    assert "[1/3] preprocess" in stderr and "[3/3] evaluate" in stderr

    prep, trained, evaluation = summary["preprocess"], summary["train"], summary["evaluate"]
    assert prep["inputs"] == made["images"] == prep["rows"] + prep["rejected"]
    assert trained["version"] == "1" and 0.0 <= trained["threshold"] <= 1.0
    # evaluated: the version this run registered, on the demo data's test split
    assert evaluation["model_uri"] == "models:/pipe/1" and evaluation["split"] == "test"
    assert evaluation["n_live"] > 0 and evaluation["n_attack"] > 0 and 0.0 <= evaluation["hter"] <= 1.0
    champion = load_model("models:/pipe@champion")  # promoted: what serve_config.yaml's alias resolves to
    assert champion.version == "1" and champion.threshold == pytest.approx(trained["threshold"])
    # the crop settings travel with the model: serving builds its face pipeline from them
    assert model_face_settings("models:/pipe@champion") == FaceConfig().crop_settings()
