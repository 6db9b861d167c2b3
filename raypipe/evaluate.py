"""Score a registered model on Parquet face crops and report the field's metrics.

``evaluate_model(EvaluateConfig(model_uri, data, split))`` loads a model from the
MLflow registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/ID/model`` or a bare run id), scores the crops of one split with the
model's **stored** threshold (chosen on dev at training time, never here) and
returns every metric of :mod:`raypipe.metrics` as one JSON-able dict: the frame-level
(per crop) figures flat, ``apcer_per_type`` nested, the ISO/IEC 30107-3 figures per PAI
species (the rows' ``pai_type``) in ``iso``, and, when the data has video frames, the same
figures per video (score = mean, median or max of its frames', ``video_score``) in
``video`` (None for still images). With ``log_to_mlflow`` it also logs a new run with the
metrics (sections flattened: ``iso_*``, ``video_*``), metrics JSON, a Markdown report
(frames beside videos), the score table, confusion matrix, ROC, DET and a Grad-CAM grid.

Scoring is :class:`raypipe.predict.Predictor` (the one scoring path of training,
evaluation and serving) over :func:`raypipe.crops.iter_local_batches`, in process
(no Ray) by default: evaluation sets here are thousands of crops, which one process
scores in seconds. With ``actors`` > 0 the same decoding and scoring run as a Ray Data
pipeline over an actor pool (a GPU each with ``gpu``; :func:`score_on_actors`) and only
the scores come back to be reduced to metrics here: for test sets of a CelebA-Spoof size.

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
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raypipe import metrics
from raypipe.config import EvaluateConfig
from raypipe.crops import (INDEX_COLUMNS, ROLES, SplitPlan, check_one_protocol, iter_local_batches, plan_splits,
                           read_index)
from raypipe.labels import ATTACK, LIVE
from raypipe.models.store import LoadedModel, configure_tracking, ensure_experiment, load_model
from raypipe.predict import Predictor, Scored

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "evaluate_model", "frame_table", "numeric_metrics", "report_markdown", "split_plan",
           "video_section", "write_artifacts"]

#: what a scored crop needs besides the index to find its video: (dataset, rel_path) is the video,
#: frame_index >= 0 marks a frame of one (-1: a still image).
FRAME_COLUMNS = ["rel_path", "frame_index"]


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

    def full(self) -> bool:
        return all(len(kept) >= self.n for kept in self.images.values())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        images = self.images[LIVE] + self.images[ATTACK]
        labels = [LIVE] * len(self.images[LIVE]) + [ATTACK] * len(self.images[ATTACK])
        return np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8), np.asarray(labels, np.int64)


def tap_sample_ids(batches: Iterable[dict[str, np.ndarray]], ids: list[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Passes batches through, appending each one's ``sample_id`` to ``ids``: the scores come
    back in batch order, so the concatenated ids name the scored rows (their video, species)."""
    for batch in batches:
        ids.append(np.asarray(batch["sample_id"], dtype=object))
        yield batch


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
    if config.video_score not in metrics.VIDEO_SCORE_RULES:
        raise ValueError(f"video_score must be one of {metrics.VIDEO_SCORE_RULES}, got {config.video_score!r}")
    check_one_protocol(config.data, config.datasets)
    started = time.perf_counter()
    configure_tracking(config.tracking_uri)
    loaded = load_model(config.model_uri)
    predictor = Predictor(loaded.model, loaded.spec, config.device)
    index = read_index(config.data, config.datasets, columns=[*INDEX_COLUMNS, *FRAME_COLUMNS])
    plan = split_plan(index, config.split, config)
    sample, ids = ClassSample(config.gradcam_per_class), []
    if config.actors > 0:
        scored, sample_ids = score_on_actors(config, config.split, plan, loaded)
        ids.append(sample_ids)
        for _ in sample.tap(_batches(config, config.split, plan, loaded)):  # Grad-CAM crops only
            if sample.full():
                break
    else:
        scored = predictor.score_batches(tap_sample_ids(sample.tap(_batches(config, config.split, plan, loaded)), ids))
    if scored.labels.size == 0:
        raise ValueError(f"no crops in split {config.split!r} under {config.data} (datasets={config.datasets})")
    threshold, threshold_source = operating_threshold(config, loaded, predictor, index, scored)
    loaded.threshold = threshold
    frames = frame_table(index, np.concatenate(ids), scored)
    result = _result(config, loaded, index, plan, frames)
    result["threshold_source"] = threshold_source
    _log_summary(result)
    result["score_seconds"] = round(time.perf_counter() - started, 3)  # loading + scoring, no plots
    if config.log_to_mlflow or config.out:
        with _artifact_dir(config.out) as directory:
            if config.log_to_mlflow:
                result["mlflow_run_id"] = _log_evaluation(config, loaded, result, frames, sample, directory)
            else:
                write_artifacts(directory, result, scored.labels, scored.scores, loaded, sample, frames)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


class ScoringActor:
    """A Ray Data actor: the registry model, loaded once per actor, scoring decoded batches."""

    def __init__(self, model_uri: str, tracking_uri: str, device: str) -> None:
        configure_tracking(tracking_uri)
        loaded = load_model(model_uri)
        self.predictor = Predictor(loaded.model, loaded.spec, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"sample_id": batch["sample_id"], "label": batch["label"], "attack_type": batch["attack_type"],
                "score": self.predictor.score_inputs(batch["image"]) if len(batch["label"]) else np.zeros(0)}


def score_on_actors(config: EvaluateConfig, role: str, plan: SplitPlan,
                    loaded: LoadedModel) -> tuple[Scored, np.ndarray]:
    """(scores, their sample ids): decoding and scoring as a Ray Data pipeline over an actor
    pool of up to ``config.actors`` (a GPU each with ``config.gpu``); only the scores come back."""
    import ray

    from raypipe.crops import ray_dataset
    from raypipe.runtime import init_ray

    init_ray(config.address)
    tracking_uri = configure_tracking(config.tracking_uri)
    decoded = ray_dataset(config.data, role, plan, loaded.spec, config.datasets, config.batch_size)
    scored = decoded.map_batches(
        ScoringActor, fn_constructor_args=(loaded.uri, tracking_uri, "cuda" if config.gpu else "cpu"),
        batch_size=config.batch_size, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=config.actors),
        num_gpus=1 if config.gpu else 0, num_cpus=0 if config.gpu else 0.5)
    parts = list(scored.iter_batches(batch_format="numpy", batch_size=None))
    parts = [p for p in parts if len(p["label"])]
    if not parts:
        return Scored(np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(0, object)), np.zeros(0, object)
    join = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return (Scored(join["label"].astype(np.int64), join["score"].astype(np.float64),
                   join["attack_type"].astype(object)), join["sample_id"].astype(object))


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


def frame_table(index: pa.Table, sample_ids: np.ndarray, scored: Scored) -> pd.DataFrame:
    """The score table, one row per scored crop in scoring order: ``sample_id``, ``label``,
    ``score``, ``attack_type``, ``species`` (the row's ``pai_type``), ``video``
    (``dataset/rel_path``: the frames of one video share it, a still image has its own) and
    ``frame_index`` (-1 for a still image)."""
    meta = (index.select(["sample_id", "dataset", "rel_path", "frame_index", "pai_type"]).to_pandas()
            .drop_duplicates("sample_id"))
    frames = pd.DataFrame({"sample_id": sample_ids, "label": scored.labels, "score": scored.scores,
                           "attack_type": scored.attack_types})
    frames = frames.merge(meta, on="sample_id", how="left", validate="many_to_one")  # keeps the scoring order
    frames["video"] = frames["dataset"].astype(str) + "/" + frames["rel_path"].astype(str)
    return frames.rename(columns={"pai_type": "species"}).drop(columns=["dataset", "rel_path"])


def video_section(frames: pd.DataFrame, threshold: float, rule: str) -> dict[str, Any] | None:
    """Every metric over videos (score = ``rule`` of its frames' scores, :func:`metrics.video_scores`)
    at the same threshold, with ``rule``, ``n_videos`` and ``n_frames``; None when no scored crop
    is a video frame (image data: the frame-level figures are the per-sample ones). Still images
    scored together with videos count as one-frame videos."""
    if not bool((frames["frame_index"].fillna(-1) >= 0).any()):
        return None
    videos = metrics.video_scores(frames[["video", "score", "label", "attack_type", "species"]], rule)
    out: dict[str, Any] = {"rule": rule, "n_videos": len(videos), "n_frames": int(videos["n_frames"].sum())}
    out.update(metrics.compute_all(videos["label"].to_numpy(np.int64), videos["score"].to_numpy(np.float64),
                                   threshold, videos["attack_type"].to_numpy(object),
                                   videos["species"].to_numpy(object)))
    return out


def _result(config: EvaluateConfig, loaded: LoadedModel, index: pa.Table, plan: SplitPlan,
            frames: pd.DataFrame) -> dict[str, Any]:
    data_versions = sorted(set(index["pipeline_version"].to_pylist()) - {None})
    model_version = loaded.tags.get("pipeline_version")
    if model_version and data_versions and data_versions != [model_version]:
        log.warning("model trained on crops %s, evaluated on crops %s", model_version, data_versions)
    out: dict[str, Any] = metrics.compute_all(
        frames["label"].to_numpy(np.int64), frames["score"].to_numpy(np.float64), loaded.threshold,
        frames["attack_type"].to_numpy(object), frames["species"].to_numpy(object))
    out["video"] = video_section(frames, loaded.threshold, config.video_score)
    out.update({
        "model_uri": config.model_uri, "model_name": loaded.name, "model_version": loaded.version,
        "model_run_id": loaded.run_id, "architecture": loaded.spec.name,
        "data": str(config.data), "split": config.split,
        "datasets": _role_datasets(index, plan, config.split), "n": len(frames),
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
                    loaded: LoadedModel, sample: ClassSample | None = None,
                    frames: pd.DataFrame | None = None) -> list[Path]:
    """metrics.json, report.md, confusion_matrix.png, roc.png, det.png, (with a sample) gradcam.png
    and (with frames) scores.csv, the score table every figure can be recomputed from."""
    from raypipe import plots

    paths = [directory / "metrics.json", directory / "report.md"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=True, default=str))
    paths[1].write_text(report_markdown(result))
    if frames is not None:
        paths.append(directory / "scores.csv")
        frames.to_csv(paths[-1], index=False)
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
#: nested sections of a result and the prefix their numbers get as MLflow metrics
_SECTIONS = {"apcer_per_type": "apcer_type_", "apcer_per_species": "apcer_species_", "iso": "iso_",
             "video": "video_"}


def numeric_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a result, its sections flattened: ``apcer_per_type`` to
    ``apcer_type_<type>``, ``iso`` to ``iso_<key>`` (its ``apcer_per_species`` to
    ``iso_apcer_species_<species>``), ``video`` to ``video_<key>`` (``video_iso_acer``, ...)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = prefix + _METRIC_KEY.sub("_", str(key))
        if isinstance(value, dict) and key in _SECTIONS:
            out.update(numeric_metrics(value, prefix + _SECTIONS[key]))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def _percent(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _report_rows(level: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, value) rows of one level (frames or videos) of a result."""
    iso = level.get("iso") or {}
    worst = iso.get("apcer_max_species")
    rows = [("n live / attack", f"{level['n_live']} / {level['n_attack']}"),
            ("HTER (%) = (FAR + FRR) / 2", _percent(level["hter"])),
            ("EER (%)", _percent(level["eer"])),
            ("AUC", "–" if level["auc"] is None else f"{level['auc']:.4f}"),
            ("APCER pooled (%): every attack as one species, = FAR", _percent(iso.get("apcer_pooled"))),
            ("**APCER (%)**: worst species, ISO/IEC 30107-3",
             _percent(iso.get("apcer_max")) + (f" ({worst})" if worst else ""))]
    rows += [(f"APCER {species} (%)", _percent(v)) for species, v in (iso.get("apcer_per_species") or {}).items()]
    rows += [("BPCER (%) = FRR", _percent(iso.get("bpcer", level["bpcer"]))),
             ("**ACER (%)** = (APCER + BPCER) / 2, ISO", _percent(iso.get("acer"))),
             ("ACER pooled (%) = HTER", _percent(iso.get("acer_pooled")))]
    rows += [(f"{name.upper()} (%): BPCER at APCER <= {target:.0%}", _percent(iso.get(name)))
             for name, target in metrics.ISO_BPCER_TARGETS.items()]
    return rows


def report_markdown(result: dict[str, Any]) -> str:
    """The headline figures as a Markdown table, frame level beside video level (when the data has videos)."""
    video = result.get("video")
    title = (f"# Evaluation of {result.get('model_name')} v{result.get('model_version') or '-'} on "
             f"{result.get('split')} ({', '.join(result.get('datasets') or [])})")
    rule = (f"Threshold {result['threshold']:.4f} ({result.get('threshold_source', 'model')}): spoof iff "
            "score >= threshold.")
    if video:
        rule += (f" A video's score is the {video['rule']} of its frames' ({video['n_videos']} videos, "
                 f"{video['n_frames']} frames).")
    lines = [title, "", rule, "", "| figure | frames |" + (" videos |" if video else ""),
             "| --- | --- |" + (" --- |" if video else "")]
    video_rows = dict(_report_rows(video)) if video else {}
    for figure, value in _report_rows(result):
        lines.append(f"| {figure} | {value} |" + (f" {video_rows.get(figure, '–')} |" if video else ""))
    return "\n".join(lines) + "\n"


def _log_summary(result: dict[str, Any]) -> None:
    """The headline figures in one log line per level (the JSON line holds them all)."""
    for level, figures in (("frames", result), ("videos", result.get("video"))):
        if figures:
            iso = figures.get("iso") or {}
            log.info("%s: HTER %s%%, APCER %s%% (%s), BPCER %s%%, ACER %s%%, BPCER20 %s%%, AUC %s", level,
                     _percent(figures["hter"]), _percent(iso.get("apcer_max")), iso.get("apcer_max_species"),
                     _percent(figures["bpcer"]), _percent(iso.get("acer")), _percent(iso.get("bpcer20")),
                     "–" if figures["auc"] is None else f"{figures['auc']:.4f}")


def _log_evaluation(config: EvaluateConfig, loaded: LoadedModel, result: dict[str, Any], frames: pd.DataFrame,
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
            "dev_by": config.dev_by, "dev_fraction": config.dev_fraction, "seed": config.seed,
            "video_score": config.video_score})
        mlflow.log_metrics(numeric_metrics(result))
        write_artifacts(directory, result, frames["label"].to_numpy(np.int64), frames["score"].to_numpy(np.float64),
                        loaded, sample, frames)
        mlflow.log_artifacts(str(directory))
        return run.info.run_id
