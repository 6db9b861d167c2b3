"""Dev split planning (raypipe.crops.plan_splits) on tiny index tables, and reading old crops."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe import crops


def index_table(rows: list[dict]) -> pa.Table:
    """An index as :func:`raypipe.crops.read_index` returns it (absent keys -> nulls)."""
    schema = pa.schema([(name, pa.int8() if name == "label" else pa.string())
                        for name in crops.INDEX_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


def capture(dataset: str = "nuaa", split: str = "train", sessions: tuple = ("01", "02"),
            subjects: tuple = ("1", "2", "3", "4", "5"), per_class: int = 2) -> list[dict]:
    """Rows of every (session, subject, label) with ``per_class`` images each; ids unique."""
    return [{"sample_id": f"{dataset}/{split}/{session}/{subject}/{label}/{k}", "dataset": dataset,
             "split": split, "subject": subject, "label": label, "session": session,
             "attack_type": "print" if label else "live", "pai_type": "print" if label else None}
            for session in sessions for subject in subjects for label in (0, 1) for k in range(per_class)]


def column(table: pa.Table, name: str) -> np.ndarray:
    return np.array(table[name].to_pylist(), dtype=object)


# -- session -----------------------------------------------------------------------------------


def test_two_sessions_hold_one_out_and_train_keeps_the_other():
    index = index_table(capture() + capture(split="test", sessions=("03",), subjects=("9",)))
    plan = crops.plan_splits(index)  # auto
    roles, sessions = plan.roles(index), column(index, "session")
    assert plan.carved["nuaa"]["by"] == "session"
    (held,) = set(sessions[roles == "dev"])
    (kept,) = set(sessions[roles == "train"])
    assert {held, kept} == {"01", "02"}
    assert set(sessions[roles == "test"]) == {"03"}
    assert (roles == "dev").sum() == (sessions == held).sum()  # every row of the session, nothing else
    assert plan.describe() == {"nuaa": f"dev = session {held} (held out of train; train keeps session {kept})"}


def test_the_seed_picks_the_held_out_session_deterministically():
    index = index_table(capture())
    held = {seed: crops.plan_splits(index, seed=seed).carved["nuaa"]["values"] for seed in range(8)}
    assert held == {seed: crops.plan_splits(index, seed=seed).carved["nuaa"]["values"] for seed in range(8)}
    assert {tuple(v) for v in held.values()} == {("01",), ("02",)}  # both get picked by some seed


def test_many_sessions_hold_out_about_dev_fraction_never_all():
    index = index_table(capture(sessions=tuple(f"{s:02d}" for s in range(1, 11))))
    assert len(crops.plan_splits(index, dev_fraction=0.2).carved["nuaa"]["values"]) == 2
    assert len(crops.plan_splits(index, dev_fraction=0.01).carved["nuaa"]["values"]) == 1
    assert len(crops.plan_splits(index, dev_fraction=0.99).carved["nuaa"]["values"]) == 9


def test_a_session_without_both_classes_is_never_dev():
    # 3DMAD-like: sessions 01/02 live only, 03 attacks only -> no session can calibrate a threshold
    rows = [r for r in capture(sessions=("01", "02", "03")) if (r["label"] == 1) == (r["session"] == "03")]
    index = index_table(rows)
    plan = crops.plan_splits(index)
    assert plan.carved["nuaa"]["by"] == "subject" and "live and attack" in plan.carved["nuaa"]["note"]
    with pytest.raises(ValueError, match="cannot hold out a session"):
        crops.plan_splits(index, dev_by="session")


def test_explicit_session_without_sessions_is_an_error():
    rows = [{**r, "session": None} for r in capture()]
    with pytest.raises(ValueError, match="no session"):
        crops.plan_splits(index_table(rows), dev_by="session")


# -- subject, fraction ---------------------------------------------------------------------------


def test_no_sessions_fall_back_to_subjects():
    rows = [{**r, "session": None} for r in capture()]
    index = index_table(rows)
    plan = crops.plan_splits(index, dev_fraction=0.2, seed=0)
    carve = plan.carved["nuaa"]
    assert carve["by"] == "subject" and len(carve["values"]) == 1 and carve["of"] == 5  # ceil(5 * 0.2)
    assert "no session" in carve["note"] and "train subjects" in plan.describe()["nuaa"]
    roles, subjects = plan.roles(index), column(index, "subject")
    assert set(subjects[roles == "dev"]) == set(carve["values"])
    assert not set(subjects[roles == "dev"]) & set(subjects[roles == "train"])


def test_one_session_falls_back_to_subjects():
    plan = crops.plan_splits(index_table(capture(sessions=("01",))))
    assert plan.carved["nuaa"]["by"] == "subject" and "only session 01" in plan.carved["nuaa"]["note"]


def test_subject_rule_ignores_sessions_and_keeps_the_historic_choice():
    with_sessions = index_table(capture())
    without = index_table([{**r, "session": None} for r in capture()])
    by_subject = crops.plan_splits(with_sessions, 0.4, 3, dev_by="subject")
    assert by_subject.carved["nuaa"]["by"] == "subject"
    assert by_subject.carved["nuaa"]["values"] == crops.plan_splits(without, 0.4, 3).carved["nuaa"]["values"]
    # the subject order is the one plans used before sessions existed: sha1("seed:dataset:subject")
    ranked = sorted("12345", key=lambda s: hashlib.sha1(f"3:nuaa:{s}".encode()).hexdigest())
    assert by_subject.carved["nuaa"]["values"] == sorted(ranked[:2])


def test_fraction_is_a_seeded_random_share_of_rows():
    index = index_table(capture(per_class=5))  # 100 train rows
    plan = crops.plan_splits(index, dev_fraction=0.25, seed=1, dev_by="fraction")
    roles = plan.roles(index)
    assert (roles == "dev").sum() == 25 == plan.carved["nuaa"]["rows"]
    again = crops.plan_splits(index, dev_fraction=0.25, seed=1, dev_by="fraction").roles(index)
    other = crops.plan_splits(index, dev_fraction=0.25, seed=2, dev_by="fraction").roles(index)
    assert (again == roles).all() and not (other == roles).all()
    subjects = column(index, "subject")
    assert set(subjects[roles == "dev"]) & set(subjects[roles == "train"])  # leaky by design
    assert "leaky" in plan.describe()["nuaa"]


def test_too_little_to_carve_is_an_error():
    one_subject = index_table(capture(sessions=("01",), subjects=("1",)))
    with pytest.raises(ValueError, match="fewer than 2"):
        crops.plan_splits(one_subject)
    with pytest.raises(ValueError, match="fewer than 2"):
        crops.plan_splits(index_table(capture(sessions=("01",), subjects=("1",))[:1]), dev_by="fraction")


def test_bad_arguments():
    index = index_table(capture())
    with pytest.raises(ValueError, match="dev_by"):
        crops.plan_splits(index, dev_by="random")
    with pytest.raises(ValueError, match="dev_fraction"):
        crops.plan_splits(index, dev_fraction=1.0)


# -- datasets with a dev split, several datasets, the plan object --------------------------------


def test_a_dataset_with_its_own_dev_split_is_untouched():
    index = index_table(capture("oulu_npu") + capture("oulu_npu", "dev", sessions=("03",)) + capture())
    for dev_by in crops.DEV_BY:
        plan = crops.plan_splits(index, dev_by=dev_by)
        assert plan.own_dev == ["oulu_npu"] and set(plan.carved) == {"nuaa"}
        roles, datasets, splits = plan.roles(index), column(index, "dataset"), column(index, "split")
        mask = datasets == "oulu_npu"
        assert (roles[mask] == splits[mask]).all()
        assert plan.describe()["oulu_npu"] == "dev = its own dev split"


def test_a_test_only_dataset_is_not_planned():
    index = index_table(capture() + capture("other", "test"))
    plan = crops.plan_splits(index)
    assert set(plan.carved) == {"nuaa"} and set(plan.describe()) == {"nuaa"}
    assert set(plan.roles(index)[column(index, "dataset") == "other"]) == {"test"}


def test_plan_is_json_able_and_role_matches_roles():
    index = index_table(capture() + capture("lcc", sessions=(None,)) + capture("celeb", "train", sessions=("x",)))
    plan = crops.plan_splits(index, dev_by="auto")
    again = crops.SplitPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan
    rows = index.to_pylist()
    assert list(again.roles(index)) == [plan.role(r) for r in rows]
    assert dict(plan.carved_dev) == {d: c["values"] for d, c in plan.carved.items()}  # the old read-only view
    with pytest.raises((AttributeError, TypeError)):
        plan.carved_dev["nuaa"] = []  # read-only on purpose: plan.carved is the plan


def test_roles_need_the_carve_column():
    plan = crops.plan_splits(index_table(capture()))
    batch = pa.table({"dataset": ["nuaa"], "split": ["train"], "subject": ["1"]})
    with pytest.raises(ValueError, match="session"):
        plan.roles(batch)
    assert list(plan.roles(batch.filter(pa.array([False])))) == []


def test_role_counts_follow_the_plan():
    index = index_table(capture())
    counts = crops.role_counts(index, crops.plan_splits(index))
    assert counts == {"train": {"live": 10, "attack": 10}, "dev": {"live": 10, "attack": 10}}


# -- crops written before the capture columns existed -------------------------------------------


def write_partition(root, dataset: str, split: str, rows: list[dict], with_capture: bool, name: str) -> None:
    keep = [c for c in ("sample_id", "subject", "label", "attack_type", "session", "pipeline_version")
            if with_capture or c != "session"]
    table = pa.table({c: [r.get(c) for r in rows] for c in keep})
    target = root / "crops" / f"dataset={dataset}" / f"split={split}"
    target.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target / name)


def test_old_crops_without_capture_columns_read_as_nulls_and_plan_by_subject(tmp_path):
    write_partition(tmp_path, "nuaa", "train", capture(), with_capture=False, name="part-0.parquet")
    index = crops.read_index(tmp_path)
    assert set(crops.INDEX_COLUMNS) <= set(index.column_names)
    assert index["session"].null_count == index["device"].null_count == index["pai_type"].null_count == 40
    plan = crops.plan_splits(index)
    assert plan.carved["nuaa"]["by"] == "subject"
    assert (plan.roles(index) == "dev").sum() == 8  # one subject of five, 8 rows each


def test_old_and_new_files_together_keep_the_new_values(tmp_path):
    # the old file sorts first, so the inferred schema lacks `session` until we name it
    write_partition(tmp_path, "aaa", "train", capture("aaa"), with_capture=False, name="part-0.parquet")
    write_partition(tmp_path, "nuaa", "train", capture(), with_capture=True, name="part-0.parquet")
    index = crops.read_index(tmp_path)
    sessions = column(index, "session")[column(index, "dataset") == "nuaa"]
    assert set(sessions) == {"01", "02"}
    plan = crops.plan_splits(index)
    assert (plan.carved["aaa"]["by"], plan.carved["nuaa"]["by"]) == ("subject", "session")


# -- the readers' columns carry what the plan needs, on real crop files ---------------------------


@pytest.fixture(scope="module")
def crops_dir(tmp_path_factory):
    from tests.fixtures.crops import make_crops_dir

    return make_crops_dir(tmp_path_factory.mktemp("crops"), datasets=("alpha",), splits=("train", "test"),
                          subjects=3, images_per_subject=2)


def rewritten(data, target, change) -> str:
    """A copy of the crops directory with ``change(table)`` applied to every file."""
    shutil.copytree(data.root, target)
    for path in sorted(target.rglob("*.parquet")):
        pq.write_table(change(pq.read_table(path)), path)
    return str(target)


def read_ids(data: str, role: str, plan: crops.SplitPlan) -> set[str]:
    """Ids of one role as the readers select them: READ_COLUMNS batches, then plan.roles (no decoding)."""
    ids: set[str] = set()
    for batch in crops._dataset(data).to_batches(columns=crops.READ_COLUMNS, batch_size=8):
        table = pa.Table.from_batches([batch])
        ids |= set(column(table, "sample_id")[plan.roles(table) == role])
    return ids


def test_reading_crops_without_capture_columns(crops_dir, tmp_path):
    data = rewritten(crops_dir, tmp_path / "old", lambda t: t.drop_columns(list(crops.OPTIONAL_COLUMNS)))
    index = crops.read_index(data)
    plan = crops.plan_splits(index)
    assert plan.carved["alpha"]["by"] == "subject"
    roles, ids = plan.roles(index), column(index, "sample_id")
    for role in crops.ROLES:
        assert read_ids(data, role, plan) == set(ids[roles == role])


def test_reading_crops_holds_out_a_session(crops_dir, tmp_path):
    def add_sessions(table: pa.Table) -> pa.Table:
        # rows come as (live, attack) pairs per image: alternate pairs between two sessions
        sessions = pa.array([f"s{(i // 2) % 2 + 1}" for i in range(table.num_rows)], pa.string())
        return table.set_column(table.schema.get_field_index("session"), "session", sessions)

    data = rewritten(crops_dir, tmp_path / "new", add_sessions)
    index = crops.read_index(data)
    plan = crops.plan_splits(index)
    (held,) = plan.carved["alpha"]["values"]
    train_rows = column(index, "split") == "train"
    dev_ids = set(column(index, "sample_id")[train_rows & (column(index, "session") == held)])
    assert dev_ids and read_ids(data, "dev", plan) == dev_ids
    assert not read_ids(data, "train", plan) & dev_ids


def test_a_choice_holding_two_protocols_of_one_dataset_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "oulu_npu": {"adapter": "oulu_npu", "partition_options": {"protocol": 1, "fold": 1}},
        "oulu_npu.protocol2": {"adapter": "oulu_npu", "partition_options": {"protocol": 2, "fold": 1}},
        "msu": {"adapter": "folder", "partition_options": {}},
        "mine": {"adapter": "folder", "partition_options": {}},  # two folder datasets: not protocols
        "old": {"summary": {}}}))  # written before adapters were recorded
    with pytest.raises(ValueError, match="oulu_npu: oulu_npu, oulu_npu.protocol2.*--datasets"):
        crops.check_one_protocol(tmp_path)
    with pytest.raises(ValueError, match="several protocols"):
        crops.check_one_protocol(tmp_path, ["oulu_npu", "oulu_npu.protocol2", "msu"])
    crops.check_one_protocol(tmp_path, ["oulu_npu.protocol2", "msu", "mine", "old"])
    crops.check_one_protocol(tmp_path / "absent")  # no manifest: nothing to check
