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

    face = FaceConfig(model=args.face_model, expand=args.expand, crop_size=args.crop_size, min_score=args.min_score)
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


PARSERS = [add_preprocess, add_fetch_models, add_demo_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raypipe", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = COMMANDS[args.command](args)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        print(f"raypipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if result is not None:
        emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
