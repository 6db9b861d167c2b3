"""Models in the MLflow registry: the one contract between training and serving.

Training logs a model with :func:`log_and_register`; evaluation and serving load it
with :func:`load_model` from any of ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
``runs:/RUN_ID/model`` or a bare run id. The operating threshold (chosen on the dev
split) travels with the model version as the tag ``threshold``; the architecture
name, head type, the face ``pipeline_version`` and the crop settings the model was
trained on (``face_config``, JSON of :meth:`raypipe.face.FaceConfig.crop_settings`)
travel as tags too: serving builds its face pipeline from them
(:func:`model_face_settings`), so it cuts the crops the model was trained on. The
model's own input region is part of the pickled model (``model.spec.crop``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raypipe.models.base import ModelSpec, unwrap_model

log = logging.getLogger(__name__)

CHAMPION = "champion"
ARTIFACT_NAME = "model"
ONNX_ARTIFACT = "onnx"  # run artifact folder: model.onnx + model.json (raypipe.models.export)
# Tags copied into the ONNX sidecar, so a runtime without MLflow knows what it serves.
ONNX_SIDECAR_TAGS = ("architecture", "pipeline_version", "face_config", "threshold_rule", "dev_rule")
TRACKING_ENV = "MLFLOW_TRACKING_URI"


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or a local SQLite store under the project's data directory."""
    if os.environ.get(TRACKING_ENV):
        return os.environ[TRACKING_ENV]
    from raypipe.storage import data_dir as raypipe_data_dir

    data_dir = raypipe_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{data_dir / 'mlflow.db'}"


def configure_tracking(uri: str | None = None) -> str:
    import mlflow

    uri = uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """Experiment id; a new experiment on a local SQLite store keeps its artifacts beside
    the database (MLflow's default would be ./mlruns of whatever the working directory is)."""
    import mlflow

    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    uri = mlflow.get_tracking_uri()
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    threshold: float
    name: str  # registered name, or the run id for an unregistered run model
    version: str | None
    uri: str
    run_id: str | None
    tags: dict[str, str]


@dataclass
class Registration:
    """What :func:`log_and_register` did: the model's URI, its version, the ONNX check, the gate."""

    model_uri: str
    version: str | None
    onnx: dict[str, Any]
    promoted: bool = False
    promotion: str = "not asked (--promote not given)"


def log_and_register(model: nn.Module, *, threshold: float, register_as: str | None, promote: bool = False,
                     force: bool = False, dev_hter: float | None = None, dev_rule: str | None = None,
                     check_inputs: np.ndarray | None = None,
                     extra_tags: dict[str, str] | None = None) -> Registration:
    """Log ``model`` (PyTorch, signature + input example, and its ONNX export) to the active
    run and register it; with ``promote``, move ``champion`` when :func:`promotion_decision` allows.

    ``check_inputs``: uint8 model inputs (real crops) the ONNX export is checked on; a
    mismatch raises :class:`raypipe.models.export.ExportMismatch` before anything is registered.
    """
    import mlflow
    from mlflow.models import infer_signature

    from raypipe.models.export import export_onnx

    model = unwrap_model(model).to("cpu").eval()
    spec: ModelSpec = model.spec
    tags = {"threshold": repr(float(threshold)), "architecture": spec.name,
            "head": type(model.head).__name__, "input_crop": json.dumps(asdict(spec.crop)),
            "input_size": str(spec.input_size), **(extra_tags or {})}
    if dev_hter is not None:
        tags.update(dev_hter=repr(float(dev_hter)), dev_rule=dev_rule or "")
    with tempfile.TemporaryDirectory() as directory:  # export + check first: a mismatch registers nothing
        exported = export_onnx(model, directory, check_inputs,
                               metadata={"threshold": float(threshold), **{k: tags[k] for k in ONNX_SIDECAR_TAGS
                                                                           if k in tags}})
        mlflow.log_artifacts(directory, ONNX_ARTIFACT)
    tags.update(onnx_sha256=exported.sha256, onnx_max_abs_diff=f"{exported.max_abs_diff:.3e}",
                onnx_checked_on=f"{exported.checked_on} {exported.check_inputs}")
    example = np.zeros((1, 3, spec.input_size, spec.input_size), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    # "pickle", not MLflow 3's default "pt2": torch.export pins the batch dimension to the
    # example's and loads back an ExportedProgram; serving needs dynamic batches and the
    # nn.Module (Grad-CAM hooks, .spec). Explicit requirements skip slow inference.
    info = mlflow.pytorch.log_model(
        model, name=ARTIFACT_NAME, signature=infer_signature(example, output), input_example=example,
        serialization_format="pickle", code_paths=None,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "raypipe"])
    run_id = mlflow.active_run().info.run_id
    mlflow.set_tags({f"model.{k}": v for k, v in tags.items()})
    onnx_report = {"sha256": exported.sha256, "max_abs_diff": exported.max_abs_diff,
                   "checked_on": exported.checked_on, "check_inputs": exported.check_inputs}
    mlflow.log_dict(onnx_report, "metrics/onnx_check.json")
    if not register_as:
        return Registration(f"runs:/{run_id}/{ARTIFACT_NAME}", None, onnx_report)  # runs:/ loads; models:/m-<id> not
    client = mlflow.MlflowClient()
    version = str(mlflow.register_model(info.model_uri, register_as, tags=tags).version)
    registration = Registration(f"models:/{register_as}/{version}", version, onnx_report)
    if promote:
        allowed, reason = promotion_decision(client, register_as, version, dev_hter, dev_rule, force)
        if allowed:
            client.set_registered_model_alias(register_as, CHAMPION, version)
        registration.promoted, registration.promotion = allowed, reason
        log.info("promotion of %s version %s: %s", register_as, version, reason)
    log.info("registered %s version %s (run %s)", register_as, version, run_id)
    return registration


def promotion_decision(client, name: str, version: str, dev_hter: float | None, dev_rule: str | None,
                       force: bool = False) -> tuple[bool, str]:
    """(promote?, why): the new version takes ``champion`` only if its dev HTER is no worse
    than the champion's, measured with the same dev rule; ``force`` overrides a refusal."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # noqa: BLE001 - MlflowException RESOURCE_DOES_NOT_EXIST: no champion yet
        return True, "promoted: no champion yet"
    if str(champion.version) == str(version):
        return True, "promoted: already the champion"
    old_hter, old_rule = champion.tags.get("dev_hter"), champion.tags.get("dev_rule")
    if old_hter is None:
        return True, f"promoted: champion version {champion.version} records no dev HTER to compare with"
    if dev_hter is None:
        refusal = f"the new version has no dev HTER to compare with champion version {champion.version}'s"
    elif (dev_rule or "") != old_rule:
        refusal = (f"dev rules differ (new: {dev_rule!r}, champion version {champion.version}: {old_rule!r}): "
                   "the HTERs are not comparable")
    elif dev_hter <= float(old_hter):
        return True, f"promoted: dev HTER {dev_hter:.4f} <= champion version {champion.version}'s {float(old_hter):.4f}"
    else:
        refusal = f"dev HTER {dev_hter:.4f} > champion version {champion.version}'s {float(old_hter):.4f}"
    if force:
        return True, f"promoted by --force although {refusal}"
    return False, f"not promoted: {refusal} (--force promotes anyway)"


def _resolve(uri: str) -> tuple[str, str, str | None, str | None, dict[str, str]]:
    """-> (load uri, display name, version, run id, tags) for any accepted model reference."""
    import mlflow

    client = mlflow.MlflowClient()
    alias = re.fullmatch(r"models:/([^/@]+)@([\w-]+)", uri)
    numbered = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    if alias or numbered:
        name = (alias or numbered).group(1)
        mv = (client.get_model_version_by_alias(name, alias.group(2)) if alias
              else client.get_model_version(name, numbered.group(2)))
        return f"models:/{name}/{mv.version}", name, str(mv.version), mv.run_id, dict(mv.tags)
    run_id = uri.split("/")[1] if uri.startswith("runs:/") else uri
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(f"model reference {uri!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a run id")
    run_tags = client.get_run(run_id).data.tags
    tags = {k.removeprefix("model."): v for k, v in run_tags.items() if k.startswith("model.")}
    return f"runs:/{run_id}/{ARTIFACT_NAME}", run_id, None, run_id, tags


def load_model(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model and its operating threshold from the registry (or a run)."""
    import mlflow

    load_uri, name, version, run_id, tags = _resolve(uri)
    model = mlflow.pytorch.load_model(load_uri, map_location=device).eval()
    if "threshold" not in tags:
        raise ValueError(f"{uri}: the model carries no 'threshold' tag; was it logged by raypipe train?")
    return LoadedModel(model=model, spec=unwrap_model(model).spec, threshold=float(tags["threshold"]),
                       name=name, version=version, uri=load_uri, run_id=run_id, tags=tags)


FACE_TAG = "face_config"


def face_tag(settings: dict) -> dict[str, str]:
    """The tag that carries a model's crop settings (see the module docstring)."""
    return {FACE_TAG: json.dumps(settings, sort_keys=True)}


def model_face_settings(uri: str) -> dict | None:
    """The crop settings ``uri`` was trained on (tags only, nothing downloaded); None for a
    model registered before raypipe stored them."""
    _, _, _, _, tags = _resolve(uri)
    return json.loads(tags[FACE_TAG]) if FACE_TAG in tags else None
