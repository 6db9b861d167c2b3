"""Benchmark protocols without training: definitions, fold expansion on native trees, YAML
protocols, roots, the summary and the results table (raypipe/protocols.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raypipe import cli
from raypipe.config import BenchmarkConfig, TrainConfig
from raypipe.protocols import (
    fold_members,
    load_protocol,
    parse_roots,
    plan,
    results_markdown,
    select_folds,
    summarize,
)
from tests.fixtures.layouts import write_text, write_video

PHONES = range(1, 7)


def make_oulu_p3_tree(root: Path) -> dict[int, dict[str, set[str]]]:
    """OULU-NPU with protocol 3's six leave-one-phone-out folds, as the release lists them:
    fold k trains and calibrates on the five other phones and tests on phone k. Returns the
    expected {fold: {split: video paths}}."""
    names = {"train": ("Train", "01", (1, 2, 4)), "dev": ("Dev", "21", (1, 3)), "test": ("Test", "36", (1, 2, 3, 4, 5))}
    for split, (folder, user, files) in names.items():
        for phone in PHONES:
            for f in files:
                write_video(root / f"{folder}_files/{phone}_1_{user}_{f}.avi", phone * 10 + f, n_frames=1)
    expected: dict[int, dict[str, set[str]]] = {}
    for k in PHONES:
        expected[k] = {}
        for split, (folder, user, files) in names.items():
            phones = [k] if split == "test" else [p for p in PHONES if p != k]
            stems = [f"{p}_1_{user}_{f}" for p in phones for f in files]
            write_text(root / f"Protocols/Protocol_3/{folder}_{k}.txt",
                       "".join(f"{'+1' if s.endswith('_1') else '-1'},{s}\n" for s in stems))
            expected[k][split] = {f"{folder}_files/{s}.avi" for s in stems}
    return expected


def test_builtin_protocols_and_their_folds():
    assert [len(load_protocol(f"oulu-p{n}").folds) for n in (1, 2, 3, 4)] == [1, 1, 6, 6]
    p4 = load_protocol("OULU-P4")
    assert [f.sources for f in p4.folds] == [{"oulu_npu": {"protocol": 4, "fold": k}} for k in PHONES]
    assert load_protocol("oulu-p2").folds[0].sources == {"oulu_npu": {"protocol": 2}}
    assert {load_protocol(f"oulu-p{n}").headline for n in (1, 2, 3, 4)} == {"acer"}
    (m,) = load_protocol("ocim-M").folds
    assert (m.name, m.train, m.dev, m.test) == ("M", ["oulu_npu", "casia_fasd", "replay_attack"],
                                                ["oulu_npu", "casia_fasd", "replay_attack"], ["msu_mfsd"])
    assert m.sources["oulu_npu"] == {"protocol": 0}  # the whole release, split by its folders
    for letter, target in {"O": "oulu_npu", "C": "casia_fasd", "I": "replay_attack", "M": "msu_mfsd"}.items():
        (fold,) = load_protocol(f"ocim-{letter.lower()}").folds
        assert fold.test == [target] and target not in fold.train and len(fold.train) == 3
        assert fold.data_key() == m.data_key()  # one preprocessed folder serves the four targets
    (nuaa,) = load_protocol("nuaa-official").folds
    assert (nuaa.train, nuaa.test) == (["nuaa"], ["nuaa"])
    with pytest.raises(ValueError, match="unknown protocol"):
        load_protocol("oulu-p5")


def test_oulu_p3_expands_into_six_folds_with_their_lists(tmp_path):
    expected = make_oulu_p3_tree(tmp_path / "oulu")
    protocol = load_protocol("oulu-p3")
    assert [f.name for f in protocol.folds] == [str(k) for k in PHONES]
    assert len({f.data_key() for f in protocol.folds}) == 6  # each fold preprocesses its own split assignment
    for k, fold in zip(PHONES, protocol.folds):
        members = fold_members(fold, {"oulu_npu": str(tmp_path / "oulu")})["oulu_npu"]
        assert {split: set(paths) for split, paths in members.items()} == expected[k]
        assert {Path(p).name.split("_")[0] for p in members["test"]} == {str(k)}  # the left-out phone
        assert str(k) not in {Path(p).name.split("_")[0] for p in members["train"] + members["dev"]}


def test_a_dry_run_lists_every_fold_through_the_cli(tmp_path, capsys):
    make_oulu_p3_tree(tmp_path / "oulu")
    code = cli.main(["benchmark", "--protocol", "oulu-p3", "--roots", str(tmp_path / "oulu"), "--dry-run",
                     "--work", str(tmp_path / "work"), "--folds", "2,6"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [f["fold"] for f in out["folds"]] == ["2", "6"]
    # 5 phones x 3 train files, 5 x 2 dev, 1 phone x 5 test
    assert [f["samples"]["oulu_npu"] for f in out["folds"]] == [{"train": 15, "dev": 10, "test": 5}] * 2
    assert out["folds"][1]["data"].endswith("oulu_npu.fold6.protocol3")
    assert not (tmp_path / "work").exists()  # nothing preprocessed


def test_a_yaml_protocol(tmp_path):
    path = write_text(tmp_path / "mine.yaml", """
name: casia-and-replay
threshold: apcer:0.1
headline: acer
options: {oulu_npu: {protocol: 0}}
folds:
  - {name: to-replay, train: [casia_fasd, oulu_npu], test: replay_attack}
  - {name: to-casia, train: replay_attack, dev: [replay_attack], test: [casia_fasd, msu_mfsd]}
""")
    protocol = load_protocol(str(path))
    assert (protocol.name, protocol.threshold, protocol.headline) == ("casia-and-replay", "apcer:0.1", "acer")
    first, second = protocol.folds
    assert (first.train, first.dev, first.test) == (["casia_fasd", "oulu_npu"], ["casia_fasd", "oulu_npu"],
                                                    ["replay_attack"])
    assert first.sources == {"casia_fasd": {}, "oulu_npu": {"protocol": 0}, "replay_attack": {}}
    assert second.test == ["casia_fasd", "msu_mfsd"]
    assert [f.name for f in select_folds(protocol, ["TO-CASIA"])] == ["to-casia"]
    with pytest.raises(ValueError, match="no fold"):
        select_folds(protocol, ["to-msu"])
    for bad, message in (("train: [nuaa]\ntest: [nuua]\n", "unknown dataset"),
                         ("train: [nuaa]\ntest: [nuaa]\nthreshold: 2\n", "threshold"),
                         ("train: [nuaa]\ntest: [nuaa]\ntrian: [x]\n", "unknown key"),
                         ("train: [nuaa]\n", "needs train and test"),
                         ("train: [nuaa]\ntest: [nuaa]\nheadline: f1\n", "headline")):
        with pytest.raises(ValueError, match=message):
            load_protocol(str(write_text(tmp_path / "bad.yml", bad)))


def test_roots_by_name_or_bare():
    assert parse_roots(["/data/nuaa"], ["nuaa"]) == {"nuaa": "/data/nuaa"}
    assert parse_roots(["msu_mfsd=/m", "casia_fasd = /c=d"], ["casia_fasd"]) == {"msu_mfsd": "/m", "casia_fasd": "/c=d"}
    with pytest.raises(ValueError, match="NAME=PATH"):
        parse_roots(["/data"], ["casia_fasd", "msu_mfsd"])
    with pytest.raises(ValueError, match="no root given for msu_mfsd"):
        parse_roots(["casia_fasd=/c"], ["casia_fasd", "msu_mfsd"])
    with pytest.raises(ValueError, match="no root given"):
        plan(BenchmarkConfig(protocol="ocim-I", roots=[]))


def test_summary_is_mean_and_std_over_rows_and_the_table_shows_it():
    rows = [{"fold": str(k), "train": "oulu_npu", "test": "oulu_npu", "split": "test", "level": "video",
             "threshold": 0.5, "apcer": a, "bpcer": b, "acer": (a + b) / 2, "hter": 0.1, "auc": None,
             "eer": 0.05, "n_live": 2, "n_attack": 4} for k, (a, b) in enumerate([(0.1, 0.0), (0.3, 0.2)], 1)]
    summary = summarize(rows)
    assert summary["apcer"]["mean"] == pytest.approx(0.2) and summary["apcer"]["std"] == pytest.approx(0.1)
    assert summary["acer"]["mean"] == pytest.approx(0.15) and summary["acer"]["std"] == pytest.approx(0.1)
    assert summary["auc"] == {"mean": None, "std": None, "n": 0}
    result = {"protocol": "oulu-p3", "title": "t", "model": "attacknet", "epochs": 1, "threshold_rule": "eer",
              "video_score": "mean", "headline": "acer", "rows": rows, "summary": summary,
              "notes": ["nuaa: no test images"]}
    table = results_markdown(result)
    mean_row = "| **mean ± std** (2) | | | | 20.00 ± 10.00 | 10.00 ± 10.00 | 15.00 ± 10.00 | 10.00 ± 0.00 | – |"
    assert mean_row in table
    assert "| 1 | oulu_npu | oulu_npu | 0.5000 | 10.00 | 0.00 | 5.00 | 10.00 | – | 5.00 | 2 / 4 |" in table
    assert table.rstrip().endswith("† nuaa: no test images")


def test_required_list_flags_parse_as_lists():
    """--roots and cross-dataset's --datasets are required list fields: split at commas, not kept whole."""
    parser = cli.build_parser()
    assert parser.parse_args(["benchmark", "--protocol", "nuaa-official", "--roots", "nuaa=/a,casia_fasd=/b"]).roots \
        == ["nuaa=/a", "casia_fasd=/b"]
    assert parser.parse_args(["cross-dataset", "--data", "d", "--datasets", "nuaa,msu_mfsd"]).datasets == [
        "nuaa", "msu_mfsd"]


@pytest.mark.ray
def test_folds_run_side_by_side_only_when_the_cluster_holds_several_trainings(ray_session):
    from raypipe.protocols import fold_slots

    def config(workers: int, concurrent: int | None = None) -> BenchmarkConfig:
        return BenchmarkConfig(protocol="oulu-p3", roots=["x"], concurrent_folds=concurrent,
                               train=TrainConfig(data="", workers=workers, use_gpu=False))

    assert fold_slots(config(workers=1), 6) == 1  # 2 CPUs: one training of 1 worker + its data work
    assert fold_slots(config(workers=1, concurrent=3), 6) == 3
    assert fold_slots(config(workers=1, concurrent=8), 6) == 6
    assert fold_slots(config(workers=1, concurrent=3), 1) == 1
