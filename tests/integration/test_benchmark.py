"""`raypipe benchmark` end to end on native fixture trees: OULU-NPU protocol 3 (six folds,
two at a time in Ray tasks), protocol 1 and the leave-one-dataset-out target M (train on
OULU-NPU, CASIA-FASD and Replay-Attack, test on MSU-MFSD) preprocess, train (AttackNet, 1
epoch), choose the threshold on dev, score the test set and log the MLflow tree, the tables
and the plots. The three share one work folder, so OULU-NPU is cropped once and every
protocol is carved from it.

p1 and ocim-M train with Ray Train. p3's six folds train with raypipe.train's plain-PyTorch
epoch (tests/fixtures/training.py): six Ray Train start-ups do not fit the test budget.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import ray

from raypipe import cli
from raypipe.config import BenchmarkConfig, TrainConfig
from raypipe.protocols import is_preprocessed, load_protocol, run_benchmark
from tests.fixtures.layouts import face_frame_fn, make_tree, write_oulu_p3_folds
from tests.fixtures.training import plain_loop_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FACES = face_frame_fn(128)
DATASETS = ("oulu_npu", "casia_fasd", "replay_attack", "msu_mfsd")


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("benchmark-trees")
    roots = {name: str(make_tree(name, base / name, FACES).root) for name in DATASETS}
    write_oulu_p3_folds(Path(roots["oulu_npu"]))
    return roots


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One work folder for the module, as a user's data/benchmark: the OULU-NPU release is
    cropped by the first protocol that needs it and carved for every later one."""
    return tmp_path_factory.mktemp("benchmark-work")


@pytest.fixture()
def tracking(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAYPIPE_DATA_DIR", str(tmp_path))  # Ray Train checkpoints
    return uri


def tiny_training() -> TrainConfig:
    return TrainConfig(data="", model="attacknet", epochs=1, workers=1, batch_size=16)


def check_mlflow_tree(result: dict, experiment: str) -> None:
    """Parent -> one child per fold -> that fold's training and evaluation runs; the child's
    figures are the rows', which are the evaluation's own (its metrics.json)."""
    client = mlflow.MlflowClient()
    parent = client.get_run(result["mlflow_run_id"])
    assert parent.data.tags["raypipe.kind"] == "benchmark" and parent.info.status == "FINISHED"
    runs = client.search_runs([parent.info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    children.sort(key=lambda c: [r["fold"] for r in result["rows"]].index(c.data.tags["raypipe.fold"]))
    assert [c.data.tags["raypipe.fold"] for c in children] == [row["fold"] for row in result["rows"]]
    for child, row in zip(children, result["rows"]):
        nested = {r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == child.info.run_id}
        assert {row["train_run_id"], row["eval_run_id"]} <= nested and len(nested) == 3  # train, dev, test
        for key in ("acer", "hter", "apcer", "bpcer", "threshold"):
            if row[key] is not None:
                assert child.data.metrics[f"{row['test']}/{key}"] == pytest.approx(row[key])
        evaluation = client.get_run(row["eval_run_id"]).data.metrics
        assert evaluation["video_hter"] == pytest.approx(row["hter"])
        assert evaluation["video_iso_acer"] == pytest.approx(row["acer"])
        child_plots = {Path(a.path).name for a in client.list_artifacts(child.info.run_id, f"plots/{row['test']}")}
        assert child_plots == {"roc_video.png", "det_video.png"}
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.csv", "results.json", "plots"} <= top
    assert experiment == client.get_experiment(parent.info.experiment_id).name


def check_files(result: dict, out: Path) -> None:
    """The CSV and the Markdown hold the printed numbers; the evaluation's metrics.json agrees."""
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == len(result["rows"])
    markdown = (out / "results.md").read_text()
    for line, row in zip(table, result["rows"]):
        for key in ("acer", "hter", "auc", "threshold"):
            assert float(line[key]) == pytest.approx(row[key])
        assert f"| {100 * row['acer']:.2f} | {100 * row['hter']:.2f} | {row['auc']:.4f} |" in markdown
        printed = json.loads((out / row["fold"] / row["test"] / "metrics.json").read_text())
        assert printed["video"]["iso"]["acer"] == pytest.approx(row["acer"])
        assert printed["threshold"] == pytest.approx(row["threshold"])
        assert all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in row["plots"])


def fold_tasks(timeline: list[dict]) -> list[tuple[float, float]]:
    """(start, end) of every run_fold task that executed, from Ray's timeline."""
    return [(e["ts"], e["ts"] + e["dur"]) for e in timeline
            if e.get("cat") == "task::run_fold" and e.get("ph") == "X"]


def test_oulu_p3_six_folds_in_ray_tasks_carved_from_one_cropping(ray_session, roots, work, tracking, tmp_path):
    out = tmp_path / "out"
    folds = write_oulu_p3_folds(Path(roots["oulu_npu"]))
    result = run_benchmark(BenchmarkConfig(protocol="oulu-p3", roots=[f"oulu_npu={roots['oulu_npu']}"],
                                           work=str(work), out=str(out), frames_per_video=2, concurrent_folds=2,
                                           experiment="bench-oulu-p3", train=tiny_training()),
                           train_fn=plain_loop_training)
    assert [row["fold"] for row in result["rows"]] == [str(k) for k in range(1, 7)]
    assert result["concurrent_folds"] == 2
    assert all(status == {"oulu_npu": "carved"} for status in result["data"].values())
    for row in result["rows"]:
        assert (row["n_live"], row["n_attack"], row["n_frames"]) == (1, 1, 4)  # each Test_k: one of each, 2 frames
        assert row["split"] == "test" and row["acer"] == pytest.approx((row["apcer"] + row["bpcer"]) / 2)
    acers = [row["acer"] for row in result["rows"]]
    assert result["summary"]["acer"]["mean"] == pytest.approx(sum(acers) / 6)
    # the fold folders hold exactly the videos their lists name, each in its split
    for k, fold in enumerate(load_protocol("oulu-p3").folds, start=1):
        data = work / fold.data_key()
        manifest = json.loads((data / "manifest.json").read_text())["oulu_npu"]
        assert manifest["carved_from"] == str(work / "oulu_npu.protocol0")
        for split, videos in folds[k].items():
            table = pq.read_table(data / "crops" / "dataset=oulu_npu" / f"split={split}")
            assert sorted({Path(p).stem for p in table.column("rel_path").to_pylist()}) == sorted(videos)
    deadline = time.time() + 20  # Ray reports task events to the timeline a second or so late
    while len(fold_tasks(ray.timeline())) < 6 and time.time() < deadline:
        time.sleep(0.5)
    executed = sorted(fold_tasks(ray.timeline()))
    assert len(executed) == 6
    assert any(b[0] < a[1] for a, b in zip(executed, executed[1:]))  # two folds ran side by side
    check_files(result, out / "oulu-p3")
    check_mlflow_tree(result, "bench-oulu-p3")


def test_oulu_p1_end_to_end(ray_session, roots, work, tracking, tmp_path):
    out = tmp_path / "out"
    result = run_benchmark(BenchmarkConfig(protocol="oulu-p1", roots=[f"oulu_npu={roots['oulu_npu']}"],
                                           work=str(work), out=str(out), frames_per_video=2,
                                           experiment="bench-oulu", train=tiny_training()))
    (row,) = result["rows"]
    assert (row["fold"], row["train"], row["test"], row["split"], row["level"]) == (
        "1", "oulu_npu", "oulu_npu", "test", "video")
    # Protocol_1/Test.txt: 2 live and 2 attack videos (print, replay), 2 frames each
    assert (row["n_live"], row["n_attack"], row["n_frames"]) == (2, 2, 8)
    assert row["acer"] == pytest.approx((row["apcer"] + row["bpcer"]) / 2)
    assert result["data"] == {"1": {"oulu_npu": "carved"}}
    (fold,) = load_protocol("oulu-p1").folds
    assert is_preprocessed(str(work / fold.data_key()), "oulu_npu", roots["oulu_npu"], 2)  # a rerun reuses it
    check_files(result, out / "oulu-p1")
    check_mlflow_tree(result, "bench-oulu")


def test_ocim_m_end_to_end_through_the_cli(ray_session, roots, work, tracking, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["benchmark", "--protocol", "ocim-M", "--roots", ",".join(f"{d}={r}" for d, r in roots.items()),
                     "--work", str(work), "--out", str(out), "--frames-per-video", "2", "--experiment", "bench-ocim",
                     "--model", "attacknet", "--epochs", "1", "--workers", "1", "--batch-size", "16",
                     "--concurrent-folds", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (row,) = result["rows"]
    assert (row["fold"], row["train"], row["test"], row["split"]) == (
        "M", "oulu_npu,casia_fasd,replay_attack", "msu_mfsd", "test")
    assert (row["n_live"], row["n_attack"]) == (1, 1)  # MSU's test client 003: one real, one replay video
    assert result["headline"] == "hter" and result["summary"]["hter"]["mean"] == pytest.approx(row["hter"])
    assert result["concurrent_folds"] == 1
    manifest = json.loads((work / load_protocol("ocim-M").folds[0].data_key() / "manifest.json").read_text())
    assert set(manifest) == set(DATASETS)  # all four, so the other targets reuse this folder
    assert manifest["oulu_npu"]["summary"]["samples"] == 12  # protocol 0: the whole release
    assert result["data"]["M"]["oulu_npu"] == "carved"  # copied from the release the OULU protocols cropped
    assert manifest["oulu_npu"]["carved_from"] == str(work / "oulu_npu.protocol0")
    check_files(result, out / "ocim-M")
    check_mlflow_tree(result, "bench-ocim")
