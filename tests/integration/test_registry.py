"""Registration on a real MLflow SQLite store (no Ray): every version carries a checked ONNX
export, `raypipe export` hands it out, the lean runner serves it without torch or MLflow,
and the promotion gate keeps a worse model from becoming the champion."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pytest
import torch

from raypipe.cli import main as cli_main
from raypipe.face import FaceConfig
from raypipe.models import create_model
from raypipe.models.export import ONNX_FILE, ExportMismatch
from raypipe.models.store import CHAMPION, configure_tracking, ensure_experiment, face_tag, log_and_register
from raypipe.serve.core import find_faces, load_runner
from raypipe.serve.runners import ArtifactError, OnnxRunner, resolve_served_model
from tests.fixtures.images import astronaut_rgb, encode, grace_hopper_rgb
from tests.unit.test_export import ExportsDifferently

FACE = FaceConfig()
RULE = "alpha: by session | threshold eer"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    configure_tracking(uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def faces(face_pipeline):
    found = [find_faces(face_pipeline, encode(rgb)) for rgb in (astronaut_rgb(), grace_hopper_rgb())]
    return np.concatenate([f.crops for f in found]), np.concatenate([f.boxes for f in found])


def register(name: str, *, seed: int = 0, dev_hter: float | None = None, rule: str | None = RULE,
             promote: bool = True, force: bool = False, model=None, check_inputs=None):
    torch.manual_seed(seed)
    with mlflow.start_run(experiment_id=ensure_experiment("registry-tests")):
        return log_and_register(model or create_model("attacknet"), threshold=0.4, register_as=name,
                                promote=promote, force=force, dev_hter=dev_hter, dev_rule=rule,
                                check_inputs=check_inputs,
                                extra_tags={"pipeline_version": FACE.version(), **face_tag(FACE.crop_settings())})


def champion(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


def test_the_promotion_gate_keeps_the_better_model(store):
    first = register("gate", dev_hter=0.10)
    assert first.promoted and "no champion yet" in first.promotion and champion("gate") == "1"
    worse = register("gate", seed=1, dev_hter=0.20)
    assert not worse.promoted and "0.2000 > champion version 1's 0.1000" in worse.promotion
    assert champion("gate") == "1"
    other_rule = register("gate", seed=2, dev_hter=0.01, rule="alpha: by subject | threshold eer")
    assert not other_rule.promoted and "dev rules differ" in other_rule.promotion and champion("gate") == "1"
    unmeasured = register("gate", seed=3, dev_hter=None, rule=None)
    assert not unmeasured.promoted and champion("gate") == "1"
    equal = register("gate", seed=4, dev_hter=0.10)
    assert equal.promoted and champion("gate") == "5"  # no worse is enough
    forced = register("gate", seed=5, dev_hter=0.30, force=True)
    assert forced.promoted and "--force" in forced.promotion and champion("gate") == "6"
    kept = register("gate", seed=6, dev_hter=0.0, promote=False)
    assert not kept.promoted and champion("gate") == "6"


def test_a_mismatching_export_registers_nothing(store, faces):
    from raypipe.models import model_inputs

    model = create_model("attacknet")
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([3.0, -3.0]))
    model.head = ExportsDifferently(model.head)
    with pytest.raises(ExportMismatch):
        register("mismatch", model=model, check_inputs=model_inputs(*faces, model.spec))
    assert not mlflow.MlflowClient().search_model_versions("name='mismatch'")


def test_the_onnx_runner_scores_like_the_pytorch_runner(store, faces):
    from raypipe.models import model_inputs

    spec = create_model("attacknet").spec
    registered = register("lean", check_inputs=model_inputs(*faces, spec))
    assert registered.onnx["check_inputs"] == "crops" and registered.onnx["max_abs_diff"] <= 1e-4
    served = resolve_served_model("models:/lean@champion", store)
    assert served.version == registered.version and served.onnx_uri.endswith("onnx/model.onnx")
    onnx_scores = OnnxRunner(served).spoof_probabilities(*faces)
    torch_scores = load_runner("models:/lean@champion", store, FACE.version()).spoof_probabilities(*faces)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)


def test_the_onnx_runner_imports_neither_torch_nor_mlflow(store, faces, tmp_path):
    register("imports")
    served = resolve_served_model("models:/imports@champion", store)
    np.save(tmp_path / "crops.npy", faces[0])
    np.save(tmp_path / "boxes.npy", faces[1])
    script = f"""
import json, sys
import numpy as np
from raypipe.serve.runners import OnnxRunner, ServedModel
runner = OnnxRunner(ServedModel.from_dict(json.loads({json.dumps(json.dumps(served.to_dict()))})))
scores = runner.spoof_probabilities(np.load({str(tmp_path / 'crops.npy')!r}), np.load({str(tmp_path / 'boxes.npy')!r}))
print(json.dumps({{"n": len(scores), "loaded": sorted(m for m in ("torch", "mlflow", "torchvision") if m in sys.modules)}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"n": len(faces[0]), "loaded": []}


def test_a_tampered_onnx_file_is_refused(store, tmp_path):
    register("tampered")
    served = resolve_served_model("models:/tampered@champion", store)
    copy = tmp_path / "model.onnx"
    copy.write_bytes(open(served.onnx_uri.removeprefix("file://"), "rb").read() + b"\0")
    with pytest.raises(ArtifactError, match="not the registered"):
        OnnxRunner(type(served)(**{**served.to_dict(), "onnx_uri": str(copy)}))


def test_raypipe_export_writes_the_registered_onnx_and_its_metadata(store, tmp_path, capsys):
    registered = register("exported")
    out = tmp_path / "export"
    cli_main(["export", "--model", "models:/exported@champion", "--out", str(out), "--tracking-uri", store])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["version"] == registered.version and summary["source"] == "registry"
    assert summary["sha256"] == registered.onnx["sha256"] and (out / ONNX_FILE).is_file()
    metadata = json.loads((out / "model.json").read_text())
    assert metadata["threshold"] == 0.4 and metadata["name"] == "exported"
    spec = create_model("attacknet").spec
    assert metadata["crop"] == {"scale": spec.crop.scale, "shape": spec.crop.shape}
    assert metadata["input_size"] == spec.input_size and metadata["input"] == "faces"
