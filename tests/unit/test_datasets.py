"""Dataset adapters on tiny trees generated in each native layout (tests/fixtures/layouts.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from raypipe.datasets import ADAPTERS, ATTACK, LIVE, DatasetLayoutError, Sample, get_adapter, sample_id
from raypipe.datasets.base import media_of
from tests.fixtures.layouts import BUILDERS, Tree, make_tree, write_image, write_text, write_video


@pytest.fixture(scope="session")
def trees(tmp_path_factory) -> dict[str, Tree]:
    """Every dataset's tree, built once per session."""
    base = tmp_path_factory.mktemp("layouts")
    return {name: make_tree(name, base / name.replace("3dmad", "mad3d")) for name in BUILDERS}


def scan(tree: Tree, **options) -> tuple[dict[str, Sample], object]:
    adapter = get_adapter(tree.name, tree.root, **{**tree.options, **options})
    samples = adapter.samples()
    by_rel = {s.rel_path: s for s in samples}
    assert len(by_rel) == len(samples), "duplicate rel_path"
    return by_rel, adapter.report


def kinds(samples: dict[str, Sample]) -> dict[str, tuple[str, str, int, str]]:
    """rel_path -> (split, subject, label, attack_type)."""
    return {rel: (s.split, s.subject, s.label, s.attack_type) for rel, s in samples.items()}


def conditions(samples: dict[str, Sample]) -> dict[str, tuple[str | None, str | None, str | None]]:
    """rel_path -> (session, device, pai_type)."""
    return {rel: (s.session, s.device, s.pai_type) for rel, s in samples.items()}


# -- the contract, for every registered adapter ----------------------------------------------------


def test_every_registered_adapter_has_a_fixture_builder():
    assert set(BUILDERS) == set(ADAPTERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_counts_per_split_and_report(trees, name):
    tree = trees[name]
    samples, report = scan(tree)
    counts = {split: sum(s.split == split for s in samples.values()) for split in ("train", "dev", "test")}
    assert counts == {split: tree.counts.get(split, 0) for split in counts}
    assert sorted(report.missing) == sorted(tree.missing)
    assert len(report.skipped) == tree.skipped, report.skipped


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_sample_records_are_consistent(trees, name):
    tree = trees[name]
    samples, _ = scan(tree)
    assert {s.label for s in samples.values()} == {LIVE, ATTACK}, "every tree mixes live and attack"
    for rel, s in samples.items():
        assert Path(s.path).is_file() and Path(s.path) == tree.root.resolve() / rel
        assert s.dataset == name and s.frame_index == -1 and s.subject
        assert (s.label == LIVE) == (s.attack_type == "live"), rel
        assert s.media == media_of(rel)
        assert s.sample_id == sample_id(name, rel, -1)
        assert s.to_record()["extras"] == s.extras
        record = s.to_record()
        assert (record["session"], record["device"], record["pai_type"]) == (s.session, s.device, s.pai_type)
        assert all(v is None or (isinstance(v, str) and v) for v in (s.session, s.device, s.pai_type)), rel
        assert s.pai_type in ((None,) if s.label == LIVE else (None, "print", "replay", "mask")), rel


def test_pai_type_is_derived_from_the_attack_type_and_never_set_on_live():
    def make(label: int, attack_type: str, **fields) -> Sample:
        return Sample(dataset="d", split="train", subject="1", label=label, attack_type=attack_type,
                      path="/x.jpg", rel_path="x.jpg", **fields)

    assert [make(ATTACK, t).pai_type for t in ("printed_photo", "ipad_video", "silicone_mask", "attack")] == [
        "print", "replay", "mask", None]
    assert make(ATTACK, "photo", pai_type="replay").pai_type == "replay"  # an adapter's own value wins
    assert make(LIVE, "live").pai_type is None
    with pytest.raises(ValueError, match="live"):
        make(LIVE, "live", pai_type="print")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_ids_are_stable_across_scans_and_roots(trees, name, tmp_path):
    tree = trees[name]
    first, _ = scan(tree)
    again, _ = scan(tree)
    copy = shutil.copytree(tree.root, tmp_path / "copy")
    moved, _ = scan(Tree(name, copy, tree.counts, options=tree.options))
    ids = {rel: s.sample_id for rel, s in first.items()}
    assert ids == {rel: s.sample_id for rel, s in again.items()}
    assert ids == {rel: s.sample_id for rel, s in moved.items()}  # ids do not depend on where the root is
    assert len(set(ids.values())) == len(ids)
    rel = sorted(ids)[0]
    frame_ids = {sample_id(name, rel, i) for i in (-1, 0, 1, 2)}
    assert len(frame_ids) == 4 and ids[rel] in frame_ids
    assert sample_id("other", rel) != ids[rel]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_empty_root_is_a_layout_error(name, tmp_path):
    with pytest.raises(DatasetLayoutError):
        get_adapter(name, tmp_path).samples()


@pytest.mark.parametrize("name", sorted(set(BUILDERS) - {"folder"}))  # folder is generic on purpose
def test_foreign_trees_give_a_layout_error_or_nothing(trees, name):
    for other in sorted(set(BUILDERS) - {name}):
        try:
            samples = get_adapter(name, trees[other].root).samples()
        except DatasetLayoutError:
            continue
        assert samples == [], f"{name} read {len(samples)} samples from the {other} tree"


def test_missing_root_and_unknown_options_fail_early(tmp_path):
    with pytest.raises(DatasetLayoutError):
        get_adapter("siw", tmp_path / "nope")
    with pytest.raises(TypeError, match="unknown option"):
        get_adapter("oulu_npu", tmp_path, protocl=2)


def test_samples_split_filter(trees):
    adapter = get_adapter("oulu_npu", trees["oulu_npu"].root)
    assert {s.split for s in adapter.samples("dev")} == {"dev"} and len(adapter.samples("dev")) == 3
    with pytest.raises(ValueError):
        adapter.samples("validation")


# -- per dataset -----------------------------------------------------------------------------------


def test_nuaa(trees):
    samples, report = scan(trees["nuaa"])
    assert kinds(samples) == {
        "ClientRaw/0001/0001_00_00_01_0.jpg": ("train", "0001", LIVE, "live"),
        "ClientRaw/0001/0001_01_00_01_5.jpg": ("train", "0001", LIVE, "live"),
        "ClientRaw/0001/0001_00_00_02_1.jpg": ("train", "0001", LIVE, "live"),
        "ImposterRaw/0001/0001_00_00_01_0.jpg": ("train", "0001", ATTACK, "print"),
        "ImposterRaw/0001/0001_00_00_02_4.jpg": ("train", "0001", ATTACK, "print"),
        "ClientRaw/0002/0002_00_00_03_0.jpg": ("test", "0002", LIVE, "live"),
        "ImposterRaw/0002/0002_00_00_03_3.jpg": ("test", "0002", ATTACK, "print"),
    }
    assert samples["ClientRaw/0001/0001_01_00_01_5.jpg"].extras == {"glasses": 1, "pos": 0, "session": 1, "pic": 5}


def test_nuaa_capture_fields(trees):
    samples, _ = scan(trees["nuaa"])
    assert conditions(samples) == {
        "ClientRaw/0001/0001_00_00_01_0.jpg": ("01", None, None),
        "ClientRaw/0001/0001_01_00_01_5.jpg": ("01", None, None),
        "ClientRaw/0001/0001_00_00_02_1.jpg": ("02", None, None),
        "ImposterRaw/0001/0001_00_00_01_0.jpg": ("01", None, "print"),
        "ImposterRaw/0001/0001_00_00_02_4.jpg": ("02", None, "print"),
        "ClientRaw/0002/0002_00_00_03_0.jpg": ("03", None, None),
        "ImposterRaw/0002/0002_00_00_03_3.jpg": ("03", None, "print"),
    }


def test_oulu_npu_protocol_1(trees):
    samples, _ = scan(trees["oulu_npu"])
    got = kinds(samples)
    assert got["Train_files/1_1_01_1.avi"] == ("train", "01", LIVE, "live")
    assert got["Train_files/1_1_01_3.avi"] == ("train", "01", ATTACK, "print")
    assert got["Train_files/1_1_01_5.avi"] == ("train", "01", ATTACK, "replay")
    assert got["Dev_files/1_1_21_4.avi"] == ("dev", "21", ATTACK, "replay")
    assert got["Test_files/2_1_36_1.avi"] == ("test", "36", LIVE, "live")
    first = samples["Train_files/1_1_01_1.avi"]
    assert first.media == "video"
    assert first.extras["eye_positions"] == str(trees["oulu_npu"].root.resolve() / "Train_files/1_1_01_1.txt")
    assert samples["Train_files/1_1_01_3.avi"].extras["eye_positions"] is None
    e = samples["Test_files/2_1_36_1.avi"].extras
    assert (e["phone"], e["session"], e["pai"], e["protocol"], e["fold"], e["list_label"]) == (2, 1, 0, 1, None, "+1")
    assert samples["Train_files/1_1_01_3.avi"].extras["pai"] == 2


def test_oulu_npu_capture_fields(trees, tmp_path):
    samples, _ = scan(trees["oulu_npu"])
    got = conditions(samples)
    assert got["Train_files/1_1_01_1.avi"] == ("1", "phone1", None)
    assert got["Train_files/1_1_01_3.avi"] == ("1", "phone1", "print")
    assert got["Dev_files/1_1_21_4.avi"] == ("1", "phone1", "replay")
    assert got["Test_files/2_1_36_1.avi"] == ("1", "phone2", None)
    write_video(tmp_path / "3_2_05_4.avi", 1)  # phone 3, session 2: the two fields are not swapped
    write_text(tmp_path / "Protocols/Protocol_1/Test.txt", "-2,3_2_05_4\n")
    (sample,) = get_adapter("oulu_npu", tmp_path).samples()
    assert (sample.session, sample.device, sample.pai_type) == ("2", "phone3", "replay")


def test_oulu_npu_protocol_3_folds_pick_their_lists(trees):
    tree = trees["oulu_npu"]
    fold1, report1 = scan(tree, protocol=3, fold=1)
    fold2, report2 = scan(tree, protocol=3, fold=2)
    assert {r: s.split for r, s in fold1.items()} == {
        "Train_files/1_1_01_1.avi": "train", "Train_files/1_1_01_2.avi": "train",
        "Dev_files/1_1_21_1.avi": "dev", "Test_files/2_1_36_1.avi": "test"}
    assert {r: s.split for r, s in fold2.items()} == {
        "Train_files/1_1_01_1.avi": "train", "Train_files/1_1_01_4.avi": "train",
        "Train_files/1_1_01_5.avi": "train", "Dev_files/1_1_21_2.avi": "dev",
        "Test_files/1_1_36_1.avi": "test", "Test_files/1_1_36_5.avi": "test"}
    assert {s.extras["fold"] for s in fold2.values()} == {2}
    assert report1.missing == [] and len(report1.skipped) == 12 - 4  # videos outside the protocol


def test_oulu_npu_option_checks(trees):
    root = trees["oulu_npu"].root
    for bad in ({"protocol": 5}, {"fold": 7}, {"protocol": 1, "fold": 2}):
        with pytest.raises(ValueError):
            get_adapter("oulu_npu", root, **bad)
    with pytest.raises(DatasetLayoutError, match="Protocol_2"):
        get_adapter("oulu_npu", root, protocol=2).samples()
    adapter = get_adapter("oulu_npu", root, protocol=3, fold=6)  # lists of fold 6 absent
    with pytest.raises(DatasetLayoutError):
        adapter.samples()


def test_oulu_npu_flat_root_and_missing_list(tmp_path):
    write_video(tmp_path / "1_1_01_1.avi", 1)
    write_video(tmp_path / "1_1_01_4.avi", 2)
    write_text(tmp_path / "Protocols/Protocol_1/Train.txt", "+1,1_1_01_1\n-2,1_1_01_4\n")
    adapter = get_adapter("oulu_npu", tmp_path)
    assert {s.rel_path: s.attack_type for s in adapter.samples()} == {"1_1_01_1.avi": "live", "1_1_01_4.avi": "replay"}
    assert sorted(adapter.report.missing) == ["Protocols/Protocol_1/Dev.txt", "Protocols/Protocol_1/Test.txt"]


def test_oulu_npu_protocol_0_is_every_video_split_by_its_folder(trees, tmp_path):
    tree = trees["oulu_npu"]
    samples, report = scan(tree, protocol=0)
    assert {r: s.split for r, s in samples.items()} == {
        **{f"Train_files/1_1_01_{f}.avi": "train" for f in range(1, 6)},
        **{f"Dev_files/1_1_21_{f}.avi": "dev" for f in (1, 2, 4)},
        **{f"Test_files/1_1_36_{f}.avi": "test" for f in (1, 3, 5)}, "Test_files/2_1_36_1.avi": "test"}
    assert kinds(samples)["Dev_files/1_1_21_4.avi"] == ("dev", "21", ATTACK, "replay")
    assert report.missing == [] and report.skipped == []  # no list is read
    with pytest.raises(ValueError):
        get_adapter("oulu_npu", tree.root, protocol=0, fold=2)
    write_video(tmp_path / "1_1_01_1.avi", 1)  # a flat root has no split folders
    with pytest.raises(DatasetLayoutError, match="protocol 0"):
        get_adapter("oulu_npu", tmp_path, protocol=0).samples()


def test_replay_attack(trees):
    tree = trees["replay_attack"]
    samples, _ = scan(tree)
    got = kinds(samples)
    assert got["train/real/client001_session01_webcam_authenticate_adverse_1.mov"] == ("train", "001", LIVE, "live")
    assert got["train/attack/fixed/attack_highdef_client001_session01_highdef_photo_adverse.mov"] == (
        "train", "001", ATTACK, "replay")
    assert got["train/attack/hand/attack_print_client001_session01_highdef_photo_controlled.mov"] == (
        "train", "001", ATTACK, "print")
    assert got["devel/attack/fixed/attack_print_client002_session01_highdef_photo_adverse.mov"][0] == "dev"
    mobile = samples["train/attack/hand/attack_mobile_client001_session01_mobile_video_adverse.mov"].extras
    assert (mobile["support"], mobile["device"], mobile["medium"], mobile["lighting"], mobile["session"]) == (
        "hand", "mobile", "video", "adverse", 1)
    assert samples["train/attack/fixed/attack_highdef_client001_session01_highdef_photo_adverse.mov"].extras[
        "support"] == "fixed"
    real = samples["train/real/client001_session01_webcam_authenticate_adverse_1.mov"].extras
    assert real["support"] is None and real["enroll"] is False
    assert real["face_locations"] == str(
        tree.root.resolve() / "face-locations/train/real/client001_session01_webcam_authenticate_adverse_1.face")
    assert samples["train/real/client001_session01_webcam_authenticate_controlled_2.mov"].extras[
        "face_locations"] is None


def test_replay_attack_capture_fields(trees):
    samples, _ = scan(trees["replay_attack"])
    got = conditions(samples)
    assert got["train/real/client001_session01_webcam_authenticate_adverse_1.mov"] == ("adverse", "webcam", None)
    assert got["train/real/client001_session01_webcam_authenticate_controlled_2.mov"] == (
        "controlled", "webcam", None)
    assert got["train/attack/fixed/attack_highdef_client001_session01_highdef_photo_adverse.mov"] == (
        "adverse", "webcam", "replay")
    assert got["train/attack/hand/attack_print_client001_session01_highdef_photo_controlled.mov"] == (
        "controlled", "webcam", "print")
    assert got["test/attack/hand/attack_mobile_client003_session01_mobile_video_controlled.mov"] == (
        "controlled", "webcam", "replay")
    # the support and the attack device stay in extras
    hand = samples["train/attack/hand/attack_mobile_client001_session01_mobile_video_adverse.mov"].extras
    assert (hand["support"], hand["device"]) == ("hand", "mobile")


def test_replay_attack_enroll_is_opt_in(trees):
    without, _ = scan(trees["replay_attack"])
    with_enroll, _ = scan(trees["replay_attack"], include_enroll=True)
    added = set(with_enroll) - set(without)
    assert added == {"enroll/train/client001_session01_webcam_enroll_controlled_1.mov"}
    sample = with_enroll[added.pop()]
    assert (sample.split, sample.label, sample.extras["enroll"]) == ("train", LIVE, True)


def test_casia_fasd(trees):
    samples, report = scan(trees["casia_fasd"])
    got = {rel: (s.split, s.subject, s.label, s.attack_type, s.extras["variant"], s.extras["quality"])
           for rel, s in samples.items()}
    assert got["train_release/1/1.avi"] == ("train", "train_1", LIVE, "live", None, "low")
    assert got["train_release/1/HR_1.avi"] == ("train", "train_1", LIVE, "live", None, "high")
    assert got["train_release/1/3.avi"] == ("train", "train_1", ATTACK, "print", "warped", "low")
    assert got["train_release/1/5.avi"] == ("train", "train_1", ATTACK, "print", "cut", "low")
    assert got["train_release/1/7.avi"] == ("train", "train_1", ATTACK, "replay", None, "low")
    assert got["train_release/2/HR_4.avi"] == ("train", "train_2", ATTACK, "replay", None, "high")
    assert got["test_release/1/4.avi"] == ("test", "test_1", ATTACK, "print", "warped", "normal")
    assert got["test_release/1/6.avi"] == ("test", "test_1", ATTACK, "print", "cut", "normal")
    assert got["test_release/1/HR_2.avi"][3:5] == ("print", "warped")
    assert got["test_release/1/HR_3.avi"][3:5] == ("print", "cut")
    assert got["test_release/1/8.avi"][3] == "replay"
    # subject folders restart in test_release: different people, different subjects
    assert {s.subject for s in samples.values() if s.split == "train"}.isdisjoint(
        {s.subject for s in samples.values() if s.split == "test"})
    assert report.skipped == ["train_release/2/9.avi"]
    assert conditions(samples)["train_release/1/HR_1.avi"] == (None, "high_quality", None)
    assert conditions(samples)["test_release/1/4.avi"] == (None, "normal_quality", "print")


def test_msu_mfsd(trees):
    samples, report = scan(trees["msu_mfsd"])
    got = kinds(samples)
    assert got == {
        "scene01/real/real_client002_android_SD_scene01.mp4": ("train", "002", LIVE, "live"),
        "scene01/real/real_client002_laptop_SD_scene01.mov": ("train", "002", LIVE, "live"),
        "scene01/attack/attack_client002_android_SD_ipad_video_scene01.mp4": ("train", "002", ATTACK, "replay"),
        "scene01/attack/attack_client002_laptop_HD_printed_photo_scene01.mov": ("train", "002", ATTACK, "print"),
        "scene01/real/real_client003_android_SD_scene01.mp4": ("test", "003", LIVE, "live"),
        "scene01/attack/attack_client003_laptop_SD_iphone_video_scene01.mov": ("test", "003", ATTACK, "replay"),
    }
    extras = samples["scene01/attack/attack_client002_laptop_HD_printed_photo_scene01.mov"].extras
    assert extras == {"device": "laptop", "resolution": "HD", "pai": "printed_photo", "scene": "scene01"}
    got = conditions(samples)
    assert got["scene01/attack/attack_client002_laptop_HD_printed_photo_scene01.mov"] == (None, "laptop", "print")
    assert got["scene01/real/real_client002_android_SD_scene01.mp4"] == (None, "android", None)
    assert report.skipped == ["scene01/real/real_client055_android_SD_scene01.mp4"]


def test_msu_mfsd_flat_root_with_one_list(tmp_path):
    write_video(tmp_path / "real_client001_android_SD_scene01.mp4", 1)
    write_video(tmp_path / "attack_client001_android_SD_printed_photo_scene01.mp4", 2)
    write_text(tmp_path / "test_sub_list.txt", "1\r\n")
    samples = get_adapter("msu_mfsd", tmp_path).samples()
    assert [(s.split, s.subject, s.attack_type) for s in samples] == [
        ("test", "001", "print"), ("test", "001", "live")]


def test_rose_youtu(trees):
    samples, report = scan(trees["rose_youtu"])
    got = kinds(samples)
    assert got == {
        "2/G_NT_5s_g_E_2_1.mp4": ("train", "2", LIVE, "live"),
        "2/Ps_NT_5s_g_E_2_1.mp4": ("train", "2", ATTACK, "print"),
        "2/Vl_NT_HW_g_E_2_1.mp4": ("train", "2", ATTACK, "replay"),
        "2/Mc_NT_IP_g_E_2_1.mp4": ("train", "2", ATTACK, "mask"),
        "3/G_NT_5s_g_E_3_1.mp4": ("test", "3", LIVE, "live"),
        "3/Pq_WT_ZTE_b_E_3_2.mp4": ("test", "3", ATTACK, "print"),
        "3/Vm_NT_HS_g_E_3_1.mp4": ("test", "3", ATTACK, "replay"),
        "3/Mu_NT_HW_g_E_3_1.mp4": ("test", "3", ATTACK, "mask"),
    }
    extras = samples["3/Pq_WT_ZTE_b_E_3_2.mp4"].extras
    assert (extras["code"], extras["device"], extras["index"]) == ("Pq", "ZTE", 2)
    got = conditions(samples)
    assert got["3/Pq_WT_ZTE_b_E_3_2.mp4"] == (None, "ZTE", "print")
    assert got["2/Mc_NT_IP_g_E_2_1.mp4"] == (None, "IP", "mask")
    assert got["2/G_NT_5s_g_E_2_1.mp4"] == (None, "5s", None)
    assert report.skipped == ["3/Mf_NT_5s_g_E_3_1.mp4"]


def test_rose_youtu_subject_comes_from_the_file_name(tmp_path):
    write_video(tmp_path / "videos/Mf_NT_5s_g_E_12_1.mp4", 1)  # folder name is not the client
    write_text(tmp_path / "test_list.txt", "Mf_NT_5s_g_E_12_1.mp4\n")
    (sample,) = get_adapter("rose_youtu", tmp_path).samples()
    assert (sample.subject, sample.attack_type, sample.split) == ("12", "mask", "test")


def test_lcc_fasd(trees):
    samples, _ = scan(trees["lcc_fasd"])
    got = kinds(samples)
    assert got["LCC_FASD_training/real/YOUTUBE_id10_s0_0.png"] == ("train", "YOUTUBE_id10_s0", LIVE, "live")
    assert got["LCC_FASD_training/real/YOUTUBE_id10_s0_10.png"][1] == "YOUTUBE_id10_s0"  # same clip
    assert got["LCC_FASD_training/spoof/YOUTUBE_id124_s0_112.png"] == ("train", "YOUTUBE_id124_s0", ATTACK, "attack")
    assert got["LCC_FASD_development/spoof/amazon_id2_7.png"] == ("dev", "amazon_id2", ATTACK, "attack")
    assert got["LCC_FASD_evaluation/real/ebay_face_1.png"] == ("test", "ebay_face", LIVE, "live")


def test_lcc_fasd_nested_root_and_subject_pattern(trees, tmp_path):
    shutil.copytree(trees["lcc_fasd"].root, tmp_path / "LCC_FASD")
    samples = get_adapter("lcc_fasd", tmp_path, subject_pattern=r"^(?P<subject>[a-zA-Z]+)_").samples()
    assert len(samples) == trees["lcc_fasd"].total
    assert {s.subject for s in samples} == {"YOUTUBE", "amazon", "ebay"}
    assert all(s.rel_path.startswith("LCC_FASD/") for s in samples)


def test_celeba_spoof(trees):
    samples, report = scan(trees["celeba_spoof"])
    got = {rel: (s.split, s.subject, s.label, s.attack_type, s.extras["attack_family"])
           for rel, s in samples.items()}
    assert got == {
        "Data/train/10001/live/000001.jpg": ("train", "10001", LIVE, "live", "live"),
        "Data/train/10001/spoof/000002.png": ("train", "10001", ATTACK, "photo", "print"),
        "Data/train/10002/spoof/000003.jpg": ("train", "10002", ATTACK, "pad", "replay"),
        "Data/test/20001/live/000004.jpg": ("test", "20001", LIVE, "live", "live"),
        "Data/test/20001/spoof/000005.jpg": ("test", "20001", ATTACK, "3d_mask", "mask"),
    }
    photo = samples["Data/train/10001/spoof/000002.png"].extras
    assert (photo["bbox"], photo["bbox_score"], photo["bbox_ref_size"]) == ([61, 45, 61, 112], 0.9970805, 224)
    assert (photo["illumination"], photo["environment"]) == (2, 1)
    assert samples["Data/train/10002/spoof/000003.jpg"].extras["bbox"] is None  # no _BB.txt
    assert {rel: s.pai_type for rel, s in samples.items()} == {
        "Data/train/10001/live/000001.jpg": None, "Data/train/10001/spoof/000002.png": "print",
        "Data/train/10002/spoof/000003.jpg": "replay", "Data/test/20001/live/000004.jpg": None,
        "Data/test/20001/spoof/000005.jpg": "mask"}
    assert {(s.session, s.device) for s in samples.values()} == {(None, None)}
    assert report.skipped == ["Data/train/10002/live/000098.jpg"]


def test_celeba_spoof_options(trees, tmp_path):
    no_box, _ = scan(trees["celeba_spoof"], read_bbox=False)
    assert all(s.extras["bbox"] is None for s in no_box.values())
    only_test, report = scan(trees["celeba_spoof"], label_files={"test": "metas/intra_test/test_label.json"})
    assert {s.split for s in only_test.values()} == {"test"} and report.missing == []
    with pytest.raises(ValueError):
        scan(trees["celeba_spoof"], label_files={"valid": "x.json"})


def test_siw(trees):
    tree = trees["siw"]
    samples, report = scan(tree)
    got = kinds(samples)
    assert got == {
        "Train/live/003/003-1-1-1-1.mov": ("train", "003", LIVE, "live"),
        "Train/spoof/003/003-1-2-1-1.mov": ("train", "003", ATTACK, "print"),
        "Train/spoof/003/003-2-3-4-1.mov": ("train", "003", ATTACK, "replay"),
        "Test/live/007/007-2-1-1-2.mov": ("test", "007", LIVE, "live"),
        "Test/spoof/007/007-1-3-2-1.mov": ("test", "007", ATTACK, "replay"),
    }
    replay = samples["Train/spoof/003/003-2-3-4-1.mov"].extras
    assert (replay["sensor"], replay["medium"], replay["session"], replay["face_locations"]) == (2, 4, 1, None)
    assert samples["Train/live/003/003-1-1-1-1.mov"].extras["face_locations"] == str(
        tree.root.resolve() / "Train/live/003/003-1-1-1-1.face")
    assert report.skipped == ["Train/spoof/003/003-1-1-1-3.mov"]
    got = conditions(samples)
    assert got["Train/spoof/003/003-2-3-4-1.mov"] == ("1", "sensor2", "replay")
    assert got["Test/live/007/007-2-1-1-2.mov"] == ("2", "sensor2", None)
    assert got["Train/spoof/003/003-1-2-1-1.mov"] == ("1", "sensor1", "print")


def test_3dmad_default_split(trees):
    samples, report = scan(trees["3dmad"])
    got = {Path(rel).name: (s.split, s.subject, s.label, s.attack_type) for rel, s in samples.items()}
    assert got == {
        "01_01_01.hdf5": ("train", "01", LIVE, "live"), "01_03_01.hdf5": ("train", "01", ATTACK, "mask"),
        "08_02_03.hdf5": ("dev", "08", LIVE, "live"), "08_03_02.hdf5": ("dev", "08", ATTACK, "mask"),
        "13_01_05.hdf5": ("test", "13", LIVE, "live"), "13_03_01.hdf5": ("test", "13", ATTACK, "mask"),
    }
    sample = next(s for s in samples.values() if s.rel_path.endswith("08_02_03.hdf5"))
    assert sample.media == "hdf5" and sample.extras == {"session": 2, "shot": 3, "hdf5_key": "Color_Data"}
    assert {Path(rel).name: (s.session, s.device, s.pai_type) for rel, s in samples.items()} == {
        "01_01_01.hdf5": ("01", None, None), "01_03_01.hdf5": ("03", None, "mask"),
        "08_02_03.hdf5": ("02", None, None), "08_03_02.hdf5": ("03", None, "mask"),
        "13_01_05.hdf5": ("01", None, None), "13_03_01.hdf5": ("03", None, "mask"),
    }
    assert report.skipped == ["session01/Data/18_01_01.hdf5"]


def test_3dmad_split_subjects_option(trees):
    samples, report = scan(trees["3dmad"], split_subjects={"train": [1, 8], "test": ["13", "018"]})
    assert {Path(r).name[:2]: s.split for r, s in samples.items()} == {
        "01": "train", "08": "train", "13": "test", "18": "test"}
    assert report.skipped == []
    with pytest.raises(ValueError, match="both"):
        scan(trees["3dmad"], split_subjects={"train": [1], "test": [1]})


def test_csmad_default_guess(trees):
    samples, report = scan(trees["csmad"])
    got = {rel: (s.split, s.subject, s.label, s.attack_type, s.extras.get("support")) for rel, s in samples.items()}
    assert got == {
        "bonafide/001/001_01_sr300.h5": ("train", "001", LIVE, "live", None),
        "bonafide/002/002_03_sr300.h5": ("train", "002", LIVE, "live", None),
        "attack/WEAR/A/001_wear_A_01.h5": ("train", "001", ATTACK, "silicone_mask", "WEAR"),
        "attack/STAND/B/002_stand_B_02.h5": ("train", "002", ATTACK, "silicone_mask", "STAND"),
    }
    assert all(s.media == "hdf5" and s.extras["hdf5_key"] is None for s in samples.values())
    assert {s.pai_type for s in samples.values() if s.label == ATTACK} == {"mask"}  # from "silicone_mask"
    assert report.skipped == ["calibration/cal_01.h5"]


def test_csmad_is_configurable(tmp_path):
    for rel in ("videos/real_07_a.avi", "videos/fake_07_b.avi", "videos/fake_09_a.avi", "videos/real_11_a.avi"):
        write_video(tmp_path / rel, 1)
    options = {
        "glob": "videos/*.avi",
        "regex": r"(?P<label>real|fake)_(?P<subject>\d+)_(?P<take>\w)",
        "label_map": {"fake": 1},
        "attack_type_map": {},
        "default_attack_type": "mask",
        "split_subjects": {"train": [7], "test": [9]},
        "hdf5_key": "frames",
    }
    adapter = get_adapter("csmad", tmp_path, **options)
    got = {s.rel_path: (s.split, s.subject, s.label, s.attack_type, s.extras) for s in adapter.samples()}
    assert got == {
        "videos/real_07_a.avi": ("train", "07", LIVE, "live", {"take": "a"}),
        "videos/fake_07_b.avi": ("train", "07", ATTACK, "mask", {"take": "b"}),
        "videos/fake_09_a.avi": ("test", "09", ATTACK, "mask", {"take": "a"}),
    }
    assert adapter.report.skipped == ["videos/real_11_a.avi"]  # subject 11 in no split
    with pytest.raises(DatasetLayoutError, match="regex"):
        get_adapter("csmad", tmp_path, glob="videos/*.avi").samples()  # default regex matches nothing
    # session/device groups become the capture fields, not extras
    regex = r"(?P<label>real|fake)_(?P<subject>\d+)_(?P<session>\w)"
    with_session = get_adapter("csmad", tmp_path, **{**options, "regex": regex}).samples()
    assert {(s.rel_path, s.session, s.extras.get("session")) for s in with_session} == {
        ("videos/real_07_a.avi", "a", None), ("videos/fake_07_b.avi", "b", None),
        ("videos/fake_09_a.avi", "a", None)}
    with pytest.raises(ValueError, match="subject"):
        get_adapter("csmad", tmp_path, regex=r"(?P<label>real)")
    with pytest.raises(ValueError, match="label_map"):
        get_adapter("csmad", tmp_path, label_map={"fake": 2})


def test_msspoof_default_guess_and_split_regex(trees, tmp_path):
    samples, report = scan(trees["msspoof"])
    got = {rel: (s.subject, s.label, s.attack_type, s.extras["spectrum"]) for rel, s in samples.items()}
    assert got == {
        "real/001/VIS/001_01.png": ("001", LIVE, "live", "VIS"),
        "real/001/NIR/001_01.png": ("001", LIVE, "live", "NIR"),
        "attack/001/VIS/001_p01.png": ("001", ATTACK, "print", "VIS"),
        "attack/002/VIS/002_p01.png": ("002", ATTACK, "print", "VIS"),
        "attack/002/NIR/002_p01.png": ("002", ATTACK, "print", "NIR"),
    }
    assert report.skipped == ["thumbnails/overview.png"]
    write_image(tmp_path / "devel/c3_spoof_nir.png", 1)
    write_image(tmp_path / "train/c4_real_vis.png", 2)
    regex = r"^(?P<split>[a-z]+)/c(?P<subject>\d+)_(?P<label>real|spoof)_(?P<spectrum>\w+)\."
    got = {s.rel_path: (s.split, s.subject, s.label) for s in get_adapter("msspoof", tmp_path, regex=regex).samples()}
    assert got == {"devel/c3_spoof_nir.png": ("dev", "3", ATTACK), "train/c4_real_vis.png": ("train", "4", LIVE)}


def test_folder(trees):
    samples, report = scan(trees["folder"])
    assert kinds(samples) == {
        "train/live/alice_1.jpg": ("train", "alice", LIVE, "live"),
        "train/spoof/print/bob_1.png": ("train", "bob", ATTACK, "print"),
        "dev/live/erin_1.png": ("dev", "erin", LIVE, "live"),
        "test/live/carol_1.jpg": ("test", "carol", LIVE, "live"),
        "test/spoof/replay/dave_1.mp4": ("test", "dave", ATTACK, "replay"),
    }
    assert samples["test/spoof/replay/dave_1.mp4"].media == "video"
    assert report.skipped == ["train/live/notes.txt"]
    assert conditions(samples)["test/spoof/replay/dave_1.mp4"] == (None, None, "replay")
    assert conditions(samples)["train/live/alice_1.jpg"] == (None, None, None)


def test_folder_without_split_folders_goes_to_the_split_option(tmp_path):
    write_image(tmp_path / "real" / "1001.jpg", 1)
    write_image(tmp_path / "attack" / "1002.jpg", 2)
    assert {s.split for s in get_adapter("folder", tmp_path).samples()} == {"train"}
    held_out = get_adapter("folder", tmp_path, split="test", dataset_name="msu").samples()
    assert {(s.dataset, s.split, s.label) for s in held_out} == {("msu", "test", LIVE), ("msu", "test", ATTACK)}
    with pytest.raises(ValueError, match="split"):
        get_adapter("folder", tmp_path, split="holdout").samples()


def test_folder_manifest_capture_columns(tmp_path):
    for rel in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / rel, 1)
    write_text(tmp_path / "list.csv", "path,label,subject,session,device,pai_type,attack_type\n"
                                      "a.jpg,live,s1,day1,cam0,,\n"
                                      "b.jpg,spoof,s1,day2,,,printed_photo\n"
                                      "c.jpg,spoof,s2,,,replay,tablet\n")
    got = {s.rel_path: (s.session, s.device, s.pai_type)
           for s in get_adapter("folder", tmp_path, manifest="list.csv").samples()}
    assert got == {"a.jpg": ("day1", "cam0", None), "b.jpg": ("day2", None, "print"),
                   "c.jpg": (None, None, "replay")}
    write_text(tmp_path / "bad.csv", "path,label,pai_type\na.jpg,live,print\n")
    with pytest.raises(ValueError, match="live"):
        get_adapter("folder", tmp_path, manifest="bad.csv").samples()


def test_generated_media_are_readable(trees):
    """The builders write files OpenCV/h5py can read back (guards the fixtures themselves)."""
    import cv2
    import h5py

    video = trees["replay_attack"].root / "train/real/client001_session01_webcam_authenticate_adverse_1.mov"
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and capture.read()[0]
    capture.release()
    with h5py.File(next(trees["3dmad"].root.rglob("01_01_01.hdf5")), "r") as handle:
        assert handle["Color_Data"].shape == (6, 3, 24, 32) and handle["Color_Data"].dtype == "uint8"
    image = cv2.imread(str(trees["msspoof"].root / "real/001/NIR/001_01.png"), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2


@pytest.mark.nuaa
def test_nuaa_real_training_copy(nuaa_root):
    """The shared NUAA copy holds the training lists' files; the test lists' files are reported missing."""
    adapter = get_adapter("nuaa", nuaa_root)
    samples = adapter.samples()
    assert (sum(s.label == LIVE for s in samples), sum(s.label == ATTACK for s in samples)) == (1743, 1748)
    assert {s.split for s in samples} == {"train"} and len({s.subject for s in samples}) == 9
    assert len(adapter.report.missing) > 0
    assert all(m.startswith(("ClientRaw/", "ImposterRaw/")) for m in adapter.report.missing)
