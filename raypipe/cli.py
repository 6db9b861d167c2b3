"""`raypipe ...`: thin argument parsing over library calls.

Each subcommand that runs a job ends with exactly one JSON line on stdout; logs and
progress go to stderr so the line can be piped (`raypipe preprocess ... | tail -1`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
from typing import Any, Callable, Sequence

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
# Flags from the config dataclasses: default, type and help have one source (raypipe.config).


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _parse_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_fields(parser: argparse.ArgumentParser, config: type, names: Sequence[str], prefix: str = "") -> None:
    """One flag per named field of the dataclass ``config``; ``prefix`` namespaces the dests
    (``face.expand``) so nested configs are rebuilt by :func:`from_args`."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(config)
    groups: dict[str, Any] = {}  # metadata "exclusive" -> argparse's mutually exclusive group
    for name in names:
        f, kind = fields[name], hints[name]
        args = typing.get_args(kind)
        optional = type(None) in args  # X | None: the flag's type is X (list[str] has args too: not unwrapped)
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        options: dict[str, Any] = {"dest": prefix + name, "help": help_text + (f" (default: {default})" if
                                                                              has_default and default is not None else "")}
        if "choices" in f.metadata:
            options["choices"] = f.metadata["choices"]
        if base is bool:
            options.update(action=argparse.BooleanOptionalAction, default=default)
        elif typing.get_origin(base) is list:
            options.update(type=_parse_list, default=default, required=not has_default, metavar="A,B,...")
        else:
            options.update(type=base, default=default, required=not has_default)
            if "choices" not in options:
                options["metavar"] = name.upper()
        target = parser
        if "exclusive" in f.metadata:
            key = f.metadata["exclusive"]
            target = groups[key] = groups.get(key) or parser.add_mutually_exclusive_group()
        target.add_argument(_flag(f), **options)


def from_args(config: type, args: argparse.Namespace, prefix: str = "", **values: Any) -> Any:
    """The dataclass ``config`` from the flags :func:`add_fields` added (others keep defaults)."""
    parsed = vars(args)
    for f in dataclasses.fields(config):
        if prefix + f.name in parsed and f.name not in values:
            values[f.name] = parsed[prefix + f.name]
    return config(**values)


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


# --------------------------------------------------------------------------------------

PREPROCESS_FIELDS = ["dataset", "root", "out", "split", "frames_per_video", "every", "limit", "name", "workers",
                     "max_actors", "resume"]
FACE_FIELDS = ["expand", "crop_size", "model", "min_score", "png_compression"]


def add_preprocess(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import PreprocessConfig
    from raypipe.face import FaceConfig

    p = sub.add_parser("preprocess", help="dataset -> face crops as Parquet (Ray Data)")
    add_fields(p, PreprocessConfig, PREPROCESS_FIELDS)
    add_fields(p, FaceConfig, FACE_FIELDS, prefix="face.")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="adapter option, e.g. --option protocol=2 --option fold=3 (repeatable)")
    add_address(p)


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


def preprocess_config(args: argparse.Namespace) -> Any:
    from raypipe.config import PreprocessConfig
    from raypipe.face import FaceConfig

    return from_args(PreprocessConfig, args, face=from_args(FaceConfig, args, prefix="face."),
                     adapter_options=parse_options(args.option))


@command("preprocess")
def cmd_preprocess(args: argparse.Namespace) -> dict:
    from raypipe.preprocess import run_preprocess

    return run_preprocess(preprocess_config(args), address=args.address)


def add_fetch_models(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("fetch-models", help="download and verify the BlazeFace detector models (required) and the "
                                        "pretrained MiniFASNet weights (optional) into the cache")


@command("fetch-models")
def cmd_fetch_models(args: argparse.Namespace) -> dict:
    from raypipe.face import MODELS, resolve_model_path
    from raypipe.models.weights import SILENTFACE_V1SE, SILENTFACE_V2, WeightsUnavailable, resolve_weights

    found: dict[str, str] = {name: str(resolve_model_path(name)) for name in MODELS}
    for weights in (SILENTFACE_V2, SILENTFACE_V1SE):
        try:  # optional: without them the demo trains from scratch and says why
            found[weights.file] = str(resolve_weights(weights))
        except WeightsUnavailable as exc:
            print(f"raypipe fetch-models: optional pretrained weights unavailable: {exc}", file=sys.stderr)
            found[weights.file] = "unavailable"
    return found


def add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="write the built-in demo dataset (folder layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)


@command("demo-data")
def cmd_demo_data(args: argparse.Namespace) -> dict:
    from raypipe.datasets.demo import make_demo_dataset

    return make_demo_dataset(args.out, seed=args.seed)


# Every TrainConfig field a user sets from the command line (the rest keep their defaults).
TRAIN_FIELDS = ["model", "epochs", "batch_size", "lr", "patience", "workers", "cpus_per_worker", "stream",
                "shuffle_buffer", "use_gpu", "loss",
                "pretrained", "freeze_norm",
                "datasets", "dev_by", "dev_fraction", "threshold_rule", "cross_data", "experiment", "run_name",
                "register", "promote", "force", "storage_path", "seed", "tracking_uri", "resume"]


AUGMENT_FIELDS = ["enabled", "affine", "horizontal_flip_p", "brightness", "gamma", "blur_p", "jpeg_p"]


def add_train_fields(p: argparse.ArgumentParser, names: Sequence[str]) -> None:
    from raypipe.config import AugmentConfig, TrainConfig

    add_fields(p, TrainConfig, names, prefix="train.")
    add_fields(p, AugmentConfig, AUGMENT_FIELDS, prefix="augment.")


def train_config(args: argparse.Namespace, **values: Any) -> Any:
    from raypipe.config import AugmentConfig, TrainConfig

    return from_args(TrainConfig, args, prefix="train.", augment=from_args(AugmentConfig, args, prefix="augment."),
                     **values)


def add_train(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import TrainConfig

    p = sub.add_parser("train", help="train a detector on Parquet crops (Ray Train), log to MLflow, register")
    add_fields(p, TrainConfig, ["data"], prefix="train.")
    add_train_fields(p, TRAIN_FIELDS)
    add_address(p)


@command("train")
def cmd_train(args: argparse.Namespace) -> dict:
    from raypipe.train import run_training

    return run_training(train_config(args), address=args.address)


def add_register_pretrained(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import RegisterPretrainedConfig

    p = sub.add_parser("register-pretrained", help="register a published model (MiniFASNet) without training, "
                                                   "optionally calibrated on your data's dev split")
    add_fields(p, RegisterPretrainedConfig, [f.name for f in dataclasses.fields(RegisterPretrainedConfig)])


@command("register-pretrained")
def cmd_register_pretrained(args: argparse.Namespace) -> dict:
    from raypipe.config import RegisterPretrainedConfig
    from raypipe.zoo import register_pretrained

    return register_pretrained(from_args(RegisterPretrainedConfig, args))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import EvaluateConfig

    p = sub.add_parser("evaluate", help="score a registered model on Parquet crops with the field's metrics")
    add_fields(p, EvaluateConfig, [f.name for f in dataclasses.fields(EvaluateConfig)])


@command("evaluate")
def cmd_evaluate(args: argparse.Namespace) -> dict:
    from raypipe.config import EvaluateConfig
    from raypipe.evaluate import evaluate_model

    return evaluate_model(from_args(EvaluateConfig, args))


def add_export(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import ExportConfig

    p = sub.add_parser("export", help="write a registered model as ONNX (model.onnx + model.json) to deploy elsewhere")
    add_fields(p, ExportConfig, [f.name for f in dataclasses.fields(ExportConfig)])


@command("export")
def cmd_export(args: argparse.Namespace) -> dict:
    from raypipe.config import ExportConfig
    from raypipe.export import export_registered

    return export_registered(from_args(ExportConfig, args))


def add_cross_dataset(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import CrossDatasetConfig

    p = sub.add_parser("cross-dataset", help="train on each dataset (and all fused), test on every dataset")
    add_fields(p, CrossDatasetConfig, ["data", "datasets", "out", "experiment", "fused"])
    add_train_fields(p, [n for n in TRAIN_FIELDS
                         if n not in ("datasets", "experiment", "register", "promote", "force", "resume")])
    add_address(p)


@command("cross-dataset")
def cmd_cross_dataset(args: argparse.Namespace) -> dict:
    from raypipe.config import CrossDatasetConfig
    from raypipe.experiments import cross_dataset

    config = from_args(CrossDatasetConfig, args, train=train_config(args, data=args.data))
    return cross_dataset(config, address=args.address)


BENCHMARK_FIELDS = ["protocol", "roots", "work", "out", "folds", "threshold", "video_score", "frames_per_video",
                    "experiment", "dry_run", "concurrent_folds"]
# the benchmark sets these per fold (datasets, experiment, threshold rule) or never does them (registry, cross-data)
BENCHMARK_TRAIN_FIELDS = [n for n in TRAIN_FIELDS if n not in (
    "datasets", "experiment", "run_name", "register", "promote", "force", "threshold_rule", "cross_data", "resume")]


def add_benchmark(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import BenchmarkConfig

    p = sub.add_parser("benchmark", help="run a published protocol (OULU-NPU 1-4, leave-one-dataset-out O/C/I/M, "
                                         "NUAA) or a YAML one: preprocess, train, dev threshold, test, MLflow")
    add_fields(p, BenchmarkConfig, BENCHMARK_FIELDS)
    add_train_fields(p, BENCHMARK_TRAIN_FIELDS)
    add_address(p)


@command("benchmark")
def cmd_benchmark(args: argparse.Namespace) -> dict:
    from raypipe.config import BenchmarkConfig
    from raypipe.protocols import run_benchmark

    return run_benchmark(from_args(BenchmarkConfig, args, train=train_config(args, data="")), address=args.address)


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
    from raypipe.config import DemoConfig

    p = sub.add_parser("demo", help="the whole pipeline on built-in data, ending with a live HTTP verdict")
    add_fields(p, DemoConfig, ["dataset", "root", "work_dir", "model", "epochs", "workers", "limit", "serve", "port",
                               "address"])
    p.add_argument("--exit-after-answer", action="store_true", help="serve, answer one request, then exit")


@command("demo")
def cmd_demo(args: argparse.Namespace) -> None:
    from raypipe.config import DemoConfig
    from raypipe.demo import run_demo, serve_forever

    config = from_args(DemoConfig, args)
    summary = run_demo(config)
    emit(summary)
    if config.serve and not args.exit_after_answer:
        serve_forever(summary)


def add_pipeline(sub: argparse._SubParsersAction) -> None:
    from raypipe.config import PreprocessConfig

    p = sub.add_parser("pipeline", help="preprocess -> train -> evaluate -> register + promote, as one job")
    add_fields(p, PreprocessConfig, ["dataset", "root", "out", "split", "limit", "max_actors"])
    add_train_fields(p, [n for n in TRAIN_FIELDS if n not in ("register", "promote", "experiment", "resume")])
    # The pipeline's own defaults: it registers and promotes what serve_config.yaml serves.
    p.add_argument("--register", dest="train.register", default="attacknet",
                   help="registered model name (serve_config.yaml serves attacknet) (default: attacknet)")
    p.add_argument("--no-promote", dest="train.promote", action="store_false", help="do not move the champion alias")
    p.add_argument("--experiment", dest="train.experiment", default="pipeline", help="MLflow experiment")
    add_address(p)


@command("pipeline")
def cmd_pipeline(args: argparse.Namespace) -> dict:
    from raypipe.config import PreprocessConfig, pipeline_config
    from raypipe.pipeline import run_pipeline

    preprocess = from_args(PreprocessConfig, args)
    return run_pipeline(pipeline_config(preprocess, train_config(args, data=preprocess.out), args.address))


PARSERS = [add_demo, add_pipeline, add_contact_sheet, add_preprocess, add_train, add_register_pretrained, add_evaluate,
           add_export, add_cross_dataset, add_benchmark, add_mlflow_ui, add_fetch_models, add_demo_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def is_user_error(exc: BaseException) -> bool:
    """Bad flags, paths, data or model references, missing model files: the message says it all."""
    from raypipe.face import ModelUnavailable

    if isinstance(exc, (ValueError, KeyError, FileNotFoundError, ModelUnavailable)):
        return True
    if "raypipe.models.weights" in sys.modules:
        from raypipe.models.weights import WeightsUnavailable

        if isinstance(exc, WeightsUnavailable):
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
