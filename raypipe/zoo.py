"""Published anti-spoofing models registered without training: the best starting point a
user can serve before training anything (`raypipe register-pretrained`).

The published decision point is a spoof probability of 0.5. It is a poor fit for data
unlike the authors' (MiniFASNet ranks another database's attacks well but accepts most of
its printed photos at 0.5): given a preprocess output of the user's own data, the
threshold is chosen on its dev split instead, with training's rules, and the dev metrics
are logged beside the model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from raypipe import crops, metrics
from raypipe.config import RegisterPretrainedConfig
from raypipe.face import FaceConfig
from raypipe.models import create_model, efficiency_report
from raypipe.models.store import configure_tracking, ensure_experiment, face_tag, log_and_register
from raypipe.predict import Predictor

log = logging.getLogger(__name__)

PUBLISHED_THRESHOLD = 0.5


def calibrate(predictor: Predictor, config: RegisterPretrainedConfig) -> tuple[float, dict[str, Any], str]:
    """(threshold, dev metrics, dev rule) on the calibration data's dev split."""
    data, datasets = config.calibration_data, config.datasets
    crops.check_one_protocol(data, datasets)
    plan = crops.plan_splits(crops.read_index(data, datasets), config.dev_fraction, config.seed, config.dev_by)
    scored = predictor.score_batches(crops.iter_local_batches(data, "dev", plan, predictor.spec, datasets))
    if scored.labels.size == 0:
        raise ValueError(f"no dev crops to calibrate on under {data} (datasets={datasets})")
    threshold = metrics.choose_threshold(scored.labels, scored.scores, config.threshold_rule, scored.attack_types)
    dev = metrics.compute_all(scored.labels, scored.scores, threshold, scored.attack_types)
    return threshold, dev, "; ".join(f"{d}: {rule}" for d, rule in plan.describe().items())


def register_pretrained(config: RegisterPretrainedConfig) -> dict[str, Any]:
    """Register ``config.model`` with its published weights; returns the summary the CLI prints."""
    import mlflow

    started = time.perf_counter()
    configure_tracking(config.tracking_uri)
    model = create_model(config.model, pretrained=config.pretrained)
    threshold, dev, dev_rule, face = PUBLISHED_THRESHOLD, None, None, FaceConfig().crop_settings()
    if config.calibration_data:
        threshold, dev, dev_rule = calibrate(Predictor(model, model.spec, "cpu"), config)
        face = crops.face_settings(config.calibration_data, config.datasets) or face
    rule = f"{config.threshold_rule} on dev" if dev else f"published {PUBLISHED_THRESHOLD}"
    with mlflow.start_run(experiment_id=ensure_experiment(config.experiment),
                          run_name=f"{config.model}-{config.pretrained}") as run:
        mlflow.log_params({"model": config.model, "pretrained_source": model.pretrained_source,
                           "threshold_rule": rule, "calibration_data": config.calibration_data or "",
                           "dev_rule": dev_rule or ""})
        if dev:
            mlflow.log_metrics({f"dev_{k}": v for k, v in dev.items() if isinstance(v, (int, float))})
            mlflow.log_dict(dev, "metrics/dev_metrics.json")
        mlflow.log_dict(efficiency_report(model), "efficiency.json")
        check = crops.sample_inputs(config.calibration_data, model.spec, config.datasets) \
            if config.calibration_data else None
        registered = log_and_register(
            model, threshold=threshold, register_as=config.register, promote=config.promote, force=config.force,
            dev_hter=dev["hter"] if dev else None, dev_rule=f"{dev_rule} | threshold {config.threshold_rule}",
            check_inputs=check,
            extra_tags={"pipeline_version": FaceConfig(**face).version(), "threshold_rule": rule,
                        "pretrained_source": model.pretrained_source, **face_tag(face)})
    log.info("registered %s (%s) with threshold %.4f (%s)", registered.model_uri, model.pretrained_source,
             threshold, rule)
    return {"run_id": run.info.run_id, "model_uri": registered.model_uri, "version": registered.version,
            "model": config.model, "pretrained_source": model.pretrained_source, "threshold": threshold,
            "threshold_rule": rule, "dev": dev, "dev_rule": dev_rule, "promoted": registered.promoted,
            "promotion": registered.promotion, "onnx": registered.onnx,
            "seconds": round(time.perf_counter() - started, 2)}
