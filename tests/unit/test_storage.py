"""raypipe.storage: locations are local paths or URIs, joined and moved the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from raypipe import storage


def test_join_keeps_a_uri_query_at_the_end():
    uri = "s3://bucket/out?endpoint_override=localhost:9000&scheme=http"
    assert storage.join(uri, "crops", "dataset=x") == \
        "s3://bucket/out/crops/dataset=x?endpoint_override=localhost:9000&scheme=http"
    assert storage.join("/data/out/", "crops") == "/data/out/crops"


def test_local_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.absolute("out") == str(tmp_path / "out")
    assert storage.absolute("gs://bucket/x") == "gs://bucket/x"


def test_move_dir_replaces_nothing_else_and_file_uris_work(tmp_path):
    source = tmp_path / "staging" / "part"
    (source / "sub").mkdir(parents=True)
    (source / "a.parquet").write_bytes(b"a")
    (source / "sub" / "b.txt").write_bytes(b"b")
    (tmp_path / "keep.txt").write_text("keep")
    target = f"file://{tmp_path}/final/part"
    storage.move_dir(f"file://{source}", target)
    assert not source.exists() and (tmp_path / "keep.txt").read_text() == "keep"
    assert storage.list_files(target, ".parquet") == [str(tmp_path / "final" / "part" / "a.parquet")]
    assert (tmp_path / "final" / "part" / "sub" / "b.txt").read_bytes() == b"b"
    storage.delete_dir(target)
    storage.delete_dir(target)  # absent: nothing happens
    assert not Path(tmp_path / "final" / "part").exists()


def test_json_round_trip_and_default(tmp_path):
    location = str(tmp_path / "deep" / "manifest.json")
    assert storage.read_json(location, default={}) == {}
    storage.write_json(location, {"b": 1, "a": [1, 2]})
    assert storage.read_json(location) == {"a": [1, 2], "b": 1}


def test_redact_hides_credentials_only():
    assert storage.redact("s3://AKIA:secret@bucket/out?region=x") == "s3://***@bucket/out?region=x"
    assert storage.redact("s3://bucket/a@b") == "s3://bucket/a@b"
    assert storage.redact("/data/out") == "/data/out"


def test_reading_crops_where_there_are_none_names_what_was_expected(tmp_path):
    from raypipe import crops

    with pytest.raises(FileNotFoundError, match="raypipe preprocess"):
        crops.read_index(tmp_path / "not-a-preprocess-output")
