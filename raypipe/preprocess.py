"""Ray Data: dataset samples -> face crops -> Parquet (schema: docs/preprocessing.md).

Layout of the output directory::

    OUT/crops/dataset=<name>/split=<split>/*.parquet     one row per face crop
    OUT/rejects/dataset=<name>/split=<split>/*.parquet   one row per input without a crop
    OUT/manifest.json                                    summary of the last run per dataset

Every input ends up in exactly one of the two tables (rows + rejects = inputs): errors
are caught per file inside the actor, so a corrupt file never fails a block and never
drops its neighbours (Ray Data's ``max_errored_blocks`` would drop whole blocks).
A run writes into a staging directory and then swaps in the (dataset, split)
partitions it covers, so re-running over the same output replaces rather than
duplicates, and a crashed run leaves the previous output intact (and its staging, which
``--resume`` continues from).

:func:`carve` writes one protocol's split assignment of a release (OULU-NPU protocol 3,
fold 2) from the crops of the whole release, cropped once: no media is read again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from raypipe import storage
from raypipe.config import PreprocessConfig
from raypipe.datasets import adapter_class, get_adapter
from raypipe.datasets.frames import check_sampling
from raypipe.face import FaceConfig, FaceError, FacePipeline
from raypipe.runtime import init_ray

log = logging.getLogger(__name__)

CROPS_DIR, REJECTS_DIR = "crops", "rejects"

OUTPUT_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
    ("subject", pa.string()), ("label", pa.int8()), ("attack_type", pa.string()),
    ("path", pa.string()), ("rel_path", pa.string()), ("media", pa.string()),
    ("frame_index", pa.int32()), ("session", pa.string()), ("device", pa.string()),
    ("pai_type", pa.string()), ("extras", pa.string()),
    ("crop", pa.binary()), ("crop_format", pa.string()), ("crop_size", pa.int16()),
    ("box", pa.list_(pa.int32())), ("crop_box", pa.list_(pa.int32())),
    ("det_score", pa.float32()), ("keypoints", pa.list_(pa.float32())), ("n_faces", pa.int16()),
    ("source_width", pa.int32()), ("source_height", pa.int32()),
    ("pipeline_version", pa.string()),
    ("status", pa.string()), ("reject_reason", pa.string()), ("reject_message", pa.string()),
])
# session/device/pai_type are nullable: outputs written before they existed lack them,
# and raypipe.crops reads such outputs as nulls.
SAMPLE_COLUMNS = ["sample_id", "dataset", "split", "subject", "label", "attack_type",
                  "path", "rel_path", "media", "frame_index", "session", "device", "pai_type", "extras"]


# --------------------------------------------------------------------------------------
# Per-record work (runs inside the Ray actors; plain Python, testable without Ray)


def read_bytes(path: str) -> bytes:
    """Local path or any URI pyarrow understands (s3://, gs://, hdfs://)."""
    if "://" not in path:
        with open(path, "rb") as handle:
            return handle.read()
    from pyarrow import fs

    filesystem, inner = fs.FileSystem.from_uri(path)
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


def frame_sample_id(record: dict, frame_index: int, namespace: str | None = None) -> str:
    """A frame's id: its video's (``namespace``, the adapter's own dataset name, else the
    record's), relative path and frame index, so a protocol's name never changes the ids."""
    from raypipe.datasets import sample_id

    return sample_id(namespace or record["dataset"], record["rel_path"], frame_index)


class FaceCropper:
    """Ray Data callable class: one FacePipeline (one detector) per actor, reused."""

    def __init__(self, face_config: FaceConfig, frames_per_video: int | None = None, every: int | None = None,
                 namespace: str | None = None) -> None:
        import cv2

        cv2.setNumThreads(1)  # one actor per core: OpenCV's own threads only oversubscribe
        # bad sampling settings fail here, once, not as one reject per video
        self.frames_per_video, self.every = check_sampling(frames_per_video, every)
        self.pipeline = FacePipeline(face_config)
        self.namespace = namespace  # what frame ids are made from (see frame_sample_id)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict] = []
        for record in batch.to_pylist():
            rows.extend(self.process_record(record))
        return pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA)

    def process_record(self, record: dict) -> Iterator[dict]:
        if record["media"] == "image":
            yield self._image_row(record)
        else:
            yield from self._video_rows(record)

    def _image_row(self, record: dict) -> dict:
        try:
            data = read_bytes(record["path"])
        except OSError as exc:
            return reject_row(record, "read_error", f"{type(exc).__name__}: {exc.strerror or exc}")
        return self._crop_row(record, data)

    def _video_rows(self, record: dict) -> Iterator[dict]:
        """One row per sampled frame; an unreadable file is one reject with the video's own id
        (``frame_index`` -1). A cut-off video keeps the frames before the cut as rows and adds
        that reject (``truncated``), so the damage shows in ``by_reason``."""
        from raypipe.datasets.frames import container_truncated, iter_frames

        hdf5_key = json.loads(record["extras"] or "{}").get("hdf5_key")  # configurable HDF5 layouts
        frames = iter_frames(record["path"], record["media"], self.frames_per_video, self.every, hdf5_key=hdf5_key)
        read = 0
        try:  # one bad video never stops the job
            for frame_index, frame in frames:
                read += 1
                frame_record = {**record, "frame_index": frame_index,
                                "sample_id": frame_sample_id(record, frame_index, self.namespace)}
                yield self._crop_row(frame_record, frame)
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one video must not kill the job either
            yield video_reject(record, exc)
            return
        if record["media"] == "video" and container_truncated(record["path"]):
            yield reject_row(record, "truncated", f"{record['path']}: shorter than its container headers say; "
                                                  f"{read} sampled frame(s) read before the cut are rows")

    def _crop_row(self, record: dict, data: Any) -> dict:
        try:
            result = self.pipeline.process(data)
        except FaceError as exc:
            return reject_row(record, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one file must not kill the job
            log.warning("unexpected error on %s: %s", record["rel_path"], type(exc).__name__)
            return reject_row(record, "internal_error", f"{type(exc).__name__}: {exc}")
        primary = result.primary
        config = self.pipeline.config
        return {**record, "crop": self.pipeline.encode(primary.crop), "crop_format": config.crop_format,
                "crop_size": config.crop_size, "box": list(primary.box), "crop_box": list(primary.crop_box),
                "det_score": primary.det_score,
                "keypoints": [c for point in primary.detection.keypoints for c in point],
                "n_faces": len(result.detections), "source_width": result.source_width,
                "source_height": result.source_height, "pipeline_version": self.pipeline.version,
                "status": "ok", "reject_reason": None, "reject_message": None}


def reject_row(record: dict, reason: str, message: str) -> dict:
    return {**record, "status": "rejected", "reject_reason": reason, "reject_message": message[:500]}


def video_reject(record: dict, exc: Exception) -> dict:
    """The reject of a video or HDF5 file whose reading failed: the reader's own reason
    (``empty``, ``truncated``, ``undecodable``, ``read_error``), else ``internal_error``."""
    from raypipe.datasets.frames import FrameReadError

    if isinstance(exc, FrameReadError):
        return reject_row(record, exc.reason, str(exc))
    if isinstance(exc, OSError):
        return reject_row(record, "read_error", f"{type(exc).__name__}: {exc}")
    log.warning("unexpected error on %s: %s", record["rel_path"], type(exc).__name__)
    return reject_row(record, "internal_error", f"{type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------------------
# Driver side


def list_samples(config: PreprocessConfig) -> tuple[list[dict], dict]:
    """Sample records (JSON-able dicts) and the adapter's scan report."""
    adapter = get_adapter(config.dataset, config.root, **config.adapter_options)
    samples = adapter.samples(config.split)
    if config.limit is not None:
        samples = sorted(samples, key=lambda s: s.sample_id)[: config.limit]
    records, name = [], stored_name(config)
    for sample in samples:
        record = sample.to_record()
        record["extras"] = json.dumps(record["extras"], sort_keys=True)
        record["dataset"] = name
        records.append({k: record[k] for k in SAMPLE_COLUMNS})
    return records, adapter.report.summary()


class PartitionConflict(ValueError):
    """The output already holds this dataset name cut by other protocol options (OULU-NPU's
    ``protocol``/``fold``): writing would replace those partitions with rows of another protocol."""


#: adapter options that select *which* samples a split holds (not how they are described):
#: output of one setting must not silently replace output of another.
PARTITION_OPTIONS = ("protocol", "fold")


def stored_name(config: PreprocessConfig) -> str:
    """The dataset name the crops are partitioned (``crops/dataset=NAME/``), indexed and
    selected (``--datasets NAME``) under: ``--name`` when given, else the adapter's name
    followed by its :data:`PARTITION_OPTIONS` that differ from the adapter's defaults
    (``oulu_npu`` for protocol 1, ``oulu_npu.protocol2``, ``oulu_npu.protocol3.fold2``), so
    every protocol/fold of a dataset has partitions of its own in one ``--out``."""
    if config.name:
        return config.name
    adapter = adapter_class(config.dataset)
    chosen = {**adapter.default_options, **config.adapter_options}
    changed = [k for k in PARTITION_OPTIONS if k in chosen and chosen[k] != adapter.default_options.get(k)]
    return sample_namespace(config) + "".join(f".{k}{chosen[k]}" for k in changed)


def sample_namespace(config: PreprocessConfig) -> str:
    """The dataset name the adapter gives its samples (and their ids): its own name, or the
    folder adapter's ``dataset_name`` option."""
    adapter = adapter_class(config.dataset)
    return {**adapter.default_options, **config.adapter_options}.get("dataset_name", adapter.name)


def run_preprocess(config: PreprocessConfig, address: str | None = None) -> dict:
    """Run the whole job; returns the summary dict the CLI prints as one JSON line.

    The crops are written to a staging directory named after the settings (:func:`run_key`),
    then swapped into place. A run that fails keeps its staging, so ``--resume`` continues
    it; a run without ``--resume`` starts that staging over.
    """
    import ray

    started = time.perf_counter()
    records, scan_report = list_samples(config)
    if not records:
        raise ValueError(f"{config.dataset}: no samples for split {config.split!r} under {config.root}")
    out = storage.absolute(config.out)  # local, shared mount or s3://...: workers write there directly
    check_partition_options(out, config)
    init_ray(address)
    staging = storage.join(out, f"_staging-{run_key(config)}")
    done = written_sources(staging) if config.resume else set()
    if not config.resume:
        storage.delete_dir(staging)  # what a failed run of these settings left: start over
    todo = [r for r in records if source_key(r) not in done]
    pipeline_started = time.perf_counter()
    partitions = {(r["dataset"], r["split"]) for r in records}
    try:
        actors = _write_staging(todo, config, staging, ray) if todo else None
        _swap_in(staging, out, partitions)
    except BaseException:
        log.warning("preprocess stopped; what it wrote is kept in %s: rerun with --resume to continue",
                    storage.redact(staging))
        raise
    storage.delete_dir(staging)
    seconds = time.perf_counter() - pipeline_started
    summary = summarize(out, partitions, records, scan_report, seconds, time.perf_counter() - started)
    summary["resumed"] = {"skipped": len(records) - len(todo), "cropped": len(todo)} if config.resume else None
    summary["actors"] = actors
    _write_manifest(out, config, summary)
    return summary


def run_key(config: PreprocessConfig) -> str:
    """A digest of every setting that decides the output rows (not how fast they are made):
    a resumed run only reuses staging written with the same settings."""
    settings = {"dataset": config.dataset, "name": stored_name(config), "root": storage.absolute(config.root),
                "split": config.split,
                "limit": config.limit, "options": config.adapter_options, "face": asdict(config.face),
                "sampling": check_sampling(config.frames_per_video, config.every)}
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def source_key(record: dict) -> tuple[str, str]:
    """What a written row or reject says was done: one image, or one whole video (its frames
    and its reject come from one batch)."""
    return record["dataset"], record["rel_path"]


def written_sources(staging: str) -> set[tuple[str, str]]:
    """The inputs a stopped run finished, read back from its staging Parquet files. A file
    the crash cut short (no footer) is deleted: its inputs are cropped again."""
    filesystem, root = storage.resolve(staging)
    if filesystem.get_file_info(root).type != pafs.FileType.Directory:
        return set()
    done: set[tuple[str, str]] = set()
    for info in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet"):
            continue
        dataset = next(part.split("=", 1)[1] for part in info.path.split("/") if part.startswith("dataset="))
        try:
            table = pq.read_table(info.path, columns=["rel_path"], filesystem=filesystem)
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("resume: dropping an unreadable staging file %s (%s)", info.path, exc)
            filesystem.delete_file(info.path)
            continue
        done |= {(dataset, rel_path) for rel_path in table.column("rel_path").to_pylist()}
    return done


def partition_options(config: PreprocessConfig) -> dict[str, Any]:
    """The adapter's :data:`PARTITION_OPTIONS` in effect (its defaults filled in)."""
    adapter = get_adapter(config.dataset, config.root, **config.adapter_options)
    return {k: v for k, v in adapter.options.items() if k in PARTITION_OPTIONS}


def check_partition_options(out: str, config: PreprocessConfig) -> None:
    """Refuse to replace a dataset's partitions written under other :data:`PARTITION_OPTIONS`
    (OULU-NPU protocol 2 over protocol 1): readers key crops by dataset and split, so two
    protocols cannot share one output. Outputs from before options were recorded pass."""
    name = stored_name(config)
    previous = storage.read_json(storage.join(out, "manifest.json"), default={}).get(name) or {}
    if "partition_options" not in previous:
        return
    before, now = previous["partition_options"], partition_options(config)
    if before != now:
        raise PartitionConflict(
            f"{storage.redact(out)} holds {name} preprocessed with {before}; {now} would replace "
            "its partitions. Give this protocol/fold another --name (or leave --name out), or another --out.")


def pool_size(config: PreprocessConfig, batches: int, capacity: dict[str, float]) -> dict[str, int]:
    """The face-cropper actor pool: ``--workers N`` is a fixed pool of N. Otherwise the pool
    asks at once for the actors the work can use: one per batch, at most ``--max-actors``
    (default: one per CPU the cluster can grow to). Pending actors are what makes the
    autoscaler start nodes; Ray Data lets idle ones go, down to 1, as the inputs run out."""
    if config.workers:
        return {"min": config.workers, "initial": config.workers, "max": config.workers}
    most = config.max_actors or max(1, int(capacity.get("CPU", 1)))
    most = max(1, min(most, batches))
    return {"min": 1, "initial": most, "max": most}


def _write_staging(records: list[dict], config: PreprocessConfig, staging: str, ray) -> dict[str, int]:
    from raypipe.runtime import cluster_capacity

    has_video = any(r["media"] != "image" for r in records)
    batch_size = 1 if has_video else config.batch_size  # one video at a time per actor
    batches = -(-len(records) // batch_size)
    actors = pool_size(config, batches, cluster_capacity(cpu_work=True))
    blocks = max(actors["max"] * 4, len(records) // max(batch_size * 4, 1))
    dataset = ray.data.from_items(records, override_num_blocks=min(blocks, len(records)))
    crops = dataset.map_batches(
        FaceCropper,
        fn_constructor_args=(config.face, config.frames_per_video, config.every, sample_namespace(config)),
        batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=actors["min"], max_size=actors["max"],
                                           initial_size=actors["initial"]),
        num_cpus=config.cpus_per_worker,
    )
    filesystem, staging_path = storage.resolve(staging)
    crops.write_parquet(staging_path, filesystem=filesystem, partition_cols=["status", "dataset", "split"],
                        ray_remote_args={"num_cpus": 0.25})
    return actors


def _partition_dir(base: str, dataset: str, split: str) -> str:
    return storage.join(base, f"dataset={dataset}", f"split={split}")


def _swap_in(staging: str, out: str, partitions: set[tuple[str, str]]) -> None:
    """Replace each covered (dataset, split) partition of crops/ and rejects/ by the new one."""
    for status, table in (("ok", CROPS_DIR), ("rejected", REJECTS_DIR)):
        for dataset, split in partitions:
            target = _partition_dir(storage.join(out, table), dataset, split)
            storage.delete_dir(target)
            source = _partition_dir(storage.join(staging, f"status={status}"), dataset, split)
            if storage.is_dir(source):
                storage.move_dir(source, target)


def _read_partition(base: str, dataset: str, split: str, columns: list[str]) -> pa.Table:
    directory = _partition_dir(base, dataset, split)
    files = storage.list_files(directory, ".parquet")
    if not files:
        return pa.table({c: pa.array([], type=OUTPUT_SCHEMA.field(c).type) for c in columns})
    filesystem, _ = storage.resolve(directory)
    return pa.concat_tables([pq.read_table(f, columns=columns, filesystem=filesystem) for f in files])


def summarize(out: str, partitions: set[tuple[str, str]], records: list[dict], scan_report: dict,
              seconds: float, total_seconds: float) -> dict:
    """Counts read back from the written files, with the rows + rejects = inputs check."""
    row_ids, reject_ids, reasons, sources = [], [], Counter(), set()
    for dataset, split in sorted(partitions):
        rows = _read_partition(storage.join(out, CROPS_DIR), dataset, split, ["sample_id", "rel_path"])
        rejects = _read_partition(storage.join(out, REJECTS_DIR), dataset, split,
                                  ["sample_id", "rel_path", "reject_reason"])
        row_ids += rows.column("sample_id").to_pylist()
        reject_ids += rejects.column("sample_id").to_pylist()
        reasons.update(rejects.column("reject_reason").to_pylist())
        sources |= {(dataset, p) for t in (rows, rejects) for p in t.column("rel_path").to_pylist()}
    image_ids = {r["sample_id"] for r in records if r["media"] == "image"}
    # a video has no fixed id set (its frames depend on its length), but it must leave a row or a reject
    lost_videos = {(r["dataset"], r["rel_path"]) for r in records if r["media"] != "image"} - sources
    written = row_ids + reject_ids
    if len(set(written)) != len(written) or not image_ids <= set(written) or lost_videos:
        raise RuntimeError(f"output check failed: {len(written)} written ids, {len(set(written))} distinct, "
                           f"{len(image_ids - set(written))} image inputs and {len(lost_videos)} videos "
                           "unaccounted for")
    inputs = len(written)
    return {"inputs": inputs, "rows": len(row_ids), "rejected": len(reject_ids),
            "by_reason": dict(sorted(reasons.items())), "seconds": round(seconds, 3),
            "images_per_second": round(inputs / seconds, 2) if seconds > 0 else None,
            "output": storage.redact(out), "samples": len(records),
            "videos": sum(1 for r in records if r["media"] != "image"),
            "listed_but_missing": scan_report, "total_seconds": round(total_seconds, 3)}


def _write_manifest(out: str, config: PreprocessConfig, summary: dict, carved_from: str | None = None) -> None:
    path = storage.join(out, "manifest.json")
    manifest = storage.read_json(path, default={})
    face = asdict(config.face)
    frames_per_video, every = check_sampling(config.frames_per_video, config.every)  # the sampling applied
    name = stored_name(config)
    manifest[name] = {"summary": summary, "split": config.split, "root": storage.redact(config.root),
                      "face": face, "pipeline_version": config.face.version(),
                      "frames_per_video": frames_per_video, "every": every,
                      "adapter": config.dataset, "partition_options": partition_options(config)}
    if carved_from:
        manifest[name]["carved_from"] = storage.redact(carved_from)
    storage.write_json(path, manifest)


# --------------------------------------------------------------------------------------
# Carving: a protocol's splits from a release cropped once


class ReleaseMismatch(ValueError):
    """The release folder was not cropped the way the carved output asks for (another root,
    face settings or frame sampling, or not every video of the release)."""


def check_release(release: str, config: PreprocessConfig, release_options: dict[str, Any]) -> None:
    """Refuse to carve from a folder that is not ``config``'s dataset cropped whole, from the
    same root, with the same face pipeline and frame sampling."""
    name = release_name(config, release_options)
    entry = storage.read_json(storage.join(release, "manifest.json"), default={}).get(name)
    if not entry:
        raise ReleaseMismatch(f"{storage.redact(release)} holds no {name} crops to carve from")
    frames_per_video, every = check_sampling(config.frames_per_video, config.every)
    expected = {"split": "all", "root": storage.redact(config.root), "face": asdict(config.face),
                "frames_per_video": frames_per_video, "every": every}
    wanted = get_adapter(config.dataset, config.root, **release_options).options
    expected["partition_options"] = {k: v for k, v in wanted.items() if k in PARTITION_OPTIONS}
    differ = {k: (entry.get(k), v) for k, v in expected.items() if entry.get(k) != v}
    if differ:
        details = "; ".join(f"{k}: release has {have!r}, wanted {want!r}" for k, (have, want) in differ.items())
        raise ReleaseMismatch(f"cannot carve {config.dataset} from {storage.redact(release)}: {details}")


def release_name(config: PreprocessConfig, release_options: dict[str, Any]) -> str:
    """The name the whole release is stored under: ``config.name`` when given, else the
    adapter's name with the release options (``oulu_npu.protocol0``)."""
    return stored_name(replace(config, adapter_options=dict(release_options)))


def carve(release: str, config: PreprocessConfig, release_options: dict[str, Any]) -> dict:
    """Write ``config``'s samples into ``config.out`` from the crops and rejects of the whole
    release in ``release`` (preprocessed with ``release_options``, e.g. OULU-NPU protocol 0).

    A row keeps its crop (face, box, frame) and takes its sample's columns (split, label,
    extras, ...) from ``config``'s adapter: sample ids do not depend on the split, so the
    rows are the ones a preprocessing run with ``config`` would write. The output goes
    through the same staging swap, the same rows + rejects = inputs check and the same
    manifest (with ``carved_from``) as :func:`run_preprocess`; it returns that summary."""
    started = time.perf_counter()
    records, scan_report = list_samples(config)
    if not records:
        raise ValueError(f"{config.dataset}: no samples for split {config.split!r} under {config.root}")
    release, out = storage.absolute(release), storage.absolute(config.out)
    check_release(release, config, release_options)
    check_partition_options(out, config)
    staging = storage.join(out, f"_staging-{run_key(config)}")
    storage.delete_dir(staging)
    samples = pa.Table.from_pylist(records)
    for status, table in (("ok", CROPS_DIR), ("rejected", REJECTS_DIR)):
        rows = _carved_rows(_read_dataset(storage.join(release, table), release_name(config, release_options)),
                            samples)
        for (dataset, split), part in _by_partition(rows, samples).items():
            target = _partition_dir(storage.join(staging, f"status={status}"), dataset, split)
            filesystem, path = storage.resolve(storage.join(target, "carved-0.parquet"))
            filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pq.write_table(part, path, filesystem=filesystem)
    partitions = {(r["dataset"], r["split"]) for r in records}
    _swap_in(staging, out, partitions)
    storage.delete_dir(staging)
    seconds = time.perf_counter() - started
    summary = summarize(out, partitions, records, scan_report, seconds, seconds)
    summary["carved_from"] = storage.redact(release)
    _write_manifest(out, config, summary, carved_from=release)
    return summary


def _read_dataset(base: str, dataset: str) -> pa.Table | None:
    """Every split's rows of ``dataset`` under ``base`` (crops/ or rejects/), without the
    partition columns (the files do not hold them)."""
    splits = storage.join(base, f"dataset={dataset}")
    files = [f for split in storage.list_dirs(splits) for f in storage.list_files(split, ".parquet")]
    if not files:
        return None
    filesystem, _ = storage.resolve(base)
    return pa.concat_tables([pq.read_table(f, filesystem=filesystem) for f in files], promote_options="default")


def _carved_rows(rows: pa.Table | None, samples: pa.Table) -> pa.Table | None:
    """The release's rows of the sampled media, their sample columns replaced by the samples'
    (all but the frame's own ``sample_id`` and ``frame_index``)."""
    if rows is None:
        return None
    at = pc.index_in(rows.column("rel_path"), value_set=samples.column("rel_path"))
    keep = pc.is_valid(at)
    rows, at = rows.filter(keep), at.filter(keep)
    for name in SAMPLE_COLUMNS:
        if name in ("sample_id", "frame_index", "dataset", "split") or name not in rows.column_names:
            continue
        column = samples.column(name).take(at).cast(rows.schema.field(name).type)
        rows = rows.set_column(rows.column_names.index(name), name, column)
    return rows


def _by_partition(rows: pa.Table | None, samples: pa.Table) -> dict[tuple[str, str], pa.Table]:
    """Rows grouped by the (dataset, split) their sample is assigned to."""
    if rows is None or rows.num_rows == 0:
        return {}
    at = pc.index_in(rows.column("rel_path"), value_set=samples.column("rel_path"))
    keys = list(zip(samples.column("dataset").take(at).to_pylist(), samples.column("split").take(at).to_pylist()))
    parts: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(keys):
        parts.setdefault(key, []).append(i)
    return {key: rows.take(pa.array(indices)) for key, indices in parts.items()}


def contact_sheet(out: str | Path, path: str | Path, n: int = 16, seed: int = 0, columns: int = 4) -> dict:
    """A PNG grid of ``n`` random crops (half live, half attack when possible), labelled.

    For eyeballing that crops show the subject's face (not a background person or hands).
    """
    import cv2
    import numpy as np
    import pyarrow.dataset as pads

    from raypipe.face import decode_crop

    table = pads.dataset(storage.join(storage.absolute(out), CROPS_DIR), format="parquet", partitioning="hive").to_table(
        columns=["sample_id", "label", "attack_type", "subject", "crop"])
    rng = np.random.default_rng(seed)
    labels = np.asarray(table["label"])
    picks = []
    for label in (0, 1):
        candidates = np.flatnonzero(labels == label)
        picks += rng.choice(candidates, size=min(n // 2, len(candidates)), replace=False).tolist()
    tiles = []
    for i in picks:
        tile = cv2.cvtColor(decode_crop(table["crop"][i].as_py()), cv2.COLOR_RGB2BGR)
        caption = f"{table['attack_type'][i].as_py()} {table['subject'][i].as_py()}"
        cv2.putText(tile, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
        tiles.append(tile)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[r:r + columns]) for r in range(0, len(tiles), columns)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(rows))
    return {"path": str(path), "crops": len(picks)}
