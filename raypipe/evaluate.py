"""Score a registered model on Parquet face crops and report the field's metrics.

``evaluate_model(EvaluateConfig(model_uri, data, split))`` loads a model from the
MLflow registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/ID/model`` or a bare run id), scores the crops of one split with the
model's **stored** threshold (chosen on dev at training time, never here) and
returns every metric of :mod:`raypipe.metrics` as one flat JSON-able dict
(``apcer_per_type`` is the one nested entry). With ``log_to_mlflow`` it also logs
a new run with the metrics JSON, confusion matrix, ROC, DET and a Grad-CAM grid.

Scoring is :class:`raypipe.predict.Predictor` (the one scoring path of training,
evaluation and serving) over :func:`raypipe.crops.iter_local_batches`, in process
(no Ray): evaluation sets here are thousands of crops, which one process scores in
seconds, and a Ray cluster would only add start-up time.

``threshold`` re-chooses the operating point at evaluation time: a number is used as
is; a rule (``eer``, ``apcer:T``) is applied to the model's scores on the data's
**dev** split (never on the split being evaluated, unless that is dev itself).

Splits are the *roles* of :mod:`raypipe.crops`, planned exactly as training plans them:

* ``test``: the dataset's test rows.
* ``dev``: its own dev rows, or, for a dataset without a dev split, the sessions,
  subjects or rows carved out of train by :func:`raypipe.crops.plan_splits` (same
  ``dev_by``, ``dev_fraction`` and ``seed`` as training, so the very rows training
  calibrated on).
* ``train``: train rows **minus** the carved dev (what the model was fitted on). A
  dataset that cannot be carved keeps all its train rows as train (``dev_rule`` in the
  result says, per dataset, what was carved).

The cross-dataset experiment, which trains models, lives in :mod:`raypipe.experiments`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raypipe import metrics
from raypipe.config import EvaluateConfig
from raypipe.crops import ROLES, SplitPlan, iter_local_batches, plan_splits, read_index
from raypipe.labels import ATTACK, LIVE
from raypipe.models.store import LoadedModel, configure_tracking, ensure_experiment, load_model
from raypipe.predict import Predictor, Scored

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "evaluate_model", "numeric_metrics", "split_plan", "write_artifacts"]


# ----------------------------------------------------------------------------- scoring


class ClassSample:
    """Keeps the first ``n`` images of each class from batches passing through (for Grad-CAM)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.images: dict[int, list[np.ndarray]] = {LIVE: [], ATTACK: []}

    def tap(self, batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            for cls, kept in self.images.items():
                need = self.n - len(kept)
                if need > 0:
                    kept.extend(batch["image"][np.asarray(batch["label"]) == cls][:need])
            yield batch

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        images = self.images[LIVE] + self.images[ATTACK]
        labels = [LIVE] * len(self.images[LIVE]) + [ATTACK] * len(self.images[ATTACK])
        return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8), np.asarray(labels, np.int64)


# ----------------------------------------------------------------------------- planning


def split_plan(index: pa.Table, split: str, config: EvaluateConfig) -> SplitPlan:
    """The role plan for ``split``, dataset by dataset (carving is per dataset anyway), with
    training's carving settings (``dev_by``, ``dev_fraction``, ``seed`` of ``config``).

    A dataset that cannot be carved (e.g. fewer than two train subjects) is left uncarved:
    it has no dev rows, and all its train rows count as train. ``test`` needs no carving.
    """
    if split not in ROLES:
        raise ValueError(f"split must be one of {ROLES}, got {split!r}")
    plan = SplitPlan(dev_by=config.dev_by, dev_fraction=config.dev_fraction, seed=config.seed)
    if split == "test":
        return plan
    for dataset in sorted(set(index["dataset"].to_pylist())):
        rows = index.filter(pc.equal(index["dataset"], dataset))
        try:
            one = plan_splits(rows, config.dev_fraction, config.seed, config.dev_by)
        except ValueError as exc:
            log.warning("%s: no dev carved (%s)", dataset, exc)
            continue
        plan.carved.update(one.carved)
        plan.own_dev.extend(one.own_dev)
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
    if config.threshold is not None:
        metrics.parse_threshold_rule(config.threshold)
    started = time.perf_counter()
    configure_tracking(config.tracking_uri)
    loaded = load_model(config.model_uri)
    predictor = Predictor(loaded.model, loaded.spec, config.device)
    index = read_index(config.data, config.datasets)
    plan = split_plan(index, config.split, config)
    sample = ClassSample(config.gradcam_per_class)
    scored = predictor.score_batches(sample.tap(_batches(config, config.split, plan, loaded)))
    if scored.labels.size == 0:
        raise ValueError(f"no crops in split {config.split!r} under {config.data} (datasets={config.datasets})")
    threshold, threshold_source = operating_threshold(config, loaded, predictor, index, scored)
    loaded.threshold = threshold
    result = _result(config, loaded, index, plan, scored)
    result["threshold_source"] = threshold_source
    result["score_seconds"] = round(time.perf_counter() - started, 3)  # loading + scoring, no plots
    if config.log_to_mlflow or config.out:
        with _artifact_dir(config.out) as directory:
            if config.log_to_mlflow:
                result["mlflow_run_id"] = _log_evaluation(config, loaded, result, scored, sample, directory)
            else:
                write_artifacts(directory, result, scored.labels, scored.scores, loaded, sample)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _batches(config: EvaluateConfig, role: str, plan: SplitPlan, loaded: LoadedModel) -> Iterator[dict]:
    return iter_local_batches(config.data, role, plan, loaded.spec, config.datasets, config.batch_size)


def operating_threshold(config: EvaluateConfig, loaded: LoadedModel, predictor: Predictor, index: pa.Table,
                        scored: Scored) -> tuple[float, str]:
    """(threshold, where it came from): the model's stored one, a fixed number, or a rule
    applied to the dev split's scores (the evaluated split's own when that is dev)."""
    rule = config.threshold
    if rule is None:
        return loaded.threshold, "model"
    kind, value = metrics.parse_threshold_rule(rule)
    if kind == "fixed":
        return float(value), "fixed"
    if config.split == "dev":
        dev = scored
    else:
        dev_plan = split_plan(index, "dev", config)
        dev = predictor.score_batches(_batches(config, "dev", dev_plan, loaded))
        if dev.labels.size == 0:
            raise ValueError(f"threshold rule {rule!r} needs a dev split to choose on, and {config.data} has none "
                             "(give a number instead)")
    return metrics.choose_threshold(dev.labels, dev.scores, rule, dev.attack_types), f"{rule} on dev"


def _result(config: EvaluateConfig, loaded: LoadedModel, index: pa.Table, plan: SplitPlan,
            scored: Scored) -> dict[str, Any]:
    data_versions = sorted(set(index["pipeline_version"].to_pylist()) - {None})
    model_version = loaded.tags.get("pipeline_version")
    if model_version and data_versions and data_versions != [model_version]:
        log.warning("model trained on crops %s, evaluated on crops %s", model_version, data_versions)
    out: dict[str, Any] = metrics.compute_all(scored.labels, scored.scores, loaded.threshold, scored.attack_types)
    out.update({
        "model_uri": config.model_uri, "model_name": loaded.name, "model_version": loaded.version,
        "model_run_id": loaded.run_id, "architecture": loaded.spec.name,
        "data": str(config.data), "split": config.split,
        "datasets": _role_datasets(index, plan, config.split), "n": int(scored.labels.size),
        "carved_dev": {d: len(s) for d, s in plan.carved_dev.items()} if config.split != "test" else {},
        "dev_rule": plan.describe() if config.split != "test" else {},
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


def _log_evaluation(config: EvaluateConfig, loaded: LoadedModel, result: dict[str, Any], scored: Scored,
                    sample: ClassSample, directory: Path) -> str:
    import mlflow

    run_name = f"eval-{loaded.name}-v{loaded.version or 'run'}-{config.split}"
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name=run_name) as run:
        result["mlflow_run_id"] = run.info.run_id
        mlflow.set_tags({"raypipe.kind": "evaluation", "raypipe.model_uri": config.model_uri,
                         "raypipe.model_run_id": loaded.run_id or ""})
        mlflow.log_params({
            "model_uri": config.model_uri, "model_name": loaded.name, "model_version": loaded.version,
            "architecture": loaded.spec.name, "threshold": loaded.threshold,
            "threshold_source": result["threshold_source"], "data": config.data,
            "split": config.split, "datasets": ",".join(result["datasets"]), "batch_size": config.batch_size,
            "dev_by": config.dev_by, "dev_fraction": config.dev_fraction, "seed": config.seed})
        mlflow.log_metrics(numeric_metrics(result))
        write_artifacts(directory, result, scored.labels, scored.scores, loaded, sample)
        mlflow.log_artifacts(str(directory))
        return run.info.run_id
