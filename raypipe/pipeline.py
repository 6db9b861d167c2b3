"""The batch pipeline in one call: preprocess -> train -> evaluate -> register + promote.

Used by ``raypipe pipeline`` / ``jobs/pipeline.py`` (one Ray job on a cluster) and by
``raypipe demo`` (which then starts Serve). Each stage is its own library call; this
module only chains them and reports progress on stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class PipelineConfig:
    dataset: str  # adapter name ("folder" for the demo data)
    root: str
    out: str  # preprocess output (local, shared mount or s3://...); train/evaluate read crops from it
    model: str = "attacknet"
    epochs: int = 100  # as `raypipe train`: at most, early stopping on dev loss
    workers: int = 2
    use_gpu: bool | None = None  # None: GPUs when the cluster has them
    register: str = "attacknet"  # serve_config.yaml serves models:/attacknet@champion
    promote: bool = True
    experiment: str = "pipeline"
    split: str = "all"
    limit: int | None = None
    storage_path: str | None = None  # Ray Train checkpoints (shared storage on a multi-node cluster)
    address: str | None = None


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
    prep = step("preprocess (Ray Data: face detection, crops, Parquet)", lambda: preprocess_stage(config))
    trained = step(f"train {config.model} (Ray Train, {config.workers} workers)", lambda: train_stage(config))
    evaluation = step("evaluate the promoted model", lambda: evaluate_stage(config, trained))
    return {"preprocess": pick(prep, "inputs", "rows", "rejected", "by_reason", "images_per_second", "output"),
            "train": pick(trained, "run_id", "model_uri", "version", "threshold", "epochs_run", "dev"),
            "evaluate": pick(evaluation, "split", "model_uri", "hter", "apcer", "bpcer", "acer", "eer", "auc",
                             "n_live", "n_attack"),
            "seconds": round(time.perf_counter() - started, 1)}


def pick(result: dict, *keys: str) -> dict:
    return {k: result.get(k) for k in keys}


def preprocess_stage(config: PipelineConfig) -> dict:
    from raypipe.preprocess import PreprocessConfig, run_preprocess

    return run_preprocess(PreprocessConfig(dataset=config.dataset, root=config.root, out=config.out,
                                           split=config.split, limit=config.limit), address=config.address)


def train_stage(config: PipelineConfig) -> dict:
    from raypipe.train import TrainConfig, run_training

    return run_training(TrainConfig(data=config.out, model=config.model, epochs=config.epochs,
                                    workers=config.workers, use_gpu=config.use_gpu, experiment=config.experiment,
                                    register=config.register, promote=config.promote,
                                    storage_path=config.storage_path), address=config.address)


def evaluate_stage(config: PipelineConfig, trained: dict) -> dict:
    """The test split when the data has one (NUAA's shared copy does not: then dev)."""
    from raypipe.crops import read_index
    from raypipe.evaluate import EvaluateConfig, evaluate_model

    splits = set(read_index(config.out)["split"].to_pylist())
    split = "test" if "test" in splits else "dev"
    # The version this run registered (not @champion, which another job may move meanwhile).
    model_uri = f"models:/{config.register}/{trained['version']}" if trained.get("version") else trained["run_id"]
    result = evaluate_model(EvaluateConfig(model_uri=model_uri, data=config.out, split=split,
                                           experiment=f"{config.experiment}-eval"))
    return {**result, "split": split, "model_uri": model_uri}
