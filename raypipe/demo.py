"""`raypipe demo`: the whole pipeline on one laptop, on embedded defaults.

demo data (or a real dataset) -> preprocess (Ray Data) -> train (Ray Train, a few epochs)
-> evaluate -> register + promote -> Serve -> one HTTP request -> the verdict.

Everything lands under ``--work-dir`` (default ``./data/demo``): the Parquet crops, the
MLflow SQLite store and its artifacts, Ray Train checkpoints. Progress goes to stderr; the
command ends with one JSON line on stdout and, unless ``--no-serve``, keeps serving until
interrupted.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from raypipe.config import DemoConfig, PipelineConfig, PreprocessConfig, TrainConfig, pipeline_config

STEPS = 6
PRETRAINED_MODEL = "minifasnet_v2"
FINE_TUNE = {"lr": 1e-4}  # a pretrained start moves little: a tenth of the from-scratch rate


def run_demo(config: DemoConfig) -> dict[str, Any]:
    from raypipe.pipeline import progress_step, run_pipeline

    started = time.perf_counter()
    work = Path(config.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # The demo's own store unless the user points at one (an empty value counts as unset).
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{work / 'mlflow.db'}"
    step = progress_step(STEPS if config.serve else STEPS - 2)
    dataset, root = step("dataset", lambda: _dataset(config, work))
    model, pretrained, start = starting_point(config.model)
    print(f"starting point: {start}", file=sys.stderr, flush=True)
    pipeline = _pipeline(config, dataset, root, work, tracking_uri, model, pretrained)
    summary = {"starting_point": start, **run_pipeline(pipeline, step)}
    summary["mlflow_ui"] = f"MLFLOW_TRACKING_URI={tracking_uri} raypipe mlflow-ui"
    if config.serve:
        url = step("start Ray Serve", lambda: _serve(config, tracking_uri, pipeline.train.register))
        answer = step("ask the endpoint about one image", lambda: _ask(url, *_probe_image(dataset, root)))
        summary.update({"endpoint": f"{url}/v1/detect", "web_page": f"{url}/", "answer": answer})
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


def starting_point(model: str) -> tuple[str, str | None, str]:
    """(model, pretrained source, what to tell the user): ``auto`` fine-tunes the published
    MiniFASNet V2 when its weights can be had (``RAYPIPE_WEIGHTS_DIR``, the cache, or the
    network), else trains AttackNet from scratch."""
    if model != "auto":
        return model, None, f"{model} from scratch (as asked)"
    from raypipe.models import WeightsUnavailable, create_model

    try:
        source = create_model(PRETRAINED_MODEL, pretrained="silentface").pretrained_source
    except WeightsUnavailable as exc:
        return "attacknet", None, f"AttackNet from scratch (no pretrained weights: {exc})"
    return PRETRAINED_MODEL, "silentface", f"{PRETRAINED_MODEL} fine-tuned from {source}"


def _pipeline(config: DemoConfig, dataset: str, root: str, work: Path, tracking_uri: str, model: str,
              pretrained: str | None) -> PipelineConfig:
    """The pipeline the demo runs, everything it writes under ``work``."""
    preprocess = PreprocessConfig(dataset=dataset, root=root, out=str(work / "crops"), limit=config.limit)
    train = TrainConfig(data=preprocess.out, model=model, pretrained=pretrained, epochs=config.epochs,
                        workers=config.workers, register=model, promote=True, experiment="demo",
                        tracking_uri=tracking_uri, storage_path=str(work / "ray_results"),
                        **(FINE_TUNE if pretrained else {}))
    return pipeline_config(preprocess, train, config.address)


def _dataset(config: DemoConfig, work: Path) -> tuple[str, str]:
    if config.dataset != "demo":
        if not config.root:
            raise ValueError("--root is required with --dataset")
        return config.dataset, config.root
    from raypipe.datasets.demo import make_demo_dataset

    root = work / "demo-data"
    if not (root / "train").is_dir():
        make_demo_dataset(root)
    return "folder", str(root)


def _serve(config: DemoConfig, tracking_uri: str, registered: str) -> str:
    from ray import serve

    from raypipe.serve import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": config.port})
    serve.run(build_app({"model_uri": f"models:/{registered}@champion", "tracking_uri": tracking_uri}),
              name="raypipe", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{config.port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5):
                return url
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise RuntimeError(f"the Serve endpoint {url} did not become healthy in 180 s")


def _probe_image(dataset: str, root: str) -> tuple[Path, str]:
    """A live test-split image of the dataset (any image when it has none) and its ground truth."""
    from raypipe.datasets import get_adapter
    from raypipe.datasets.base import LIVE

    samples = [s for s in get_adapter(dataset, root).samples() if s.media == "image"]
    test = [s for s in samples if s.split == "test"] or samples
    probe = next((s for s in test if s.label == LIVE), test[0])
    return Path(probe.path), "live" if probe.label == LIVE else "attack"


def _ask(url: str, image: Path, truth: str) -> dict:
    body = json.dumps({"image": base64.b64encode(image.read_bytes()).decode()}).encode()
    request = urllib.request.Request(f"{url}/v1/detect", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.loads(response.read())
    faces = answer.get("faces", [])
    verdict = ", ".join(f"{f['label']} ({f['confidence']:.2f})" for f in faces) or "no face"
    shown = "/".join(image.parts[-2:])
    print(f"verdict for {shown} (ground truth: {truth}): {verdict}", file=sys.stderr, flush=True)
    return {"image": shown, "truth": truth, "faces": faces, "model": answer.get("model")}


def serve_forever(summary: dict) -> None:
    print(f"\nServing {summary['endpoint']} (web page {summary['web_page']}); "
          f"MLflow UI: {summary['mlflow_ui']}. Ctrl-C to stop.", file=sys.stderr, flush=True)
    try:
        # Short sleeps: Ctrl-C may be delivered to one of Ray's threads, and Python only runs the
        # handler when the main thread wakes up; one long sleep left the demo deaf to Ctrl-C.
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
