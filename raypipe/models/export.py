"""A portable model: ONNX of the whole scoring step, checked against PyTorch before use.

The exported graph takes what :func:`raypipe.models.model_inputs` returns (uint8,
B x S x S x 3, RGB, the model's own face region) and returns the spoof probability of
each face, so the eval transform (channel order, scaling, normalisation) and the softmax
travel inside the file: a runtime needs numpy and ONNX Runtime, nothing of raypipe's
PyTorch side. ``model.json`` beside it says how to cut the input and where to threshold.

Every export is compared with the PyTorch eval path on the same inputs; a
difference above :data:`TOLERANCE` raises :class:`ExportMismatch` and nothing is registered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raypipe.labels import ATTACK
from raypipe.models.base import ModelSpec, unwrap_model
from raypipe.models.transforms import build_transforms

log = logging.getLogger(__name__)

ONNX_FILE, SIDECAR_FILE = "model.onnx", "model.json"
INPUT_NAME, OUTPUT_NAME = "faces", "spoof_probability"
# float32 through a different kernel library: measured differences are 1e-7..1e-6 here;
# 1e-4 of a probability is far below any threshold's resolution and far above float noise.
TOLERANCE = 1e-4
OPSET = 18


class ExportMismatch(RuntimeError):
    """The ONNX model does not reproduce the PyTorch model's probabilities."""


class ScoringGraph(nn.Module):
    """uint8 B x S x S x 3 model inputs -> spoof probabilities (B,), the eval path in one graph."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model, self.bgr = model, spec.channels == "bgr"
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.bgr:
            x = x.flip(1)
        logits = self.model((x - self.mean) / self.std)
        return torch.softmax(logits.float(), dim=1)[:, ATTACK]


@dataclass
class OnnxExport:
    """Where the export is, its checksum and what the check against PyTorch measured."""

    directory: str
    sha256: str
    max_abs_diff: float
    checked_on: int  # how many inputs the check scored
    check_inputs: str  # "crops" (real face crops) or "random"
    metadata: dict[str, Any]

    @property
    def path(self) -> Path:
        return Path(self.directory) / ONNX_FILE


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def random_inputs(spec: ModelSpec, count: int = 8, seed: int = 0) -> np.ndarray:
    """Noise at the model's input size: the check's fallback when no real crops are at hand."""
    return np.random.default_rng(seed).integers(0, 256, (count, spec.input_size, spec.input_size, 3), np.uint8)


def export_onnx(model: nn.Module, directory: str | Path, check_inputs: np.ndarray | None = None,
                metadata: dict[str, Any] | None = None, tolerance: float = TOLERANCE) -> OnnxExport:
    """Export ``model`` to ``directory/model.onnx`` (+ ``model.json``) and check it.

    ``check_inputs``: uint8 model inputs (real face crops cut by ``model_inputs``); noise
    when None. ``metadata`` (threshold, name, version, ...) is written to ``model.json``
    beside the crop spec. Raises :class:`ExportMismatch` above ``tolerance``.
    """
    model = unwrap_model(model).to("cpu").eval()
    spec: ModelSpec = model.spec
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    inputs = check_inputs if check_inputs is not None and len(check_inputs) else random_inputs(spec)
    _export(ScoringGraph(model, spec).eval(), inputs[:2], directory / ONNX_FILE)
    diff = _max_difference(model, spec, directory / ONNX_FILE, inputs)
    if not diff <= tolerance:
        raise ExportMismatch(f"ONNX export of {spec.name} differs from PyTorch by {diff:.2e} "
                             f"(tolerance {tolerance:.0e}) on {len(inputs)} inputs: not registered")
    sidecar = {"format": "raypipe-onnx/1", "input": INPUT_NAME, "output": OUTPUT_NAME, "architecture": spec.name,
               "input_size": spec.input_size, "crop": asdict(spec.crop), "channels": "rgb",
               "max_abs_diff": diff, **(metadata or {})}
    (directory / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    result = OnnxExport(str(directory), sha256_file(directory / ONNX_FILE), diff, len(inputs),
                        "random" if check_inputs is None or not len(check_inputs) else "crops", sidecar)
    log.info("exported %s to ONNX (max |p_onnx - p_torch| = %.1e on %d %s inputs)", spec.name, diff,
             len(inputs), result.check_inputs)
    return result


def _export(graph: ScoringGraph, example: np.ndarray, path: Path) -> None:
    # torch.export-based exporter (the TorchScript one is deprecated); batch is dynamic.
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (torch.from_numpy(np.ascontiguousarray(example)),), dynamo=True,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                                    dynamic_shapes={"faces": {0: batch}}, external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def _max_difference(model: nn.Module, spec: ModelSpec, path: Path, inputs: np.ndarray) -> float:
    import onnxruntime as ort

    # PyTorch's side exactly as training and serving score (raypipe.predict.Predictor.score_inputs).
    transform = build_transforms(spec, None, train=False)
    with torch.inference_mode():
        logits = model(transform(torch.from_numpy(np.ascontiguousarray(inputs)).movedim(-1, -3)))
        expected = torch.softmax(logits.float(), dim=1)[:, ATTACK].numpy().astype(np.float64)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(inputs, dtype=np.uint8)})[0]
    return float(np.max(np.abs(got.astype(np.float64) - expected))) if len(inputs) else 0.0
