"""Preprocessing throughput: the Ray Data pipeline against a plain single-process loop.

Both run the same face pipeline (FacePipeline.process + encode) over the same inputs.
Run from the project root:

    .venv/bin/python benchmarks/preprocess.py [--root ../shared/datasets/nuaa] [--limit N]

Writes benchmarks/results/preprocess.json. The Ray figure is end to end for the job
(listing, actor start-up, detection, Parquet writing, the read-back check), Ray start-up
excluded and reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("GLOG_minloglevel", "2")

from raypipe.face import FaceConfig, FaceError, FacePipeline  # noqa: E402
from raypipe.preprocess import PreprocessConfig, list_samples, read_bytes, run_preprocess  # noqa: E402

HERE = Path(__file__).resolve().parent
GOAL_IMAGES_PER_SECOND, GOAL_SPEEDUP = 250.0, 1.7


def plain_loop(records: list[dict], config: FaceConfig) -> dict:
    """One process, one detector: read, decode, detect, crop, encode each image."""
    import cv2

    cv2.setNumThreads(1)  # same as the Ray actors: one core's worth of work
    pipeline = FacePipeline(config)
    started, crops, rejected = time.perf_counter(), 0, 0
    for record in records:
        try:
            pipeline.encode(pipeline.process(read_bytes(record["path"])).primary.crop)
            crops += 1
        except FaceError:
            rejected += 1
    seconds = time.perf_counter() - started
    pipeline.close()
    return {"seconds": round(seconds, 3), "images": len(records), "rows": crops, "rejected": rejected,
            "images_per_second": round(len(records) / seconds, 2)}


def ray_pipeline(config: PreprocessConfig) -> dict:
    import ray

    from raypipe.runtime import init_ray

    started = time.perf_counter()
    init_ray()
    startup = time.perf_counter() - started
    summary = run_preprocess(config)
    cpus = ray.cluster_resources().get("CPU")
    return {"seconds": summary["seconds"], "images": summary["inputs"], "rows": summary["rows"],
            "rejected": summary["rejected"], "images_per_second": summary["images_per_second"],
            "ray_startup_seconds": round(startup, 2), "cluster_cpus": cpus}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="nuaa")
    parser.add_argument("--root", default=str(HERE.parent.parent / "shared" / "datasets" / "nuaa"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--png-level", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="raypipe-bench-") as tmp:
        config = PreprocessConfig(dataset=args.dataset, root=args.root, out=tmp, split=args.split, limit=args.limit,
                                  face=FaceConfig(png_compression=args.png_level))
        records, _ = list_samples(config)
        plain = plain_loop(records, config.face)
        ray_result = ray_pipeline(config)
    result = {
        "benchmark": "preprocess", "dataset": args.dataset, "split": args.split, "images": len(records),
        "plain_single_process": plain, "ray_data": ray_result,
        "speedup": round(ray_result["images_per_second"] / plain["images_per_second"], 2),
        "goal": {"images_per_second": GOAL_IMAGES_PER_SECOND, "speedup": GOAL_SPEEDUP},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = Path(args.out or HERE / "results" / f"preprocess_png{args.png_level}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
