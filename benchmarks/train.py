"""Training throughput: Ray Train (DDP workers) against a plain single-process PyTorch loop.

Both train the same model with the same loss, augmentation, batch size and epochs on the
same Parquet crops, and score the dev split after each epoch; throughput is training
samples per second over the epochs (start-up excluded: Ray start-up, dataset
materialisation and worker start-up are reported separately as ``wall_seconds``).

    .venv/bin/python benchmarks/train.py --data data/nuaa [--model attacknet] [--epochs 3]

Writes benchmarks/results/train_<model>.json. With ``--cuda-only`` it measures only the
plain loop on CUDA with bf16 autocast (for a GPU box without Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raypipe import crops  # noqa: E402
from raypipe.models import build_transforms, get_spec  # noqa: E402
from raypipe.train import TrainConfig, build_model_and_loss, collate, evaluate, train_one_epoch  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_RATIO = 0.9


def batches(data: dict[str, np.ndarray], batch_size: int, rng: np.random.Generator | None = None):
    order = rng.permutation(len(data["label"])) if rng is not None else np.arange(len(data["label"]))
    for start in range(0, len(order), batch_size):
        pick = order[start:start + batch_size]
        yield collate({key: value[pick] for key, value in data.items()})


def plain_loop(config: TrainConfig, device: torch.device) -> dict:
    """One process using every core through PyTorch's intra-op threads (and the GPU if asked)."""
    index = crops.read_index(config.data, config.datasets)
    plan = crops.plan_splits(index, config.dev_fraction, config.seed)
    spec = get_spec(config.model)
    train = crops.load_role(config.data, "train", plan, spec, config.datasets)
    dev = crops.load_role(config.data, "dev", plan, spec, config.datasets)
    model, loss_fn = build_model_and_loss(config)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train_tf, eval_tf = build_transforms(spec, config.augment, train=True), build_transforms(spec, None, train=False)
    rng = np.random.default_rng(config.seed)
    seconds = []
    for _ in range(config.epochs):
        started = time.perf_counter()
        train_one_epoch(model, batches(train, config.batch_size, rng), loss_fn, optimizer, train_tf, device)
        evaluate(model, batches(dev, 256), loss_fn, eval_tf, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    n = len(train["label"])
    return {"train_samples": n, "epochs": config.epochs, "epoch_seconds": [round(s, 2) for s in seconds],
            "samples_per_second": round(n * config.epochs / sum(seconds), 1), "torch_threads": torch.get_num_threads(),
            "device": str(device)}


def ray_train(config: TrainConfig) -> dict:
    from raypipe.train import run_training

    started = time.perf_counter()
    summary = run_training(config)
    return {"workers": config.workers, "epochs": summary["epochs_run"],
            "samples_per_second": summary["train_samples_per_second"],
            "wall_seconds": round(time.perf_counter() - started, 1), "run_id": summary["run_id"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/nuaa")
    parser.add_argument("--model", default="attacknet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cuda-only", action="store_true", help="plain loop on CUDA with bf16 autocast only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    result: dict = {"benchmark": "train", "model": args.model, "data": args.data, "batch_size": args.batch_size,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="raypipe-bench-train-") as tmp:
        config = TrainConfig(data=args.data, model=args.model, epochs=args.epochs, workers=args.workers,
                             batch_size=args.batch_size, patience=10_000, experiment="benchmark-train",
                             tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=f"{tmp}/ray_results")
        if args.cuda_only:
            result["plain_cuda_bf16"] = plain_loop(config, torch.device("cuda"))
        else:
            result["plain_single_process"] = plain_loop(config, torch.device("cpu"))
            result["ray_train"] = ray_train(config)
            result["ratio"] = round(result["ray_train"]["samples_per_second"]
                                    / result["plain_single_process"]["samples_per_second"], 2)
            result["goal_ratio"] = GOAL_RATIO
    out = Path(args.out or HERE / "results" / f"train_{args.model}{'_cuda' if args.cuda_only else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
