"""Carving a protocol's splits from a release cropped once (raypipe.preprocess.carve) gives
the rows a preprocessing run of that protocol writes, and refuses a release cropped otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raypipe.config import PreprocessConfig
from raypipe.crops import check_one_protocol, read_index
from raypipe.preprocess import PartitionConflict, ReleaseMismatch, carve, run_preprocess
from tests.fixtures.layouts import face_frame_fn, make_tree, write_oulu_p3_folds

pytestmark = pytest.mark.ray

RELEASE = {"protocol": 0}
FOLD = {"protocol": 3, "fold": 2}
# the names each is stored under by default (raypipe.preprocess.stored_name)
RELEASE_NAME, FOLD_NAME = "oulu_npu.protocol0", "oulu_npu.protocol3.fold2"


@pytest.fixture(scope="module")
def oulu(tmp_path_factory) -> Path:
    root = make_tree("oulu_npu", tmp_path_factory.mktemp("carve") / "oulu", face_frame_fn(128)).root
    write_oulu_p3_folds(root)
    return root


@pytest.fixture(scope="module")
def release(ray_session, oulu, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("release")
    run_preprocess(PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(out), frames_per_video=2,
                                    adapter_options=RELEASE))
    return out


def rows(out: Path, name: str, table: str = "crops") -> dict[str, dict]:
    """sample_id -> row of dataset ``name``, with the split from the partition folder."""
    found = {}
    for split_dir in sorted((out / table / f"dataset={name}").glob("split=*")):
        for row in pq.read_table(split_dir).to_pylist():
            row.pop("split", None)
            found[row["sample_id"]] = {**row, "split": split_dir.name.split("=", 1)[1]}
    return found


def test_a_carved_fold_equals_preprocessing_that_fold(ray_session, oulu, release, tmp_path):
    direct, carved = tmp_path / "direct", tmp_path / "carved"
    fold = PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(direct), frames_per_video=2,
                            adapter_options=FOLD)
    expected = run_preprocess(fold)
    summary = carve(str(release), PreprocessConfig(**{**fold.__dict__, "out": str(carved)}), RELEASE)
    assert (summary["inputs"], summary["rows"], summary["rejected"]) == (
        expected["inputs"], expected["rows"], expected["rejected"])
    want, got = rows(direct, FOLD_NAME), rows(carved, FOLD_NAME)
    assert set(got) == set(want) and len(got) == expected["rows"] > 0
    for sample_id, row in want.items():  # the same crop, split, label and protocol extras, column by column
        assert {k: v for k, v in got[sample_id].items() if k != "dataset"} == \
               {k: v for k, v in row.items() if k != "dataset"}
    assert {r["split"] for r in got.values()} == {"train", "dev", "test"}
    manifest = json.loads((carved / "manifest.json").read_text())[FOLD_NAME]
    assert manifest["carved_from"] == str(release) and manifest["partition_options"] == FOLD
    # the release itself is untouched: every video still in its folder's split
    assert len(rows(release, RELEASE_NAME)) > len(got)


def test_a_release_cropped_otherwise_is_refused(ray_session, oulu, release, tmp_path):
    other_sampling = PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(tmp_path / "a"),
                                      frames_per_video=3, adapter_options=FOLD)
    with pytest.raises(ReleaseMismatch, match="frames_per_video"):
        carve(str(release), other_sampling, RELEASE)
    with pytest.raises(ReleaseMismatch, match=f"no {RELEASE_NAME} crops"):
        carve(str(tmp_path), other_sampling, RELEASE)
    fold_as_release = PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(tmp_path / "b"),
                                       frames_per_video=2, adapter_options=FOLD, name=RELEASE_NAME)
    with pytest.raises(ReleaseMismatch, match="partition_options"):
        carve(str(release), fold_as_release, {"protocol": 1})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written


def test_protocols_of_one_dataset_share_an_output(ray_session, oulu, release, tmp_path):
    """Each protocol/fold is stored under a name of its own, so writing one never replaces
    another's partitions; an explicit --name that would is refused."""
    out = tmp_path / "out"
    protocol_1 = PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(out), frames_per_video=2)
    first = run_preprocess(protocol_1)  # the adapter's defaults: stored as plain oulu_npu
    fold = carve(str(release), PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(out),
                                                frames_per_video=2, adapter_options=FOLD), RELEASE)
    again = run_preprocess(protocol_1)  # replaces protocol 1's partitions only
    index = read_index(out)
    counts = {name: index["dataset"].to_pylist().count(name) for name in set(index["dataset"].to_pylist())}
    assert counts == {"oulu_npu": first["rows"], FOLD_NAME: fold["rows"]}
    assert again["rows"] == first["rows"] > 0 and fold["rows"] > 0
    # the same frames under both names keep their ids (ids never depend on the stored name)
    assert set(rows(out, FOLD_NAME)) <= set(rows(release, RELEASE_NAME))
    assert set(rows(out, "oulu_npu")) <= set(rows(release, RELEASE_NAME))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["oulu_npu"]["partition_options"] == {"protocol": 1, "fold": 1}
    assert manifest[FOLD_NAME]["partition_options"] == FOLD and manifest[FOLD_NAME]["adapter"] == "oulu_npu"
    clash = PreprocessConfig(dataset="oulu_npu", root=str(oulu), out=str(out), frames_per_video=2,
                             adapter_options={"protocol": 3, "fold": 1}, name="oulu_npu")
    with pytest.raises(PartitionConflict, match="another --name"):
        run_preprocess(clash)
    assert read_index(out).num_rows == index.num_rows  # nothing replaced
    with pytest.raises(ValueError, match="several protocols"):  # training on both would leak subjects
        check_one_protocol(out)
    check_one_protocol(out, [FOLD_NAME])
