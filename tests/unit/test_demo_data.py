"""The built-in demo dataset: folder layout, subject-disjoint splits, determinism, and
faces that the project's own detector finds in live images and in both attack types."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from raypipe import cli
from raypipe.datasets import LIVE, get_adapter
from raypipe.datasets import demo as demo_module
from raypipe.datasets.demo import ATTACK_TYPES, IDENTITIES, MARKER, make_demo_dataset
from raypipe.face import FaceError

KINDS = ("live", *ATTACK_TYPES)
MIN_DETECTION_RATE = 0.95  # per class; the default seed measures 60/60, 59/60, 60/60
MIN_FACE_WIDTH = 120  # BlazeFace short-range misses narrower faces in 640x480


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def kind_of(rel: str) -> str:
    """live / print / replay from a path <split>/live/x.png or <split>/spoof/<type>/x.png."""
    parts = rel.split("/")
    return "live" if parts[1] == "live" else parts[2]


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    return out, make_demo_dataset(out, seed=0)


@pytest.fixture(scope="module")
def faces(demo, face_pipeline) -> dict[str, object]:
    """rel path -> the primary FaceCrop, or None where no face was found (one pass, reused)."""
    root, _ = demo
    found = {}
    for path in sorted(root.rglob("*.png")):
        try:
            found[path.relative_to(root).as_posix()] = face_pipeline.process(read_rgb(path)).primary
        except FaceError:
            found[path.relative_to(root).as_posix()] = None
    return found


# -- size, summary, layout ------------------------------------------------------------------

def test_summary_is_json_and_counts_the_files(demo):
    root, summary = demo
    assert json.loads(json.dumps(summary)) == summary
    pngs = [rel for rel in tree(root) if rel.endswith(".png")]
    assert summary["images"] == len(pngs) == 180
    on_disk = Counter((rel.split("/")[0], kind_of(rel)) for rel in pngs)
    for split, counts in summary["counts"].items():
        assert on_disk[(split, "live")] == counts["live"] > 0
        for kind in ATTACK_TYPES:
            assert on_disk[(split, kind)] == counts["spoof"][kind] == counts["live"]  # one of each per live image
    assert summary["totals"] == {kind: sum(n for (_, k), n in on_disk.items() if k == kind) for kind in KINDS}
    assert json.loads((root / MARKER).read_text())["complete"] is True


def test_images_are_640x480_rgb_pngs(demo):
    root, _ = demo
    for path in sorted(root.rglob("*.png"))[::17]:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert read_rgb(path).shape == (480, 640, 3)


def test_folder_adapter_reads_splits_labels_attack_types_and_disjoint_subjects(demo):
    root, summary = demo
    adapter = get_adapter("folder", root)
    samples = adapter.samples()
    assert len(samples) == summary["images"]
    assert adapter.report.skipped == []  # demo.json at the root is not inside a label folder
    by_split = defaultdict(list)
    for sample in samples:
        by_split[sample.split].append(sample)
        assert (sample.label == LIVE) == (sample.attack_type == "live")
    assert set(by_split) == {"train", "dev", "test"}
    subjects = {}
    for split, rows in by_split.items():
        assert {s.attack_type for s in rows} == set(KINDS)
        assert {s.label for s in rows} == {0, 1}
        subjects[split] = {s.subject for s in rows}
        assert subjects[split] == set(summary["subjects"][split])
        assert {subject.split("-")[0] for subject in subjects[split]} == set(IDENTITIES)  # both identities
    assert not subjects["train"] & subjects["dev"] and not subjects["train"] & subjects["test"]
    assert not subjects["dev"] & subjects["test"]
    # training carves dev out of train by subject: it needs several subjects per identity
    assert Counter(s.split("-")[0] for s in subjects["train"]) == {name: 3 for name in IDENTITIES}


def test_every_attack_has_a_live_source_it_differs_from(demo):
    root, _ = demo
    attacks = [p for p in sorted(root.rglob("*.png")) if "/spoof/" in p.as_posix()]
    for path in attacks:
        split, name = path.relative_to(root).parts[0], path.name
        live = read_rgb(root / split / "live" / name)
        mad = np.abs(read_rgb(path).astype(np.int16) - live).mean()
        assert mad > 15, f"{path.relative_to(root)} is too close to its live source (MAD {mad:.1f})"


# -- faces ---------------------------------------------------------------------------------

def test_the_face_pipeline_finds_a_big_enough_face_in_each_class(faces):
    found, widths = defaultdict(list), defaultdict(list)
    for rel, crop in faces.items():
        found[kind_of(rel)].append(crop is not None)
        if crop is not None:
            widths[kind_of(rel)].append(crop.box[2])
    for kind in KINDS:
        rate = sum(found[kind]) / len(found[kind])
        missed = sorted(rel for rel, crop in faces.items() if crop is None and kind_of(rel) == kind)
        assert rate >= MIN_DETECTION_RATE, f"{kind}: faces in {rate:.0%} of images; missed {missed}"
        assert np.median(widths[kind]) >= MIN_FACE_WIDTH


def test_attack_face_crops_differ_from_the_live_crops(faces):
    """Aligned by the detector, the face region itself changed (not only the framing)."""
    mads, saturation = defaultdict(list), []
    for rel, crop in faces.items():
        kind = kind_of(rel)
        live = faces[f"{rel.split('/')[0]}/live/{rel.rsplit('/', 1)[1]}"]
        if kind == "live" or crop is None or live is None:
            continue
        mads[kind].append(np.abs(crop.crop.astype(np.int16) - live.crop).mean())
        if kind == "print":
            sat = [cv2.cvtColor(c, cv2.COLOR_RGB2HSV)[..., 1].mean() for c in (crop.crop, live.crop)]
            saturation.append(sat[0] / sat[1])
    for kind in ATTACK_TYPES:
        assert len(mads[kind]) >= 50 and min(mads[kind]) > 8, kind
    assert np.median(saturation) < 0.85  # prints lose colour


# -- determinism and the CLI ----------------------------------------------------------------

def test_the_same_seed_writes_the_same_bytes(demo, tmp_path):
    """Each image has its own RNG stream, so a smaller run with the same seed and sessions
    writes a subset of the default run, byte for byte."""
    root, _ = demo
    summary = make_demo_dataset(tmp_path, seed=0, per_subject=1)
    again = tree(tmp_path)
    pngs = {rel for rel in again if rel.endswith(".png")}
    assert len(pngs) == summary["images"] == 2 * 6 * 3
    full = tree(root)
    assert all(again[rel] == full[rel] for rel in pngs)


def test_repeated_runs_are_identical_and_seeds_differ(tmp_path):
    small = {"sessions": 3, "per_subject": 1}
    make_demo_dataset(tmp_path / "a", seed=7, **small)
    make_demo_dataset(tmp_path / "b", seed=7, **small)
    make_demo_dataset(tmp_path / "c", seed=8, **small)
    a, b, c = (tree(tmp_path / name) for name in "abc")
    assert a == b  # the marker too: it holds no path or timing
    assert a.keys() == c.keys() and all(a[rel] != c[rel] for rel in a if rel.endswith(".png"))


def test_rerun_replaces_an_earlier_demo_but_never_foreign_files(tmp_path):
    make_demo_dataset(tmp_path / "demo", sessions=3, per_subject=2)
    summary = make_demo_dataset(tmp_path / "demo", sessions=3, per_subject=1)
    assert len(list((tmp_path / "demo").rglob("*.png"))) == summary["images"] == 2 * 3 * 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        make_demo_dataset(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("kwargs", [{"sessions": 2}, {"seed": -1}, {"per_subject": 0}])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, **kwargs)


def test_cli_prints_the_summary_as_one_json_line(tmp_path, monkeypatch, capsys):
    real = demo_module.make_demo_dataset
    # The CLI's own call (out, seed=...) at a smaller size: this checks the wiring, not the images.
    monkeypatch.setattr(demo_module, "make_demo_dataset",
                        lambda out, seed=0: real(out, seed=seed, sessions=3, per_subject=1))
    assert cli.main(["demo-data", "--out", str(tmp_path / "d"), "--seed", "3"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(line)
    assert summary["seed"] == 3 and summary["images"] == 18 and Path(summary["out"]) == (tmp_path / "d").resolve()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    assert cli.main(["demo-data", "--out", str(tmp_path / "other")]) == 2
