"""ONNX export of every registered architecture: the file reproduces PyTorch's probabilities
on real face crops, at any batch size, and the torch-free serving cut equals training's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raypipe.face import cut_face_regions
from raypipe.models import create_model, model_inputs, model_names
from raypipe.models.export import ONNX_FILE, SIDECAR_FILE, TOLERANCE, ExportMismatch, export_onnx
from raypipe.predict import Predictor
from raypipe.serve.core import find_faces
from tests.fixtures.images import astronaut_rgb, encode, grace_hopper_rgb


@pytest.fixture(scope="module")
def faces(face_pipeline) -> tuple[np.ndarray, np.ndarray]:
    """Real stored-style crops and boxes: two photos, some flipped, five faces in all."""
    found = [find_faces(face_pipeline, encode(rgb)) for rgb in (astronaut_rgb(), grace_hopper_rgb())]
    crops = np.concatenate([f.crops for f in found])
    boxes = np.concatenate([f.boxes for f in found])
    flipped = crops[:, :, ::-1].copy()
    width = crops.shape[2]
    flipped_boxes = boxes.copy()
    flipped_boxes[:, 0] = width - boxes[:, 0] - boxes[:, 2]
    return np.concatenate([crops, flipped, crops[:1]]), np.concatenate([boxes, flipped_boxes, boxes[:1]])


def onnx_scores(path, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: inputs})[0]


@pytest.mark.parametrize("name", model_names())
def test_every_model_exports_to_onnx_that_matches_pytorch_on_real_crops(name, faces, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)
    crops, boxes = faces
    inputs = model_inputs(crops, boxes, model.spec)
    exported = export_onnx(model, tmp_path, inputs, metadata={"threshold": 0.4})
    assert exported.max_abs_diff <= TOLERANCE and exported.check_inputs == "crops"
    expected = Predictor(model, model.spec, "cpu").score_crops(crops, boxes)
    for batch in (1, 3, len(inputs)):  # the batch dimension is dynamic, not the example's
        got = onnx_scores(tmp_path / ONNX_FILE, inputs[:batch])
        assert got.shape == (batch,)
        np.testing.assert_allclose(got, expected[:batch], atol=TOLERANCE)
    assert (tmp_path / SIDECAR_FILE).is_file() and exported.metadata["threshold"] == 0.4
    assert exported.metadata["input_size"] == model.spec.input_size


def test_the_torch_free_cut_is_the_training_cut(faces):
    crops, boxes = faces
    for name in ("attacknet", "minifasnet_v2"):
        spec = create_model(name).spec
        np.testing.assert_array_equal(
            cut_face_regions(crops, boxes, spec.input_size, spec.crop.scale, spec.crop.shape),
            model_inputs(crops, boxes, spec))


class ExportsDifferently(torch.nn.Module):
    """What an exporter bug looks like: the exported graph computes something else."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.inner = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        return logits.flip(1) if torch.compiler.is_exporting() else logits


def test_an_export_that_differs_from_pytorch_is_refused(faces, tmp_path):
    torch.manual_seed(0)
    model = create_model("attacknet")
    with torch.no_grad():  # a head far from 50/50, so swapping the classes must show
        model.head.bias.copy_(torch.tensor([3.0, -3.0]))
    model.head = ExportsDifferently(model.head)
    crops, boxes = faces
    with pytest.raises(ExportMismatch, match="differs from PyTorch"):
        export_onnx(model, tmp_path, model_inputs(crops, boxes, model.spec))
