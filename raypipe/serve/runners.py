"""What a Classifier replica runs: a resolved model reference and the runner that scores it.

The registry is asked once, where the app is built (and by the ``ModelResolver`` when the
alias may have moved): :func:`resolve_served_model` turns ``models:/NAME@ALIAS`` into a
:class:`ServedModel` -- version, threshold, crop spec and the URI + sha256 of its ONNX
export (:mod:`raypipe.models.export`). A replica given that reference runs
:class:`OnnxRunner`: numpy, OpenCV and ONNX Runtime, no torch and no MLflow imported, which
is most of a cold start (docs/serving.md). ``runtime: torch`` (or a model registered
before ONNX exports existed) takes the PyTorch path, :func:`raypipe.serve.core.load_runner`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from raypipe.face import cut_face_regions

log = logging.getLogger(__name__)

RUNTIMES = ("onnx", "torch")
# Artifact stores a replica reads directly (local disk, NFS, object stores via pyarrow). An
# MLflow-proxied store (mlflow-artifacts:) would need MLflow in the replica: the torch path.
DIRECT_SCHEMES = ("", "file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
SERVED_TAGS = ("architecture", "threshold_rule", "dev_rule", "face_config")
ONNX_PATH = "onnx/model.onnx"  # run artifact path (raypipe.models.store.ONNX_ARTIFACT + export.ONNX_FILE)


class ArtifactError(RuntimeError):
    """The model artifact cannot be read, or is not the file the registry recorded."""


@dataclass(frozen=True)
class ServedModel:
    """A registry model resolved to what a replica needs; plain data (crosses Ray as a dict)."""

    uri: str  # as configured, e.g. models:/minifasnet@champion
    name: str
    version: str | None
    threshold: float
    input_size: int
    crop_scale: float
    crop_shape: str
    onnx_uri: str | None = None  # None: registered before ONNX exports; the torch path loads it
    onnx_sha256: str | None = None
    pipeline_version: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServedModel:
        return cls(**values)


def resolve_served_model(uri: str, tracking_uri: str | None) -> ServedModel:
    """Ask the registry what ``uri`` means now (imports MLflow: call it where that is cheap)."""
    import mlflow

    from raypipe.models.store import _resolve, configure_tracking

    configure_tracking(tracking_uri)
    _, name, version, run_id, tags = _resolve(uri)
    if "threshold" not in tags:
        raise ValueError(f"{uri}: the model carries no 'threshold' tag; was it logged by raypipe train?")
    crop = json.loads(tags.get("input_crop", "{}"))
    onnx_uri = None
    if tags.get("onnx_sha256") and run_id:
        onnx_uri = mlflow.get_run(run_id).info.artifact_uri.rstrip("/") + "/" + ONNX_PATH
    return ServedModel(uri=uri, name=name, version=version, threshold=float(tags["threshold"]),
                       input_size=int(tags.get("input_size", 0)), crop_scale=float(crop.get("scale", 1.0)),
                       crop_shape=crop.get("shape", "square"), onnx_uri=onnx_uri,
                       onnx_sha256=tags.get("onnx_sha256"), pipeline_version=tags.get("pipeline_version"),
                       tags={k: v for k, v in tags.items() if k in SERVED_TAGS})


def read_artifact(uri: str) -> bytes:
    """Bytes of a local path, ``file://`` or a pyarrow filesystem URI (``s3://``, ``gs://``, ``hdfs://``)."""
    parsed = urlparse(uri)
    try:
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path) if parsed.scheme else uri).read_bytes()
        import pyarrow.fs

        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except (OSError, ValueError) as exc:  # pyarrow raises ArrowInvalid (a ValueError) for unknown schemes
        raise ArtifactError(f"cannot read the model artifact {uri}: {type(exc).__name__}: {exc}") from exc


def onnx_providers() -> list[str]:
    """CUDA first when this replica has a GPU and ONNX Runtime was built with it."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if os.environ.get("CUDA_VISIBLE_DEVICES") not in (None, "") else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OnnxRunner:
    """Crops -> spoof probabilities with ONNX Runtime: the lean serving path."""

    runtime = "onnx"

    def __init__(self, served: ServedModel, threads: int = 1) -> None:
        import onnxruntime as ort

        if not served.onnx_uri or not served.onnx_sha256:
            raise ArtifactError(f"{served.uri} (version {served.version}) has no ONNX export; use runtime: torch")
        data = read_artifact(served.onnx_uri)
        digest = hashlib.sha256(data).hexdigest()
        if digest != served.onnx_sha256:
            raise ArtifactError(f"{served.onnx_uri}: sha256 {digest[:12]}... is not the registered "
                                f"{served.onnx_sha256[:12]}...: refusing a file that is not the registered model")
        options = ort.SessionOptions()
        # Fractional-CPU replicas: ONNX Runtime's default of one thread per core only oversubscribes.
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = ort.InferenceSession(data, options, providers=onnx_providers())
        self.served = served
        self.info = {"name": served.name, "version": served.version, "threshold": served.threshold,
                     "runtime": self.runtime}

    def spoof_probabilities(self, crops: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        inputs = cut_face_regions(crops, boxes, self.served.input_size, self.served.crop_scale, self.served.crop_shape)
        return self.session.run(None, {self.session.get_inputs()[0].name: inputs})[0].astype(np.float64)


def load_served(served: ServedModel, runtime: str, tracking_uri: str | None, pipeline_version: str,
                precision: str = "auto") -> Any:
    """The runner for ``served``: ONNX when asked and exported, else the PyTorch path (which
    imports torch and MLflow in this process)."""
    if served.pipeline_version and served.pipeline_version != pipeline_version and "face_config" in served.tags:
        raise ValueError(f"{served.uri} version {served.version} was trained on crops of face pipeline "
                         f"{served.pipeline_version}, this service cuts {pipeline_version}: redeploy to serve it")
    if runtime == "onnx" and served.onnx_uri and urlparse(served.onnx_uri).scheme in DIRECT_SCHEMES:
        return OnnxRunner(served)
    if runtime == "onnx":
        why = ("has no ONNX export (registered before raypipe exported ONNX)" if not served.onnx_uri else
               f"keeps its ONNX export behind MLflow ({served.onnx_uri.split(':')[0]}:), which replicas do not read")
        log.warning("%s version %s %s: serving it with PyTorch", served.name, served.version, why)
    from raypipe.serve.core import load_runner

    uri = f"models:/{served.name}/{served.version}" if served.version else served.uri
    return load_runner(uri, tracking_uri, pipeline_version, precision=precision)
