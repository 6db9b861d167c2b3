"""Score a registered model on Parquet face crops; the cross-dataset matrix.

``evaluate_model(EvaluateConfig(model_uri, data, split))`` loads a model from the
MLflow registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/ID/model`` or a bare run id), scores the crops of one split with the
model's **stored** threshold (chosen on dev at training time, never here) and
returns every metric of :mod:`raypipe.metrics` as one flat JSON-able dict
(``apcer_per_type`` is the one nested entry). With ``log_to_mlflow`` it also logs
a new run with the metrics JSON, confusion matrix, ROC, DET and a Grad-CAM grid.

Scoring is plain in-process PyTorch over :func:`raypipe.crops.iter_local_batches`
(no Ray): evaluation sets here are thousands of crops, which one process scores
in seconds, and a Ray cluster would only add start-up time.

Splits are the *roles* of :mod:`raypipe.crops`, planned exactly as training plans them:

* ``test``: the dataset's test rows.
* ``dev``: its own dev rows, or, for a dataset without a dev split, the subjects
  carved out of train by :func:`raypipe.crops.plan_splits` (same ``dev_fraction``
  and ``seed`` as training, so the very subjects training calibrated on).
* ``train``: train rows **minus** the carved-dev subjects (what the model was fitted
  on). A dataset with fewer than two train subjects cannot be carved; all of its
  train rows count as train then (``carved_dev`` in the result says what was carved).

``cross_dataset(CrossDatasetConfig(...))`` trains one model per dataset (plus one
fused on all), tests each on every dataset and writes the HTER/FAR/FRR matrix
(the AttackNet paper's Table 4) as CSV, Markdown and JSON.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from raypipe import metrics
from raypipe.crops import ROLES, SplitPlan, iter_local_batches, plan_splits, read_index
from raypipe.models import ModelSpec, build_transforms
from raypipe.models.store import LoadedModel, configure_tracking, ensure_experiment, load_model

log = logging.getLogger(__name__)

FUSED = "fused"


@dataclass
class EvaluateConfig:
    model_uri: str
    data: str
    split: str = "test"
    datasets: list[str] | None = None
    experiment: str = "raypipe-eval"
    log_to_mlflow: bool = True
    batch_size: int = 256
    dev_fraction: float = 0.2  # must match training's, for split="dev"/"train" on carved datasets
    seed: int = 0
    out: str | None = None  # also write metrics.json and the PNGs here
    gradcam_per_class: int = 4  # 0: no Grad-CAM grid
    device: str = "auto"  # "auto": CUDA when present, else CPU


# ----------------------------------------------------------------------------- scoring


def spoof_probabilities(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    """Softmax probability of the attack class: the score every raypipe threshold applies to."""
    with torch.no_grad():
        return torch.softmax(model(inputs).float(), dim=1)[:, metrics.ATTACK].cpu().numpy()


def resolve_device(name: str = "auto") -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def score(model: nn.Module, spec: ModelSpec, batches: Iterable[dict[str, np.ndarray]],
          device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spoof scores for decoded crop batches (``image`` uint8 BxSxSx3, ``label``, ``attack_type``).

    Returns ``(labels int64, scores float64, attack_types object)``, in batch order;
    empty arrays when there are no batches. No Ray: any iterable of batches works.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    transform = build_transforms(spec, None, train=False)
    model.eval()
    labels, scores, types = [], [], []
    for batch in batches:
        # uint8 to the device first: 4x less to copy than float, and the transform runs there
        images = torch.from_numpy(np.ascontiguousarray(batch["image"])).movedim(-1, -3).to(device)
        scores.append(spoof_probabilities(model, transform(images)).astype(np.float64))
        labels.append(np.asarray(batch["label"], dtype=np.int64))
        types.append(np.asarray(batch["attack_type"], dtype=object))
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, object)
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(types)


class ClassSample:
    """Keeps the first ``n`` images of each class from batches passing through (for Grad-CAM)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.images: dict[int, list[np.ndarray]] = {metrics.LIVE: [], metrics.ATTACK: []}

    def tap(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            for cls, kept in self.images.items():
                need = self.n - len(kept)
                if need > 0:
                    kept.extend(batch["image"][np.asarray(batch["label"]) == cls][:need])
            yield batch

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        images = self.images[metrics.LIVE] + self.images[metrics.ATTACK]
        labels = [metrics.LIVE] * len(self.images[metrics.LIVE]) + [metrics.ATTACK] * len(self.images[metrics.ATTACK])
        return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8), np.asarray(labels, np.int64)


# ----------------------------------------------------------------------------- planning


def split_plan(index: pa.Table, split: str, dev_fraction: float = 0.2, seed: int = 0) -> SplitPlan:
    """The role plan for ``split``, dataset by dataset (carving is per dataset anyway).

    A dataset that cannot be carved (no dev split, < 2 train subjects) is left uncarved:
    it has no dev rows, and all its train rows count as train. ``test`` needs no carving.
    """
    if split not in ROLES:
        raise ValueError(f"split must be one of {ROLES}, got {split!r}")
    plan = SplitPlan(dev_fraction=dev_fraction, seed=seed)
    if split == "test":
        return plan
    for dataset in sorted(set(index["dataset"].to_pylist())):
        rows = index.filter(pc.equal(index["dataset"], dataset))
        try:
            plan.carved_dev.update(plan_splits(rows, dev_fraction, seed).carved_dev)
        except ValueError:
            log.warning("%s: no dev split and fewer than 2 train subjects: no dev carved", dataset)
    return plan


def _role_datasets(index: pa.Table, plan: SplitPlan, role: str) -> list[str]:
    return sorted(set(np.asarray(index["dataset"].to_pylist(), dtype=object)[plan.roles(index) == role]))


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(config: EvaluateConfig) -> dict[str, Any]:
    """Score ``config.model_uri`` on one split of ``config.data``; see the module docstring.

    Raises ValueError when the split has no crops (for the chosen datasets).
    """
    if config.split not in ROLES:  # before loading anything
        raise ValueError(f"split must be one of {ROLES}, got {config.split!r}")
    started = time.perf_counter()
    configure_tracking()
    loaded = load_model(config.model_uri, device=resolve_device(config.device))
    index = read_index(config.data, config.datasets)
    plan = split_plan(index, config.split, config.dev_fraction, config.seed)
    sample = ClassSample(config.gradcam_per_class)
    batches = iter_local_batches(config.data, config.split, plan, loaded.spec, config.datasets, config.batch_size)
    labels, scores, attack_types = score(loaded.model, loaded.spec, sample.tap(batches))
    if labels.size == 0:
        raise ValueError(f"no crops in split {config.split!r} under {config.data} (datasets={config.datasets})")
    result = _result(config, loaded, index, plan, labels, scores, attack_types)
    result["score_seconds"] = round(time.perf_counter() - started, 3)  # loading + scoring, no plots
    if config.log_to_mlflow or config.out:
        with _artifact_dir(config.out) as directory:
            if config.log_to_mlflow:
                result["mlflow_run_id"] = _log_evaluation(config, loaded, result, labels, scores, sample, directory)
            else:
                write_artifacts(directory, result, labels, scores, loaded, sample)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _result(config: EvaluateConfig, loaded: LoadedModel, index: pa.Table, plan: SplitPlan,
            labels: np.ndarray, scores: np.ndarray, attack_types: np.ndarray) -> dict[str, Any]:
    data_versions = sorted(set(index["pipeline_version"].to_pylist()) - {None})
    model_version = loaded.tags.get("pipeline_version")
    if model_version and data_versions and data_versions != [model_version]:
        log.warning("model trained on crops %s, evaluated on crops %s", model_version, data_versions)
    out: dict[str, Any] = metrics.compute_all(labels, scores, loaded.threshold, attack_types)
    out.update({
        "model_uri": config.model_uri, "model_name": loaded.name, "model_version": loaded.version,
        "model_run_id": loaded.run_id, "architecture": loaded.spec.name,
        "data": str(config.data), "split": config.split,
        "datasets": _role_datasets(index, plan, config.split), "n": int(labels.size),
        "carved_dev": {d: len(s) for d, s in plan.carved_dev.items()} if config.split != "test" else {},
        "model_pipeline_version": model_version, "data_pipeline_versions": data_versions,
        "mlflow_run_id": None,
    })
    return out


@contextmanager
def _artifact_dir(out: str | None) -> Iterator[Path]:
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="raypipe-eval-") as tmp:
            yield Path(tmp)


def write_artifacts(directory: Path, result: dict[str, Any], labels: np.ndarray, scores: np.ndarray,
                    loaded: LoadedModel, sample: ClassSample | None = None) -> list[Path]:
    """metrics.json, confusion_matrix.png, roc.png, det.png and (with a sample) gradcam.png."""
    from raypipe import plots

    paths = [directory / "metrics.json"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    paths.append(plots.confusion_matrix_figure(labels, scores, loaded.threshold, directory / "confusion_matrix.png"))
    paths.append(plots.roc_figure(labels, scores, directory / "roc.png"))
    paths.append(plots.det_figure(labels, scores, directory / "det.png"))
    if sample is not None and sample.n > 0:
        from raypipe.explain import gradcam_grid

        images, image_labels = sample.arrays()
        if image_labels.size:
            paths.append(gradcam_grid(loaded.model, loaded.spec, images, image_labels, directory / "gradcam.png",
                                      n_per_class=sample.n, threshold=loaded.threshold))
    return paths


_METRIC_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a result, ``apcer_per_type`` flattened to ``apcer_type_<type>``."""
    flat = {k: v for k, v in result.items() if k != "apcer_per_type"}
    flat.update({f"apcer_type_{_METRIC_KEY.sub('_', str(t))}": v for t, v in result.get("apcer_per_type", {}).items()})
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _log_evaluation(config: EvaluateConfig, loaded: LoadedModel, result: dict[str, Any], labels: np.ndarray,
                    scores: np.ndarray, sample: ClassSample, directory: Path) -> str:
    import mlflow

    run_name = f"eval-{loaded.name}-v{loaded.version or 'run'}-{config.split}"
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name=run_name) as run:
        result["mlflow_run_id"] = run.info.run_id
        mlflow.set_tags({"raypipe.kind": "evaluation", "raypipe.model_uri": config.model_uri,
                         "raypipe.model_run_id": loaded.run_id or ""})
        mlflow.log_params({
            "model_uri": config.model_uri, "model_name": loaded.name, "model_version": loaded.version,
            "architecture": loaded.spec.name, "threshold": loaded.threshold, "data": config.data,
            "split": config.split, "datasets": ",".join(result["datasets"]), "batch_size": config.batch_size,
            "dev_fraction": config.dev_fraction, "seed": config.seed})
        mlflow.log_metrics(numeric_metrics(result))
        write_artifacts(directory, result, labels, scores, loaded, sample)
        mlflow.log_artifacts(str(directory))
        return run.info.run_id


# ----------------------------------------------------------------------------- cross-dataset


@dataclass
class CrossDatasetConfig:
    data: str
    datasets: list[str]
    model: str = "attacknet"
    epochs: int = 100
    workers: int = 2
    loss: str | None = None  # None: TrainConfig's default
    out: str = "cross_dataset"
    experiment: str = "raypipe-cross-dataset"
    fused: bool = True  # also train one model on all datasets together
    train_kwargs: dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields
    batch_size: int = 256
    dev_fraction: float = 0.2  # passed to training too, so carved dev subjects agree
    seed: int = 0
    log_to_mlflow: bool = True
    log_cells: bool = False  # also log one evaluation run (with plots) per cell


TrainFn = Callable[[list[str]], dict[str, Any]]


def train_config(config: CrossDatasetConfig, datasets: list[str]) -> Any:
    """The :class:`raypipe.train.TrainConfig` for one model of the matrix (nothing registered)."""
    from raypipe.train import TrainConfig

    # dev_fraction/seed shared so a dataset evaluated on its (carved) dev is carved the same way here
    fields = {"data": config.data, "datasets": list(datasets), "model": config.model, "epochs": config.epochs,
              "workers": config.workers, "experiment": config.experiment, "register": None,
              "dev_fraction": config.dev_fraction, "seed": config.seed}
    if config.loss is not None:
        fields["loss"] = config.loss
    return TrainConfig(**{**fields, **config.train_kwargs})


def ray_train_fn(config: CrossDatasetConfig, address: str | None = None) -> TrainFn:
    """The default trainer: ``run_training`` (Ray Train) on the given datasets."""

    def train(datasets: list[str]) -> dict[str, Any]:
        from raypipe.train import run_training

        return run_training(train_config(config, datasets), address=address)

    return train


def evaluation_splits(data: str, datasets: list[str]) -> dict[str, str]:
    """Per dataset: "test", or "dev" when it has no test rows (its dev or carved dev)."""
    index = read_index(data, datasets)
    present = set(zip(index["dataset"].to_pylist(), index["split"].to_pylist()))
    missing = [d for d in datasets if not any(name == d for name, _ in present)]
    if missing:
        raise ValueError(f"no crops for datasets {missing} under {data}")
    return {d: "test" if (d, "test") in present else "dev" for d in datasets}


def training_sets(config: CrossDatasetConfig) -> dict[str, list[str]]:
    """Row name -> datasets trained on: each dataset alone, then ``fused`` (all) when asked."""
    if not config.datasets:
        raise ValueError("cross-dataset needs at least one dataset")
    if FUSED in config.datasets:
        raise ValueError(f"a dataset may not be called {FUSED!r} (the fused model's row)")
    sets = {d: [d] for d in config.datasets}
    if config.fused and len(config.datasets) > 1:
        sets[FUSED] = list(config.datasets)
    return sets


CELL_KEYS = ("hter", "far", "frr", "apcer", "bpcer", "acer", "eer", "auc", "n_live", "n_attack", "threshold")


def cross_dataset(config: CrossDatasetConfig, address: str | None = None,
                  train_fn: TrainFn | None = None) -> dict[str, Any]:
    """Train on each dataset (and fused), test on every dataset; write and log the matrix.

    ``train_fn(datasets) -> {"run_id", "model_uri", "threshold", ...}`` trains one model;
    the default is Ray Train through :func:`raypipe.train.run_training`. Returns
    ``{"datasets", "training_sets", "test_splits", "models", "cells", "notes", "files", ...}``
    where ``cells[train][test]`` holds HTER, FAR, FRR (and more) of that pair.
    """
    started = time.perf_counter()
    splits = evaluation_splits(config.data, config.datasets)  # fail before any training
    train = train_fn or ray_train_fn(config, address)
    models = {name: _train_one(train, name, sets) for name, sets in training_sets(config).items()}
    cells = {name: {d: _cell(config, model["model_uri"], d, splits[d]) for d in config.datasets}
             for name, model in models.items()}
    notes = [f"{d}: no test rows, evaluated on its dev split (models trained on {d} chose their threshold "
             "there, so their cells are optimistic)"
             for d, s in splits.items() if s != "test"]
    result = {"data": config.data, "datasets": list(config.datasets), "model": config.model,
              "training_sets": {name: m["datasets"] for name, m in models.items()}, "test_splits": splits,
              "models": models, "cells": cells, "notes": notes, "mlflow_run_id": None}
    result["files"] = [str(p) for p in write_matrix(Path(config.out), result)]
    if config.log_to_mlflow:
        result["mlflow_run_id"] = _log_matrix(config, result)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


_LOADABLE = re.compile(r"models:/[^/@]+(/\d+|@[\w-]+)|runs:/.+")


def _train_one(train: TrainFn, name: str, datasets: list[str]) -> dict[str, Any]:
    log.info("cross-dataset: training %s on %s", name, datasets)
    out = train(list(datasets))
    uri = out.get("model_uri")
    # An unregistered MLflow 3 model is "models:/m-<id>", which load_model does not take: use the run
    uri = uri if uri and _LOADABLE.fullmatch(uri) else out["run_id"]
    return {"datasets": list(datasets), "run_id": out.get("run_id"), "model_uri": uri,
            "threshold": out.get("threshold"), "epochs_run": out.get("epochs_run"),
            "dev_hter": (out.get("dev") or {}).get("hter")}


def _cell(config: CrossDatasetConfig, model_uri: str, dataset: str, split: str) -> dict[str, Any]:
    evaluation = evaluate_model(EvaluateConfig(
        model_uri=model_uri, data=config.data, split=split, datasets=[dataset], experiment=config.experiment,
        log_to_mlflow=config.log_to_mlflow and config.log_cells, batch_size=config.batch_size,
        dev_fraction=config.dev_fraction, seed=config.seed, gradcam_per_class=4 if config.log_cells else 0))
    return {"split": split, **{k: evaluation.get(k) for k in CELL_KEYS}, "mlflow_run_id": evaluation["mlflow_run_id"]}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def matrix_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Long format, one row per (trained on, tested on) pair, in matrix order."""
    return [{"train": name, "test": test, **cell}
            for name, row in result["cells"].items() for test, cell in row.items()]


def matrix_markdown(result: dict[str, Any]) -> str:
    """Table 4 style (Train | Test | HTER | FAR | FRR, in %) then the HTER matrix at a glance."""
    dev = "†"
    lines = ["| Train | Test | HTER (%) | FAR (%) | FRR (%) |", "|---|---|---:|---:|---:|"]
    for row in matrix_rows(result):
        mark = dev if row["split"] != "test" else ""
        lines.append(f"| {row['train']} | {row['test']}{mark} | {_pct(row['hter'])} | {_pct(row['far'])} "
                     f"| {_pct(row['frr'])} |")
    tests = result["datasets"]
    lines += ["", "HTER (%), rows: trained on, columns: tested on", "",
              "| train \\ test | " + " | ".join(tests) + " |", "|---|" + "---:|" * len(tests)]
    for name, row in result["cells"].items():
        lines.append(f"| {name} | " + " | ".join(_pct(row[t]["hter"]) for t in tests) + " |")
    if result["notes"]:
        lines += [""] + [f"{dev} {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def write_matrix(out: Path, result: dict[str, Any]) -> list[Path]:
    """cross_dataset.csv (long format), cross_dataset.md and cross_dataset.json under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = matrix_rows(result)
    csv_path, md_path, json_path = out / "cross_dataset.csv", out / "cross_dataset.md", out / "cross_dataset.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(matrix_markdown(result))
    json_path.write_text(json.dumps(result, indent=2, default=str))
    return [csv_path, md_path, json_path]


def _log_matrix(config: CrossDatasetConfig, result: dict[str, Any]) -> str:
    import mlflow

    configure_tracking()
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="cross-dataset") as run:
        mlflow.set_tag("raypipe.kind", "cross-dataset")
        params = {k: v for k, v in asdict(config).items() if k not in ("train_kwargs", "datasets")}
        params.update(datasets=",".join(config.datasets), train_kwargs=json.dumps(config.train_kwargs, default=str))
        params.update({f"run_id.{name}": m["run_id"] for name, m in result["models"].items()})
        mlflow.log_params(params)
        mlflow.log_metrics({f"{key}/{row['train']}/{row['test']}": float(row[key])
                            for row in matrix_rows(result) for key in ("hter", "far", "frr")
                            if row[key] is not None})
        for path in result["files"]:
            mlflow.log_artifact(path)
        return run.info.run_id
