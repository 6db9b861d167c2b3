"""Runs that stop and go on: `preprocess --resume` after a crash mid-job, `train --resume` after
the driver was killed mid-run (both on real Ray, the session's shared cluster)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pyarrow.dataset as pads
import pytest

from raypipe import preprocess
from raypipe.preprocess import FaceCropper, PreprocessConfig, run_preprocess
from raypipe.train import SNAPSHOT_FILE, TrainConfig, run_training
from tests.fixtures.crops import make_crops_dir
from tests.fixtures.images import bad_inputs, write
from tests.integration.test_preprocess import good_images

pytestmark = pytest.mark.ray

CRASHING = "spoof/zz_crash.jpg"  # sorts last: the batches before it are written first


@pytest.fixture()
def faces(tmp_path) -> Path:
    root = tmp_path / "faces"
    for index, (name, payload) in enumerate(sorted(good_images().items())):
        write(root / ("live" if index % 2 == 0 else "spoof") / name, payload)
    for name, (payload, _) in bad_inputs().items():
        write(root / "live" / f"bad_{name}", payload)
    write(root / CRASHING, good_images()["astronaut_0.jpg"])
    return root


def ids(out: Path, table: str) -> list[str]:
    return pads.dataset(out / table, format="parquet", partitioning="hive").to_table(["sample_id"]).column(
        "sample_id").to_pylist()


def test_preprocess_resume_crops_only_what_the_crashed_run_had_not_written(ray_session, faces, tmp_path,
                                                                           monkeypatch):
    class CrashingCropper(FaceCropper):  # defined here: Ray ships it to the actor by value
        def process_record(self, record):
            if record["rel_path"] == CRASHING:  # a reader bug that escapes the per-file guard
                # The crash comes once an earlier batch's write has landed, however busy the
                # cluster is (a fixed sleep was not always enough under CI load).
                deadline = time.monotonic() + 120
                while not any(Path(config.out).glob("_staging-*/**/*.parquet")) and time.monotonic() < deadline:
                    time.sleep(0.2)
                raise RuntimeError("reader crashed")
            return super().process_record(record)

    config = PreprocessConfig(dataset="folder", root=str(faces), out=str(tmp_path / "out"), workers=1,
                              batch_size=4)
    monkeypatch.setattr(preprocess, "FaceCropper", CrashingCropper)
    with pytest.raises(Exception, match="reader crashed"):
        run_preprocess(config)
    (staging,) = (tmp_path / "out").glob("_staging-*")  # kept for --resume
    written = sorted(staging.rglob("*.parquet"))
    assert written, "nothing was written before the crash"
    assert not (tmp_path / "out" / "crops").exists()  # nothing swapped in

    monkeypatch.setattr(preprocess, "FaceCropper", FaceCropper)  # the reader fixed
    config.resume = True
    summary = run_preprocess(config)
    inputs = len(good_images()) + len(bad_inputs()) + 1
    assert summary["inputs"] == inputs == summary["rows"] + summary["rejected"]
    assert 0 < summary["resumed"]["skipped"] < inputs  # what the crashed run wrote was kept, not redone
    assert summary["resumed"]["skipped"] + summary["resumed"]["cropped"] == inputs
    written_ids = ids(tmp_path / "out", "crops") + ids(tmp_path / "out", "rejects")
    assert len(written_ids) == len(set(written_ids)) == inputs  # no duplicates
    assert not list((tmp_path / "out").glob("_staging-*"))


def test_preprocess_without_resume_starts_the_stopped_run_over(ray_session, faces, tmp_path):
    out = tmp_path / "out"
    config = PreprocessConfig(dataset="folder", root=str(faces), out=str(out), workers=1)
    stale = out / f"_staging-{preprocess.run_key(config)}" / "status=ok" / "dataset=folder" / "split=train"
    stale.mkdir(parents=True)
    (stale / "old.parquet").write_bytes(b"not parquet")  # what a crashed run of the same settings left
    summary = run_preprocess(config)
    assert summary["resumed"] is None and summary["rows"] + summary["rejected"] == summary["inputs"]
    assert not list(out.glob("_staging-*"))


# ------------------------------------------------------------------------- train --resume


def dev_loss_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "dev_loss"))


@pytest.mark.slow
def test_train_resume_continues_a_killed_run_into_the_same_mlflow_run(ray_session, tmp_path, monkeypatch,
                                                                     request):
    """`raypipe train` is killed (SIGKILL, the whole driver) once it has a checkpoint; `--resume`
    goes on from the last checkpoint in --storage-path, in the same MLflow run."""
    data = make_crops_dir(tmp_path / "crops", splits=("train", "test"), subjects=3, images_per_subject=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)  # an earlier test may have set another store in this process
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))
    storage = tmp_path / "ray_results"
    args = ["--data", str(data.root), "--model", "attacknet", "--epochs", "3", "--workers", "1", "--patience", "100",
            "--experiment", "resume", "--storage-path", str(storage)]
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address, "RAYPIPE_DATA_DIR": str(tmp_path)}
    job = subprocess.Popen([sys.executable, "-m", "raypipe.cli", "train", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed_after = None
    deadline = time.time() + 240
    try:
        while job.poll() is None and time.time() < deadline:
            if list(storage.glob(f"*/{SNAPSHOT_FILE}")):  # Ray Train has recorded a checkpoint
                (run,) = mlflow.search_runs(experiment_names=["resume"], output_format="list")
                killed_after = dev_loss_steps(run.info.run_id)
                os.kill(job.pid, signal.SIGKILL)  # the driver only: Ray ends the job's workers
                break
            time.sleep(0.2)
    finally:
        if job.poll() is None and killed_after is None:  # past the deadline: never leave a driver running
            os.killpg(job.pid, signal.SIGKILL)
    job.wait(timeout=30)
    assert killed_after is not None, f"training ended before it could be killed:\n{job.stdout.read()[-3000:]}"
    (stopped,) = mlflow.search_runs(experiment_names=["resume"], output_format="list")
    assert stopped.info.status == "RUNNING"  # a killed driver never closed its run

    config = TrainConfig(data=str(data.root), model="attacknet", epochs=3, workers=1, patience=100,
                         experiment="resume", storage_path=str(storage), resume=True)
    summary = run_training(config)
    assert summary["run_id"] == stopped.info.run_id and summary["resumed"] is True
    assert summary["epochs_run"] == 3 and summary["restarts"] >= 1
    # every epoch logged into the one run; an epoch the killed run finished after its last checkpoint
    # Ray Train recorded runs again (and is logged again at its step)
    steps = dev_loss_steps(summary["run_id"])
    assert sorted(set(steps)) == [0, 1, 2] and set(killed_after) <= set(steps)
    (run,) = mlflow.search_runs(experiment_names=["resume"], output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3"  # the params of the first start, logged once
