"""Training throughput and memory: Ray Train (DDP workers, streamed crops) against a plain
single-process PyTorch loop, at 1x and Nx the data.

Both train the same model with the same loss, augmentation, batch size and epochs on the
same Parquet crops, and score the dev split after each epoch; throughput is samples
trained per second over the epochs (start-up excluded: Ray start-up and worker start-up
are reported separately as ``wall_seconds``). ``--scales 1,10`` also trains Ray Train on
the crops repeated 10 times (every Parquet file hard-linked 10 times) and samples, every
0.5 s, the object store's bytes in use and the resident memory of this process and every
process under it (the local Ray cluster's workers): streaming must keep the peak flat.
The plain loop runs before and after the Ray runs; ratios divide by the faster of the two.

    .venv/bin/python benchmarks/train.py --data data/nuaa [--model attacknet] [--epochs 3] [--scales 1,10]

Writes benchmarks/results/train_<model>.json. With ``--cuda-only`` it measures only the
plain loop on CUDA with bf16 autocast (for a GPU box without Ray).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from raypipe import crops  # noqa: E402
from raypipe.models import build_transforms, get_spec  # noqa: E402
from raypipe.train import TrainConfig, build_model_and_loss, evaluate, local_batches, train_one_epoch  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_RATIO = 0.9
GOAL_MEMORY_GROWTH = 1.3  # peak memory at 10x over the peak at 1x


def process_tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants, from /proc (no psutil here)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            status = (entry / "status").read_text()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        line = next((row for row in status.splitlines() if row.startswith("VmRSS:")), None)
        rss[int(entry.name)] = int(line.split()[1]) * 1024 if line else 0
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def object_store_bytes() -> int | None:
    """Bytes in use in the local cluster's object store (what ``ray memory`` reports)."""
    try:
        import ray._private.state
        from ray._private.internal_api import get_memory_info_reply

        return int(get_memory_info_reply(ray._private.state.state).store_stats.object_store_bytes_used)
    except Exception:  # not connected, or the private API moved: report none rather than guess
        return None


class MemorySampler:
    """Peaks of the object store, of this process tree's RSS and of their sum, every ``period`` s."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.peaks, self._stop = period, {"object_store": 0, "rss": 0, "total": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            store, rss = object_store_bytes() or 0, process_tree_rss(os.getpid())
            for key, value in (("object_store", store), ("rss", rss), ("total", store + rss)):
                self.peaks[key] = max(self.peaks[key], value)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> dict[str, float]:
        return {f"peak_{key}_mib": round(value / 2**20, 1) for key, value in self.peaks.items()}


def repeated_data(data: str, times: int, out: Path) -> str:
    """The crops ``times`` over: every Parquet file hard-linked ``times`` times (copied where
    links fail), the manifest beside them. Sample ids repeat; plans and counts do not mind."""
    source = Path(data)
    for path in source.rglob("*.parquet"):
        if "crops" not in path.relative_to(source).parts:
            continue
        target_dir = out / path.parent.relative_to(source)
        target_dir.mkdir(parents=True, exist_ok=True)
        for k in range(times):
            target = target_dir / f"x{k}-{path.name}"
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    shutil.copy2(source / "manifest.json", out / "manifest.json")
    return str(out)


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
        train_one_epoch(model, local_batches(train, config.batch_size, rng), loss_fn, optimizer, train_tf, device)
        evaluate(model, local_batches(dev, 256), loss_fn, eval_tf, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    n = len(train["label"])
    return {"train_samples": n, "epochs": config.epochs, "epoch_seconds": [round(s, 2) for s in seconds],
            "samples_per_second": round(n * config.epochs / sum(seconds), 1), "torch_threads": torch.get_num_threads(),
            "device": str(device)}


def epoch_rates(tracking_uri: str, run_id: str) -> list[float]:
    """Each epoch's samples trained per second (all workers), from the run's MLflow metrics."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    seconds = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_seconds")}
    samples = {m.step: m.value for m in client.get_metric_history(run_id, "train_samples")}
    return [round(samples[step] / seconds[step], 1) for step in sorted(seconds) if step in samples]


def ray_train(config: TrainConfig) -> dict:
    from raypipe.runtime import init_ray
    from raypipe.train import run_training

    init_ray()  # before sampling: the cluster's own start-up is not the training's memory
    started = time.perf_counter()
    with MemorySampler() as memory:
        summary = run_training(config)
    return {"workers": config.workers, "cpus_per_worker": config.cpus_per_worker, "epochs": summary["epochs_run"],
            "samples_per_second": summary["train_samples_per_second"],
            "epoch_samples_per_second": epoch_rates(config.tracking_uri, summary["run_id"]),
            "wall_seconds": round(time.perf_counter() - started, 1), "run_id": summary["run_id"], **memory.mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/nuaa")
    parser.add_argument("--model", default="attacknet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cuda-only", action="store_true", help="plain loop on CUDA with bf16 autocast only")
    parser.add_argument("--scales", default="1", help="data sizes for Ray Train, e.g. 1,10 (the crops repeated)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    scales = [int(x) for x in args.scales.split(",")]

    result: dict = {"benchmark": "train", "model": args.model, "data": args.data, "batch_size": args.batch_size,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="raypipe-bench-train-") as tmp:
        config = TrainConfig(data=args.data, model=args.model, epochs=args.epochs, workers=args.workers,
                             cpus_per_worker=args.cpus_per_worker,
                             batch_size=args.batch_size, patience=10_000, experiment="benchmark-train",
                             tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage_path=f"{tmp}/ray_results")
        if args.cuda_only:
            result["plain_cuda_bf16"] = plain_loop(config, torch.device("cuda"))
        else:
            result["plain_single_process"] = plain_loop(config, torch.device("cpu"))
            result["ray_train"] = ray_train(config)
            cpus = os.cpu_count() or 1
            if args.workers != 1 or args.cpus_per_worker != cpus:
                # The plain loop's own setting in Ray Train: one process, every core as torch threads
                # (what --workers 1 --cpus-per-worker N gives a user on one machine).
                one = dataclasses.replace(config, workers=1, cpus_per_worker=cpus, run_name="one-worker")
                result["ray_train_one_worker"] = ray_train(one)
            # A shared machine's speed drifts by 10-20 % within minutes: the plain loop runs again
            # after the Ray runs, and the ratios divide by the faster of its two runs.
            result["plain_single_process_after"] = plain_loop(config, torch.device("cpu"))
            baseline = max(result["plain_single_process"]["samples_per_second"],
                           result["plain_single_process_after"]["samples_per_second"])
            result["baseline_samples_per_second"] = baseline
            result["ratio"] = round(result["ray_train"]["samples_per_second"] / baseline, 2)
            if "ray_train_one_worker" in result:
                result["ratio_one_worker"] = round(result["ray_train_one_worker"]["samples_per_second"] / baseline, 2)
            result["goal_ratio"] = GOAL_RATIO
            if len(scales) > 1:  # memory as the data grows: streamed at every scale
                streamed = dataclasses.replace(config, stream=True)
                result["ray_train_streamed"] = ray_train(streamed)
                result["ratio_streamed"] = round(result["ray_train_streamed"]["samples_per_second"] / baseline, 2)
                for scale in (s for s in scales if s != 1):
                    data = repeated_data(args.data, scale, Path(tmp) / f"x{scale}")
                    result[f"ray_train_streamed_x{scale}"] = {"scale": scale, **ray_train(
                        dataclasses.replace(streamed, data=data, run_name=f"x{scale}"))}
                    result[f"memory_growth_x{scale}"] = round(
                        result[f"ray_train_streamed_x{scale}"]["peak_total_mib"]
                        / result["ray_train_streamed"]["peak_total_mib"], 2)
                result["goal_memory_growth"] = GOAL_MEMORY_GROWTH
    out = Path(args.out or HERE / "results" / f"train_{args.model}{'_cuda' if args.cuda_only else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
