"""train_one_epoch / evaluate / splits as plain functions: no Ray needed (threshold rules: test_metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypipe import crops
from raypipe.models import AugmentConfig, build_transforms, create_model, get_spec
from raypipe.train import TrainConfig, build_model_and_loss, collate, evaluate, train_one_epoch
from tests.fixtures.crops import make_crops_dir


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_crops_dir(tmp_path_factory.mktemp("crops"), datasets=("alpha",), splits=("train", "test"),
                          subjects=5, images_per_subject=6)


def batches(data, role, spec, batch_size=16):
    index = crops.read_index(data.root)
    plan = crops.plan_splits(index)
    return [collate(b) for b in crops.iter_local_batches(data.root, role, plan, spec, batch_size=batch_size)]


def test_dev_is_carved_by_subject_never_by_image(small_data):
    index = crops.read_index(small_data.root)
    plan = crops.plan_splits(index, dev_fraction=0.2, seed=0)
    roles = plan.roles(index)
    subjects = np.array(index["subject"].to_pylist())
    dev_subjects, train_subjects = set(subjects[roles == "dev"]), set(subjects[roles == "train"])
    assert dev_subjects and not dev_subjects & train_subjects
    assert len(dev_subjects) == 1  # ceil(5 * 0.2)
    assert crops.plan_splits(index, 0.2, 0).carved_dev == plan.carved_dev  # deterministic
    assert set(subjects[roles == "test"]) == set(small_data.subjects[("alpha", "test")])


def test_a_dataset_with_its_own_dev_split_is_not_carved(tmp_path):
    data = make_crops_dir(tmp_path, splits=("train", "dev"), subjects=2)
    plan = crops.plan_splits(crops.read_index(data.root))
    assert plan.carved_dev == {}


def test_carving_needs_two_subjects(tmp_path):
    data = make_crops_dir(tmp_path, splits=("train",), subjects=1)
    with pytest.raises(ValueError, match="fewer than 2"):
        crops.plan_splits(crops.read_index(data.root))


def test_training_epochs_reduce_the_loss(small_data):
    torch.manual_seed(0)
    config = TrainConfig(data=str(small_data.root), model="attacknet", lr=3e-3)
    model, loss_fn = build_model_and_loss(config)
    spec = get_spec("attacknet")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train_batches = batches(small_data, "train", spec)
    plain = build_transforms(spec, AugmentConfig(enabled=False), train=True)
    first = train_one_epoch(model, train_batches, loss_fn, optimizer, plain, torch.device("cpu"))
    for _ in range(8):
        last = train_one_epoch(model, train_batches, loss_fn, optimizer, plain, torch.device("cpu"))
    assert first["n"] == last["n"] == small_data.n(split="train") - small_data.n(split="train") // 5
    assert last["loss"] < first["loss"] * 0.7
    assert last["accuracy"] > 0.8


def test_evaluate_returns_aligned_deterministic_scores(small_data):
    config = TrainConfig(data=str(small_data.root), model="attacknet")
    model, loss_fn = build_model_and_loss(config)
    spec = get_spec("attacknet")
    eval_tf = build_transforms(spec, None, train=False)
    test_batches = batches(small_data, "test", spec)
    first = evaluate(model, test_batches, loss_fn, eval_tf, torch.device("cpu"))
    second = evaluate(model, test_batches, loss_fn, eval_tf, torch.device("cpu"))
    assert first["n"] == small_data.n(split="test") == len(first["scores"])
    assert np.array_equal(first["scores"], second["scores"])
    assert ((0 <= first["scores"]) & (first["scores"] <= 1)).all()
    assert sorted(set(first["labels"].tolist())) == [0, 1]
    assert set(first["attack_types"]) == {"live", "print", "replay"}


def test_fine_tuning_keeps_batchnorm_statistics_fixed(small_data):
    from raypipe.train import set_training_mode

    model = create_model("attacknet")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    set_training_mode(model, freeze_norm=True)
    assert model.training and not any(m.training for m in norms)
    batch = next(iter(batches(small_data, "train", model.spec)))
    model(build_transforms(model.spec, None, train=False)(batch["image"]))
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))  # statistics untouched
    set_training_mode(model)
    assert all(m.training for m in norms)


@pytest.mark.parametrize("change, error", [({"cross_data": "/nowhere"}, FileNotFoundError),
                                           ({"threshold_rule": "median"}, ValueError),
                                           ({"workers": 40}, ValueError),  # under 2 training rows per worker
                                           ({"resume": True}, ValueError)])  # nothing stopped to resume
def test_bad_settings_fail_before_any_training(small_data, tmp_path, monkeypatch, change, error):
    from raypipe import runtime
    from raypipe.train import run_training

    def no_cluster(*_args, **_kwargs):  # a shared test cluster may already run: watch the call instead
        raise AssertionError("reached Ray before refusing the settings")

    monkeypatch.setattr(runtime, "init_ray", no_cluster)
    config = TrainConfig(data=str(small_data.root), tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", **change)
    with pytest.raises(error):
        run_training(config)


# -- early stopping and the per-epoch progress line (plain functions, no Ray) --------------------


def epochs_run(dev_losses: list[float], patience: int) -> int:
    """Drive early_stopping as train_loop_per_worker does; the number of epochs that ran."""
    from raypipe.train import early_stopping

    best, bad = float("inf"), 0
    for epoch, loss in enumerate(dev_losses):
        decision = early_stopping(best, bad, loss, patience)
        bad = decision.bad_epochs
        best = loss if decision.improved else best
        if decision.stop:
            return epoch + 1
    return len(dev_losses)


@pytest.mark.parametrize("losses, patience, ran", [
    ([1.0, 0.9, 0.95, 0.95, 0.96, 0.5], 2, 4),  # two epochs without a better loss after 0.9
    ([1.0, 1.0, 1.0, 1.0], 1, 2),  # a flat loss: the second epoch is already one bad epoch
    ([1.0, 0.9, 0.8, 0.7], 1, 4),  # always improving: never stops
    ([1.0, 1.1, 0.9, 1.0, 0.8], 2, 5),  # an improvement resets the count
    ([1.0, 1.0 - 1e-9, 1.0], 2, 3),  # gains below min_delta are no improvement
    ([float("nan"), float("nan")], 2, 2),  # NaN never improves
])
def test_early_stopping_stops_when_patience_is_reached(losses, patience, ran):
    assert epochs_run(losses, patience) == ran


def test_progress_line_has_losses_hter_throughput_and_eta():
    from raypipe.train import format_progress

    metrics = {"epoch": 2, "train_loss": 0.41234, "dev_loss": 0.39811, "dev_hter": 0.125,
               "train_samples_per_second": 1234.56}
    assert format_progress(metrics, 100, 3.2) == (
        "epoch 3/100  train_loss 0.4123  dev_loss 0.3981  dev_hter 0.1250  1234.6 samples/s  ETA <=5m10s")
    without_hter = {k: v for k, v in metrics.items() if k != "dev_hter"}  # dev lacked a class: not reported
    assert "dev_hter n/a" in format_progress(without_hter, 3, None)
    assert format_progress(without_hter, 3, None).endswith("ETA ?")
    assert format_progress({**metrics, "epoch": 99}, 100, 3.2).endswith("ETA <=0s")
    assert format_progress(metrics, 2000, 10.0).endswith("ETA <=5h32m")  # 1997 x 10 s


def test_progress_sums_throughput_over_workers_and_keeps_rank_zero_losses():
    from raypipe.train import merge_worker_metrics

    merged = merge_worker_metrics([{"epoch": 1, "train_loss": 0.5, "train_samples_per_second": 100.0},
                                   {"epoch": 1, "train_loss": 0.7, "train_samples_per_second": 90.0}])
    assert merged == {"epoch": 1, "train_loss": 0.5, "train_samples_per_second": 190.0}


# -- a share smaller than one batch, GPUs without CUDA, resuming a stopped run ---------------------


@pytest.mark.parametrize("rows, workers, batch_size, keep", [
    (1000, 2, 64, False),  # full batches: the last partial one is dropped (a batch of one breaks BatchNorm)
    (40, 1, 64, True),  # one worker's share is under one batch: dropping it would train on nothing
    (100, 2, 64, True),  # 50 rows per worker
    (129, 2, 64, False),  # 64 per worker: exactly one full batch
])
def test_the_last_batch_is_kept_only_when_a_share_is_under_one_batch(rows, workers, batch_size, keep):
    from raypipe.train import keeps_last_batch

    assert keeps_last_batch(rows, workers, batch_size) is keep


def test_a_share_under_two_rows_fails_early():
    from raypipe.train import keeps_last_batch

    with pytest.raises(ValueError, match="fewer --workers"):
        keeps_last_batch(3, 2, 64)


def test_a_tiny_share_still_trains_on_every_row(small_data):
    """The bug: 1 worker, 48 rows, batches of 64 and drop_last: 0 samples, loss 0.0 every epoch."""
    from raypipe.train import keeps_last_batch

    spec = get_spec("attacknet")
    model, loss_fn = build_model_and_loss(TrainConfig(data="", model="attacknet"))
    index = crops.read_index(small_data.root)
    plan = crops.plan_splits(index)
    rows = int((plan.roles(index) == "train").sum())
    assert rows < 64
    drop_last = not keeps_last_batch(rows, 1, 64)
    batches = [collate(b) for b in crops.iter_local_batches(small_data.root, "train", plan, spec, batch_size=64)]
    kept = [b for b in batches if not drop_last or len(b["label"]) == 64]
    result = train_one_epoch(model, kept, loss_fn, torch.optim.Adam(model.parameters()),
                             build_transforms(spec, None, train=True), torch.device("cpu"))
    assert result["n"] == rows and result["loss"] > 0


def test_a_gpu_without_cuda_falls_back_to_the_cpu_and_says_why(monkeypatch):
    from raypipe.train import usable_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    device, why = usable_device(torch.device("cuda:0"))
    assert device == torch.device("cpu") and "CUDA is not available" in why
    assert usable_device(torch.device("cpu")) == (torch.device("cpu"), None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert usable_device(torch.device("cuda:0")) == (torch.device("cuda:0"), None)


def test_resume_picks_the_latest_stopped_run_with_checkpoints(tmp_path, request):
    """The run Ray Train V2 resumes is ``--storage-path``/<experiment>-<run id>; ``--resume`` finds
    the MLflow run whose folder holds Ray Train's checkpoint snapshot."""
    import mlflow

    from raypipe.models.store import configure_tracking, ensure_experiment
    from raypipe.train import SNAPSHOT_FILE, NothingToResume, find_run_to_resume, train_run_name

    configure_tracking(f"sqlite:///{tmp_path / 'm.db'}")
    request.addfinalizer(lambda: mlflow.set_tracking_uri(None))  # other tests keep their own store
    experiment = ensure_experiment("resume")
    storage = tmp_path / "ray_results"
    runs = {}
    for name, status in (("finished", "FINISHED"), ("crashed", "RUNNING"), ("no-checkpoint", "FAILED"),
                         ("other", "KILLED")):
        with mlflow.start_run(experiment_id=experiment, run_name=name) as run:
            runs[name] = run.info.run_id
        mlflow.MlflowClient().set_terminated(run.info.run_id, status)
        if name != "no-checkpoint":
            folder = storage / train_run_name("resume", run.info.run_id)
            folder.mkdir(parents=True)
            (folder / SNAPSHOT_FILE).write_text("{}")
    config = TrainConfig(data="", experiment="resume", resume=True)
    assert find_run_to_resume(config, str(storage)) == runs["other"]  # the latest stopped one
    config.run_name = "crashed"
    assert find_run_to_resume(config, str(storage)) == runs["crashed"]
    for name in ("finished", "no-checkpoint"):
        config.run_name = name
        with pytest.raises(NothingToResume, match="--storage-path"):
            find_run_to_resume(config, str(storage))
    with pytest.raises(NothingToResume):
        find_run_to_resume(TrainConfig(data="", experiment="never-ran"), str(storage))


def test_held_rows_come_in_a_new_seeded_order_every_epoch_each_row_once():
    from raypipe.train import local_batches

    data = {"image": np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3),
            "label": np.arange(10) % 2, "attack_type": np.array(["live", "print"] * 5, dtype=object),
            "sample_id": np.array([f"s{i}" for i in range(10)], dtype=object)}

    def epoch(seed, drop_last=False):
        return [b["image"][:, 0, 0, 0].tolist() for b in local_batches(data, 4, np.random.default_rng(seed), drop_last)]

    first, second = epoch(1), epoch(2)
    assert [len(b) for b in first] == [4, 4, 2]
    starts = [int(x) for x in data["image"][:, 0, 0, 0]]
    assert sorted(sum(first, [])) == sorted(starts) == sorted(sum(second, []))  # every row once
    assert first != second and epoch(1) == first  # a new order per epoch, the same for a seed
    assert [len(b) for b in epoch(1, drop_last=True)] == [4, 4]
    in_order = list(local_batches(data, 4))
    assert [int(x) for b in in_order for x in b["image"][:, 0, 0, 0]] == starts  # dev: stored order
    assert in_order[0]["image"].shape == (4, 3, 2, 2) and in_order[0]["label"].dtype == torch.int64
    assert list(local_batches({}, 4)) == []  # an empty shard


def test_dev_scored_in_rank_slices_and_merged_equals_scoring_it_whole(small_data):
    """Held dev is scored by each rank on its own slice, then gathered (train.merge_evaluations)."""
    from raypipe.train import local_batches, merge_evaluations, rank_slice

    config = TrainConfig(data=str(small_data.root), model="attacknet")
    model, loss_fn = build_model_and_loss(config)
    spec = get_spec("attacknet")
    eval_tf = build_transforms(spec, None, train=False)
    held = crops.load_role(small_data.root, "test", crops.plan_splits(crops.read_index(small_data.root)), spec)
    whole = evaluate(model, local_batches(held, 7), loss_fn, eval_tf, torch.device("cpu"))
    parts = [evaluate(model, local_batches(rank_slice(held, rank, 3), 7), loss_fn, eval_tf, torch.device("cpu"))
             for rank in range(3)]
    merged = merge_evaluations(parts)
    assert merged["n"] == whole["n"] == sum(p["n"] for p in parts) and min(p["n"] for p in parts) > 0
    assert merged["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert merged["accuracy"] == pytest.approx(whole["accuracy"])
    # the same rows (scores aligned with their labels and types), in another order
    def rows(result):
        order = np.lexsort((result["scores"], result["labels"]))
        return result["labels"][order], result["scores"][order], sorted(result["attack_types"])

    merged_rows, whole_rows = rows(merged), rows(whole)
    assert np.array_equal(merged_rows[0], whole_rows[0]) and merged_rows[2] == whole_rows[2]
    assert np.allclose(merged_rows[1], whole_rows[1], atol=1e-5)  # batches of other rows: float noise only


def test_throughput_counts_the_samples_trained_not_the_split_rows():
    """drop_last leaves each worker's tail out: the rate divides what was trained by the time."""
    from raypipe.train import _throughput

    history = [{"epoch_seconds": 2.0, "train_samples": 832 * 2}, {"epoch_seconds": 2.0, "train_samples": 832 * 2}]
    assert _throughput(history, {"nuaa": 1742}) == pytest.approx(832.0)
    # a history written before train_samples was recorded falls back to the split's rows
    assert _throughput([{"epoch_seconds": 2.0}], {"nuaa": 1742}) == pytest.approx(871.0)
    assert _throughput([], {"nuaa": 1742}) == 0.0


def _score_uneven_part(rank: int, port: int, rows: int, results) -> None:
    """One of two gloo ranks: DDP-wrapped AttackNet scores ``rows`` rows in batches of 4."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from raypipe.train import _gather_evaluation, evaluate, local_batches, scoring_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(create_model("attacknet"))
        spec = get_spec("attacknet")
        data = {"image": np.zeros((rows, spec.input_size, spec.input_size, 3), np.uint8),
                "label": np.arange(rows) % 2, "attack_type": np.array(["print"] * rows, dtype=object)}
        loss_fn = build_model_and_loss(TrainConfig(data="unused"))[1]
        result = _gather_evaluation(evaluate(scoring_model(model), local_batches(data, 4), loss_fn,
                                             build_transforms(spec), torch.device("cpu")))
        results.put((rank, result["n"]))
    finally:
        dist.destroy_process_group()


def test_ranks_scoring_different_numbers_of_dev_batches_do_not_wait_on_each_other():
    """DDP's forward is a collective (it broadcasts BatchNorm buffers): a rank with one dev batch
    more than another used to wait for ever. Rank 0 scores 5 rows (2 batches), rank 1 none
    (a streamed rank without a dev file); both get all 5."""
    import multiprocessing
    import socket
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_score_uneven_part, args=(rank, port, rows, results))
             for rank, rows in ((0, 5), (1, 0))]
    for process in ranks:
        process.start()
    deadline = time.monotonic() + 90  # both ranks finish in seconds; a deadlock never does
    for process in ranks:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [process.is_alive() for process in ranks]
    for process in ranks:
        process.kill()
    assert not any(alive), "a rank is still waiting in a collective"
    assert sorted(results.get(timeout=5) for _ in ranks) == [(0, 5), (1, 5)]
