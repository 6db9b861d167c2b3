"""Ray Train: a face anti-spoofing classifier from Parquet crops, tracked in MLflow.

Read top to bottom:

1. :func:`train_one_epoch` and :func:`evaluate` are plain PyTorch over any iterable
   of batches (no Ray): tests and a GPU box without Ray call them directly.
2. :func:`train_loop_per_worker` is the Ray Train V2 loop: DDP model, the dataset
   shards, a checkpoint every epoch, resume from the latest checkpoint after a
   worker failure, early stopping on dev loss. Rank 0 logs per-epoch curves to
   the MLflow run the driver created (so a retry never makes a second run).
3. :func:`run_training` (driver): plans train/dev by subject, builds the Ray
   datasets, runs the ``TorchTrainer``, picks the operating threshold on dev,
   logs artifacts, and registers the model with its threshold.
"""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from raypipe import metrics
from raypipe.config import TrainConfig
from raypipe.models import build_loss, build_transforms, create_model, get_spec, head_for_loss
from raypipe.models.base import unwrap_model
from raypipe.predict import spoof_scores

__all__ = ["TrainConfig", "evaluate", "run_training", "train_one_epoch", "train_loop_per_worker"]

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"


# --------------------------------------------------------------------------------------
# 1. Plain PyTorch: one epoch, one evaluation


def collate(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """Numpy batch from Ray Data or crops.iter_local_batches -> tensors (images stay uint8 BCHW)."""
    return {"image": torch.from_numpy(np.ascontiguousarray(batch["image"])).movedim(-1, 1),
            "label": torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)),
            "attack_type": list(batch["attack_type"])}


def local_batches(data: Mapping[str, np.ndarray], batch_size: int, rng: np.random.Generator | None = None,
                  drop_last: bool = False) -> Iterator[dict[str, Any]]:
    """Collated batches of rows held in memory, in a new order per call when ``rng`` is given
    (a DataLoader with ``shuffle=True``): held training data and the plain-loop baseline."""
    n = len(data["label"]) if "label" in data else 0
    order = rng.permutation(n) if rng is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        pick = order[start:start + batch_size]
        yield collate({key: value[pick] for key, value in data.items()})


def _autocast(device: torch.device):
    # bf16 autocast on CUDA (no GradScaler needed, unlike fp16); full precision on CPU.
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def set_training_mode(model: nn.Module, freeze_norm: bool = False) -> None:
    """``model.train()``; with ``freeze_norm`` its BatchNorm layers stay in eval mode.

    Fine-tuning published weights on a small dataset: batch statistics differ from the
    running statistics the weights were trained with (measured on MiniFASNet V2 and NUAA: a
    mixed batch's loss is 0.54 in train mode against 0.10 in eval mode, 3.9 for a one-class
    batch), so training would first undo what the weights know. Frozen statistics keep it.
    """
    model.train()
    if freeze_norm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_one_epoch(model: nn.Module, batches: Iterable[dict], loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    transform: nn.Module, device: torch.device, freeze_norm: bool = False) -> dict[str, float]:
    """One pass over ``batches``; returns mean loss, accuracy and the number of samples."""
    set_training_mode(model, freeze_norm)
    total_loss, correct, seen = 0.0, 0, 0
    for batch in batches:
        images = transform(batch["image"].to(device, non_blocking=True))
        labels = batch["label"].to(device, non_blocking=True)
        with _autocast(device):
            logits, embeddings = model(images, return_embeddings=True)
            loss = loss_fn(logits.float(), embeddings.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "n": seen}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict], loss_fn: nn.Module, transform: nn.Module,
             device: torch.device) -> dict[str, Any]:
    """Loss, accuracy and the per-sample spoof scores (softmax of the attack class)."""
    model.eval()
    total_loss, labels_all, scores_all, types_all = 0.0, [], [], []
    for batch in batches:
        images = transform(batch["image"].to(device, non_blocking=True))
        labels = batch["label"].to(device, non_blocking=True)
        with _autocast(device):
            logits, embeddings = model(images, return_embeddings=True)
        total_loss += loss_fn(logits.float(), embeddings.float(), labels).item() * len(labels)
        scores_all.append(spoof_scores(logits).cpu().numpy())
        labels_all.append(labels.cpu().numpy())
        types_all += batch["attack_type"]
    labels_np = np.concatenate(labels_all) if labels_all else np.zeros(0, np.int64)
    scores_np = np.concatenate(scores_all) if scores_all else np.zeros(0, np.float32)
    n = len(labels_np)
    return {"loss": total_loss / max(n, 1), "accuracy": float(((scores_np >= 0.5) == labels_np).mean()) if n else 0.0,
            "n": n, "labels": labels_np, "scores": scores_np, "attack_types": np.array(types_all, dtype=object)}


def merge_evaluations(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`evaluate` results of disjoint parts of a split -> the result over the whole."""
    n = sum(part["n"] for part in parts)
    labels = np.concatenate([part["labels"] for part in parts])
    scores = np.concatenate([part["scores"] for part in parts])
    return {"loss": sum(part["loss"] * part["n"] for part in parts) / max(n, 1),
            "accuracy": float(((scores >= 0.5) == labels).mean()) if n else 0.0, "n": n,
            "labels": labels, "scores": scores,
            "attack_types": np.concatenate([part["attack_types"] for part in parts])}


def dev_hter(result: dict[str, Any]) -> float | None:
    """HTER at the dev EER threshold (None when dev lacks a class)."""
    labels, scores = result["labels"], result["scores"]
    if len(set(labels.tolist())) < 2:
        return None
    threshold = metrics.threshold_at_eer(labels, scores)
    return metrics.far_frr_hter(labels, scores, threshold)["hter"]


class EarlyStop(NamedTuple):
    improved: bool  # better than the best dev loss so far (by more than min_delta)
    bad_epochs: int  # epochs in a row without such an improvement
    stop: bool  # patience reached: end training after this epoch


def early_stopping(best_loss: float, bad_epochs: int, dev_loss: float, patience: int,
                   min_delta: float = 1e-6) -> EarlyStop:
    """The early-stopping decision after one epoch's dev loss (a NaN loss never improves)."""
    improved = dev_loss < best_loss - min_delta
    bad = 0 if improved else bad_epochs + 1
    return EarlyStop(improved, bad, bad >= patience)


def build_model_and_loss(config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    head = head_for_loss(config.loss)
    model = create_model(config.model, head=head, scale=config.cosine_scale, pretrained=config.pretrained)
    return model, build_loss(config.loss, scale=config.cosine_scale, margin=config.am_margin)


# --------------------------------------------------------------------------------------
# 2. Ray Train V2 loop (runs on every worker)


def _broadcast(value: float, device: torch.device) -> float:
    """Rank 0's value on every rank: the early-stopping decision must be identical on all
    ranks or DDP deadlocks (ranks may differ slightly in BatchNorm statistics). The tensor
    lives where the model does: the process group routes CPU tensors to gloo, CUDA ones to NCCL."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())


def scoring_model(model: nn.Module) -> nn.Module:
    """The module a rank scores its part of dev with: the model without its DDP wrapper,
    its buffers (BatchNorm statistics) first made rank 0's.

    DDP's forward broadcasts the buffers, a collective every rank must join: ranks whose
    parts of dev take different numbers of batches (a rank with no dev file, or slices of
    257 and 256 rows) would wait on each other for ever. One broadcast per buffer here
    costs every rank the same calls, and all ranks score with the same model."""
    import torch.distributed as dist

    inner = unwrap_model(model)
    if inner is not model and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in inner.buffers():
            dist.broadcast(buffer.data, src=0)
    return inner


def _sum_over_ranks(value: int, device: torch.device) -> int:
    """The sum of every rank's ``value`` (e.g. the samples each rank trained on this epoch)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor)
    return int(tensor.item())


def _gather_evaluation(result: dict[str, Any]) -> dict[str, Any]:
    """Every rank scored its own slice of dev: the result over all of dev, on every rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return result
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, result)
    return merge_evaluations(parts)


def rank_slice(data: Mapping[str, np.ndarray], rank: int, world_size: int) -> dict[str, np.ndarray]:
    """Rows ``rank``, ``rank + world_size``, ...: each rank's disjoint share of held rows."""
    return {key: value[rank::world_size] for key, value in data.items()}


def usable_device(assigned: torch.device) -> tuple[torch.device, str | None]:
    """The device Ray Train assigned, or the CPU and why when it is a CUDA device this process
    cannot use (a GPU node whose CUDA is missing or broken, a simulated cluster's fake GPUs)."""
    if assigned.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu"), (f"a GPU was assigned ({assigned}) but CUDA is not available on this node "
                                     f"(torch {torch.__version__}): training on CPU")
    return assigned, None


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def torch_config(use_gpu: bool) -> Any:
    """Ray Train's ``TorchConfig``. For GPU workers the process group runs NCCL when CUDA works
    on every worker, else gloo: Ray picks NCCL for any GPU worker, and NCCL refuses to start
    where CUDA is missing (the workers then train on the CPU: :func:`usable_device`). Asked of
    the workers once they are placed, so no GPU node is started just to ask."""
    import dataclasses

    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _TorchBackend  # Ray 2.60's torch backend: its on_start starts the group

    if not use_gpu:
        return TorchConfig()

    class CudaOrGlooBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            cuda = all(worker_group.execute(_cuda_available))
            super().on_start(worker_group, dataclasses.replace(backend_config, backend="nccl" if cuda else "gloo"))

    @dataclasses.dataclass
    class GpuTorchConfig(TorchConfig):
        @property
        def backend_cls(self) -> type:
            return CudaOrGlooBackend

    return GpuTorchConfig()


def worker_resources(config: TrainConfig, use_gpu: bool) -> dict[str, float]:
    """What each Ray Train worker asks for: ``cpus_per_worker`` CPUs (its PyTorch threads), plus one GPU."""
    if config.cpus_per_worker < 1:
        raise ValueError(f"--cpus-per-worker must be at least 1, got {config.cpus_per_worker}")
    return {"CPU": config.cpus_per_worker, **({"GPU": 1} if use_gpu else {})}


def keeps_last_batch(train_rows: int, workers: int, batch_size: int) -> bool:
    """Whether each worker keeps its last, partial training batch.

    It is dropped (a batch of one breaks BatchNorm in training mode, MiniFASNet's 1x1 maps),
    unless a worker's share of the rows is smaller than one batch: dropping would leave that
    worker nothing to train on (loss 0.0 and 0 samples/s every epoch). A share under 2 rows
    cannot train at all.
    """
    share = train_rows // max(workers, 1)  # Ray splits train into equal shares (DataConfig: equal=True)
    if share < 2:
        raise ValueError(f"{train_rows} training rows over {workers} workers leave {share} per worker; BatchNorm "
                         "needs at least 2: use fewer --workers or more data")
    return share < batch_size


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """State after the latest checkpoint (fresh state when there is none)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": -1, "best_loss": float("inf"), "bad_epochs": 0, "history": [], "best": None, "restarts": 0}
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(state.pop("model"))
    optimizer.load_state_dict(state.pop("optimizer"))
    state["restarts"] = state.get("restarts", 0) + 1
    log.warning("resuming from the checkpoint of epoch %d (restart %d)", state["epoch"], state["restarts"])
    return state


def _save_checkpoint(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    payload = {**state, "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict()}
    torch.save(payload, Path(directory) / STATE_FILE)


class RankZeroTracker:
    """Per-epoch MLflow metrics into the driver's run, by run id (no global MLflow state)."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        import mlflow

        self.client, self.run_id = mlflow.MlflowClient(tracking_uri), run_id

    def log_epoch(self, epoch: int, values: dict[str, float | None]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in values.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=batch)


def hold_shard(shard: Any) -> dict[str, np.ndarray]:
    """A worker's whole shard of a held (decoded, materialised) dataset as numpy arrays, read
    once. Iterating the materialised Ray Dataset every epoch (block fetches, a local
    shuffle buffer, format conversion) held one worker at 0.57x the plain PyTorch loop's
    samples/s on this 2-core machine (docs/training.md, throughput). The rows are what the
    object store holds already, so holding them is only chosen below the streaming
    threshold (:func:`streams`)."""
    parts = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
    if not parts:
        return {}
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config: TrainConfig = loop_config["config"]
    rank, world_size = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(config.seed + rank)
    device, fallback = usable_device(ray.train.torch.get_device())
    if fallback:
        log.warning("rank %d: %s", rank, fallback)
    torch.set_num_threads(config.cpus_per_worker)  # the CPUs this worker holds, whatever OMP_NUM_THREADS says
    model, loss_fn = build_model_and_loss(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = _restore(model, optimizer)
    state["device"] = {"type": device.type, "fallback": fallback}  # the driver reports it from the checkpoint
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    spec = unwrap_model(model).spec
    train_transform = build_transforms(spec, config.augment, train=True)
    eval_transform = build_transforms(spec, None, train=False)
    tracker = RankZeroTracker(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    if tracker and state["restarts"]:
        tracker.log_epoch(state["epoch"], {"restarts": state["restarts"]})
    pin, drop_last = device.type == "cuda", not loop_config.get("keep_last_batch", False)  # see keeps_last_batch
    held = None if loop_config["stream"] else {role: hold_shard(ray.train.get_dataset_shard(role))
                                              for role in ("train", "dev")}

    for epoch in range(state["epoch"] + 1, config.epochs):
        if held:  # small data: this worker's rows in memory, a new seeded order every epoch
            train_batches = local_batches(held["train"], config.batch_size,
                                          np.random.default_rng(config.seed + epoch * 100 + rank), drop_last)
            dev_batches = local_batches(rank_slice(held["dev"], rank, world_size), 256)  # gathered below
        else:
            train_batches = ray.train.get_dataset_shard("train").iter_torch_batches(
                batch_size=config.batch_size, collate_fn=collate,
                local_shuffle_buffer_size=max(config.shuffle_buffer, config.batch_size),
                local_shuffle_seed=config.seed + epoch * 100 + rank, pin_memory=pin, device=device,
                drop_last=drop_last)
            dev_part = dev_part_name(rank) if dev_part_name(rank) in loop_config["datasets"] else None
            dev_batches = ray.train.get_dataset_shard(dev_part).iter_torch_batches(
                batch_size=256, collate_fn=collate, pin_memory=pin, device=device) if dev_part else iter(())
        started = time.perf_counter()
        train_result = train_one_epoch(model, train_batches, loss_fn, optimizer, train_transform, device,
                                       freeze_norm=config.resolved_freeze_norm())
        dev_result = evaluate(scoring_model(model), dev_batches, loss_fn, eval_transform, device)
        dev_result = _gather_evaluation(dev_result)  # each rank scored its part of dev: every rank gets the whole
        dev_loss = _broadcast(dev_result["loss"], device)
        decision = early_stopping(state["best_loss"], state["bad_epochs"], dev_loss, config.patience)
        state["bad_epochs"] = decision.bad_epochs
        if decision.improved:
            state["best_loss"] = dev_loss
            state["best"] = {"epoch": epoch, "model": {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()},
                             "labels": dev_result["labels"], "scores": dev_result["scores"],
                             "attack_types": dev_result["attack_types"]}
        epoch_metrics = {"epoch": epoch, "train_loss": train_result["loss"], "train_accuracy": train_result["accuracy"],
                         "dev_loss": dev_loss, "dev_accuracy": dev_result["accuracy"], "dev_hter": dev_hter(dev_result),
                         "epoch_seconds": time.perf_counter() - started,
                         "train_samples_per_second": train_result["n"] / max(time.perf_counter() - started, 1e-9),
                         # what all ranks trained on (drop_last leaves out each shard's tail)
                         "train_samples": _sum_over_ranks(train_result["n"], device)}
        state["history"].append(epoch_metrics)
        state["epoch"] = epoch
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if rank == 0:
                _save_checkpoint(directory, model, optimizer, state)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({k: v for k, v in epoch_metrics.items() if v is not None}, checkpoint=checkpoint)
        if tracker:
            tracker.log_epoch(epoch, {k: v for k, v in epoch_metrics.items() if k != "epoch"})
        if decision.stop:
            break


# --------------------------------------------------------------------------------------
# Progress: one line per epoch on the driver's stderr. Workers' own output does not reach
# the terminal (init_ray runs with log_to_driver=False), so the Train controller hands each
# epoch's metrics to the driver through a small queue actor, and a driver thread prints them.


def _duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_progress(metrics: dict[str, Any], epochs: int, seconds_per_epoch: float | None) -> str:
    """The line ``raypipe train`` prints after each epoch; the ETA assumes every remaining
    epoch runs (early stopping may end sooner, hence "<=")."""
    epoch = int(metrics["epoch"]) + 1
    hter = metrics.get("dev_hter")
    eta = "?" if seconds_per_epoch is None else "<=" + _duration(seconds_per_epoch * max(epochs - epoch, 0))
    return (f"epoch {epoch}/{epochs}  train_loss {metrics['train_loss']:.4f}  dev_loss {metrics['dev_loss']:.4f}  "
            f"dev_hter {'n/a' if hter is None else format(hter, '.4f')}  "
            f"{metrics.get('train_samples_per_second', 0.0):.1f} samples/s  ETA {eta}")


def merge_worker_metrics(per_worker: list[dict[str, Any]]) -> dict[str, Any]:
    """Rank 0's epoch metrics with the throughput of all workers (each reports its own shard's)."""
    merged = dict(per_worker[0])
    merged["train_samples_per_second"] = sum(m.get("train_samples_per_second", 0.0) for m in per_worker)
    return merged


class EpochProgress:
    """Prints :func:`format_progress` lines on stderr while ``trainer.fit()`` runs (``with``)."""

    def __init__(self, epochs: int) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # no CPU (a 0-CPU head still holds it), beside the driver, gone with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.epochs, self.epoch_seconds = epochs, []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._print_until_done, name="train-progress", daemon=True)

    def callback(self) -> Any:
        """The Ray Train callback (runs in the controller) that feeds this printer."""
        from ray.train import UserCallback

        queue = self.queue

        class ForwardEpochMetrics(UserCallback):
            def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
                try:
                    queue.put_nowait(merge_worker_metrics(metrics))
                except Exception as exc:  # noqa: BLE001 - progress must never fail a training run
                    log.debug("progress not forwarded: %s", exc)

        return ForwardEpochMetrics()

    def __enter__(self) -> EpochProgress:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)
        try:
            while not self.queue.empty():  # epochs reported just before fit() returned
                self._print(self.queue.get_nowait())
            self.queue.shutdown()
        except Exception as exc:  # noqa: BLE001 - never hide the training result behind a progress error
            log.debug("progress queue: %s", exc)

    def _print_until_done(self) -> None:
        from ray.util.queue import Empty

        while not self._done.is_set():
            try:
                self._print(self.queue.get(timeout=1.0))
            except Empty:
                continue
            except Exception as exc:  # noqa: BLE001 - the queue actor is gone: stop printing, keep training
                log.debug("progress stopped: %s", exc)
                return

    def _print(self, metrics: dict[str, Any]) -> None:
        if "epoch_seconds" in metrics:
            self.epoch_seconds.append(float(metrics["epoch_seconds"]))
        mean = sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None
        print(f"raypipe train: {format_progress(metrics, self.epochs, mean)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# 3. Driver


def _check_roles(counts: dict[str, dict[str, int]]) -> None:
    for role in ("train", "dev"):
        c = counts.get(role, {"live": 0, "attack": 0})
        if c["live"] == 0 or c["attack"] == 0:
            raise ValueError(f"the {role} split needs live and attack crops, has {c}")


def _params(config: TrainConfig, counts: dict, index) -> dict[str, Any]:
    flat = {k: v for k, v in asdict(config).items() if k not in ("augment",)}
    flat.update({f"augment.{k}": v for k, v in asdict(config.augment).items()})
    flat["pipeline_version"] = ",".join(sorted(set(index["pipeline_version"].to_pylist())))
    flat["datasets_in_data"] = ",".join(sorted(set(index["dataset"].to_pylist())))
    flat.update({f"rows.{role}.{label}": n for role, c in counts.items() for label, n in c.items()})
    return flat


#: auto: stream when the decoded train + dev inputs would fill more than this share of the object store
STREAM_ABOVE_OBJECT_STORE_SHARE = 0.25


def streams(config: TrainConfig, counts: dict[str, dict[str, int]], spec) -> bool:
    """``--stream/--no-stream``, else stream when the decoded inputs (rows x S x S x 3 bytes)
    would fill more than a quarter of the cluster's object store. Small data is decoded once
    and held: streaming re-reads and re-decodes every epoch in fresh reader processes, which
    costs seconds an epoch on a small machine (docs/training.md, throughput)."""
    if config.stream is not None:
        return config.stream
    import ray

    rows = sum(n for role in ("train", "dev") for n in counts.get(role, {}).values())
    decoded = rows * spec.input_size * spec.input_size * 3
    return decoded > STREAM_ABOVE_OBJECT_STORE_SHARE * ray.cluster_resources().get("object_store_memory", 0)


def dev_part_name(rank: int) -> str:
    """Streamed training's dataset of the dev files rank ``rank`` scores (every ``workers``-th
    file from the ``rank``-th). Every rank scoring all of dev, as a shared unsplit dataset
    would have it, read, decoded and scored dev ``workers`` times an epoch; a rank whose
    part holds no file (fewer files than workers) has no such dataset and scores nothing."""
    return f"dev_part{rank}"


def training_datasets(config: TrainConfig, plan, spec, stream: bool) -> dict[str, Any]:
    """Ray Datasets of train and dev, streamed or decoded once and materialised."""
    from raypipe import crops

    if stream:
        # Each epoch reads the crop files in a new seeded order and decodes them in the
        # pipeline; a shuffle buffer on each worker mixes rows across files (rows are
        # stored in the adapter's order, NUAA: live, then attacks). Dev is read in parts,
        # one per rank (dev_part_name), so that no dev row is read, decoded or scored twice.
        dev_files = crops.role_files(config.data, "dev", plan, config.datasets)
        parts = {dev_part_name(rank): dev_files[rank::config.workers] for rank in range(config.workers)}
        return {"train": crops.streaming_dataset(config.data, "train", plan, spec, config.datasets, seed=config.seed),
                **{name: crops.streaming_dataset(config.data, "dev", plan, spec, config.datasets, files=files)
                   for name, files in parts.items() if files}}
    # Held: a local shuffle buffer cannot mix the adapter's order, one seeded global shuffle
    # before materialising does.
    datasets = {role: crops.ray_dataset(config.data, role, plan, spec, config.datasets) for role in ("train", "dev")}
    datasets["train"] = datasets["train"].random_shuffle(seed=config.seed)
    return {role: ds.materialize() for role, ds in datasets.items()}


def run_training(config: TrainConfig, address: str | None = None) -> dict[str, Any]:
    """Train, pick the dev threshold, log everything to MLflow, register. Returns the summary."""
    import mlflow
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raypipe import crops
    from raypipe.models.store import configure_tracking
    from raypipe.runtime import check_gpu_workers, check_tracking_reachable, init_ray, resolve_use_gpu

    started = time.perf_counter()
    tracking_uri = configure_tracking(config.tracking_uri)
    crops.check_one_protocol(config.data, config.datasets)
    index = crops.read_index(config.data, config.datasets)
    face = crops.face_settings(config.data, config.datasets)  # stored with the model, for serving
    # Fail before training, not after it: a bad rule or an unreadable cross-data path.
    metrics.parse_threshold_rule(config.threshold_rule)
    if config.cross_data:
        crops.read_index(config.cross_data)
    plan = crops.plan_splits(index, config.dev_fraction, config.seed, config.dev_by)
    log.info("dev split: %s", "; ".join(f"{d}: {rule}" for d, rule in plan.describe().items()))
    counts = crops.role_counts(index, plan)
    _check_roles(counts)
    keep_last_batch = keeps_last_batch(sum(counts["train"].values()), config.workers, config.batch_size)
    storage_path = config.storage_path or default_storage()
    resumed_run = find_run_to_resume(config, storage_path) if config.resume else None
    init_ray(address)
    use_gpu = resolve_use_gpu(config.use_gpu)
    if use_gpu:
        check_gpu_workers(config.workers)
    check_tracking_reachable(tracking_uri, use_gpu)  # rank 0 logs there from wherever it runs
    spec = get_spec(config.model)
    stream = streams(config, counts, spec)
    datasets = training_datasets(config, plan, spec, stream)

    with _start_run(config, resumed_run) as run:
        if resumed_run is None:
            mlflow.log_params({**_params(config, counts, index), "streamed": stream})
            mlflow.log_dict({"split_plan": plan.to_dict(), "dev": plan.describe(), "rows": counts},
                            "data_manifest.json")
            mlflow.set_tag("raypipe.dev_rule", "; ".join(f"{d}: {rule}" for d, rule in plan.describe().items())[:5000])
        progress = EpochProgress(config.epochs)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": config, "run_id": run.info.run_id, "tracking_uri": tracking_uri,
                               "keep_last_batch": keep_last_batch, "stream": stream, "datasets": sorted(datasets)},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu,
                                         resources_per_worker=worker_resources(config, use_gpu)),
            torch_config=torch_config(use_gpu),
            run_config=RunConfig(name=train_run_name(config.experiment, run.info.run_id),
                                 storage_path=storage_path,
                                 failure_config=FailureConfig(max_failures=config.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 callbacks=[progress.callback()]),
            datasets=datasets,
            # Dev is not split by Ray Data (its equal split would drop rows): held, each rank
            # scores a slice of it (rank_slice); streamed, its own part (dev_part_name).
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        with progress:
            result = _fit_keeping_sigint_handler(trainer)
        state = _load_final_state(result.checkpoint)
        device = state.get("device") or {"type": "cuda" if use_gpu else "cpu", "fallback": None}
        if device["fallback"]:
            print(f"raypipe train: {device['fallback']}", file=sys.stderr, flush=True)
        summary = _finish_run(config, state, run.info.run_id, device["type"] == "cuda", face)
        summary.update(requested_gpu=use_gpu, device=device["type"], resumed=resumed_run is not None)
        summary["dev_rule"] = plan.describe()
        summary["streamed"] = stream
        summary["train_samples_per_second"] = _throughput(state["history"], counts["train"])
        mlflow.log_metric("train_samples_per_second", summary["train_samples_per_second"])
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


class NothingToResume(ValueError):
    """``--resume`` found no run of the experiment that stopped with a checkpoint to go on from."""


SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints


def train_run_name(experiment: str, run_id: str) -> str:
    """The Ray Train run (a folder of ``--storage-path``) of one MLflow run: Ray Train V2
    resumes a run started again with the same name and storage path from its last checkpoint."""
    return f"{experiment}-{run_id[:12]}"


def find_run_to_resume(config: TrainConfig, storage_path: str) -> str:
    """The MLflow run ``--resume`` continues: the experiment's latest run (named ``--run-name``,
    when given) that did not finish and left Ray Train checkpoints in ``storage_path``."""
    import mlflow

    from raypipe import storage

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(config.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                              max_results=100) if experiment else []
    for run in runs:
        if run.info.status == "FINISHED" or (config.run_name and run.info.run_name != config.run_name):
            continue
        snapshot = storage.join(storage.absolute(storage_path), train_run_name(config.experiment, run.info.run_id),
                                SNAPSHOT_FILE)
        filesystem, path = storage.resolve(snapshot)
        if filesystem.get_file_info(path).is_file:
            log.info("resuming MLflow run %s (%s) from %s", run.info.run_id, run.info.status,
                     storage.redact(snapshot))
            return run.info.run_id
    named = f" named {config.run_name!r}" if config.run_name else ""
    raise NothingToResume(f"--resume: experiment {config.experiment!r} has no unfinished run{named} with "
                          f"checkpoints in {storage.redact(storage_path)} (was it started with another "
                          "--storage-path or --experiment?)")


def _start_run(config: TrainConfig, resumed_run: str | None) -> Any:
    import mlflow

    from raypipe.models.store import ensure_experiment

    if resumed_run:
        return mlflow.start_run(run_id=resumed_run)
    return mlflow.start_run(experiment_id=ensure_experiment(config.experiment), run_name=config.run_name)


def _fit_keeping_sigint_handler(trainer: Any) -> Any:
    """``trainer.fit()``, then the caller's SIGINT handler back in place.

    Ray Train V2's ``fit`` installs a handler that aborts its controller on Ctrl-C and never
    removes it; after training that handler calls the finished controller and swallows
    Ctrl-C, so a process that goes on (``raypipe demo`` serving) could no longer be stopped.
    """
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()  # handlers can only be set from the main thread: Ray does not either
    previous = signal.getsignal(signal.SIGINT)
    try:
        return trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)


def _throughput(history: list[dict], train_counts: dict[str, int]) -> float:
    """Samples trained per second over all epochs (all workers; dev scoring included).

    Counts the samples the workers trained on, not the split's rows: with ``drop_last`` each
    worker leaves out its shard's last partial batch (832 of 871 rows on NUAA with 2 workers),
    and counting those would overstate the rate ~5 % against a loop that trains every row.
    Histories from checkpoints written before ``train_samples`` existed fall back to the rows."""
    seconds = sum(h["epoch_seconds"] for h in history)
    rows = sum(train_counts.values())
    samples = sum(h.get("train_samples", rows) for h in history)
    return round(samples / seconds, 1) if seconds else 0.0


def default_storage() -> str:
    """Where Ray Train checkpoints go without ``--storage-path``."""
    from raypipe.storage import data_dir

    return str(data_dir() / "ray_results")


def _load_final_state(checkpoint) -> dict[str, Any]:
    if checkpoint is None:
        raise RuntimeError("training reported no checkpoint")
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def _finish_run(config: TrainConfig, state: dict[str, Any], run_id: str, used_gpu: bool,
                face: dict | None) -> dict[str, Any]:
    """Best weights -> dev threshold and metrics -> artifacts -> registered model (with the
    crop settings of its data, so serving cuts the same crops)."""
    import mlflow

    from raypipe import crops
    from raypipe.models.store import face_tag, log_and_register

    best = state["best"]
    model, _ = build_model_and_loss(config)
    model.load_state_dict(best["model"])
    labels, scores, types = best["labels"], best["scores"], best["attack_types"]
    threshold = metrics.choose_threshold(labels, scores, config.threshold_rule, types)
    dev = metrics.compute_all(labels, scores, threshold, types)
    mlflow.log_metrics({f"dev_{k}": v for k, v in dev.items() if isinstance(v, (int, float)) and v is not None})
    mlflow.log_params({"pretrained_source": getattr(model, "pretrained_source", "scratch"), "used_gpu": used_gpu,
                       "best_epoch": best["epoch"]})
    _log_artifacts(model, state, dev, labels, scores, threshold)
    cross = generalisation_report(model, threshold, config.cross_data) if config.cross_data else None
    if cross:
        mlflow.log_metrics({f"cross_{k}": v for k, v in cross.items() if isinstance(v, float)})
        mlflow.log_dict(cross, "metrics/cross_metrics.json")
    pipeline_version = mlflow.get_run(run_id).data.params.get("pipeline_version", "")
    dev_rule = mlflow.get_run(run_id).data.tags.get("raypipe.dev_rule", "")
    registered = log_and_register(
        model, threshold=threshold, register_as=config.register, promote=config.promote, force=config.force,
        dev_hter=dev["hter"], dev_rule=f"{dev_rule} | threshold {config.threshold_rule}",
        check_inputs=crops.sample_inputs(config.data, unwrap_model(model).spec, config.datasets),
        extra_tags={"pipeline_version": pipeline_version, "threshold_rule": config.threshold_rule,
                    "train_run_id": run_id, **(face_tag(face) if face else {})})
    return {"run_id": run_id, "model_uri": registered.model_uri, "version": registered.version,
            "threshold": threshold, "promoted": registered.promoted, "promotion": registered.promotion,
            "onnx": registered.onnx, "dev": dev, "cross": cross, "epochs_run": len(state["history"]), "best_epoch": best["epoch"],
            "restarts": state.get("restarts", 0), "model": config.model}


CROSS_KEYS = ("hter", "far", "frr", "apcer", "bpcer", "acer", "eer", "auc", "n_live", "n_attack")


def generalisation_report(model: nn.Module, threshold: float, data: str) -> dict[str, Any]:
    """The trained model on every row of another preprocess output (another database, an
    unseen session), at the threshold chosen on dev: what it does on data it never saw."""
    from raypipe import crops
    from raypipe.predict import Predictor

    index = crops.read_index(data)
    predictor = Predictor(model, unwrap_model(model).spec, "cpu")
    parts = [predictor.score_batches(crops.iter_local_batches(data, split, crops.SplitPlan(), predictor.spec))
             for split in sorted(set(index["split"].to_pylist()))]
    labels, scores = np.concatenate([p.labels for p in parts]), np.concatenate([p.scores for p in parts])
    types = np.concatenate([p.attack_types for p in parts])
    result = metrics.compute_all(labels, scores, threshold, types)
    report = {k: result.get(k) for k in CROSS_KEYS}
    report.update(data=str(data), datasets=sorted(set(index["dataset"].to_pylist())), threshold=threshold)
    log.info("generalisation report on %s: HTER %.3f, AUC %s", data, report["hter"], report["auc"])
    return report


def _log_artifacts(model: nn.Module, state: dict, dev: dict, labels, scores, threshold: float) -> None:
    """Metrics JSON, efficiency report, and the plots (each plot failure is logged, not fatal)."""
    import mlflow

    from raypipe.models import efficiency_report

    mlflow.log_dict(dev, "metrics/dev_metrics.json")
    mlflow.log_dict({"history": state["history"]}, "metrics/history.json")
    mlflow.log_dict(efficiency_report(model), "efficiency.json")
    with tempfile.TemporaryDirectory() as directory:
        for name, draw in _plotters(state["history"], labels, scores, threshold).items():
            try:
                draw(str(Path(directory) / f"{name}.png"))
            except Exception as exc:  # noqa: BLE001 - a plot must never lose a trained model
                log.warning("could not draw %s: %s", name, exc)
        mlflow.log_artifacts(directory, "plots")


def _plotters(history, labels, scores, threshold) -> dict[str, Any]:
    from raypipe import plots

    return {"confusion_matrix": lambda p: plots.confusion_matrix_figure(labels, scores, threshold, p),
            "roc": lambda p: plots.roc_figure(labels, scores, p),
            "det": lambda p: plots.det_figure(labels, scores, p),
            "curves": lambda p: plots.training_curves_figure(history, p)}
