"""The cluster path end to end: `ray start --head`, `ray job submit` of each stage, `serve deploy`.

The head is the test's own (own ports and temp dir, stopped by its own pids: never `ray
stop`). The jobs are submitted exactly as docs/cluster.md tells a user to, with the project
as the job's working directory; the Serve app is `serve_config.yaml` with only the HTTP
port moved off 8000. MLflow is a SQLite store that the cluster's processes inherit through
the environment `ray start` ran in (on a real cluster: a tracking server, docs/cluster.md).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from raypipe.datasets.demo import make_demo_dataset
from tests.fixtures.ray_head import RayHead

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    temp_dir = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))  # short: Ray's socket paths have a length limit
    work = Path(tempfile.mkdtemp(prefix="raypipe-e2e-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update({"RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
                "RAYPIPE_DATA_DIR": str(work), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"})
    cluster = RayHead(temp_dir=temp_dir, env=env)
    cluster.start()
    try:
        yield cluster, work
    finally:
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def submit(cluster: RayHead, *entrypoint: str, runtime_env: dict | None = None, working_dir: Path = ROOT,
           timeout: float = 600) -> str:
    """`ray job submit --no-wait`, then wait for SUCCEEDED; returns the job's logs."""
    submission_id = f"e2e-{Path(entrypoint[1]).stem}-{time.monotonic_ns()}"
    command = [cluster.ray_cli(), "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id,
               "--working-dir", str(working_dir), "--no-wait"]
    if runtime_env:
        command += ["--runtime-env-json", json.dumps(runtime_env)]
    subprocess.run([*command, "--", *entrypoint], env=cluster.env, check=True, capture_output=True, text=True,
                   timeout=120)
    # Waiting is done through the SDK: the CLI's status line is meant for people (colours, wording).
    client = JobSubmissionClient(cluster.dashboard)
    deadline, status = time.time() + timeout, None
    while time.time() < deadline:
        status = client.get_job_status(submission_id)
        if status.is_terminal():
            break
        time.sleep(2)
    logs = subprocess.run([cluster.ray_cli(), "job", "logs", "--address", cluster.dashboard, submission_id],
                          env=cluster.env, capture_output=True, text=True).stdout
    assert status == JobStatus.SUCCEEDED, f"job {submission_id}: {status}\n{logs[-4000:]}"
    return logs


def last_json(logs: str) -> dict:
    return json.loads(next(line for line in reversed(logs.splitlines()) if line.startswith("{")))


def test_jobs_then_serve_deploy_answer_from_the_endpoint(head):
    cluster, work = head
    demo, crops = work / "demo", work / "crops"
    made = make_demo_dataset(demo, sessions=6, per_subject=2)  # 72 images, train/dev/test by session

    prep = last_json(submit(cluster, "python", "jobs/preprocess.py", "--dataset", "folder", "--root", str(demo),
                            "--out", str(crops)))
    assert prep["inputs"] == made["images"] == prep["rows"] + prep["rejected"] and prep["rows"] > 0

    trained = last_json(submit(cluster, "python", "jobs/train.py", "--data", str(crops), "--model", "attacknet",
                               "--epochs", "3", "--workers", "2", "--register", "attacknet", "--promote",
                               "--experiment", "e2e"))
    assert trained["version"] == "1" and trained["epochs_run"] >= 1

    evaluation = last_json(submit(cluster, "python", "jobs/evaluate.py", "--model", "models:/attacknet@champion",
                                  "--data", str(crops), "--split", "test", "--gradcam", "0"))
    assert evaluation["n_live"] + evaluation["n_attack"] > 0 and 0.0 <= evaluation["hter"] <= 1.0

    # serve_config.yaml as shipped, HTTP port moved off 8000; deployed with the CLI a user runs.
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    config["http_options"]["port"] = cluster.ports["serve"]
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    subprocess.run([cluster.ray_cli("serve"), "deploy", str(config_path), "--address", cluster.dashboard],
                   env=cluster.env, check=True, capture_output=True, text=True, timeout=120)
    wait_until_running(cluster)

    image = next(p for p in sorted((demo / "test").rglob("*.png")) if "live" in p.parts)
    body = {"image": base64.b64encode(image.read_bytes()).decode()}
    answer = httpx.post(f"{cluster.serve_url}/v1/detect", json=body, timeout=120).json()
    assert answer["model"]["name"] == "attacknet" and answer["model"]["version"] == "1"
    assert answer["model"]["threshold"] == pytest.approx(trained["threshold"])
    (face,) = answer["faces"]
    assert face["label"] == ("spoof" if face["spoof_probability"] >= trained["threshold"] else "real")
    assert 0.5 <= face["confidence"] <= 1.0

    subprocess.run([cluster.ray_cli("serve"), "shutdown", "-y", "--address", cluster.dashboard], env=cluster.env,
                   check=True, capture_output=True, timeout=120)


def wait_until_running(cluster: RayHead, timeout: float = 240) -> None:
    deadline, status = time.time() + timeout, ""
    while time.time() < deadline:
        status = subprocess.run([cluster.ray_cli("serve"), "status", "--address", cluster.dashboard],
                                env=cluster.env, capture_output=True, text=True).stdout
        if "status: RUNNING" in status and "DEPLOY_FAILED" not in status:
            try:
                if httpx.get(f"{cluster.serve_url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        assert "DEPLOY_FAILED" not in status, status
        time.sleep(2)
    raise AssertionError(f"Serve did not come up in {timeout} s:\n{status}")


def test_py_modules_ship_raypipe_to_nodes_that_lack_it(head, tmp_path):
    """The runtime env docs/cluster.md gives for nodes without raypipe installed: the package
    travels with the job (``py_modules``) and is imported from there, not from site-packages."""
    cluster, _ = head
    script = tmp_path / "where.py"
    script.write_text("import json, raypipe, raypipe.face\n"
                      "print(json.dumps({'file': raypipe.__file__}))\n")
    logs = submit(cluster, "python", "where.py", working_dir=tmp_path,
                  runtime_env={"py_modules": [str(ROOT / "raypipe")]})
    shipped = Path(last_json(logs)["file"])
    assert "runtime_resources" in shipped.parts or "py_modules_files" in str(shipped), shipped
    assert not str(shipped).startswith(str(ROOT))
