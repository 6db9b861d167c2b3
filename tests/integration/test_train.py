"""Ray Train end to end on real Ray and a real MLflow store: registry, threshold, resume."""

from __future__ import annotations

import os
import signal
import threading
import time

import mlflow
import pytest

from raypipe.models.store import load_model
from raypipe.train import TrainConfig, run_training
from tests.fixtures.crops import make_crops_dir

pytestmark = pytest.mark.ray


@pytest.fixture()
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(tmp_path))
    return uri


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_crops_dir(tmp_path_factory.mktemp("crops"), splits=("train", "test"), subjects=5, images_per_subject=6)


def test_train_registers_a_model_with_its_dev_threshold(ray_session, data, tracking, tmp_path, capsys,
                                                       monkeypatch):
    import ray.data

    def refuse(*args, **kwargs):
        raise AssertionError("training must stream its crops, not materialise them")

    monkeypatch.setattr(ray.data.Dataset, "materialize", refuse)
    unseen = make_crops_dir(tmp_path / "other", datasets=("other",), splits=("test",), subjects=2, seed=3)
    config = TrainConfig(data=str(data.root), model="attacknet", epochs=3, workers=2, experiment="t",
                         register="t-attacknet", promote=True, patience=5, cross_data=str(unseen.root), stream=True)
    summary = run_training(config)
    assert summary["streamed"] is True
    assert {"run_id", "model_uri", "version", "threshold", "dev", "epochs_run", "seconds"} <= set(summary)
    assert summary["epochs_run"] == 3 and summary["version"] == "1"
    # one progress line per epoch reached the driver's stderr while training ran
    stderr = capsys.readouterr().err.splitlines()
    progress = [line.split() for line in stderr if line.startswith("raypipe train: epoch")]
    assert [words[3] for words in progress] == ["1/3", "2/3", "3/3"]
    assert all({"train_loss", "dev_loss", "dev_hter", "samples/s", "ETA"} <= set(words) for words in progress)
    assert summary["dev"]["n_live"] + summary["dev"]["n_attack"] == 12  # 1 carved subject x 12 crops
    champion = load_model("models:/t-attacknet@champion")
    assert champion.threshold == pytest.approx(summary["threshold"])
    assert champion.tags["pipeline_version"] == "test-crops-v1"
    client = mlflow.MlflowClient()
    history = client.get_metric_history(summary["run_id"], "dev_loss")
    assert [m.step for m in history] == [0, 1, 2]
    # samples trained per epoch are summed over both workers: 4 train subjects x 12 crops, the
    # last batch kept at this size (train.keeps_last_batch)
    assert [m.value for m in client.get_metric_history(summary["run_id"], "train_samples")] == [48] * 3
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"])}
    assert {"plots", "metrics", "efficiency.json", "data_manifest.json"} <= artifacts
    # the dev rule is said in words; the generalisation report scores every row of the unseen data
    assert "carved by subject" in summary["dev_rule"]["alpha"]  # the fixture records no sessions
    cross = summary["cross"]
    assert (cross["n_live"], cross["n_attack"]) == (unseen.n(kind="live"), unseen.n(kind="attack"))
    assert cross["threshold"] == summary["threshold"] and cross["datasets"] == ["other"]
    assert client.get_run(summary["run_id"]).data.metrics["cross_hter"] == pytest.approx(cross["hter"])


@pytest.mark.slow
def test_early_stopping_ends_the_run_when_patience_is_reached(ray_session, data, tracking):
    """Learning rate 0 and frozen BatchNorm: the weights never change, so the dev loss of
    epoch 0 is never beaten; with patience 1 the second epoch is the last of 5 requested."""
    config = TrainConfig(data=str(data.root), model="attacknet", epochs=5, workers=2, experiment="es",
                         lr=0.0, freeze_norm=True, patience=1)
    summary = run_training(config)
    assert (summary["epochs_run"], summary["best_epoch"]) == (2, 0)
    assert summary["streamed"] is False  # small data: decoded once and held (auto)
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(summary["run_id"], "dev_loss")]
    assert steps == [0, 1]


def _train_worker_pids() -> list[int]:
    """Ray titles actor processes "ray::<Class>.<method>" (the state API would need the dashboard)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                title = handle.read().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(b"ray::RayTrainWorker"):
            pids.append(int(entry))
    return sorted(pids)


def test_killed_worker_resumes_from_the_last_checkpoint(ray_session, data, tracking):
    """SIGKILL a real DDP worker process mid-run: Train restarts the group from the latest
    checkpoint, finishes every epoch, and everything lands in one MLflow run."""
    config = TrainConfig(data=str(data.root), model="attacknet", epochs=8, workers=2, experiment="ft",
                         patience=100, max_failures=2)
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(run_training(config)), daemon=True)
    runner.start()
    client = mlflow.MlflowClient()
    killed = None
    deadline = time.time() + 300
    while runner.is_alive() and killed is None and time.time() < deadline:
        runs = client.search_runs([e.experiment_id for e in client.search_experiments() if e.name == "ft"])
        if runs and len(client.get_metric_history(runs[0].info.run_id, "dev_loss")) >= 2:
            pids = _train_worker_pids()
            if pids:
                killed = pids[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    runner.join(timeout=600)
    assert killed is not None, "training ended before a worker could be killed"
    assert outcome, "training did not finish after the worker was killed"
    assert outcome["restarts"] >= 1
    assert outcome["epochs_run"] == 8
    experiment = client.get_experiment_by_name("ft")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "dev_loss")]
    assert sorted(set(steps)) == list(range(8))
