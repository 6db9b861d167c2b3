"""Reading the Parquet face crops for training and evaluation.

Roles: every crop row gets a role ``train``, ``dev`` or ``test``. A dataset's own
dev split is used when it has one; otherwise dev is carved from its train split
(:func:`plan_splits`): by default a held-out capture *session* when the rows record
sessions, else held-out *subjects*; a random fraction of rows is available but
leaky (see ``dev_by``).

Readers over the same plan: Ray Data (:func:`ray_dataset` for scoring,
:func:`streaming_dataset` for Ray Train: files read and decoded anew each epoch, nothing
materialised) and plain pyarrow (:func:`iter_local_batches`, for the plain-PyTorch
baseline, tests and small evaluations without Ray).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raypipe import storage
from raypipe.datasets.base import ATTACK, LIVE
from raypipe.face import box_in_crop, cut_face_regions, decode_crop

if TYPE_CHECKING:  # raypipe.models imports torch; the readers below must not (see InputCut)
    from raypipe.models.base import ModelSpec

INDEX_COLUMNS = ["sample_id", "dataset", "split", "subject", "label", "attack_type",
                 "session", "device", "pai_type", "pipeline_version"]
#: columns newer than the first crops: Parquet written before them reads them as nulls.
OPTIONAL_COLUMNS = {"session": pa.string(), "device": pa.string(), "pai_type": pa.string()}
ROLES = ("train", "dev", "test")
DEV_BY = ("auto", "session", "subject", "fraction")
#: the column each carve's rule reads.
CARVE_COLUMNS = {"session": "session", "subject": "subject", "fraction": "sample_id"}


def crops_path(data: str | Path) -> str:
    """``DIR/crops`` when DIR is a preprocess output directory, else DIR itself (local or a URI)."""
    location = storage.absolute(data)
    crops = storage.join(location, "crops")
    return crops if storage.is_dir(crops) else location


def _dataset(data: str | Path) -> pads.Dataset:
    path = crops_path(data)
    if not storage.is_dir(path):
        raise FileNotFoundError(f"no face crops at {storage.redact(str(data))}: expected the --out directory "
                                "of `raypipe preprocess` (with crops/ inside)")
    dataset = pads.dataset(path, format="parquet", partitioning="hive")
    return dataset.replace_schema(with_optional_columns(dataset.schema))


def with_optional_columns(schema: pa.Schema) -> pa.Schema:
    """``schema`` plus the :data:`OPTIONAL_COLUMNS` it lacks.

    A dataset's schema is inferred from one file: naming the optional columns makes
    older files read as nulls, and keeps newer files' values when the first file is old.
    """
    missing = [pa.field(name, kind) for name, kind in OPTIONAL_COLUMNS.items() if name not in schema.names]
    return pa.schema([*schema, *missing]) if missing else schema


def read_index(data: str | Path, datasets: list[str] | None = None,
               columns: list[str] | None = None) -> pa.Table:
    """Every crop row's metadata, without the crop bytes (cheap): :data:`INDEX_COLUMNS`, or
    ``columns`` (evaluation adds ``rel_path`` and ``frame_index``, a frame's video)."""
    table = _dataset(data).to_table(columns=columns or INDEX_COLUMNS)
    if datasets:
        table = table.filter(pa.compute.is_in(table["dataset"], pa.array(datasets)))
    if table.num_rows == 0:
        raise ValueError(f"no face crops under {crops_path(data)} (datasets={datasets})")
    return table


def check_one_protocol(data: str | Path, datasets: list[str] | None = None) -> None:
    """Refuse a choice of datasets that holds two protocols/folds of one dataset (stored side
    by side under their own names, see :func:`raypipe.preprocess.stored_name`): one
    protocol's test subjects are another's training subjects. ``--datasets`` picks one."""
    manifest = storage.read_json(storage.join(storage.absolute(data), "manifest.json"), default={})
    protocols: dict[str, dict[str, str]] = {}
    for name, entry in manifest.items():
        if isinstance(entry, dict) and entry.get("adapter") and (not datasets or name in datasets):
            options = json.dumps(entry.get("partition_options") or {}, sort_keys=True)
            protocols.setdefault(entry["adapter"], {}).setdefault(options, name)
    mixed = {adapter: sorted(names.values()) for adapter, names in protocols.items() if len(names) > 1}
    if mixed:
        listed = "; ".join(f"{adapter}: {', '.join(names)}" for adapter, names in sorted(mixed.items()))
        raise ValueError(f"{storage.redact(str(data))} holds several protocols of one dataset ({listed}): "
                         "choose one with --datasets")


def _rank(seed: int, dataset: str, value: str) -> str:
    """Seeded pseudo-random order of subjects, sessions or rows (the subject formula predates the others)."""
    return hashlib.sha1(f"{seed}:{dataset}:{value}".encode()).hexdigest()


@dataclass
class SplitPlan:
    """Each row's role: its split, except the train rows a dataset's carve moves to dev.

    ``carved`` maps each dataset without a dev split of its own to the rule that carved
    dev out of its train rows, a JSON-able dict:

    - ``{"by": "session", "values": [...], "kept": [...]}``: train rows of a listed session;
    - ``{"by": "subject", "values": [...], "of": n}``: train rows of a listed subject;
    - ``{"by": "fraction", "fraction": f, "seed": s, "cutoff": h, "rows": k, "of": n}``:
      train rows whose seeded hash of ``sample_id`` is <= ``h`` (k of n rows).

    ``note`` says why ``auto`` fell back to subjects. ``own_dev`` lists the datasets
    that keep their own dev split. :meth:`describe` says it all in words.
    """

    carved: dict[str, dict[str, Any]] = field(default_factory=dict)
    own_dev: list[str] = field(default_factory=list)
    dev_by: str = "auto"
    dev_fraction: float = 0.2
    seed: int = 0

    @property
    def carved_dev(self) -> Mapping[str, list[str]]:
        """Read-only ``{dataset: carved sessions or subjects}`` (a fraction carve lists none), for old callers."""
        return MappingProxyType({d: list(c.get("values", ())) for d, c in self.carved.items()})

    def role(self, row: Mapping[str, Any]) -> str:
        """Role of one row (a mapping with ``dataset``, ``split`` and the carve's key column)."""
        carve = self.carved.get(row["dataset"])
        if row["split"] != "train" or carve is None:
            return row["split"]
        return "dev" if _dev_test(carve, row["dataset"])(row.get(CARVE_COLUMNS[carve["by"]])) else "train"

    def roles(self, table: pa.Table) -> np.ndarray:
        """Role of every row of ``table`` (needs ``dataset``, ``split`` and the carves' key columns)."""
        roles = np.array(table["split"].to_pylist(), dtype=object)
        datasets = np.array(table["dataset"].to_pylist(), dtype=object)
        for dataset, carve in self.carved.items():
            rows = np.flatnonzero((datasets == dataset) & (roles == "train"))
            if rows.size:
                values = _key_column(table, carve["by"], dataset).take(pa.array(rows)).to_pylist()
                in_dev = _dev_test(carve, dataset)
                roles[rows[np.fromiter(map(in_dev, values), bool, len(values))]] = "dev"
        return roles.astype(str)

    def describe(self) -> dict[str, str]:
        """``{dataset: "dev = ..."}`` in words, for logs and MLflow."""
        out = {dataset: "dev = its own dev split" for dataset in self.own_dev}
        out.update({dataset: _describe(carve) for dataset, carve in self.carved.items()})
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitPlan:
        return cls(**data)


def _key_column(table: pa.Table, by: str, dataset: str) -> pa.ChunkedArray:
    name = CARVE_COLUMNS[by]
    if name not in table.column_names:
        raise ValueError(f"{dataset}: dev is carved by {by}, but these rows have no {name!r} column")
    return table[name]


def _dev_test(carve: Mapping[str, Any], dataset: str) -> Callable[[Any], bool]:
    """Whether a train row's key value (session, subject or sample id) belongs to dev."""
    if carve["by"] == "fraction":
        seed, cutoff = carve["seed"], carve["cutoff"]
        return lambda sample: sample is not None and _rank(seed, dataset, sample) <= cutoff
    values = set(carve["values"])
    return lambda value: value in values


def _describe(carve: Mapping[str, Any]) -> str:
    if carve["by"] == "session":
        held, kept = carve["values"], carve["kept"]
        return (f"dev = session{'s' * (len(held) > 1)} {', '.join(held)} (held out of train; "
                f"train keeps session{'s' * (len(kept) > 1)} {', '.join(kept)})")
    if carve["by"] == "fraction":
        return (f"dev = a random {carve['fraction']:.0%} of train rows ({carve['rows']} of {carve['of']}; "
                "leaky: same subjects and sessions as train, optimistic)")
    shown = ", ".join(carve["values"][:5]) + (", ..." if len(carve["values"]) > 5 else "")
    note = f"; no session held out: {carve['note']}" if carve.get("note") else ""
    return (f"dev = {len(carve['values'])} of {carve['of']} train subjects ({shown}), carved by subject: "
            f"it shares train's capture sessions{note}")


def plan_splits(index: pa.Table, dev_fraction: float = 0.2, seed: int = 0, dev_by: str = "auto") -> SplitPlan:
    """Plan the roles: a dataset's own dev split when it has one, else dev carved out of its train rows.

    ``dev_by`` chooses the carve for datasets without a dev split:

    - ``"session"``: hold out whole capture sessions of train -- about ``dev_fraction`` of
      them, at least one, never all (of two sessions, the seed picks which one). Only
      sessions with live and attack rows are held out, and train must keep both too;
      fewer than 2 usable sessions is an error.
    - ``"subject"``: hold out ``ceil(dev_fraction * n)`` of the n train subjects; dev
      shares train's capture sessions, so it is easier than an unseen session.
    - ``"fraction"``: a seeded random ``dev_fraction`` of train rows. Leaky (the same
      subjects, sessions, even videos on both sides): the optimistic choice.
    - ``"auto"``: ``session`` when the dataset's train rows record sessions it can
      hold out, else ``subject`` (e.g. crops written before sessions were recorded).

    A dataset without train rows is not planned. Deterministic for a given index and seed.
    """
    if dev_by not in DEV_BY:
        raise ValueError(f"dev_by must be one of {DEV_BY}, got {dev_by!r}")
    if not 0 < dev_fraction < 1:
        raise ValueError(f"dev_fraction must be in (0, 1), got {dev_fraction}")
    plan = SplitPlan(dev_by=dev_by, dev_fraction=dev_fraction, seed=seed)
    for dataset, rows in _rows_by_dataset(index).items():
        if any(r["split"] == "dev" for r in rows):
            plan.own_dev.append(dataset)
            continue
        train = [r for r in rows if r["split"] == "train"]
        if train:
            plan.carved[dataset] = _carve(dataset, train, dev_by, dev_fraction, seed)
    return plan


def _rows_by_dataset(index: pa.Table) -> dict[str, list[dict[str, Any]]]:
    """Planning columns of every row, grouped by dataset (absent columns read as None)."""
    names = ["dataset", "split", "subject", "label", "session", "sample_id"]
    columns = [index[n].to_pylist() if n in index.column_names else [None] * index.num_rows for n in names]
    grouped: dict[str, list[dict[str, Any]]] = {}
    for values in zip(*columns):
        row = dict(zip(names, values))
        grouped.setdefault(row["dataset"], []).append(row)
    return dict(sorted(grouped.items()))


def _carve(dataset: str, train: list[dict[str, Any]], dev_by: str, fraction: float, seed: int) -> dict[str, Any]:
    if dev_by == "fraction":
        return _carve_rows(dataset, train, fraction, seed)
    if dev_by == "subject":
        return _carve_subjects(dataset, train, fraction, seed)
    carve, why_not = _carve_sessions(dataset, train, fraction, seed)
    if carve is not None:
        return carve
    if dev_by == "session":
        raise ValueError(f"{dataset}: cannot hold out a session as dev: {why_not} (use dev_by='subject')")
    return {**_carve_subjects(dataset, train, fraction, seed), "note": why_not}


def _carve_sessions(dataset: str, train: list[dict[str, Any]], fraction: float,
                    seed: int) -> tuple[dict[str, Any] | None, str]:
    """The held-out sessions, or None and why none can be held out."""
    labels: dict[str, set[int]] = {}
    for row in train:
        if row["session"] is not None:
            labels.setdefault(row["session"], set()).add(row["label"])
    if len(labels) < 2:
        found = f"only session {next(iter(labels))}" if labels else "no session"
        return None, f"train rows record {found}"
    ranked = sorted(labels, key=lambda s: _rank(seed, dataset, s))
    count = min(len(ranked) - 1, max(1, int(len(ranked) * fraction + 0.5)))
    # a dev session without both classes cannot calibrate a threshold
    held = [s for s in ranked if labels[s] >= {LIVE, ATTACK}][:count]
    kept_labels = {r["label"] for r in train if r["session"] not in held}
    if not held or not kept_labels >= {LIVE, ATTACK}:
        return None, "no session can be held out with live and attack rows on both sides"
    kept = sorted(set(labels) - set(held))
    return {"by": "session", "values": sorted(held), "kept": kept}, ""


def _carve_subjects(dataset: str, train: list[dict[str, Any]], fraction: float, seed: int) -> dict[str, Any]:
    subjects = sorted({r["subject"] for r in train}, key=lambda s: _rank(seed, dataset, s))
    if len(subjects) < 2:
        raise ValueError(f"{dataset}: no dev split and fewer than 2 train subjects to carve one from")
    count = min(len(subjects) - 1, max(1, math.ceil(len(subjects) * fraction)))
    return {"by": "subject", "values": sorted(subjects[:count]), "of": len(subjects)}


def _carve_rows(dataset: str, train: list[dict[str, Any]], fraction: float, seed: int) -> dict[str, Any]:
    hashes = sorted(_rank(seed, dataset, r["sample_id"]) for r in train)
    if len(hashes) < 2:
        raise ValueError(f"{dataset}: no dev split and fewer than 2 train rows to carve one from")
    count = min(len(hashes) - 1, max(1, math.ceil(len(hashes) * fraction)))
    # a cutoff, not a list of ids: the plan stays small whatever the number of rows
    return {"by": "fraction", "fraction": fraction, "seed": seed, "cutoff": hashes[count - 1],
            "rows": count, "of": len(hashes)}


def role_counts(index: pa.Table, plan: SplitPlan) -> dict[str, dict[str, int]]:
    """{role: {"live": n, "attack": n}} for the MLflow data manifest."""
    roles, labels = plan.roles(index), index["label"].to_numpy()
    return {role: {"live": int(((roles == role) & (labels == 0)).sum()),
                   "attack": int(((roles == role) & (labels == 1)).sum())}
            for role in ROLES if (roles == role).any()}


# --------------------------------------------------------------------------------------
# Decoding (shared by both readers)


def crop_boxes(batch: pa.Table) -> np.ndarray:
    """Each row's detector box in its stored crop's pixels (see :func:`raypipe.face.box_in_crop`)."""
    return np.array([box_in_crop(box, crop_box, size) for box, crop_box, size in
                     zip(batch["box"].to_pylist(), batch["crop_box"].to_pylist(), batch["crop_size"].to_pylist())],
                    dtype=np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class InputCut:
    """A model's face region as plain values: its input size and its spec's crop.

    What the crop readers hold instead of the :class:`~raypipe.models.ModelSpec`: unpickling a
    ModelSpec imports ``raypipe.models`` and with it torch, and Ray Data starts fresh reader
    processes every epoch of a streamed training, where importing torch cost 4-10 s each.
    Calling it is :func:`raypipe.models.model_inputs` (both are
    :func:`raypipe.face.cut_face_regions` with the spec's values; a test holds them equal).
    """

    size: int
    scale: float
    shape: str

    @classmethod
    def of(cls, spec: ModelSpec | InputCut) -> InputCut:
        return spec if isinstance(spec, InputCut) else cls(spec.input_size, spec.crop.scale, spec.crop.shape)

    def __call__(self, crops: np.ndarray, boxes_in_crop: np.ndarray) -> np.ndarray:
        return cut_face_regions(crops, boxes_in_crop, self.size, self.scale, self.shape)


class DecodeCrops:
    """Rows of one role -> {"image": the model's input (uint8 SxSx3, S = its input size), "label", ...}.

    The image is cut from the stored crop by :class:`InputCut`, i.e.
    :func:`raypipe.models.model_inputs`, the very function serving calls on the crops it makes.
    """

    def __init__(self, role: str, plan: SplitPlan, spec: ModelSpec | InputCut) -> None:
        self.role, self.plan, self.cut = role, plan, InputCut.of(spec)

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        keep = self.plan.roles(batch) == self.role
        batch = batch.filter(pa.array(keep))
        crops = batch["crop"].to_pylist()
        images = (self.cut(np.stack([decode_crop(c) for c in crops]), crop_boxes(batch)) if crops
                  else np.zeros((0, self.cut.size, self.cut.size, 3), np.uint8))
        return {"image": images, "label": batch["label"].to_numpy().astype(np.int64),
                "attack_type": np.array(batch["attack_type"].to_pylist(), dtype=object),
                "sample_id": np.array(batch["sample_id"].to_pylist(), dtype=object)}


# session: what a session-carved plan reads to give each row its role (see SplitPlan.roles)
READ_COLUMNS = ["sample_id", "dataset", "split", "subject", "label", "attack_type", "session",
                "crop", "box", "crop_box", "crop_size"]


def ray_dataset(data: str | Path, role: str, plan: SplitPlan, spec: ModelSpec,
                datasets: list[str] | None = None, batch_size: int = 64):
    """A Ray Dataset of one role, decoded and resized once (callers may materialize it)."""
    import ray

    ds = ray.data.read_parquet(crops_path(data), columns=READ_COLUMNS,
                               partitioning=ray.data.datasource.Partitioning("hive"))
    if datasets:
        ds = ds.filter(lambda row: row["dataset"] in datasets)
    return ds.map_batches(DecodeCrops, fn_constructor_args=(role, plan, InputCut.of(spec)), batch_format="pyarrow",
                          batch_size=batch_size, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                          num_cpus=0.5)


def role_files(data: str | Path, role: str, plan: SplitPlan, datasets: list[str] | None = None) -> list[dict[str, str]]:
    """The crop files that can hold rows of ``role``, each with the dataset and split its
    partition folders name: a role's own split, plus the train files of the datasets whose
    dev is carved from train (for ``dev``). Sorted, so the list is the same on every call."""
    wanted = {"train": {"train"}, "dev": {"dev"}, "test": {"test"}}[role]
    found = []
    for dataset_dir in storage.list_dirs(crops_path(data)):
        dataset = dataset_dir.rsplit("/", 1)[-1].split("=", 1)[-1]
        if datasets and dataset not in datasets:
            continue
        splits = wanted | ({"train"} if role == "dev" and dataset in plan.carved else set())
        for split_dir in storage.list_dirs(dataset_dir):
            split = split_dir.rsplit("/", 1)[-1].split("=", 1)[-1]
            if split in splits:
                found += [{"file": storage.join(split_dir, f.rsplit("/", 1)[-1]), "dataset": dataset, "split": split}
                          for f in storage.list_files(split_dir, ".parquet")]
    return found


def read_role_files(batch: dict[str, np.ndarray], role: str, plan: SplitPlan,
                    spec: ModelSpec | InputCut) -> dict[str, np.ndarray]:
    """Ray Data ``map_batches`` function: the listed files' rows of ``role``, decoded into
    model inputs (:class:`DecodeCrops`). The files lack their partition columns; they are
    added from the listing."""
    decode, parts = DecodeCrops(role, plan, spec), []
    for location, dataset, split in zip(batch["file"], batch["dataset"], batch["split"]):
        filesystem, path = storage.resolve(str(location))
        present = set(pq.read_schema(path, filesystem=filesystem).names)
        table = pq.read_table(path, columns=[c for c in READ_COLUMNS if c in present], filesystem=filesystem)
        table = table.append_column("dataset", pa.array([str(dataset)] * table.num_rows, pa.string()))
        table = table.append_column("split", pa.array([str(split)] * table.num_rows, pa.string()))
        parts.append(decode(table))
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


#: at most this many file readers per streaming dataset: they ask for no CPU (the training
#: workers hold the cluster's), so the cap is what keeps them from crowding those out.
READ_TASKS = 2


def streaming_dataset(data: str | Path, role: str, plan: SplitPlan, spec: ModelSpec,
                      datasets: list[str] | None = None, seed: int | None = None,
                      files: list[dict[str, str]] | None = None):
    """A Ray Dataset of one role for Ray Train, streamed: each epoch lists nothing, reads the
    crop files (in a new seeded order per epoch when ``seed`` is given) and decodes them
    into model inputs; nothing whose size grows with the data is materialised. ``files``:
    a part of :func:`role_files` (e.g. one rank's share of dev), else all of them.

    One block per file, read by tasks that ask for no CPU (at most :data:`READ_TASKS` at
    once): on a machine whose CPUs the training workers hold, readers that asked for one
    would never be scheduled. Files are listed here, on the driver, not by a Ray Data
    listing task, for the same reason."""
    import ray
    from ray.data import RandomSeedConfig

    files = role_files(data, role, plan, datasets) if files is None else files
    if not files:
        raise ValueError(f"no crop files for role {role!r} under {storage.redact(crops_path(data))}")
    dataset = ray.data.from_items(files, override_num_blocks=len(files))
    if seed is not None:
        dataset = dataset.randomize_block_order(seed=RandomSeedConfig(seed=seed, reseed_after_execution=True))
    return dataset.map_batches(read_role_files, fn_kwargs={"role": role, "plan": plan, "spec": InputCut.of(spec)},
                               batch_size=1, batch_format="numpy", num_cpus=0,
                               compute=ray.data.TaskPoolStrategy(size=READ_TASKS))


def iter_local_batches(data: str | Path, role: str, plan: SplitPlan, spec: ModelSpec,
                       datasets: list[str] | None = None, batch_size: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """The same decoded batches as :func:`ray_dataset`, read in-process with pyarrow."""
    decode = DecodeCrops(role, plan, spec)
    dataset = _dataset(data)
    scanner_filter = pads.field("dataset").isin(datasets) if datasets else None
    for record_batch in dataset.to_batches(columns=READ_COLUMNS, filter=scanner_filter, batch_size=batch_size):
        out = decode(pa.Table.from_batches([record_batch]))
        if len(out["label"]):
            yield out


def load_role(data: str | Path, role: str, plan: SplitPlan, spec: ModelSpec,
              datasets: list[str] | None = None) -> dict[str, np.ndarray]:
    """A whole role in memory (small data: dev/test scoring, the plain-PyTorch baseline)."""
    parts = list(iter_local_batches(data, role, plan, spec, datasets, batch_size=256))
    if not parts:
        return {"image": np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8),
                "label": np.zeros(0, np.int64), "attack_type": np.array([], object), "sample_id": np.array([], object)}
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def sample_inputs(data: str | Path, spec: ModelSpec, datasets: list[str] | None = None,
                  count: int = 32) -> np.ndarray:
    """Up to ``count`` real model inputs from ``data`` (the first rows of its first split):
    what an ONNX export is checked on against PyTorch."""
    splits = sorted(set(read_index(data, datasets)["split"].to_pylist()))
    images: list[np.ndarray] = []
    for batch in iter_local_batches(data, splits[0], SplitPlan(), spec, datasets, batch_size=count) if splits else ():
        images.append(batch["image"])
        if sum(len(i) for i in images) >= count:
            break
    if not images:
        return np.zeros((0, spec.input_size, spec.input_size, 3), np.uint8)
    return np.concatenate(images)[:count]


def face_settings(data: str | Path, datasets: list[str] | None = None) -> dict | None:
    """The crop settings (:meth:`raypipe.face.FaceConfig.crop_settings`) the data was made with,
    from the preprocess manifest; None for output written before manifests recorded them.

    Raises ValueError when the chosen datasets were cropped with different settings: a model
    trained on a mix could not be served with one face pipeline.
    """
    from raypipe.face import FaceConfig

    manifest = storage.read_json(storage.join(storage.absolute(data), "manifest.json"), default={})
    known = {name: entry["face"] for name, entry in manifest.items() if isinstance(entry, dict) and "face" in entry}
    chosen = [known[name] for name in (datasets or sorted(known)) if name in known]
    settings = {json.dumps(FaceConfig(**face).crop_settings(), sort_keys=True) for face in chosen}
    if len(settings) > 1:
        raise ValueError(f"the datasets under {storage.redact(str(data))} were cropped with different face "
                         f"settings ({sorted(settings)}): preprocess them again with one setting")
    return json.loads(settings.pop()) if settings else None
