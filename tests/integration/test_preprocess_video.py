"""Videos and HDF5 through the real Ray Data job: frame sampling, one row per frame, rejects.

Fixture trees are the native layouts of MSU-MFSD (MP4 + MOV), CASIA-FASD (AVI) and 3DMAD
(HDF5), written by tests/fixtures/layouts.py with a real face in every frame, plus damaged
files: a corrupt video, videos cut off in transfer, an HDF5 cut in half.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from raypipe import cli
from raypipe.config import PreprocessConfig
from raypipe.datasets import sample_id
from raypipe.datasets.frames import FrameSamplingError
from raypipe.preprocess import run_preprocess
from tests.fixtures.layouts import (FRAMES_PER_VIDEO, face_frame_fn, make_3dmad_tree, make_casia_fasd_tree,
                                    make_msu_mfsd_tree)

FACES = face_frame_fn(128)  # small frames keep the job fast; BlazeFace still finds the face in each
assert FRAMES_PER_VIDEO == 6  # the expected frame indices below are for 6-frame files


def read_table(out: Path, table: str) -> list[dict]:
    if not (out / table).is_dir():
        return []
    return pads.dataset(out / table, format="parquet", partitioning="hive").to_table().to_pylist()


def cut(path: Path, keep: float) -> Path:
    """Keep the first ``keep`` share of the file: a copy interrupted in transfer."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def frames_by_file(rows: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for row in rows:
        out.setdefault(row["rel_path"], []).append(row["frame_index"])
    return {rel: sorted(indices) for rel, indices in out.items()}


def check_rows_and_rejects(out: Path, summary: dict, dataset: str) -> tuple[list[dict], list[dict]]:
    """rows + rejects = inputs, read back from disk; every id is the frame's own id."""
    rows, rejects = read_table(out, "crops"), read_table(out, "rejects")
    assert summary["rows"] == len(rows) and summary["rejected"] == len(rejects)
    assert summary["inputs"] == len(rows) + len(rejects)
    ids = [r["sample_id"] for r in rows + rejects]
    assert len(ids) == len(set(ids))
    for row in rows + rejects:
        assert row["sample_id"] == sample_id(dataset, row["rel_path"], row["frame_index"])
    return rows, rejects


# -- MSU-MFSD: MP4 + MOV, N evenly spaced frames, through the CLI ------------------------------------

MSU_CORRUPT = "scene01/attack/attack_client003_laptop_SD_iphone_video_scene01.mov"
MSU_TRUNCATED = "scene01/real/real_client003_android_SD_scene01.mp4"


@pytest.mark.ray
def test_msu_mfsd_n_evenly_spaced_frames_via_the_cli(ray_session, tmp_path, capsys):
    tree = make_msu_mfsd_tree(tmp_path / "msu", FACES)
    (tree.root / MSU_CORRUPT).write_bytes(b"not a video at all, only text pretending to be one\n" * 40)
    cut(tree.root / MSU_TRUNCATED, 0.5)  # an MP4's index comes last: nothing can be decoded
    out = tmp_path / "out"
    code = cli.main(["preprocess", "--dataset", "msu_mfsd", "--root", str(tree.root), "--out", str(out),
                     "--frames-per-video", "3", "--workers", "1"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows, rejects = check_rows_and_rejects(out, summary, "msu_mfsd")
    good = tree.total - 2
    # 6 frames, 3 segments of 2: the centres are frames 1, 3, 5
    assert frames_by_file(rows) == {rel: [1, 3, 5] for rel in frames_by_file(rows)}
    assert len(frames_by_file(rows)) == good and summary["inputs"] == 3 * good + 2
    assert {r["rel_path"]: (r["reject_reason"], r["frame_index"]) for r in rejects} == {
        MSU_CORRUPT: ("undecodable", -1), MSU_TRUNCATED: ("truncated", -1)}
    assert {Path(r["rel_path"]).suffix for r in rows} == {".mp4", ".mov"}
    manifest = json.loads((out / "manifest.json").read_text())["msu_mfsd"]
    assert (manifest["frames_per_video"], manifest["every"]) == (3, None)


# -- CASIA-FASD: AVI, every k-th frame ------------------------------------------------------------

CASIA_CORRUPT = "train_release/1/HR_1.avi"
CASIA_CUT = "test_release/1/HR_2.avi"


@pytest.mark.ray
def test_casia_fasd_every_kth_frame_and_a_cut_off_avi(ray_session, tmp_path):
    tree = make_casia_fasd_tree(tmp_path / "casia", FACES)
    path = tree.root / CASIA_CORRUPT
    data = path.read_bytes()
    path.write_bytes(data[:64] + b"\x00" * (len(data) - 64))  # full length, but zeros after the AVI header
    cut(tree.root / CASIA_CUT, 0.6)  # MJPEG in AVI: the frames before the cut still decode
    out = tmp_path / "out"
    summary = run_preprocess(PreprocessConfig(dataset="casia_fasd", root=str(tree.root), out=str(out),
                                              every=2, workers=1))
    rows, rejects = check_rows_and_rejects(out, summary, "casia_fasd")
    by_file = frames_by_file(rows)
    intact = {rel: indices for rel, indices in by_file.items() if rel != CASIA_CUT}
    assert intact == {rel: [0, 2, 4] for rel in intact} and len(intact) == tree.total - 2
    # the cut-off file keeps what precedes the cut, and says it was cut
    assert by_file[CASIA_CUT] and set(by_file[CASIA_CUT]) < {0, 2, 4}
    reasons = {r["rel_path"]: (r["reject_reason"], r["frame_index"]) for r in rejects}
    assert reasons == {CASIA_CORRUPT: ("undecodable", -1), CASIA_CUT: ("truncated", -1)}
    assert summary["inputs"] == 3 * len(intact) + len(by_file[CASIA_CUT]) + 2


# -- 3DMAD: HDF5, both sampling modes ------------------------------------------------------------------

MAD_CUT = "session01/Data/01_01_01.hdf5"


@pytest.fixture(scope="module")
def mad_tree(tmp_path_factory):
    tree = make_3dmad_tree(tmp_path_factory.mktemp("3dmad"), FACES)
    cut(tree.root / MAD_CUT, 0.5)
    return tree


@pytest.mark.ray
@pytest.mark.parametrize("sampling, expected", [({"frames_per_video": 2}, [1, 4]), ({"every": 4}, [0, 4])])
def test_3dmad_hdf5_frames(ray_session, mad_tree, tmp_path, sampling, expected):
    summary = run_preprocess(PreprocessConfig(dataset="3dmad", root=str(mad_tree.root), out=str(tmp_path),
                                              workers=1, **sampling))
    rows, rejects = check_rows_and_rejects(tmp_path, summary, "3dmad")
    by_file = frames_by_file(rows)
    assert by_file == {rel: expected for rel in by_file} and len(by_file) == mad_tree.total - 1
    assert [(r["rel_path"], r["reject_reason"]) for r in rejects] == [(MAD_CUT, "truncated")]
    assert summary["inputs"] == len(expected) * (mad_tree.total - 1) + 1


# -- conflicting settings: refused before any work --------------------------------------------------


def test_every_and_frames_per_video_together_are_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["preprocess", "--dataset", "casia_fasd", "--root", "r", "--out", "o",
                                       "--every", "2", "--frames-per-video", "3"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_every_alone_leaves_frames_per_video_unset():
    args = cli.build_parser().parse_args(["preprocess", "--dataset", "casia_fasd", "--root", "r", "--out", "o",
                                          "--every", "2"])
    config = cli.preprocess_config(args)
    assert (config.frames_per_video, config.every) == (None, 2)


@pytest.mark.parametrize("values", [{"frames_per_video": 3, "every": 2}, {"every": 0}, {"frames_per_video": 0}])
def test_the_config_refuses_bad_sampling(values):
    with pytest.raises(FrameSamplingError):
        PreprocessConfig(dataset="casia_fasd", root="r", out="o", **values)


def test_a_bad_value_is_a_user_error_exit_2(capsys):
    assert cli.main(["preprocess", "--dataset", "casia_fasd", "--root", "r", "--out", "o", "--every", "0"]) == 2
    assert "every must be >= 1" in capsys.readouterr().err
