"""`raypipe ...`: thin argument parsing over library calls.

Each subcommand that runs a job ends with exactly one JSON line on stdout; logs and
progress go to stderr so the line can be piped (`raypipe preprocess ... | tail -1`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable, Sequence

# Quiet MediaPipe/LiteRT's C++ INFO lines before anything imports it.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COMMANDS: dict[str, Callable[[argparse.Namespace], dict | None]] = {}


def command(name: str):
    def register(fn: Callable[[argparse.Namespace], dict | None]):
        COMMANDS[name] = fn
        return fn
    return register


def emit(summary: dict) -> None:
    """The one JSON line a job ends with."""
    sys.stdout.write(json.dumps(summary, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------


def add_preprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="dataset -> face crops as Parquet (Ray Data)")
    p.add_argument("--dataset", required=True, help="adapter name, e.g. nuaa, oulu_npu, folder")
    p.add_argument("--root", required=True, help="dataset root in its native layout")
    p.add_argument("--out", required=True, help="output directory (local, NFS, or s3://...)")
    p.add_argument("--split", default="all", choices=["train", "dev", "test", "all"])
    p.add_argument("--frames-per-video", type=int, default=5, help="N evenly spaced frames per video")
    p.add_argument("--every", type=int, default=None, help="every k-th frame instead of N evenly spaced")
    p.add_argument("--expand", type=float, default=1.5, help="context factor around the detector box")
    p.add_argument("--crop-size", type=int, default=256)
    p.add_argument("--face-model", default="short_range", choices=["short_range", "full_range"])
    p.add_argument("--min-score", type=float, default=0.5, help="minimum detector score")
    p.add_argument("--png-level", type=int, default=1, choices=range(0, 10), metavar="0-9",
                   help="PNG compression of the crops (lossless either way; 0 is ~10x faster to write, 2.5x larger)")
    p.add_argument("--limit", type=int, default=None, help="a deterministic pseudo-random subset of N inputs")
    p.add_argument("--workers", type=int, default=None, help="face-cropper actors (default: cluster CPUs)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. --option protocol=2 --option fold=3 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


def parse_options(pairs: Sequence[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@command("preprocess")
def cmd_preprocess(args: argparse.Namespace) -> dict:
    from raypipe.face import FaceConfig
    from raypipe.preprocess import PreprocessConfig, run_preprocess

    face = FaceConfig(model=args.face_model, expand=args.expand, crop_size=args.crop_size, min_score=args.min_score,
                      png_compression=args.png_level)
    config = PreprocessConfig(dataset=args.dataset, root=args.root, out=args.out, split=args.split,
                              frames_per_video=args.frames_per_video, every=args.every, limit=args.limit,
                              face=face, workers=args.workers, adapter_options=parse_options(args.option))
    return run_preprocess(config, address=args.address)


def add_fetch_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("fetch-models", help="download and verify the BlazeFace detector models into the cache")


@command("fetch-models")
def cmd_fetch_models(args: argparse.Namespace) -> dict:
    from raypipe.face import MODELS, resolve_model_path

    return {name: str(resolve_model_path(name)) for name in MODELS}


def add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the built-in demo dataset (folder layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


@command("demo-data")
def cmd_demo_data(args: argparse.Namespace) -> dict:
    from raypipe.datasets.demo import make_demo_dataset

    return make_demo_dataset(args.out, seed=args.seed)


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a detector on Parquet crops (Ray Train), log to MLflow, register")
    p.add_argument("--data", required=True, help="preprocess output directory (or its crops/ folder)")
    p.add_argument("--model", default="attacknet", help="attacknet, resnet18, mobilenet_v3_small, shufflenet_v2_x0_5")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=10, help="early stopping on dev loss")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (DDP)")
    p.add_argument("--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="use GPUs (default: when the cluster has them)")
    p.add_argument("--loss", default="ce", help="ce, am_softmax, ce+0.1*similarity, ...")
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--pretrained", default=None, help="'imagenet' (if cached locally) or a weights file")
    p.add_argument("--datasets", default=None, help="comma-separated datasets of the data directory")
    p.add_argument("--threshold-rule", default="eer", help="eer or apcer:<target>, chosen on dev")
    p.add_argument("--experiment", default="raypipe")
    p.add_argument("--run-name", default=None)
    p.add_argument("--register", default=None, help="registered model name")
    p.add_argument("--promote", action="store_true", help="move the 'champion' alias to the new version")
    p.add_argument("--storage-path", default=None, help="Ray Train checkpoints (local, NFS, s3://)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")


@command("train")
def cmd_train(args: argparse.Namespace) -> dict:
    from raypipe.models import AugmentConfig
    from raypipe.train import TrainConfig, run_training

    config = TrainConfig(data=args.data, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, patience=args.patience, workers=args.workers, use_gpu=args.use_gpu,
                         loss=args.loss, augment=AugmentConfig(enabled=not args.no_augment),
                         pretrained=args.pretrained, datasets=split_list(args.datasets),
                         threshold_rule=args.threshold_rule, experiment=args.experiment, run_name=args.run_name,
                         register=args.register, promote=args.promote, storage_path=args.storage_path, seed=args.seed)
    return run_training(config, address=args.address)


def split_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a registered model on Parquet crops with the field's metrics")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a run id")
    p.add_argument("--data", required=True, help="preprocess output directory")
    p.add_argument("--split", default="test", choices=["train", "dev", "test"])
    p.add_argument("--datasets", default=None, help="comma-separated datasets of the data directory")
    p.add_argument("--experiment", default="raypipe-eval")
    p.add_argument("--no-mlflow", dest="log_to_mlflow", action="store_false", help="do not log a run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dev-fraction", type=float, default=0.2, help="as in training, for the carved dev split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the metrics JSON and plots here")
    p.add_argument("--gradcam", type=int, default=4, help="Grad-CAM crops per class (0 = none)")
    p.add_argument("--device", default="auto")


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> dict:
    from raypipe.evaluate import EvaluateConfig, evaluate_model

    return evaluate_model(EvaluateConfig(
        model_uri=args.model, data=args.data, split=args.split, datasets=split_list(args.datasets),
        experiment=args.experiment, log_to_mlflow=args.log_to_mlflow, batch_size=args.batch_size,
        dev_fraction=args.dev_fraction, seed=args.seed, out=args.out, gradcam_per_class=args.gradcam,
        device=args.device))


def add_cross_dataset(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cross-dataset", help="train on each dataset (and all fused), test on every dataset")
    p.add_argument("--data", required=True)
    p.add_argument("--datasets", required=True, help="comma-separated datasets of the data directory")
    p.add_argument("--model", default="attacknet")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--loss", default="ce")
    p.add_argument("--out", default="cross_dataset")
    p.add_argument("--experiment", default="raypipe-cross-dataset")
    p.add_argument("--no-fused", dest="fused", action="store_false")
    p.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig field, e.g. --train-option patience=5")
    p.add_argument("--address", default=None)


@command("cross-dataset")
def cmd_cross_dataset(args: argparse.Namespace) -> dict:
    from raypipe.evaluate import CrossDatasetConfig, cross_dataset

    config = CrossDatasetConfig(data=args.data, datasets=split_list(args.datasets), model=args.model,
                                epochs=args.epochs, workers=args.workers, loss=args.loss, out=args.out,
                                experiment=args.experiment, fused=args.fused,
                                train_kwargs=parse_options(args.train_option))
    return cross_dataset(config, address=args.address)


def add_mlflow_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mlflow-ui", help="start the MLflow UI on the project's tracking store")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--host", default="127.0.0.1")


@command("mlflow-ui")
def cmd_mlflow_ui(args: argparse.Namespace) -> None:
    from raypipe.models.store import default_tracking_uri

    uri = default_tracking_uri()
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri})", file=sys.stderr)
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--host", args.host, "--port", str(args.port)])


def add_contact_sheet(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("contact-sheet", help="a PNG grid of random crops from a preprocess output")
    p.add_argument("--data", required=True, help="preprocess output directory")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("-n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)


@command("contact-sheet")
def cmd_contact_sheet(args: argparse.Namespace) -> dict:
    from raypipe.preprocess import contact_sheet

    return contact_sheet(args.data, args.out, n=args.n, seed=args.seed)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on built-in data, ending with a live HTTP verdict")
    p.add_argument("--dataset", default="demo", help="'demo' (built in) or a dataset adapter name")
    p.add_argument("--root", default=None, help="dataset root when --dataset is not 'demo'")
    p.add_argument("--work-dir", default="data/demo", help="crops, MLflow store and checkpoints go here")
    p.add_argument("--model", default="attacknet")
    p.add_argument("--epochs", type=int, default=30,
                   help="at most; early stopping on dev loss (patience 10) usually ends it sooner")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="preprocess only N inputs")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", dest="serve", action="store_false", help="stop after evaluation")
    p.add_argument("--exit-after-answer", action="store_true", help="serve, answer one request, then exit")
    p.add_argument("--address", default=None)


@command("demo")
def cmd_demo(args: argparse.Namespace) -> None:
    from raypipe.demo import DemoConfig, run_demo, serve_forever

    config = DemoConfig(dataset=args.dataset, root=args.root, work_dir=args.work_dir, model=args.model,
                        epochs=args.epochs, workers=args.workers, limit=args.limit, serve=args.serve,
                        port=args.port, address=args.address)
    summary = run_demo(config)
    emit(summary)
    if config.serve and not args.exit_after_answer:
        serve_forever(summary)


def add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="preprocess -> train -> evaluate -> register + promote, as one job")
    p.add_argument("--dataset", required=True, help="adapter name, e.g. nuaa, oulu_npu, folder")
    p.add_argument("--root", required=True, help="dataset root in its native layout")
    p.add_argument("--out", required=True, help="crops output (local, shared mount, or s3://...)")
    p.add_argument("--split", default="all", choices=["train", "dev", "test", "all"])
    p.add_argument("--limit", type=int, default=None, help="preprocess only N inputs")
    p.add_argument("--model", default="attacknet")
    p.add_argument("--epochs", type=int, default=100, help="at most, as in train; early stopping on dev loss")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu", dest="use_gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="train on GPUs (default: when the cluster has them)")
    p.add_argument("--register", default="attacknet", help="registered model name (serve_config.yaml serves attacknet)")
    p.add_argument("--no-promote", dest="promote", action="store_false", help="do not move the champion alias")
    p.add_argument("--experiment", default="pipeline")
    p.add_argument("--storage-path", default=None, help="Ray Train checkpoints: shared mount or s3://... on a cluster")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


@command("pipeline")
def cmd_pipeline(args: argparse.Namespace) -> dict:
    from raypipe.pipeline import PipelineConfig, run_pipeline

    return run_pipeline(PipelineConfig(
        dataset=args.dataset, root=args.root, out=args.out, split=args.split, limit=args.limit, model=args.model,
        epochs=args.epochs, workers=args.workers, use_gpu=args.use_gpu, register=args.register,
        promote=args.promote, experiment=args.experiment, storage_path=args.storage_path, address=args.address))


PARSERS = [add_demo, add_pipeline, add_contact_sheet, add_preprocess, add_train, add_evaluate, add_cross_dataset, add_mlflow_ui, add_fetch_models, add_demo_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def is_user_error(exc: BaseException) -> bool:
    """Bad flags, paths, data or model references: the message says it all."""
    if isinstance(exc, (ValueError, KeyError, FileNotFoundError)):
        return True
    if "mlflow" in sys.modules:
        from mlflow.exceptions import MlflowException

        return isinstance(exc, MlflowException)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = COMMANDS[args.command](args)
    except Exception as exc:  # noqa: BLE001 - user errors exit 2 with one line; bugs keep their traceback
        if not is_user_error(exc):
            raise
        print(f"raypipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
