"""Ray Data preprocessing on real Ray: rejects, idempotence, and crop equality with face.py."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as pads
import pytest

from raypipe.face import FaceConfig
from raypipe.preprocess import PreprocessConfig, run_preprocess
from tests.fixtures.images import astronaut_rgb, bad_inputs, encode, grace_hopper_rgb, write

pytestmark = pytest.mark.ray


def good_images() -> dict[str, bytes]:
    """Six distinct good photos: two identities, shifted, scaled and flipped."""
    images = {}
    for name, rgb in (("astronaut", astronaut_rgb()), ("grace", grace_hopper_rgb())):
        images[f"{name}_0.jpg"] = encode(rgb, quality=90)
        images[f"{name}_1.png"] = encode(np.ascontiguousarray(rgb[:, ::-1]), "PNG")
        images[f"{name}_2.jpg"] = encode(cv2.resize(rgb, None, fx=1.25, fy=1.25), quality=85)
    return images


@pytest.fixture(scope="module")
def messy_root(tmp_path_factory) -> Path:
    """Folder layout: good live and spoof photos plus one bad file of each kind."""
    root = tmp_path_factory.mktemp("messy")
    for index, (name, payload) in enumerate(sorted(good_images().items())):
        label = "live" if index % 2 == 0 else "spoof"
        write(root / label / name, payload)
    for name, (payload, _) in bad_inputs().items():
        write(root / "live" / f"bad_{name}", payload)
    return root


def read_table(out: Path, table: str):
    return pads.dataset(out / table, format="parquet", partitioning="hive").to_table().to_pylist()


@pytest.fixture(scope="module")
def first_run(ray_session, messy_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    config = PreprocessConfig(dataset="folder", root=str(messy_root), out=str(out), workers=2)
    return out, config, run_preprocess(config)


def test_every_input_is_a_row_or_a_reject_with_its_reason(first_run):
    out, _, summary = first_run
    rows, rejects = read_table(out, "crops"), read_table(out, "rejects")
    assert summary["inputs"] == len(good_images()) + len(bad_inputs()) == len(rows) + len(rejects)
    assert summary["rows"] == len(rows) == len(good_images())
    reasons = {Path(r["rel_path"]).name.removeprefix("bad_"): r["reject_reason"] for r in rejects}
    assert reasons == {name: reason for name, (_, reason) in bad_inputs().items()}
    assert summary["by_reason"] == {reason: 1 for _, reason in bad_inputs().values()}
    assert {Path(r["rel_path"]).name for r in rows} == set(good_images())


def test_rows_follow_the_parquet_schema(first_run):
    out, config, summary = first_run
    row = read_table(out, "crops")[0]
    assert row["dataset"] == "folder" and row["split"] == "train"
    assert row["crop_format"] == "png" and row["crop_size"] == 256
    assert len(row["box"]) == 4 and 0 < row["det_score"] <= 1
    assert row["pipeline_version"] == config.face.version()
    assert (row["source_width"], row["source_height"]) in {(512, 512), (512, 600), (640, 640), (640, 750)}
    crop = cv2.imdecode(np.frombuffer(row["crop"], np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (256, 256, 3)
    assert json.loads((out / "manifest.json").read_text())["folder"]["summary"]["rows"] == summary["rows"]


def test_stored_crop_equals_a_direct_face_pipeline_call(first_run, face_pipeline):
    """The serving path calls FacePipeline directly: it must produce the stored bytes."""
    out, config, _ = first_run
    assert config.face == FaceConfig() == face_pipeline.config
    for row in read_table(out, "crops"):
        direct = face_pipeline.process(Path(row["path"]).read_bytes())
        assert face_pipeline.encode(direct.primary.crop) == row["crop"], row["rel_path"]
        assert list(direct.primary.box) == row["box"]


def test_rerun_gives_identical_rows_and_ids(first_run):
    out, config, summary = first_run
    before = sorted((r["sample_id"], r["crop"]) for r in read_table(out, "crops"))
    again = run_preprocess(config)
    after = sorted((r["sample_id"], r["crop"]) for r in read_table(out, "crops"))
    assert after == before
    assert (again["rows"], again["rejected"]) == (summary["rows"], summary["rejected"])
    assert len(read_table(out, "rejects")) == summary["rejected"]
    assert not list(out.glob("_staging-*"))


def test_limit_takes_a_stable_subset(ray_session, messy_root, tmp_path):
    config = PreprocessConfig(dataset="folder", root=str(messy_root), out=str(tmp_path), limit=4, workers=1)
    first = run_preprocess(config)
    ids = sorted(r["sample_id"] for r in read_table(tmp_path, "crops") + read_table(tmp_path, "rejects"))
    run_preprocess(config)
    assert first["inputs"] == 4
    assert sorted(r["sample_id"] for r in read_table(tmp_path, "crops") + read_table(tmp_path, "rejects")) == ids
