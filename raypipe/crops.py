"""Reading the Parquet face crops for training and evaluation.

Roles: every crop row gets a role ``train``, ``dev`` or ``test``. A dataset's own
dev split is used when it has one; otherwise dev is carved from its train split
*by subject* (never by frame or image, which would leak identities into dev).

Two readers over the same plan: Ray Data (:func:`ray_dataset`, for Ray Train and
large data) and plain pyarrow (:func:`iter_local_batches`, for the plain-PyTorch
baseline, tests and small evaluations without Ray).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from raypipe import storage
from raypipe.models.base import ModelSpec
from raypipe.models.transforms import decode_crop

INDEX_COLUMNS = ["sample_id", "dataset", "split", "subject", "label", "attack_type", "pipeline_version"]
ROLES = ("train", "dev", "test")


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
    return pads.dataset(path, format="parquet", partitioning="hive")


def read_index(data: str | Path, datasets: list[str] | None = None) -> pa.Table:
    """Every crop row's metadata, without the crop bytes (cheap)."""
    table = _dataset(data).to_table(columns=INDEX_COLUMNS)
    if datasets:
        table = table.filter(pa.compute.is_in(table["dataset"], pa.array(datasets)))
    if table.num_rows == 0:
        raise ValueError(f"no face crops under {crops_path(data)} (datasets={datasets})")
    return table


def _subject_rank(seed: int, dataset: str, subject: str) -> str:
    return hashlib.sha1(f"{seed}:{dataset}:{subject}".encode()).hexdigest()


@dataclass
class SplitPlan:
    """Which (dataset, subject) pairs of each dataset's train split are carved into dev."""

    carved_dev: dict[str, list[str]] = field(default_factory=dict)
    dev_fraction: float = 0.2
    seed: int = 0

    def role(self, dataset: str, split: str, subject: str) -> str:
        if split == "train" and subject in self.carved_dev.get(dataset, ()):
            return "dev"
        return split

    def roles(self, table: pa.Table) -> np.ndarray:
        return np.array([self.role(d, s, u) for d, s, u in zip(table["dataset"].to_pylist(),
                         table["split"].to_pylist(), table["subject"].to_pylist())])


def plan_splits(index: pa.Table, dev_fraction: float = 0.2, seed: int = 0) -> SplitPlan:
    """Carve dev subjects from train for datasets that have no dev rows."""
    plan = SplitPlan(dev_fraction=dev_fraction, seed=seed)
    rows = index.select(["dataset", "split", "subject"]).to_pylist()
    for dataset in sorted({r["dataset"] for r in rows}):
        if any(r["dataset"] == dataset and r["split"] == "dev" for r in rows):
            continue
        subjects = sorted({r["subject"] for r in rows if r["dataset"] == dataset and r["split"] == "train"},
                          key=lambda s: _subject_rank(seed, dataset, s))
        if len(subjects) < 2:
            raise ValueError(f"{dataset}: no dev split and fewer than 2 train subjects to carve one from")
        count = min(len(subjects) - 1, max(1, math.ceil(len(subjects) * dev_fraction)))
        plan.carved_dev[dataset] = sorted(subjects[:count])
    return plan


def role_counts(index: pa.Table, plan: SplitPlan) -> dict[str, dict[str, int]]:
    """{role: {"live": n, "attack": n}} for the MLflow data manifest."""
    roles, labels = plan.roles(index), index["label"].to_numpy()
    return {role: {"live": int(((roles == role) & (labels == 0)).sum()),
                   "attack": int(((roles == role) & (labels == 1)).sum())}
            for role in ROLES if (roles == role).any()}


# --------------------------------------------------------------------------------------
# Decoding (shared by both readers)


def resize_batch(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """uint8 BxHxWx3 -> uint8 Bx S x S x3 with the exact resize serving applies (FaceTransform)."""
    from raypipe.models.transforms import build_transforms

    resize = build_transforms(spec, None, train=False).resize
    tensor = torch.from_numpy(np.ascontiguousarray(images)).movedim(-1, -3)
    return resize(tensor).movedim(-3, -1).contiguous().numpy()


class DecodeCrops:
    """Rows of one role -> {"image": uint8 SxSx3 at the model's size, "label", "attack_type", ...}."""

    def __init__(self, role: str, plan: SplitPlan, spec: ModelSpec) -> None:
        self.role, self.plan, self.spec = role, plan, spec

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        keep = self.plan.roles(batch) == self.role
        batch = batch.filter(pa.array(keep))
        crops = batch["crop"].to_pylist()
        images = (resize_batch(np.stack([decode_crop(c) for c in crops]), self.spec) if crops
                  else np.zeros((0, self.spec.input_size, self.spec.input_size, 3), np.uint8))
        return {"image": images, "label": batch["label"].to_numpy().astype(np.int64),
                "attack_type": np.array(batch["attack_type"].to_pylist(), dtype=object),
                "sample_id": np.array(batch["sample_id"].to_pylist(), dtype=object)}


READ_COLUMNS = ["sample_id", "dataset", "split", "subject", "label", "attack_type", "crop"]


def ray_dataset(data: str | Path, role: str, plan: SplitPlan, spec: ModelSpec,
                datasets: list[str] | None = None, batch_size: int = 64):
    """A Ray Dataset of one role, decoded and resized once (callers may materialize it)."""
    import ray

    ds = ray.data.read_parquet(crops_path(data), columns=READ_COLUMNS,
                               partitioning=ray.data.datasource.Partitioning("hive"))
    if datasets:
        ds = ds.filter(lambda row: row["dataset"] in datasets)
    return ds.map_batches(DecodeCrops, fn_constructor_args=(role, plan, spec), batch_format="pyarrow",
                          batch_size=batch_size, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2),
                          num_cpus=0.5)


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
