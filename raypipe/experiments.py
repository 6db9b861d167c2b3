"""Experiments that train several models and compare them: the cross-dataset matrix.

``cross_dataset(CrossDatasetConfig(...))`` trains one model per dataset (plus one
fused on all), tests each on every dataset and writes the HTER/FAR/FRR matrix
(the AttackNet paper's Table 4) as CSV, Markdown and JSON. Rows train one after another
(each training spreads over the cluster's workers); each cell is a Ray task (one CPU),
submitted as soon as its row's model exists, so a row's cells score while the next row
trains and the cells of a row run side by side where the cluster has CPUs. A failing cell
is raised; cells still running are left to finish (see :func:`raypipe.runtime.run_at_most`). It sits beside
:mod:`raypipe.pipeline`: both chain the stage modules (train, evaluate) and neither
stage imports it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raypipe.config import CrossDatasetConfig, EvaluateConfig, TrainConfig
from raypipe.crops import read_index
from raypipe.evaluate import evaluate_model
from raypipe.models.store import configure_tracking, ensure_experiment

log = logging.getLogger(__name__)

FUSED = "fused"

TrainFn = Callable[[list[str]], dict[str, Any]]


def train_config(config: CrossDatasetConfig, datasets: list[str]) -> TrainConfig:
    """The training of one model of the matrix: the template ``config.train`` on ``datasets``
    (nothing registered; carving settings shared with the evaluation of its cells)."""
    return dataclasses.replace(config.train, data=config.data, datasets=list(datasets),
                               experiment=config.experiment, register=None, promote=False)


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
    import ray

    from raypipe.runtime import init_ray

    started = time.perf_counter()
    splits = evaluation_splits(config.data, config.datasets)  # fail before any training
    train = train_fn or ray_train_fn(config, address)
    init_ray(address)
    portable = for_tasks(config)
    cell_task = ray.remote(num_cpus=1, max_retries=0)(_cell)
    models: dict[str, dict[str, Any]] = {}
    pending: dict[tuple[str, str], Any] = {}
    for name, sets in training_sets(config).items():
        models[name] = _train_one(train, name, sets)
        # its cells score in Ray tasks while the next row trains
        pending.update({(name, d): cell_task.remote(portable, models[name]["model_uri"], d, splits[d])
                        for d in config.datasets})
    cells = {name: {d: ray.get(pending[(name, d)]) for d in config.datasets} for name in models}
    notes = [f"{d}: no test rows, evaluated on its dev split (models trained on {d} chose their threshold "
             "there, so their cells are optimistic)"
             for d, s in splits.items() if s != "test"]
    result = {"data": config.data, "datasets": list(config.datasets), "model": config.train.model,
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


def for_tasks(config: CrossDatasetConfig) -> CrossDatasetConfig:
    """The config with the driver's MLflow store and data path made explicit: a task's worker
    process has neither the driver's environment nor its working directory."""
    from raypipe import storage
    from raypipe.models.store import default_tracking_uri

    train = dataclasses.replace(config.train, tracking_uri=config.train.tracking_uri or default_tracking_uri())
    return dataclasses.replace(config, data=storage.absolute(config.data), train=train)


def _cell(config: CrossDatasetConfig, model_uri: str, dataset: str, split: str) -> dict[str, Any]:
    """One cell: the row's model scored on one dataset (a Ray task)."""
    evaluation = evaluate_model(EvaluateConfig(
        model_uri=model_uri, data=config.data, split=split, datasets=[dataset], experiment=config.experiment,
        log_to_mlflow=config.log_to_mlflow and config.log_cells, batch_size=config.batch_size,
        dev_by=config.train.dev_by, dev_fraction=config.train.dev_fraction, seed=config.train.seed,
        gradcam_per_class=4 if config.log_cells else 0, tracking_uri=config.train.tracking_uri))
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

    configure_tracking(config.train.tracking_uri)
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name="cross-dataset") as run:
        mlflow.set_tag("raypipe.kind", "cross-dataset")
        params = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("train", "datasets")}
        params.update(datasets=",".join(config.datasets),
                      train=json.dumps(dataclasses.asdict(config.train), default=str)[:5000])
        params.update({f"run_id.{name}": m["run_id"] for name, m in result["models"].items()})
        mlflow.log_params(params)
        mlflow.log_metrics({f"{key}/{row['train']}/{row['test']}": float(row[key])
                            for row in matrix_rows(result) for key in ("hter", "far", "frr")
                            if row[key] is not None})
        for path in result["files"]:
            mlflow.log_artifact(path)
        return run.info.run_id
