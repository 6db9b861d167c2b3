"""Preprocessing and the crop readers against a real S3 API (moto's server on localhost).

Object stores have no directories to rename, so the partition swap takes storage.move_dir's
copy-then-delete path; the Ray workers write through the pickled S3 filesystem.
"""

from __future__ import annotations

import socket

import pyarrow.dataset as pads
import pytest
from pyarrow import fs as pafs

from raypipe import crops, storage
from raypipe.preprocess import PreprocessConfig, run_preprocess
from tests.fixtures.images import astronaut_rgb, bad_inputs, encode, grace_hopper_rgb, write

pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket_uri():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    s3 = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1",
                           access_key="test", secret_key="test", allow_bucket_creation=True)
    s3.create_dir("raypipe")
    # Test credentials in the URI; real deployments take them from the environment or the node's role.
    yield f"s3://test:test@raypipe/out?{options}"
    server.stop()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3src")
    write(root / "live" / "astronaut.jpg", encode(astronaut_rgb(), quality=90))
    write(root / "spoof" / "grace.jpg", encode(grace_hopper_rgb(), quality=90))
    payload, reason = bad_inputs()["truncated.jpg"]
    write(root / "live" / "bad.jpg", payload)
    return root, reason


def test_preprocess_writes_to_s3_and_reruns_replace_in_place(ray_session, bucket_uri, small_root):
    root, reason = small_root
    config = PreprocessConfig(dataset="folder", root=str(root), out=bucket_uri, workers=1)
    first = run_preprocess(config)
    assert (first["inputs"], first["rows"], first["rejected"]) == (3, 2, 1)
    assert first["by_reason"] == {reason: 1}
    assert "test:test" not in first["output"] and first["output"].startswith("s3://***@raypipe/out")
    second = run_preprocess(config)
    assert (second["rows"], second["rejected"]) == (2, 1)  # replaced, not appended

    filesystem, path = storage.resolve(bucket_uri)
    listing = [i.path for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))]
    assert not any("_staging-" in p for p in listing)  # staging cleaned up
    assert storage.read_json(storage.join(bucket_uri, "manifest.json"))["folder"]["summary"]["rows"] == 2

    index = crops.read_index(bucket_uri)  # the training/evaluation reader, straight from S3
    assert sorted(index["label"].to_pylist()) == [0, 1]
    rows = pads.dataset(crops.crops_path(bucket_uri), format="parquet", partitioning="hive").to_table(
        columns=["sample_id", "crop"])
    assert rows.num_rows == 2 and all(len(c) > 1000 for c in rows["crop"].to_pylist())
