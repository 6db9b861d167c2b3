"""Model registry, AttackNet's measured size, heads, pretrained sources, efficiency helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision import models as tvm

from raypipe.models import (
    CosineHead,
    FaceClassifier,
    count_flops,
    count_parameters,
    cpu_ms_per_face,
    create_model,
    efficiency_report,
    get_spec,
    gradcam_target_layer,
    model_names,
)
from raypipe.models.pretrained import imagenet_cache_path
from raypipe.models.torchvision_models import SHUFFLENET_V2_X0_5_IMAGENET

ALL_MODELS = ["attacknet", "resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5"]


@pytest.fixture(autouse=True)
def _no_hub_cache(tmp_path, monkeypatch):
    # An empty torch hub cache: tests never depend on (or pick up) the machine's downloads.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def test_registry_lists_every_model():
    assert set(ALL_MODELS) <= set(model_names())
    assert get_spec("resnet18").input_size == 256
    assert get_spec("attacknet").input_size == 32


def test_unknown_model_raises_key_error_listing_names():
    with pytest.raises(KeyError) as info:
        create_model("no_such_net")
    for name in ALL_MODELS:
        assert name in str(info.value)


def test_unknown_head_raises():
    with pytest.raises(ValueError, match="head"):
        create_model("attacknet", head="arcface")


def test_attacknet_size_matches_paper():
    model = create_model("attacknet")
    # exactly the figures derived in attacknet.py's docstring for "same" padding
    assert count_parameters(model) == 291_042
    assert count_flops(model, 32) == 22_643_200


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shapes(name):
    model = create_model(name).eval()
    size = model.spec.input_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, embedding = model.forward_with_embeddings(x)
        assert torch.equal(model(x), logits)
        assert torch.equal(model.forward_features(x), embedding)
    assert logits.shape == (2, 2)
    assert embedding.shape == (2, model.spec.embedding_dim)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.spec.embedding_dim


@pytest.mark.parametrize("name", ALL_MODELS)
def test_gradcam_target_layer_is_a_feature_map(name):
    model = create_model(name).eval()
    size = model.spec.input_size
    seen = []
    handle = gradcam_target_layer(model).register_forward_hook(lambda m, i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] > 1  # (B, C, H, W) with spatial extent


def test_gradcam_target_layer_sees_through_ddp_style_wrapper():
    model = create_model("attacknet")
    wrapper = nn.Module()
    wrapper.module = model  # what DistributedDataParallel exposes
    assert gradcam_target_layer(wrapper) is model.gradcam_target_layer()


def test_cosine_head_bounded_by_scale():
    model = create_model("attacknet", head="cosine", scale=5.0).eval()
    assert isinstance(model.head, CosineHead) and model.head.scale == 5.0
    with torch.no_grad():
        logits = model(torch.randn(4, 3, 32, 32) * 10)
    assert logits.shape == (4, 2)
    assert logits.abs().max() <= 5.0 + 1e-4


def test_cosine_head_default_scale_is_30():
    head = create_model("resnet18", head="cosine").head
    assert isinstance(head, CosineHead) and head.scale == 30.0


def test_num_classes_and_input_size_override():
    model = create_model("shufflenet_v2_x0_5", num_classes=5, input_size=128).eval()
    assert model.spec.input_size == 128
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 5)


def test_resnet18_pretrained_without_cache_is_scratch():
    model = create_model("resnet18", pretrained=True)
    assert model.pretrained_source == "scratch"


def test_default_and_attacknet_pretrained_are_scratch():
    assert create_model("resnet18").pretrained_source == "scratch"
    # AttackNet has no ImageNet weights: asking for them falls back to scratch
    assert create_model("attacknet", pretrained=True).pretrained_source == "scratch"


def test_pretrained_true_uses_hub_cache_without_download():
    reference = tvm.shufflenet_v2_x0_5(weights=None)  # stands in for the ImageNet file
    path = imagenet_cache_path(SHUFFLENET_V2_X0_5_IMAGENET)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = create_model("shufflenet_v2_x0_5", pretrained=True)
    assert model.pretrained_source == "imagenet-cache"
    assert torch.equal(model.backbone.conv1[0].weight, reference.conv1[0].weight)
    assert model.head.out_features == 2  # the ImageNet fc was dropped, not loaded


def test_pretrained_path_torchvision_state_dict(tmp_path):
    reference = tvm.mobilenet_v3_small(weights=None)
    path = tmp_path / "mnv3.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("mobilenet_v3_small", pretrained=str(path))
    assert model.pretrained_source == str(path)
    assert torch.equal(model.backbone.classifier[0].weight, reference.classifier[0].weight)


def test_pretrained_path_whole_model_checkpoint(tmp_path):
    trained = create_model("attacknet")
    path = tmp_path / "attacknet.pth"
    torch.save({"model_state_dict": trained.state_dict()}, path)
    model = create_model("attacknet", pretrained=path)
    assert model.pretrained_source == str(path)
    assert torch.equal(model.head.weight, trained.head.weight)


def test_pretrained_path_for_another_model_is_rejected(tmp_path):
    path = tmp_path / "shufflenet.pth"
    torch.save(tvm.shufflenet_v2_x0_5(weights=None).state_dict(), path)
    with pytest.raises((ValueError, RuntimeError)):
        create_model("resnet18", pretrained=path)


def test_pretrained_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_efficiency_report():
    model = create_model("attacknet")
    model.train()
    report = efficiency_report(model, repeats=2)
    assert report["params"] == count_parameters(model)
    assert report["mflops"] == pytest.approx(report["flops"] / 1e6)
    assert report["cpu_ms_per_face"] > 0
    assert model.training  # measuring does not leave the model in eval mode
    assert cpu_ms_per_face(model, 32, repeats=1) > 0


def test_every_registered_model_is_a_face_classifier():
    for name in model_names():
        model = create_model(name)
        assert isinstance(model, FaceClassifier) and model.spec == get_spec(name)


def test_models_package_does_not_import_ray():
    code = "import sys, raypipe.models; assert 'ray' not in sys.modules, 'raypipe.models imported ray'"
    repo_root = Path(__file__).resolve().parents[2]  # `python -c` puts the cwd on sys.path
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=repo_root)


@pytest.mark.parametrize("device, precision, bf16, expected", [
    ("cuda", "auto", True, torch.bfloat16),   # Ampere and newer
    ("cuda", "auto", False, torch.float16),   # T4, V100
    ("cpu", "auto", True, None),
    ("cuda", "float32", True, None),
    ("cpu", "bfloat16", False, torch.bfloat16),
])
def test_inference_precision_follows_the_device(device, precision, bf16, expected):
    from raypipe.predict import inference_dtype

    assert inference_dtype(device, precision, bf16_supported=bf16) is expected


def test_impossible_inference_precisions_are_refused():
    from raypipe.predict import inference_dtype

    with pytest.raises(ValueError, match="needs a CUDA device"):
        inference_dtype("cpu", "float16")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype("cuda", "half")


def test_bfloat16_scores_stay_close_to_float32_on_cpu():
    from raypipe.predict import Predictor

    torch.manual_seed(0)
    model = create_model("attacknet")
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), np.uint8)
    exact = Predictor(model, model.spec, "cpu").score_inputs(images)
    reduced = Predictor(model, model.spec, "cpu", precision="bfloat16").score_inputs(images)
    assert not np.array_equal(exact, reduced)  # autocast really ran in bfloat16
    np.testing.assert_allclose(reduced, exact, atol=0.02)
