"""cluster.yaml, the KubeRay manifests and the Serve configs, checked against Ray's own schemas.

Ray's cluster-config schema (``ray/autoscaler/ray-schema.json``, what ``ray up`` validates
with) and Ray Serve's ``ServeDeploySchema`` (what ``serve deploy`` and KubeRay's
``serveConfigV2`` are parsed into) come from the installed Ray, so a config that drifts from
the Ray version we pin fails here, not on a cloud bill. The KubeRay CRDs are not installable
offline; their required fields are checked by hand below.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from raypipe.cli import build_parser
from raypipe.serve.deployments import CLASSIFIER, DETECTOR, INGRESS, RESOLVER
from raypipe.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def torch_pin() -> str:
    return re.search(r'TORCH_PAIR="([^"]+)"', (ROOT / "scripts" / "setup.sh").read_text()).group(1)


# ------------------------------------------------------------------------- cluster.yaml


def ray_cluster_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_passes_rays_schema_and_ray_ups_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(ROOT / "cluster.yaml")
    jsonschema.validate(config, ray_cluster_schema())  # the file as written
    validate_config(prepare_config(copy.deepcopy(config)))  # merged with Azure's defaults, as `ray up` does


@pytest.mark.parametrize("mutate", [
    lambda c: c["available_node_types"]["ray.worker.gpu"].update(min_worker=0),  # typo'd key
    lambda c: c.update(idle_timeout_minutes="ten"),
    lambda c: c["provider"].pop("type"),
])
def test_the_schema_check_has_teeth(mutate):
    config = load(ROOT / "cluster.yaml")
    mutate(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_cluster_schema())


def test_cluster_scales_to_the_head_and_has_cpu_and_gpu_workers():
    config = load(ROOT / "cluster.yaml")
    assert config["idle_timeout_minutes"] > 0  # the schema allows 0: nodes would go the moment they idle
    nodes = config["available_node_types"]
    workers = {name: node for name, node in nodes.items() if name != config["head_node_type"]}
    assert all(node["min_workers"] == 0 for node in workers.values())
    assert any("GPU" not in node["resources"] for node in workers.values())  # preprocessing
    assert any(node["resources"].get("GPU", 0) >= 1 for node in workers.values())  # training, serving
    assert sum(node["max_workers"] for node in workers.values()) >= config["max_workers"] > 0


def test_cluster_nodes_install_the_project_with_the_pinned_versions():
    config = load(ROOT / "cluster.yaml")
    setup = "\n".join(config["setup_commands"])
    (checkout,) = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert f"pip install -q -e {checkout}" in setup  # the mounted checkout is what gets installed
    assert f"ray[default,serve,data,train]=={ray.__version__}" in setup and torch_pin() in setup
    raypipe_commands = [shlex.split(c) for c in config["setup_commands"] if c.startswith("raypipe ")]
    assert raypipe_commands
    for words in raypipe_commands:
        build_parser().parse_args(words[1:])  # exits (fails) on an unknown subcommand or flag


# ------------------------------------------------------------------------- Serve configs


def serve_configs() -> dict[str, dict]:
    service = load(K8S / "rayservice.yaml")
    return {"serve_config.yaml": load(ROOT / "serve_config.yaml"),
            "serve_config.gpu.yaml": load(ROOT / "serve_config.gpu.yaml"),
            "rayservice.yaml": yaml.safe_load(service["spec"]["serveConfigV2"])}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.gpu.yaml", "rayservice.yaml"])
def test_serve_configs_pass_ray_serves_schema_and_ours(name):
    from ray.serve.schema import ServeDeploySchema

    config = serve_configs()[name]
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    module, attribute = app.import_path.split(":")
    assert callable(getattr(importlib.import_module(module), attribute))  # what Serve will import
    ServeSettings.model_validate(app.args)  # extra="forbid": a typo'd argument fails here
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {INGRESS, DETECTOR, CLASSIFIER, RESOLVER}
    for deployment in deployments.values():  # serverless: every deployment can reach zero
        assert deployment.autoscaling_config["min_replicas"] == 0


def test_the_rayservice_serves_the_same_app_with_a_gpu_classifier():
    local, service = serve_configs()["serve_config.yaml"], serve_configs()["rayservice.yaml"]
    (local_app,), (service_app,) = local["applications"], service["applications"]
    assert service_app["import_path"] == local_app["import_path"]
    assert service_app["args"]["model_uri"] == local_app["args"]["model_uri"]
    classifier = next(d for d in service_app["deployments"] if d["name"] == CLASSIFIER)
    assert classifier["ray_actor_options"]["num_gpus"] > 0
    assert service_app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http")


def test_the_gpu_serve_config_is_the_cpu_app_with_a_gpu_classifier():
    """serve_config.gpu.yaml differs from serve_config.yaml only where a GPU needs it."""
    (cpu,), (gpu,) = serve_configs()["serve_config.yaml"]["applications"], \
        serve_configs()["serve_config.gpu.yaml"]["applications"]
    classifier = {d["name"]: d for d in gpu["deployments"]}[CLASSIFIER]
    assert 0 < classifier["ray_actor_options"]["num_gpus"] <= 1
    settings = ServeSettings.model_validate(gpu["args"])
    assert settings.runtime == "torch" and settings.precision == "auto"
    differ = {k for k in cpu["args"] if cpu["args"][k] != gpu["args"].get(k)}
    assert differ <= {"runtime", "max_batch_size"}, differ
    others = lambda app: [d for d in app["deployments"] if d["name"] != CLASSIFIER]  # noqa: E731
    assert others(cpu) == others(gpu)


# ------------------------------------------------------------------------- KubeRay manifests


def ray_cluster_specs() -> dict[str, dict]:
    return {"rayservice": load(K8S / "rayservice.yaml")["spec"]["rayClusterConfig"],
            "rayjob": load(K8S / "rayjob.yaml")["spec"]["rayClusterSpec"]}


@pytest.mark.parametrize("path,kind", [("rayservice.yaml", "RayService"), ("rayjob.yaml", "RayJob")])
def test_manifests_have_kuberays_required_fields(path, kind):
    manifest = load(K8S / path)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])  # DNS-1123


@pytest.mark.parametrize("name", ["rayservice", "rayjob"])
def test_ray_cluster_specs_scale_workers_from_zero_with_gpu_selectors(name):
    spec = ray_cluster_specs()[name]
    assert spec["rayVersion"] == ray.__version__ and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    images = {head["template"]["spec"]["containers"][0]["image"]}
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert group["minReplicas"] == 0 <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        images.add(container["image"])
        assert container["resources"]["requests"] == container["resources"]["limits"]  # guaranteed QoS
    gpu = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu, "a GPU worker group"
    for group in gpu:
        assert group["template"]["spec"]["nodeSelector"] and group["template"]["spec"]["tolerations"]
    assert len(images) == 1  # one image everywhere (deploy/docker/Dockerfile)


def test_the_rayjob_entrypoint_is_a_job_script_with_flags_raypipe_accepts():
    from ray.runtime_env import RuntimeEnv

    job = load(K8S / "rayjob.yaml")["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[0] == "python" and words[1].startswith("/home/ray/raypipe/jobs/")
    script = words[1].removeprefix("/home/ray/raypipe/")
    assert (ROOT / script).is_file()
    build_parser().parse_args([Path(script).stem, *words[2:]])  # exits (fails) on an unknown flag
    RuntimeEnv(**yaml.safe_load(job["runtimeEnvYAML"]))  # Ray's own runtime_env validation


def test_the_image_installs_the_pinned_torch_and_the_job_scripts():
    dockerfile = (ROOT / "deploy" / "docker" / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-py311" in dockerfile
    assert torch_pin() in dockerfile and "COPY --chown=ray:users jobs ./jobs" in dockerfile


def test_the_rayjob_asks_for_what_its_worker_groups_can_start():
    """At job start only the 0-CPU head runs: the actor pool and the GPUs come from the flags,
    sized by the worker groups the autoscaler can start."""
    job = load(K8S / "rayjob.yaml")["spec"]
    args = vars(build_parser().parse_args(["pipeline", *shlex.split(job["entrypoint"])[2:]]))
    groups = {g["groupName"]: g for g in job["rayClusterSpec"]["workerGroupSpecs"]}
    cores = lambda g: int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])  # noqa: E731
    gpus = lambda g: int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))  # noqa: E731
    assert args["max_actors"] == cores(groups["cpu"]) * groups["cpu"]["maxReplicas"]
    assert args["train.use_gpu"] is True
    assert args["train.workers"] <= gpus(groups["gpu"]) * groups["gpu"]["maxReplicas"]  # else training waits forever
