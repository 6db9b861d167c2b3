"""The batch pipeline in one call: preprocess -> train -> evaluate -> register + promote.

Used by ``raypipe pipeline`` / ``jobs/pipeline.py`` (one Ray job on a cluster) and by
``raypipe demo`` (which then starts Serve). Each stage is its own library call; this
module only chains them and reports progress on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

from raypipe.config import EvaluateConfig, PipelineConfig, pipeline_config

__all__ = ["PipelineConfig", "pipeline_config", "progress_step", "run_pipeline"]


Step = Callable[[str, Callable[[], Any]], Any]


def progress_step(total: int, first: int = 1) -> Step:
    """A step runner printing ``[i/total] title ...`` and its duration on stderr."""
    counter = iter(range(first, total + 1))

    def run(title: str, fn: Callable[[], Any]) -> Any:
        number = next(counter)
        print(f"[{number}/{total}] {title} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = fn()
        print(f"[{number}/{total}] {title}: done in {time.perf_counter() - started:.1f} s", file=sys.stderr,
              flush=True)
        return result
    return run


def run_pipeline(config: PipelineConfig, step: Step | None = None) -> dict[str, Any]:
    """Run the three stages; returns what each produced (the CLI prints it as one JSON line)."""
    step = step or progress_step(3)
    started = time.perf_counter()
    train = config.train
    prep = step("preprocess (Ray Data: face detection, crops, Parquet)", lambda: preprocess_stage(config))
    trained = step(f"train {train.model} (Ray Train, {train.workers} workers)", lambda: train_stage(config))
    evaluation = step("evaluate the registered model", lambda: evaluate_stage(config, trained))
    return {"preprocess": pick(prep, "inputs", "rows", "rejected", "by_reason", "images_per_second", "output"),
            "train": pick(trained, "run_id", "model_uri", "version", "threshold", "epochs_run", "dev", "dev_rule"),
            "evaluate": pick(evaluation, "split", "model_uri", "hter", "apcer", "bpcer", "acer", "eer", "auc",
                             "n_live", "n_attack"),
            "seconds": round(time.perf_counter() - started, 1)}


def pick(result: dict, *keys: str) -> dict:
    return {k: result.get(k) for k in keys}


def preprocess_stage(config: PipelineConfig) -> dict:
    from raypipe.preprocess import run_preprocess

    return run_preprocess(config.preprocess, address=config.address)


def train_stage(config: PipelineConfig) -> dict:
    from raypipe.train import run_training

    return run_training(config.train, address=config.address)


def evaluate_stage(config: PipelineConfig, trained: dict) -> dict:
    """The test split when the data has one (NUAA's shared copy does not: then dev)."""
    from raypipe.crops import read_index
    from raypipe.evaluate import evaluate_model

    train = config.train
    splits = set(read_index(train.data)["split"].to_pylist())
    split = "test" if "test" in splits else "dev"
    # The version this run registered (not @champion, which another job may move meanwhile).
    model_uri = f"models:/{train.register}/{trained['version']}" if trained.get("version") else trained["run_id"]
    result = evaluate_model(EvaluateConfig(
        model_uri=model_uri, data=train.data, split=split, datasets=train.datasets,
        experiment=config.evaluate_experiment or f"{train.experiment}-eval", dev_by=train.dev_by,
        dev_fraction=train.dev_fraction, seed=train.seed, tracking_uri=train.tracking_uri))
    return {**result, "split": split, "model_uri": model_uri}
