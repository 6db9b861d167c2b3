"""Serving benchmark: the Ray Serve app against the same pipeline in one uvicorn process.

    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/serve.py            # ~11 minutes
    RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/serve.py --quick    # ~7 minutes, no load tests

Measures, for a 640x480 NUAA JPEG (JSON base64 body, the API contract) and AttackNet:
p50/p99 latency at concurrency 1, requests/s at concurrency 8, cold start (zero
replicas -> first answer; for the plain server: process start -> first answer), for
the Serve graph cuts (detection in the ingress or in the FaceDetector deployment; "one-hop":
detection and the model both in the ingress), with the ONNX runtime (``--runtime``), and
the cold start of the PyTorch runtime beside it (``--cold-runtimes``).
Then a 60 s load test at concurrency 8 and a run that SIGKILLs a Classifier replica and
then an Ingress replica mid-load. Traffic goes to 127.0.0.1 only. It starts its own
local Ray cluster and stops only what it started. Results: benchmarks/results/serve.json.

Without --model-uri it registers a freshly initialised AttackNet in a temporary MLflow
store (same compute as a trained one).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import glob
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NUAA = ROOT.parent / "shared" / "datasets" / "nuaa"
APP = "raypipe-bench"
# Serve graph cuts: where detection and the model run (ServeSettings.detector / .classifier).
MODES = {"ingress": {"detector": "ingress"}, "deployment": {"detector": "deployment"},
         "one-hop": {"detector": "ingress", "classifier": "ingress"}}


# --------------------------------------------------------------------------------------
# Load generation (aiohttp: cheapest client at hand, the same for both servers)


async def _worker(session, url: str, body: bytes, deadline: float, count: int | None, out: list) -> None:
    done = 0
    while time.perf_counter() < deadline and (count is None or done < count):
        start = time.perf_counter()
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                await response.read()
                status = response.status
        except Exception as exc:  # noqa: BLE001 - a connection error is a failed request
            status = f"exc:{type(exc).__name__}"
        out.append((start, time.perf_counter() - start, status))
        done += 1


async def _load(url: str, body: bytes, concurrency: int, duration: float | None, count: int | None) -> list:
    import aiohttp

    results: list = []
    deadline = time.perf_counter() + (duration if duration else 3600)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        per_worker = None if count is None else max(1, count // concurrency)
        await asyncio.gather(*(_worker(session, url, body, deadline, per_worker, results) for _ in range(concurrency)))
    return results


def load(url: str, body: bytes, concurrency: int, duration: float | None = None, count: int | None = None) -> list:
    return asyncio.run(_load(url, body, concurrency, duration, count))


def summarize(results: list, wall_s: float | None = None) -> dict:
    ok = [r for r in results if r[2] == 200]
    latencies = np.array([r[1] for r in ok]) * 1000
    errors: dict[str, int] = {}
    for r in results:
        if r[2] != 200:
            errors[str(r[2])] = errors.get(str(r[2]), 0) + 1
    span = wall_s or (max(r[0] + r[1] for r in results) - min(r[0] for r in results))
    return {"requests": len(results), "ok": len(ok), "errors": errors,
            "error_rate": round(1 - len(ok) / max(1, len(results)), 5),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(ok) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(ok) else None,
            "mean_ms": round(float(latencies.mean()), 2) if len(ok) else None,
            "rps": round(len(ok) / span, 1) if span else None}


def server_cpu_s(processes) -> float:
    """User + system CPU seconds used so far by the server's processes."""
    import psutil

    total = 0.0
    for process in processes():
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:  # exited meanwhile
            pass
    return total


def measure(url: str, body: bytes, n_latency: int, seconds: float, processes) -> dict:
    """p50/p99 at concurrency 1; requests/s and server CPU per request at concurrency 8."""
    load(url, body, 1, count=20)  # warm-up (first batches, allocator, connection)
    c1 = summarize(load(url, body, 1, count=n_latency))
    load(url, body, 8, duration=3)
    cpu_before = server_cpu_s(processes)
    c8 = summarize(load(url, body, 8, duration=seconds))
    c8["server_cpu_ms_per_request"] = round((server_cpu_s(processes) - cpu_before) * 1000 / max(1, c8["ok"]), 2)
    return {"c1": c1, "c8": c8, "loadavg_1m": round(os.getloadavg()[0], 2)}


def ray_processes():
    """Every process of the local cluster this benchmark started (the client is excluded)."""
    import psutil

    return psutil.Process().children(recursive=True)


def wait_http(url: str, body: bytes, timeout: float) -> float:
    """Seconds until ``url`` answers 200 to ``body`` (one request in flight at a time)."""
    import urllib.error
    import urllib.request

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                if response.status == 200:
                    return time.perf_counter() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------
# Model and image


def register_fresh_model(tracking_uri: str) -> str:
    import mlflow
    import torch

    from raypipe.face import FaceConfig
    from raypipe.models import create_model
    from raypipe.models.store import configure_tracking, ensure_experiment, log_and_register

    configure_tracking(tracking_uri)
    torch.manual_seed(0)
    with mlflow.start_run(experiment_id=ensure_experiment("serve-benchmark")):
        log_and_register(create_model("attacknet"), threshold=0.5, register_as="bench-attacknet", promote=True,
                         extra_tags={"pipeline_version": FaceConfig().version()})
    return "models:/bench-attacknet@champion"


def nuaa_image(path: str | None) -> Path:
    if path:
        return Path(path)
    images = sorted(glob.glob(str(NUAA / "ClientRaw" / "*" / "*.jpg")))
    if not images:
        raise SystemExit(f"no NUAA image under {NUAA}; pass --image")
    return Path(images[0])


# --------------------------------------------------------------------------------------
# The plain server


class PlainServer:
    """The one-process baseline (raypipe.serve.standalone) as a subprocess."""

    def __init__(self, model_uri: str, tracking_uri: str, runtime: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1/detect"
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "GLOG_minloglevel": "2"}
        cmd = [sys.executable, "-m", "raypipe.serve.standalone", "--port", str(self.port), "--model-uri", model_uri,
               "--settings-json", json.dumps({"rate_limit_per_s": 0, "runtime": runtime})]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cold_start(self, body: bytes) -> float:
        """Process start -> first answer (imports, MLflow load, detector creation)."""
        wait_http(self.url, body, 180)
        return round(time.perf_counter() - self.started, 2)

    def processes(self):
        import psutil

        return [psutil.Process(self.proc.pid)]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------------------
# The Serve app


def serve_options(downscale_to_zero_s: float) -> dict:
    from raypipe.serve.deployments import CLASSIFIER, DETECTOR, INGRESS, RESOLVER

    def scaling(target: float, initial: int) -> dict:
        return {"autoscaling_config": {"min_replicas": 0, "initial_replicas": initial, "max_replicas": 2,
                                       "target_ongoing_requests": target, "metrics_interval_s": 1.0,
                                       "upscale_delay_s": 3, "downscale_delay_s": 30,
                                       "downscale_to_zero_delay_s": downscale_to_zero_s}}

    return {INGRESS: scaling(8, 1), DETECTOR: scaling(4, 0), CLASSIFIER: scaling(16, 1), RESOLVER: scaling(4, 0)}


def deploy(settings: dict, downscale_to_zero_s: float = 600) -> None:
    from ray import serve

    from raypipe.serve.app import compose
    from raypipe.serve.settings import ServeSettings

    app = compose(ServeSettings.model_validate(settings), serve_options(downscale_to_zero_s))
    serve.run(app, name=APP, route_prefix="/", blocking=False)
    wait_running()


def wait_running(timeout: float = 300) -> None:
    from ray import serve

    start = time.time()
    while time.time() - start < timeout:
        app = serve.status().applications.get(APP)
        if app is not None and app.status == "RUNNING":
            return
        time.sleep(0.5)
    raise TimeoutError("the Serve app did not reach RUNNING")


def live_replicas() -> dict[str, int]:
    """Replicas in any state (a STOPPING replica still counts: a real cold start comes after
    the last one is gone, and the autoscaler's from-zero fast path only applies then)."""
    from ray import serve

    app = serve.status().applications[APP]
    return {name: sum(d.replica_states.values()) for name, d in app.deployments.items()}


def cold_starts(url: str, body: bytes, settings: dict, repeats: int) -> list[dict]:
    """Scale to zero (short delay), then time the first answer; ``repeats`` times."""
    deploy(settings, downscale_to_zero_s=5)
    load(url, body, 1, count=5)
    samples = []
    for _ in range(repeats):
        start = time.time()
        while any(live_replicas().values()):
            if time.time() - start > 240:
                raise TimeoutError(f"replicas never reached zero: {live_replicas()}")
            time.sleep(1)
        time.sleep(2)  # let the controller settle at zero
        idle_for = time.time() - start
        sent_at = time.time()
        first = wait_http(url, body, 180)
        model = json.loads(urllib.request.urlopen(url.replace("/v1/detect", "/healthz?deep=true")).read())["model"]
        samples.append({"sent_at": time.strftime("%H:%M:%S", time.localtime(sent_at)) + f"{sent_at % 1:.3f}"[1:],
                        "seconds_to_zero": round(idle_for, 1), "first_answer_s": round(first, 2),
                        "classifier_model_load_s": model.get("load_s")})
    return samples


def replica_pid(deployment: str) -> int | None:
    """PID of one running replica of ``deployment`` in this benchmark's app (by process title)."""
    out = subprocess.run(["pgrep", "-f", f"ray::ServeReplica:{APP}:{deployment}"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    return pids[0] if pids else None


def kill_under_load(url: str, body: bytes, seconds: float) -> dict:
    """Concurrency 8 for ``seconds``; SIGKILL a Classifier replica at 1/4 and an Ingress at 1/2."""
    import threading

    killed: list[dict] = []

    def killer() -> None:
        for at, deployment in ((seconds / 4, "Classifier"), (seconds / 2, "Ingress")):
            time.sleep(max(0.0, at - (time.perf_counter() - began)))
            pid = replica_pid(deployment)
            if pid:
                os.kill(pid, signal.SIGKILL)
            killed.append({"deployment": deployment, "pid": pid, "at_s": round(time.perf_counter() - began, 1)})

    began = time.perf_counter()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    results = load(url, body, 8, duration=seconds)
    thread.join()
    summary = summarize(results)
    # Recovered = the last 10 s answered without errors.
    tail = [r for r in results if r[0] > began + seconds - 10]
    summary["recovered"] = bool(tail) and all(r[2] == 200 for r in tail)
    summary["killed"] = killed
    return summary


def bench(args, model_uri: str, tracking_uri: str, body: bytes) -> dict:
    """Rounds of (plain server, each Serve graph cut), interleaved so that background load on a
    shared machine hits all of them alike; then cold starts, the load test and the kill test."""
    import ray
    from ray import serve

    plain = PlainServer(model_uri, tracking_uri, args.runtime)
    out: dict = {"plain": {"cold_start_s": plain.cold_start(body), "rounds": []}, "serve": {"modes": {}}}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"GLOG_minloglevel": "2"}})
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}/v1/detect"
        base = {"model_uri": model_uri, "tracking_uri": tracking_uri, "rate_limit_per_s": 0, "runtime": args.runtime}
        modes = args.modes.split(",")
        for round_ in range(args.rounds):
            out["plain"]["rounds"].append(measure(plain.url, body, args.requests, args.seconds, plain.processes))
            print(f"round {round_} plain: {json.dumps(out['plain']['rounds'][-1])}", flush=True)
            for mode in modes:
                deploy({**base, **MODES[mode]})
                wait_http(url, body, 180)
                result = measure(url, body, args.requests, args.seconds, ray_processes)
                out["serve"]["modes"].setdefault(mode, {"rounds": []})["rounds"].append(result)
                print(f"round {round_} serve detector={mode}: {json.dumps(result)}", flush=True)
        plain.stop()
        out["plain"].update(median_of(out["plain"]["rounds"]))
        for mode in modes:
            out["serve"]["modes"][mode].update(median_of(out["serve"]["modes"][mode]["rounds"]))
        out["serve"]["cold_start"] = cold_starts(url, body, {**base, **MODES[modes[0]]}, args.cold_repeats)
        print(f"cold start: {out['serve']['cold_start']}", flush=True)
        for mode in [m for m in args.cold_modes.split(",") if m and m != modes[0]]:
            out["serve"][f"cold_start_{mode}"] = cold_starts(url, body, {**base, **MODES[mode]}, args.cold_repeats)
            print(f"cold start ({mode}): {out['serve'][f'cold_start_{mode}']}", flush=True)
        for runtime in [r for r in args.cold_runtimes.split(",") if r and r != args.runtime]:
            out["serve"][f"cold_start_{runtime}"] = cold_starts(
                url, body, {**base, **MODES[modes[0]], "runtime": runtime}, args.cold_repeats)
            print(f"cold start ({runtime}): {out['serve'][f'cold_start_{runtime}']}", flush=True)
        if not args.quick:
            deploy({**base, **MODES[modes[0]]})
            wait_http(url, body, 180)
            out["serve"]["load_c8"] = summarize(load(url, body, 8, duration=args.load_seconds))
            out["serve"]["load_c8"]["seconds"] = args.load_seconds
            print(f"load: {out['serve']['load_c8']}", flush=True)
            out["serve"]["kill"] = kill_under_load(url, body, args.kill_seconds)
            print(f"kill: {out['serve']['kill']}", flush=True)
        serve.delete(APP)
        return out
    finally:
        plain.stop()
        serve.shutdown()
        ray.shutdown()


def median_of(rounds: list[dict]) -> dict:
    """Median over rounds of each headline number (c1 p50/p99, c8 requests/s and CPU/request)."""
    pick = {"c1": ("p50_ms", "p99_ms"), "c8": ("rps", "p50_ms", "server_cpu_ms_per_request")}
    return {level: {key: round(float(np.median([r[level][key] for r in rounds])), 2) for key in keys}
            for level, keys in pick.items()}


# --------------------------------------------------------------------------------------


def goals(plain: dict, serve_mode: dict, cold: list[dict]) -> dict:
    worst_cold = max(s["first_answer_s"] for s in cold) if cold else None
    ratios = {"p50_ratio": serve_mode["c1"]["p50_ms"] / plain["c1"]["p50_ms"],
              "p99_ratio": serve_mode["c1"]["p99_ms"] / plain["c1"]["p99_ms"],
              "throughput_ratio": serve_mode["c8"]["rps"] / plain["c8"]["rps"]}
    return {**{k: round(v, 2) for k, v in ratios.items()}, "cold_start_s": worst_cold,
            "met": {"p50<=2x": ratios["p50_ratio"] <= 2, "p99<=3x": ratios["p99_ratio"] <= 3,
                    "rps>=0.5x": ratios["throughput_ratio"] >= 0.5,
                    "cold<=3s": worst_cold is not None and worst_cold <= 3}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-uri")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--image")
    parser.add_argument("--modes", default="ingress,deployment,one-hop",
                        help=f"Serve graph cuts to measure ({', '.join(MODES)}); first = main")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests for p50/p99")
    parser.add_argument("--seconds", type=float, default=20, help="concurrency-8 throughput window")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds (median kept)")
    parser.add_argument("--cold-repeats", type=int, default=2)
    parser.add_argument("--load-seconds", type=float, default=60)
    parser.add_argument("--kill-seconds", type=float, default=90)
    parser.add_argument("--quick", action="store_true", help="skip the load and kill tests")
    parser.add_argument("--runtime", default="onnx", choices=("onnx", "torch"), help="Classifier runtime (both servers)")
    parser.add_argument("--cold-runtimes", default="onnx,torch", help="runtimes whose cold start is measured")
    parser.add_argument("--cold-modes", default="ingress,one-hop", help="graph cuts whose cold start is measured")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.json"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    image = nuaa_image(args.image)
    data = image.read_bytes()
    body = json.dumps({"image": base64.b64encode(data).decode()}).encode()
    with tempfile.TemporaryDirectory(prefix="raypipe-bench-") as tmp:
        tracking_uri = args.tracking_uri or f"sqlite:///{tmp}/mlflow.db"
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        model_uri = args.model_uri or register_fresh_model(tracking_uri)
        load_before = os.getloadavg()
        measured = bench(args, model_uri, tracking_uri, body)
    plain, served = measured["plain"], measured["serve"]
    main_mode = args.modes.split(",")[0]
    with Image.open(image) as im:
        size = im.size
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {
                  "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                  "loadavg_before": [round(x, 2) for x in load_before],
                  "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
              "image": {"name": image.name, "bytes": len(data), "size": list(size), "body": "JSON base64"},
              "model_uri": model_uri, "runtime": args.runtime, "plain": plain, "serve": served,
              "goals": goals(plain, served["modes"][main_mode], served["cold_start"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["goals"]))


if __name__ == "__main__":
    main()
