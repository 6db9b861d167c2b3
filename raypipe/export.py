"""`raypipe export`: a registered model as a portable ONNX file, for serving anywhere.

Every model raypipe registers carries its ONNX export (checked against PyTorch at
registration, :mod:`raypipe.models.export`); this copies it out, verifies its sha256
against the registry and writes ``model.json`` beside it (threshold, crop spec, input
and output names, version). A model registered before exports existed is exported now.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from raypipe.config import ExportConfig

log = logging.getLogger(__name__)


def export_registered(config: ExportConfig) -> dict[str, Any]:
    """Write ``config.model_uri``'s ONNX export to ``config.out``; returns the summary the CLI prints."""
    import mlflow

    from raypipe.models.export import ONNX_FILE, SIDECAR_FILE, sha256_file
    from raypipe.models.store import ONNX_ARTIFACT, _resolve, configure_tracking

    configure_tracking(config.tracking_uri)
    _, name, version, run_id, tags = _resolve(config.model_uri)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if tags.get("onnx_sha256"):
        with tempfile.TemporaryDirectory() as directory:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=ONNX_ARTIFACT, dst_path=directory)
            for file in (ONNX_FILE, SIDECAR_FILE):
                shutil.copyfile(Path(directory) / ONNX_ARTIFACT / file, out / file)
        digest, source = sha256_file(out / ONNX_FILE), "registry"
        if digest != tags["onnx_sha256"]:
            raise ValueError(f"{config.model_uri}: the stored ONNX file's sha256 {digest} is not the registered "
                             f"{tags['onnx_sha256']}")
        max_abs_diff = float(json.loads((out / SIDECAR_FILE).read_text())["max_abs_diff"])
    else:
        digest, max_abs_diff = _export_now(config, out, tags)
        source = "exported now (registered before ONNX exports)"
    sidecar = json.loads((out / SIDECAR_FILE).read_text())
    sidecar.update(name=name, version=version, source_uri=config.model_uri, sha256=digest)
    (out / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    log.info("%s version %s -> %s (%s)", name, version, out / ONNX_FILE, source)
    return {"model_uri": config.model_uri, "name": name, "version": version, "onnx": str(out / ONNX_FILE),
            "metadata": str(out / SIDECAR_FILE), "sha256": digest, "max_abs_diff": max_abs_diff,
            "threshold": sidecar["threshold"], "source": source}


def _export_now(config: ExportConfig, out: Path, tags: dict[str, str]) -> tuple[str, float]:
    from raypipe import crops
    from raypipe.models.export import export_onnx
    from raypipe.models.store import ONNX_SIDECAR_TAGS, load_model

    loaded = load_model(config.model_uri)
    check = crops.sample_inputs(config.data, loaded.spec) if config.data else None
    exported = export_onnx(loaded.model, out, check, metadata={
        "threshold": loaded.threshold, **{k: tags[k] for k in ONNX_SIDECAR_TAGS if k in tags}})
    return exported.sha256, exported.max_abs_diff
