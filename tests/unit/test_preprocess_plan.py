"""Preprocessing's plan without Ray: the actor pool it asks for, what a resumed run skips,
and the protocols one output may hold (the jobs themselves: tests/integration/test_preprocess*.py)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import PreprocessConfig
from raypipe.preprocess import (
    PartitionConflict,
    check_partition_options,
    stored_name,
    pool_size,
    run_key,
    source_key,
    written_sources,
)


def config(tmp_path, **values) -> PreprocessConfig:
    return PreprocessConfig(dataset=values.pop("dataset", "folder"), root=str(tmp_path), out=str(tmp_path / "out"),
                            **values)


@pytest.mark.parametrize("values, batches, cpus, expected", [
    ({}, 100, 64.0, {"min": 1, "initial": 64, "max": 64}),  # every CPU the autoscaler can add, at once
    ({}, 3, 64.0, {"min": 1, "initial": 3, "max": 3}),  # never more actors than batches
    ({}, 100, 0.0, {"min": 1, "initial": 1, "max": 1}),  # a cluster that cannot grow: one actor still runs
    ({"max_actors": 8}, 100, 64.0, {"min": 1, "initial": 8, "max": 8}),
    ({"workers": 2}, 100, 64.0, {"min": 2, "initial": 2, "max": 2}),  # a fixed pool, as asked
])
def test_the_pool_asks_for_what_the_work_can_use(tmp_path, values, batches, cpus, expected):
    assert pool_size(config(tmp_path, **values), batches, {"CPU": cpus}) == expected


def test_a_fixed_and_an_autoscaling_pool_are_exclusive(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        config(tmp_path, workers=2, max_actors=4)
    with pytest.raises(ValueError, match="at least 1"):
        config(tmp_path, max_actors=0)


def test_the_run_key_follows_the_output_settings_only(tmp_path):
    base = run_key(config(tmp_path))
    assert run_key(config(tmp_path, max_actors=3, resume=True)) == base  # how fast, not what
    assert run_key(config(tmp_path, limit=5)) != base
    assert run_key(config(tmp_path, every=2)) != base
    assert run_key(config(tmp_path, adapter_options={"subject_pattern": "x"})) != base


def write_part(path, rel_paths: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"sample_id": [f"id-{p}" for p in rel_paths], "rel_path": rel_paths}), path)


def test_a_resume_reads_what_was_written_and_drops_files_the_crash_cut(tmp_path):
    staging = tmp_path / "_staging-x"
    write_part(staging / "status=ok" / "dataset=folder" / "split=train" / "a.parquet", ["live/a.jpg", "live/b.jpg"])
    write_part(staging / "status=rejected" / "dataset=folder" / "split=train" / "b.parquet", ["live/bad.jpg"])
    cut = staging / "status=ok" / "dataset=folder" / "split=train" / "c.parquet"
    cut.write_bytes(b"PAR1" + b"\0" * 100)  # a write the crash stopped: no footer
    assert written_sources(str(staging)) == {("folder", "live/a.jpg"), ("folder", "live/b.jpg"),
                                             ("folder", "live/bad.jpg")}
    assert not cut.exists()  # never swapped in; its inputs are cropped again
    assert written_sources(str(tmp_path / "absent")) == set()
    assert source_key({"dataset": "folder", "rel_path": "live/a.jpg"}) in written_sources(str(staging))


def test_each_protocol_is_stored_under_its_own_name(tmp_path):
    assert stored_name(config(tmp_path, dataset="oulu_npu")) == "oulu_npu"  # the defaults: protocol 1
    assert stored_name(config(tmp_path, dataset="oulu-npu", adapter_options={"protocol": 1})) == "oulu_npu"
    assert stored_name(config(tmp_path, dataset="oulu_npu", adapter_options={"protocol": 2})) == "oulu_npu.protocol2"
    assert stored_name(config(tmp_path, dataset="oulu_npu", adapter_options={"protocol": 4, "fold": 3})) == \
        "oulu_npu.protocol4.fold3"
    assert stored_name(config(tmp_path, dataset="oulu_npu", adapter_options={"protocol": 2}, name="p2")) == "p2"
    assert stored_name(config(tmp_path, adapter_options={"dataset_name": "mine"})) == "mine"
    assert stored_name(config(tmp_path, dataset="nuaa")) == "nuaa"


def test_one_name_holds_one_protocol_of_a_dataset(tmp_path):
    (tmp_path / "out").mkdir()
    manifest = tmp_path / "out" / "manifest.json"
    manifest.write_text(json.dumps({"oulu_npu": {"partition_options": {"protocol": 1, "fold": 1}}}))
    check_partition_options(str(tmp_path / "out"), config(tmp_path, dataset="oulu_npu"))  # the defaults: protocol 1
    check_partition_options(str(tmp_path / "out"), config(tmp_path, dataset="oulu_npu",
                                                          adapter_options={"protocol": 2}))  # its own name
    with pytest.raises(PartitionConflict, match="another --name"):
        check_partition_options(str(tmp_path / "out"), config(tmp_path, dataset="oulu_npu", name="oulu_npu",
                                                              adapter_options={"protocol": 2}))
    manifest.write_text(json.dumps({"oulu_npu": {"summary": {}}}))  # written before options were recorded
    check_partition_options(str(tmp_path / "out"), config(tmp_path, dataset="oulu_npu", name="oulu_npu",
                                                          adapter_options={"protocol": 2}))