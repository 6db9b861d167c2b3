"""What a Classifier replica's start costs, step by step, for both runtimes.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/replica_start.py   # ~1 minute

Each runtime is measured in fresh Python processes (imports are cached per process), in
the order a replica takes the steps: import the serving module, import the runtime's
libraries, load the model. The ONNX path gets the reference the app builder resolved
(no registry access in the replica); the torch path resolves and loads through MLflow
as before. Registers a freshly initialised AttackNet (and, when its weights are at hand,
MiniFASNetV2) in a temporary MLflow store. Results: benchmarks/results/replica_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS = r"""
import json, sys, time
t = {}
start = time.perf_counter()
import raypipe.serve.deployments  # what every replica imports (Ray Serve, FastAPI, OpenCV, MediaPipe)
t["import raypipe.serve.deployments"] = time.perf_counter() - start
served, runtime, tracking, version = json.loads(sys.argv[1])
if runtime == "onnx":
    mark = time.perf_counter(); import onnxruntime; t["import onnxruntime"] = time.perf_counter() - mark
    from raypipe.serve.runners import OnnxRunner, ServedModel
    mark = time.perf_counter(); OnnxRunner(ServedModel.from_dict(served)); t["read + verify + open model.onnx"] = time.perf_counter() - mark
else:
    mark = time.perf_counter(); import torch; t["import torch"] = time.perf_counter() - mark
    mark = time.perf_counter(); import torchvision, raypipe.models; t["import torchvision + raypipe.models"] = time.perf_counter() - mark
    mark = time.perf_counter(); import mlflow, mlflow.pytorch; t["import mlflow"] = time.perf_counter() - mark
    from raypipe.models.store import configure_tracking, _resolve
    mark = time.perf_counter(); configure_tracking(tracking); _resolve(served["uri"]); t["open registry + resolve alias"] = time.perf_counter() - mark
    from raypipe.serve.core import load_runner
    mark = time.perf_counter(); load_runner(served["uri"], tracking, version); t["load model (mlflow.pytorch)"] = time.perf_counter() - mark
t["total"] = time.perf_counter() - start
t["imported"] = sorted(m for m in ("torch", "mlflow") if m in sys.modules)
print(json.dumps(t))
"""


def register(tracking_uri: str) -> list[str]:
    import mlflow

    from raypipe.face import FaceConfig
    from raypipe.models import create_model
    from raypipe.models.store import configure_tracking, ensure_experiment, face_tag, log_and_register
    from raypipe.models.weights import WeightsUnavailable

    configure_tracking(tracking_uri)
    uris = []
    for name in ("attacknet", "minifasnet_v2"):
        try:
            model = create_model(name, pretrained="silentface") if name.startswith("minifasnet") else create_model(name)
        except WeightsUnavailable:
            continue
        with mlflow.start_run(experiment_id=ensure_experiment("replica-start")):
            log_and_register(model, threshold=0.5, register_as=f"start-{name}", promote=True,
                             extra_tags={"pipeline_version": FaceConfig().version(),
                                         **face_tag(FaceConfig().crop_settings())})
        uris.append(f"models:/start-{name}@champion")
    return uris


def run_steps(served: dict, runtime: str, tracking_uri: str, version: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEPS, json.dumps([served, runtime, tracking_uri, version])],
                         capture_output=True, text=True, check=True, env={**os.environ, "GLOG_minloglevel": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "replica_start.json"))
    args = parser.parse_args()
    from raypipe.face import FaceConfig
    from raypipe.serve.runners import resolve_served_model

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_before": os.getloadavg()}, "models": {}}
    with tempfile.TemporaryDirectory() as directory:
        tracking_uri = f"sqlite:///{directory}/mlflow.db"
        for uri in register(tracking_uri):
            served = resolve_served_model(uri, tracking_uri).to_dict()
            per_runtime = {}
            for runtime in ("onnx", "torch"):
                runs = [run_steps(served, runtime, tracking_uri, FaceConfig().version()) for _ in range(args.repeats)]
                steps = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0] if k != "imported"}
                per_runtime[runtime] = {"median_s": steps, "imported": runs[0]["imported"]}
                print(uri, runtime, json.dumps(per_runtime[runtime]), file=sys.stderr)
            results["models"][uri] = per_runtime
    results["machine"]["loadavg_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
