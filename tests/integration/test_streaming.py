"""Training's streamed input (raypipe.crops.streaming_dataset) on real Ray: the rows of each
role, decoded exactly as in-process reading decodes them, every row once per epoch, in an
order that changes from epoch to epoch."""

from __future__ import annotations

import numpy as np
import pytest

from raypipe import crops
from raypipe.models import get_spec
from tests.fixtures.crops import make_crops_dir

pytestmark = pytest.mark.ray

SPEC = get_spec("attacknet")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """alpha has its own dev split; beta has none, so its dev is carved from its train files."""
    return make_crops_dir(tmp_path_factory.mktemp("stream"), datasets=("alpha", "beta"),
                          splits={"alpha": ("train", "dev", "test"), "beta": ("train", "test")},
                          subjects=5, images_per_subject=2, files_per_partition=4)


@pytest.fixture(scope="module")
def plan(data):
    return crops.plan_splits(crops.read_index(data.root), dev_by="subject")


def streamed(dataset) -> dict[str, np.ndarray]:
    parts = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def by_id(rows: dict[str, np.ndarray]) -> dict[str, tuple[bytes, int]]:
    return {sid: (image.tobytes(), int(label)) for sid, image, label in zip(rows["sample_id"], rows["image"],
                                                                          rows["label"])}


def test_a_role_reads_only_the_files_that_can_hold_its_rows(data, plan):
    files = {role: {(f["dataset"], f["split"]) for f in crops.role_files(data.root, role, plan)}
             for role in ("train", "dev", "test")}
    assert files["train"] == {("alpha", "train"), ("beta", "train")}
    assert files["dev"] == {("alpha", "dev"), ("beta", "train")}  # beta's dev is carved from its train rows
    assert files["test"] == {("alpha", "test"), ("beta", "test")}
    assert len(crops.role_files(data.root, "train", plan, datasets=["beta"])) == 4


@pytest.mark.parametrize("role", ["train", "dev"])
def test_streamed_rows_equal_in_process_decoding(ray_session, data, plan, role):
    rows = streamed(crops.streaming_dataset(data.root, role, plan, SPEC, seed=0))
    local = crops.load_role(data.root, role, plan, SPEC)
    assert len(rows["sample_id"]) == len(set(rows["sample_id"])) == len(local["sample_id"]) > 0
    assert by_id(rows) == by_id(local)  # the same model inputs, pixel for pixel, and labels


def test_every_epoch_reads_every_row_once_in_a_new_order(ray_session, data, plan):
    dataset = crops.streaming_dataset(data.root, "train", plan, SPEC, seed=7)
    epochs = [list(streamed(dataset)["sample_id"]) for _ in range(3)]
    expected = sorted(crops.load_role(data.root, "train", plan, SPEC)["sample_id"])
    assert all(sorted(order) == expected for order in epochs)
    assert len({tuple(order) for order in epochs}) > 1


def test_streamed_dev_is_split_across_ranks_every_row_once(ray_session, data, plan):
    """Streamed training gives each rank its own part of dev (train.dev_part_name), so no dev row
    is read, decoded or scored twice an epoch; together the parts are all of dev."""
    from raypipe.train import TrainConfig, dev_part_name, training_datasets

    datasets = training_datasets(TrainConfig(data=str(data.root), workers=3), plan, SPEC, stream=True)
    parts = [[sid for batch in datasets[dev_part_name(rank)].iter_batches(batch_format="numpy")
              for sid in batch["sample_id"]] for rank in range(3)]
    assert all(parts)  # 8 dev-holding files over 3 ranks
    ids = [sid for part in parts for sid in part]
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(crops.load_role(data.root, "dev", plan, SPEC)["sample_id"])
