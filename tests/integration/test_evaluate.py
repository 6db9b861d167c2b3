"""evaluate_model and the cross-dataset experiment on real Parquet crops and a real MLflow SQLite store (Ray
where the work is distributed: the matrix cells, the scoring actor pool)."""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict

import mlflow
import pytest
import torch

from raypipe import crops, metrics
from raypipe.config import CrossDatasetConfig, EvaluateConfig, TrainConfig
from raypipe.evaluate import evaluate_model, split_plan
from raypipe.experiments import cross_dataset, train_config
from raypipe.models import create_model
from raypipe.models.store import ensure_experiment, load_model, log_and_register
from raypipe.predict import Predictor
from tests.fixtures.crops import make_crops_dir

ARTIFACTS = {"metrics.json", "report.md", "scores.csv", "confusion_matrix.png", "roc.png", "det.png", "gradcam.png"}
METRIC_KEYS = {"hter", "far", "frr", "apcer", "bpcer", "acer", "eer", "auc", "n_live", "n_attack", "tp", "fn",
               "fp", "tn", "accuracy", "f1_live", "f1_attack", "bpcer_at_apcer_1", "bpcer_at_apcer_5",
               "bpcer_at_apcer_10", "apcer_per_type", "eer_threshold", "threshold"}


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A fresh MLflow SQLite store for this module (its migrations take seconds: create it once)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # anything MLflow writes relative to the cwd stays in tmp
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        yield root
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """alpha: train + test; beta: train only (so its dev is carved and it has no test rows)."""
    return make_crops_dir(tmp_path_factory.mktemp("prep"), datasets=("alpha", "beta"),
                          splits={"alpha": ("train", "test"), "beta": ("train",)}, subjects=3,
                          images_per_subject=2)


def log_fresh_model(register_as: str | None, seed: int = 0, promote: bool = False) -> tuple[str, str | None, str]:
    """A freshly initialised AttackNet logged (and registered) the way training does."""
    torch.manual_seed(seed)
    with mlflow.start_run(experiment_id=ensure_experiment("test-models")) as run:
        registered = log_and_register(create_model("attacknet"), threshold=0.5, register_as=register_as,
                                      promote=promote)
    return registered.model_uri, registered.version, run.info.run_id


@pytest.fixture(scope="module")
def registered(tracking):
    _, version, run_id = log_fresh_model("t", promote=True)
    assert version == "1"
    return run_id


def run_artifacts(run_id: str) -> set[str]:
    return {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}


def test_every_model_reference_gives_the_same_metrics(registered, data):
    results = [evaluate_model(EvaluateConfig(model_uri=uri, data=str(data.root), gradcam_per_class=2))
               for uri in ("models:/t@champion", "models:/t/1", registered)]
    for result in results:
        assert METRIC_KEYS <= set(result)
        assert (result["n_live"], result["n_attack"]) == (data.n("alpha", "test", "live"),
                                                          data.n("alpha", "test", "attack"))
        assert result["split"] == "test" and result["datasets"] == ["alpha"]
        assert result["threshold"] == 0.5 and result["architecture"] == "attacknet"
        assert result["seconds"] > 0
        json.dumps(result)  # JSON-able as the CLI prints it
    strip = ("model_uri", "model_name", "model_version", "mlflow_run_id", "seconds", "score_seconds")
    assert results[0]["model_name"] == "t" and results[0]["model_version"] == "1"
    assert results[2]["model_name"] == registered and results[2]["model_version"] is None
    assert results[0]["model_run_id"] == results[2]["model_run_id"] == registered
    first, *rest = ({k: v for k, v in r.items() if k not in strip} for r in results)
    assert all(other == first for other in rest)


def test_metrics_agree_with_compute_all_on_the_scores(registered, data):
    result = evaluate_model(EvaluateConfig(model_uri="models:/t/1", data=str(data.root), log_to_mlflow=False))
    loaded = load_model("models:/t/1")
    role = crops.load_role(data.root, "test", crops.SplitPlan(), loaded.spec)  # the other reader
    scored = Predictor(loaded.model, loaded.spec, "cpu").score_batches([role])
    labels, scores, types = scored.labels, scored.scores, scored.attack_types
    assert labels.size == data.n("alpha", "test")
    expected = metrics.compute_all(labels, scores, 0.5, types, species=types)  # the fixture's pai_type = attack_type
    per_type, iso = expected.pop("apcer_per_type"), expected.pop("iso")
    assert {k: result[k] for k in expected} == pytest.approx(expected)  # batch sizes differ: allow float noise
    assert result["apcer_per_type"] == pytest.approx(per_type) and set(per_type) == {"print", "replay"}
    assert set(iso["apcer_per_species"]) == {"print", "replay"}
    assert_same_iso(result["iso"], iso)
    assert result["video"] is None  # still images: frame level only


def test_mlflow_run_has_params_metrics_and_artifacts(registered, data):
    result = evaluate_model(EvaluateConfig(model_uri="models:/t@champion", data=str(data.root),
                                           experiment="eval-test", gradcam_per_class=2))
    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.info.experiment_id == mlflow.get_experiment_by_name("eval-test").experiment_id
    assert run.data.params["split"] == "test" and run.data.params["model_version"] == "1"
    assert run.data.metrics["n_live"] == result["n_live"]
    assert run.data.metrics["hter"] == pytest.approx(result["hter"])
    assert "apcer_type_print" in run.data.metrics
    assert run.data.metrics["iso_apcer_max"] == pytest.approx(result["iso"]["apcer_max"])
    assert run.data.metrics["iso_bpcer20"] == pytest.approx(result["iso"]["bpcer20"])
    assert run.data.metrics["iso_apcer_species_replay"] == pytest.approx(result["iso"]["apcer_per_species"]["replay"])
    assert not any(k.startswith("video_") for k in run.data.metrics)  # image data: no video level
    assert run.data.tags["raypipe.kind"] == "evaluation"
    assert ARTIFACTS <= run_artifacts(run.info.run_id)
    logged = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/metrics.json"))
    assert logged["hter"] == result["hter"] and logged["mlflow_run_id"] == run.info.run_id


def test_train_and_dev_splits_follow_the_training_plan(registered, data):
    """dev = carved subjects (beta has no dev split; alpha neither), train = the rest of train."""
    plan = crops.plan_splits(crops.read_index(data.root))
    per_subject = 2 * 2  # images_per_subject live + as many attacks
    carved = sum(len(s) for s in plan.carved_dev.values()) * per_subject
    common = dict(model_uri="models:/t/1", data=str(data.root), log_to_mlflow=False)
    train = evaluate_model(EvaluateConfig(split="train", **common))
    dev = evaluate_model(EvaluateConfig(split="dev", **common))
    assert train["n"] == data.n(split="train") - carved and dev["n"] == carved
    assert train["datasets"] == dev["datasets"] == ["alpha", "beta"]
    assert train["carved_dev"] == dev["carved_dev"] == {d: len(s) for d, s in plan.carved_dev.items()}
    only_beta = evaluate_model(EvaluateConfig(split="train", datasets=["beta"], **common))
    assert only_beta["datasets"] == ["beta"]
    assert only_beta["n"] == data.n("beta", "train") - len(plan.carved_dev["beta"]) * per_subject


def test_out_dir_without_mlflow(registered, data, tmp_path):
    result = evaluate_model(EvaluateConfig(model_uri=registered, data=str(data.root), log_to_mlflow=False,
                                           out=str(tmp_path / "eval"), gradcam_per_class=1))
    assert result["mlflow_run_id"] is None
    assert {p.name for p in (tmp_path / "eval").iterdir()} == ARTIFACTS
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == result["n"]


def test_errors(registered, data):
    with pytest.raises(ValueError, match="no crops"):
        evaluate_model(EvaluateConfig(model_uri="models:/t/1", data=str(data.root), datasets=["beta"],
                                      log_to_mlflow=False))
    with pytest.raises(ValueError, match="split"):
        evaluate_model(EvaluateConfig(model_uri="models:/t/1", data=str(data.root), split="validation"))


def test_threshold_can_be_rechosen_at_evaluation_time(registered, data):
    common = dict(model_uri="models:/t/1", data=str(data.root), log_to_mlflow=False, gradcam_per_class=0)
    fixed = evaluate_model(EvaluateConfig(threshold="0.3", **common))
    assert (fixed["threshold"], fixed["threshold_source"]) == (0.3, "fixed")
    stored = evaluate_model(EvaluateConfig(**common))
    assert (stored["threshold"], stored["threshold_source"]) == (0.5, "model")
    # a rule is applied to the dev split's scores, never to the test split being reported
    on_dev = evaluate_model(EvaluateConfig(threshold="eer", **common))
    dev = evaluate_model(EvaluateConfig(split="dev", threshold="eer", **common))
    assert on_dev["threshold_source"] == dev["threshold_source"] == "eer on dev"
    assert on_dev["threshold"] == pytest.approx(dev["threshold"])
    for bad in ("1.5", "median"):  # refused before the model is even loaded
        with pytest.raises(ValueError, match="threshold rule must be"):
            evaluate_model(EvaluateConfig(threshold=bad, **{**common, "model_uri": "models:/absent/1"}))


def test_score_without_batches_and_the_test_plan():
    model = create_model("attacknet")
    scored = Predictor(model, model.spec, "cpu").score_batches([])
    assert scored.labels.size == scored.scores.size == scored.attack_types.size == 0
    import pyarrow as pa

    index = pa.table({"dataset": ["x"], "split": ["test"], "subject": ["s"]})
    plan = split_plan(index, "test", EvaluateConfig(model_uri="-", data="-"))
    assert plan.roles(index).tolist() == ["test"]  # a test-only dataset needs no carving


@pytest.fixture(scope="module")
def video_data(tmp_path_factory):
    """Test videos of 3 frames each: 2 subjects x 2 live + 2 attack videos (print, replay, and an
    attack type that names no species, so its pai_type is null)."""
    return make_crops_dir(tmp_path_factory.mktemp("videos"), datasets=("vid",), splits=("test",), subjects=2,
                          images_per_subject=2, frames_per_video=3, attack_types=("print", "replay", "cutout"))


def assert_same_iso(actual: dict, expected: dict) -> None:
    """The ISO section's figures equal up to float noise (pytest.approx takes no nested dict)."""
    nested = ("apcer_per_species", "apcer_max_species")
    assert {k: v for k, v in actual.items() if k not in nested} == pytest.approx(
        {k: v for k, v in expected.items() if k not in nested})
    assert actual["apcer_per_species"] == pytest.approx(expected["apcer_per_species"])
    assert actual["apcer_max_species"] == expected["apcer_max_species"]


def hand_video_scores(frames: list[dict], rule) -> dict[str, tuple[int, float, str]]:
    """video -> (label, rule of its frames' scores, species): the aggregation written out by hand."""
    grouped = defaultdict(list)
    for f in frames:
        grouped[f["video"]].append(f)
    return {video: (rows[0]["label"], rule([r["score"] for r in rows]), rows[0]["species"])
            for video, rows in grouped.items()}


def test_video_level_figures_are_computed_from_the_score_table(registered, video_data, tmp_path):
    result = evaluate_model(EvaluateConfig(model_uri="models:/t/1", data=str(video_data.root), experiment="eval-test",
                                           out=str(tmp_path / "v"), gradcam_per_class=0, video_score="max"))
    with open(tmp_path / "v" / "scores.csv", newline="") as handle:
        frames = list(csv.DictReader(handle))
    for f in frames:
        f["label"], f["score"], f["species"] = int(f["label"]), float(f["score"]), f["species"] or None
    assert len(frames) == result["n"] == video_data.n() == 24 and {f["frame_index"] for f in frames} == {"0", "1", "2"}
    # the frame level still holds every crop, with the standard's figures per species
    labels, scores, species = ([f[k] for f in frames] for k in ("label", "score", "species"))
    assert_same_iso(result["iso"], metrics.iso_30107_3(labels, scores, 0.5, species))
    assert set(result["iso"]["apcer_per_species"]) == {"print", "replay", "unknown"}  # cutout: no species
    # the video level: 8 videos of 3 frames, scored by the max of their frames
    videos = hand_video_scores(frames, max)
    assert (result["video"]["rule"], result["video"]["n_videos"], result["video"]["n_frames"]) == ("max", 8, 24)
    v_labels, v_scores, v_species = zip(*videos.values())
    assert (result["video"]["n_live"], result["video"]["n_attack"]) == (4, 4)
    expected = metrics.compute_all(list(v_labels), list(v_scores), 0.5, species=list(v_species))
    assert result["video"]["hter"] == pytest.approx(expected["hter"])
    assert result["video"]["auc"] == pytest.approx(expected["auc"])
    assert_same_iso(result["video"]["iso"], expected["iso"])
    # MLflow holds both levels; the report puts them side by side
    logged = mlflow.get_run(result["mlflow_run_id"]).data
    assert logged.metrics["video_hter"] == pytest.approx(expected["hter"])
    assert logged.metrics["video_iso_acer"] == pytest.approx(expected["iso"]["acer"])
    assert logged.metrics["iso_acer"] == pytest.approx(result["iso"]["acer"])
    assert logged.params["video_score"] == "max"
    report = (tmp_path / "v" / "report.md").read_text()
    assert "| figure | frames | videos |" in report and "BPCER20" in report
    hter_row = next(line for line in report.splitlines() if line.startswith("| HTER"))
    assert hter_row.endswith(f"| {100 * result['hter']:.2f} | {100 * expected['hter']:.2f} |")


def test_the_video_rule_changes_only_the_video_level(registered, video_data):
    common = {"model_uri": "models:/t/1", "data": str(video_data.root), "log_to_mlflow": False, "gradcam_per_class": 0}
    mean, median = (evaluate_model(EvaluateConfig(video_score=rule, **common)) for rule in ("mean", "median"))
    assert mean["hter"] == median["hter"] and mean["iso"] == median["iso"]
    assert mean["video"]["rule"] == "mean" and median["video"]["rule"] == "median"
    assert mean["video"]["auc"] is not None and mean["video"]["n_videos"] == median["video"]["n_videos"] == 8
    with pytest.raises(ValueError, match="video_score"):
        evaluate_model(EvaluateConfig(video_score="min", **{**common, "model_uri": "models:/absent/1"}))


# ----------------------------------------------------------------------------- cross-dataset


def fresh_models_train_fn(calls: list[list[str]]):
    """Logs a freshly initialised model per call, the run_training result shape (real MLflow)."""

    def train(datasets: list[str]) -> dict:
        calls.append(datasets)
        uri, _, run_id = log_fresh_model(None, seed=len(calls))
        return {"run_id": run_id, "model_uri": uri, "version": None, "threshold": 0.5,
                "dev": {"hter": 0.5}, "epochs_run": 0, "seconds": 0.0}

    return train


def cell_tasks(timeline: list[dict]) -> list[str]:
    """Task ids of the cross-dataset cells Ray executed."""
    return [e["args"]["task_id"] for e in timeline if e.get("cat") == "task::_cell" and e.get("ph") == "X"]


def test_cross_dataset_matrix(ray_session, tracking, data, tmp_path):
    calls: list[list[str]] = []
    config = CrossDatasetConfig(data=str(data.root), datasets=["alpha", "beta"], out=str(tmp_path / "cross"),
                                experiment="cross-test")
    before = set(cell_tasks(ray_session.timeline()))
    result = cross_dataset(config, train_fn=fresh_models_train_fn(calls))
    deadline = time.time() + 20  # Ray reports task events to the timeline a second or so late
    while len(set(cell_tasks(ray_session.timeline())) - before) < 6 and time.time() < deadline:
        time.sleep(0.5)
    assert len(set(cell_tasks(ray_session.timeline())) - before) == 6  # every cell scored in a Ray task
    assert calls == [["alpha"], ["beta"], ["alpha", "beta"]]
    assert list(result["cells"]) == ["alpha", "beta", "fused"]
    assert result["test_splits"] == {"alpha": "test", "beta": "dev"}
    assert any("beta" in note and "dev" in note for note in result["notes"])
    for name, row in result["cells"].items():
        assert list(row) == ["alpha", "beta"]
        for test, cell in row.items():
            assert {"hter", "far", "frr", "split", "n_live", "n_attack"} <= set(cell)
            assert cell["hter"] == pytest.approx((cell["far"] + cell["frr"]) / 2)
    # a cell is exactly what evaluate_model says for that model on that dataset
    direct = evaluate_model(EvaluateConfig(model_uri=result["models"]["beta"]["model_uri"], data=str(data.root),
                                           split="dev", datasets=["beta"], log_to_mlflow=False))
    assert result["cells"]["beta"]["beta"]["hter"] == direct["hter"]
    assert result["cells"]["fused"]["alpha"]["n_live"] == data.n("alpha", "test", "live")

    with open(tmp_path / "cross" / "cross_dataset.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["train"], r["test"]) for r in rows] == [(t, d) for t in ("alpha", "beta", "fused")
                                                       for d in ("alpha", "beta")]
    assert float(rows[0]["hter"]) == pytest.approx(result["cells"]["alpha"]["alpha"]["hter"])
    markdown = (tmp_path / "cross" / "cross_dataset.md").read_text()
    assert "| Train | Test | HTER (%) | FAR (%) | FRR (%) |" in markdown
    assert "| fused | beta† |" in markdown and "† beta: no test rows" in markdown

    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.metrics["hter/fused/alpha"] == pytest.approx(result["cells"]["fused"]["alpha"]["hter"])
    assert run.data.params["run_id.fused"] == result["models"]["fused"]["run_id"]
    assert {"cross_dataset.csv", "cross_dataset.md", "cross_dataset.json"} <= run_artifacts(run.info.run_id)


def test_cross_dataset_rejects_unknown_datasets_before_training(tracking, data, tmp_path):
    calls: list[list[str]] = []
    config = CrossDatasetConfig(data=str(data.root), datasets=["alpha", "gamma"], out=str(tmp_path))
    with pytest.raises(ValueError, match="gamma"):
        cross_dataset(config, train_fn=fresh_models_train_fn(calls))
    assert calls == []


def test_each_model_of_the_matrix_trains_with_the_template_on_its_datasets():
    template = TrainConfig(data="elsewhere", model="resnet18", epochs=3, loss="am_softmax", seed=7, patience=2,
                           register="never", promote=True)
    config = CrossDatasetConfig(data="d", datasets=["a", "b"], experiment="x", train=template)
    built = train_config(config, ["a"])
    assert (built.data, built.datasets, built.experiment) == ("d", ["a"], "x")
    assert (built.register, built.promote) == (None, False)  # the matrix registers nothing
    assert (built.model, built.epochs, built.loss, built.seed, built.patience) == ("resnet18", 3, "am_softmax", 7, 2)
    assert template.datasets is None and template.data == "elsewhere"  # the template is not modified


@pytest.mark.ray
def test_scoring_on_a_ray_actor_pool_gives_the_in_process_metrics(ray_session, registered, data):
    common = dict(model_uri="models:/t/1", data=str(data.root), log_to_mlflow=False, gradcam_per_class=1)
    here = evaluate_model(EvaluateConfig(**common))
    pooled = evaluate_model(EvaluateConfig(**common, actors=2, batch_size=3))  # several batches, two actors
    for key in ("hter", "apcer", "bpcer", "auc", "eer", "n_live", "n_attack", "tp", "fp"):
        assert pooled[key] == pytest.approx(here[key]), key
    assert pooled["iso"] == here["iso"]
