"""MiniFASNet (Silent-Face) in the registry: exact loads of the released weights, the exact
3 -> 2 class reduction, weight-file resolution errors, and zero-shot behaviour on NUAA.

The released files are read from the project's shared folder (never from the repository):
tests point ``RAYPIPE_WEIGHTS_DIR`` at it and skip when it is not beside the checkout.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import threading
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raypipe.metrics import auc
from raypipe.models import (
    CosineHead,
    build_transforms,
    count_flops,
    count_parameters,
    create_model,
    get_spec,
    gradcam_target_layer,
)
from raypipe.models import weights as weights_mod
from raypipe.models.minifasnet import SilentFaceHead, silentface_key
from raypipe.models.pretrained import read_state_dict
from raypipe.models.weights import (
    SILENTFACE_V1SE,
    SILENTFACE_V2,
    WEIGHTS_DIR_ENV,
    WeightsUnavailable,
    resolve_weights,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
SHARED_WEIGHTS = SHARED / "weights"
NUAA = SHARED / "datasets" / "nuaa"
MEMBERS = {"minifasnet_v2": SILENTFACE_V2, "minifasnet_v1se": SILENTFACE_V1SE}
ALL = [*MEMBERS, "minifasnet_ensemble"]
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

needs_shared_weights = pytest.mark.skipif(
    not (SHARED_WEIGHTS / "silentface").is_dir(), reason="../shared/weights is not beside the project"
)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # An empty per-user cache: tests never read nor fill the machine's real one.
    monkeypatch.setenv("RAYPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


@pytest.fixture
def shared_weights(monkeypatch) -> Path:
    if not (SHARED_WEIGHTS / "silentface").is_dir():
        pytest.skip("../shared/weights is not beside the project")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(SHARED_WEIGHTS))
    return SHARED_WEIGHTS


def _bgr_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """BGR 0-255 floats, the released models' input convention."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 255


# --------------------------------------------------------------------------------------
# Architecture and released weights


def test_key_mapping():
    assert silentface_key("module.conv1.conv.weight") == "backbone.conv1.conv.weight"
    assert silentface_key("module.conv_3.model.3.se_module.fc1.weight") == "backbone.conv_3.3.se_module.fc1.weight"
    assert silentface_key("module.conv_45.conv_dw.bn.running_var") == "backbone.conv_45.conv_dw.bn.running_var"
    assert silentface_key("module.prob.weight") == "head.prob.weight"


@pytest.mark.parametrize("name", list(MEMBERS))
def test_released_state_dict_loads_exactly(name, shared_weights):
    released = read_state_dict(shared_weights / "silentface" / MEMBERS[name].file)
    model = create_model(name, pretrained="silentface")
    ours = model.state_dict()
    mapped = {silentface_key(k): v for k, v in released.items()}
    assert set(mapped) == set(ours)  # nothing missing, nothing left over
    assert all(torch.equal(ours[k], v) for k, v in mapped.items())
    assert model.pretrained_source == f"silentface:{MEMBERS[name].file}:{MEMBERS[name].sha256[:12]}"
    assert isinstance(model.head, SilentFaceHead)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_parameter_count_and_flops_match_the_release(name, shared_weights):
    released = read_state_dict(shared_weights / "silentface" / MEMBERS[name].file)
    file_params = sum(v.numel() for k, v in released.items() if not k.endswith(_BUFFER_SUFFIXES))
    model = create_model(name)
    assert count_parameters(model) == file_params
    assert 0.41e6 <= file_params <= 0.44e6, file_params  # published: 0.41-0.44 M
    assert 0.075e9 <= count_flops(model, 80) <= 0.09e9  # published: 0.081 GFLOPs


def test_ensemble_loads_both_files_into_its_members(shared_weights):
    ensemble = create_model("minifasnet_ensemble", pretrained="silentface")
    assert ensemble.pretrained_source == f"{SILENTFACE_V2.tag()}+{SILENTFACE_V1SE.tag()}"
    for member, name in (("v2", "minifasnet_v2"), ("v1se", "minifasnet_v1se")):
        single = create_model(name, pretrained="silentface")
        for part in ("backbone", "head"):
            ours = getattr(getattr(ensemble, part), member).state_dict()
            theirs = getattr(single, part).state_dict()
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", ALL)
def test_forward_gives_two_class_logits_and_embeddings(name):
    model = create_model(name).eval()
    assert model.pretrained_source == "scratch"
    spec = model.spec
    assert spec.channels == "bgr" and spec.crop.shape == "box" and spec.mean == (0.0, 0.0, 0.0)
    x = _bgr_batch(3, spec.input_size)
    seen = []
    handle = gradcam_target_layer(model).register_forward_hook(lambda m, i, out: seen.append(out.shape))
    with torch.no_grad():
        logits, embedding = model(x, return_embeddings=True)
    handle.remove()
    assert logits.shape == (3, 2) and embedding.shape == (3, spec.embedding_dim)
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(3))
    assert len(seen) == 1 and len(seen[0]) == 4 and seen[0][-1] > 1  # a feature map for Grad-CAM


def test_specs_crops_and_input_convention():
    assert get_spec("minifasnet_v2").crop.scale == 2.7 and get_spec("minifasnet_v2").input_size == 80
    assert get_spec("minifasnet_v1se").crop.scale == 4.0 and get_spec("minifasnet_v1se").input_size == 80
    assert get_spec("minifasnet_ensemble").crop.scale == 4.0


def test_transform_feeds_bgr_0_255():
    # raypipe's transform (uint8 RGB -> [0, 1] -> normalise, channel order from the spec)
    # must yield what Silent-Face feeds its network: the OpenCV BGR image as 0-255 floats.
    rgb = np.random.default_rng(0).integers(0, 256, (1, 80, 80, 3), dtype=np.uint8)
    x = build_transforms(get_spec("minifasnet_v2"))(rgb)
    expected = torch.from_numpy(rgb[..., ::-1].copy()).permute(0, 3, 1, 2).float()
    assert torch.allclose(x, expected, atol=1e-3)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_two_class_output_is_the_summed_attack_probability(name, shared_weights):
    model = create_model(name, pretrained="silentface").eval()
    with torch.no_grad():
        logits, embedding = model(_bgr_batch(4, 80), return_embeddings=True)
        p3 = model.head.class_logits(embedding).softmax(1)  # 2D attack, live, 3D attack
    p2 = logits.softmax(1)
    assert torch.allclose(p2[:, 0], p3[:, 1], atol=1e-6)  # raypipe 0 = live
    assert torch.allclose(p2[:, 1], p3[:, 0] + p3[:, 2], atol=1e-6)  # raypipe 1 = attack


def test_ensemble_averages_the_members_probabilities(shared_weights):
    ensemble = create_model("minifasnet_ensemble", pretrained="silentface").eval()
    v2 = create_model("minifasnet_v2", pretrained="silentface").eval()
    v1se = create_model("minifasnet_v1se", pretrained="silentface").eval()
    x = _bgr_batch(4, 160, seed=1)
    with torch.no_grad():
        v2_input, v1se_input = ensemble.backbone.member_inputs(x)
        expected = (v2(v2_input).softmax(1) + v1se(v1se_input).softmax(1)) / 2
        got = ensemble(x).softmax(1)
    assert v2_input.shape == v1se_input.shape == (4, 3, 80, 80)
    assert torch.allclose(got, expected, atol=1e-6)


def test_ensemble_v2_member_sees_the_central_fraction():
    # A 160 input whose central 108x108 (2.7 / 4.0 of it) is white, the rest black.
    x = torch.zeros(1, 3, 160, 160)
    x[..., 26:134, 26:134] = 255
    v2_input, v1se_input = create_model("minifasnet_ensemble").backbone.member_inputs(x)
    assert torch.all(v2_input == 255)
    assert v1se_input[..., 0, 0].max() == 0 and v1se_input[..., 40, 40].min() == 255


def test_released_head_trains_through_the_two_class_reduction(shared_weights):
    model = create_model("minifasnet_v2", pretrained="silentface").train()
    F.cross_entropy(model(_bgr_batch(4, 80)), torch.tensor([0, 1, 0, 1])).backward()
    assert model.head.prob.weight.grad is not None and model.head.prob.weight.grad.abs().sum() > 0


def test_cosine_head_loads_the_released_backbone_only(shared_weights):
    cosine = create_model("minifasnet_v2", head="cosine", scale=10.0, pretrained="silentface")
    linear = create_model("minifasnet_v2", pretrained="silentface")
    assert isinstance(cosine.head, CosineHead) and cosine.head.scale == 10.0
    assert cosine.pretrained_source == f"{SILENTFACE_V2.tag()}:backbone-only"
    ours, theirs = cosine.backbone.state_dict(), linear.backbone.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_unsupported_heads_and_sources_are_clear_errors():
    with pytest.raises(ValueError, match="head"):
        create_model("minifasnet_ensemble", head="cosine")
    with pytest.raises(ValueError, match="2 classes"):
        create_model("minifasnet_v2", num_classes=3)
    with pytest.raises(ValueError, match="silentface"):
        create_model("attacknet", pretrained="silentface")


def test_whole_model_checkpoint_round_trip(tmp_path, shared_weights):
    model = create_model("minifasnet_ensemble", pretrained="silentface")
    path = tmp_path / "ensemble.pt"
    torch.save(model.state_dict(), path)
    again = create_model("minifasnet_ensemble", pretrained=path)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------------------
# Weight-file resolution


def _put(folder: Path, weights, data: bytes) -> Path:
    path = folder / weights.source / weights.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@needs_shared_weights
def test_configured_file_with_wrong_sha_is_a_typed_error(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    # the other model's (valid) file under V2's name, then a truncated copy of V2's own
    _put(folder, SILENTFACE_V2, (SHARED_WEIGHTS / "silentface" / SILENTFACE_V1SE.file).read_bytes())
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    with pytest.raises(WeightsUnavailable, match=f"{WEIGHTS_DIR_ENV}.*sha256"):
        create_model("minifasnet_v2", pretrained="silentface")
    _put(folder, SILENTFACE_V2, (SHARED_WEIGHTS / "silentface" / SILENTFACE_V2.file).read_bytes()[:1000])
    with pytest.raises(WeightsUnavailable, match="sha256"):
        resolve_weights(SILENTFACE_V2)


def test_configured_folder_without_the_file_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(WeightsUnavailable, match=f"{WEIGHTS_DIR_ENV}.*does not exist"):
        resolve_weights(SILENTFACE_V1SE)


def test_no_folder_no_cache_no_network_is_a_typed_error_naming_the_setting():
    # Port 9 (discard) on the loopback: refused at once, like a machine without a network.
    offline = dataclasses.replace(SILENTFACE_V2, base_url="http://127.0.0.1:9/models")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailable, match=WEIGHTS_DIR_ENV) as info:
        resolve_weights(offline)
    assert time.monotonic() - start < 10
    assert "download" in str(info.value) and offline.file in str(info.value)
    with pytest.raises(WeightsUnavailable, match=WEIGHTS_DIR_ENV):
        resolve_weights(SILENTFACE_V2, fetch=False)


def test_create_model_without_weights_or_network_raises_the_typed_error(monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights_mod.urllib.request, "urlopen", no_network)
    with pytest.raises(WeightsUnavailable, match=WEIGHTS_DIR_ENV):
        create_model("minifasnet_ensemble", pretrained="silentface")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no access log on the test's stderr
        pass


@pytest.fixture
def file_server(tmp_path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on the loopback serving a temporary folder: (base URL, folder)."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@needs_shared_weights
def test_download_is_verified_cached_and_reused(file_server):
    base_url, root = file_server
    (root / SILENTFACE_V2.file).write_bytes((SHARED_WEIGHTS / "silentface" / SILENTFACE_V2.file).read_bytes())
    served = dataclasses.replace(SILENTFACE_V2, base_url=base_url)
    path = resolve_weights(served)
    assert path == weights_mod.weights_cache_dir() / "silentface" / SILENTFACE_V2.file
    assert weights_mod.sha256_of(path) == SILENTFACE_V2.sha256
    assert [p.name for p in path.parent.iterdir()] == [SILENTFACE_V2.file]  # no staging file left
    (root / SILENTFACE_V2.file).unlink()
    assert resolve_weights(served, fetch=False) == path  # the cache answers now


def test_downloaded_file_with_wrong_sha_is_rejected_and_not_cached(file_server):
    base_url, root = file_server
    (root / SILENTFACE_V2.file).write_bytes(b"not the weights")
    with pytest.raises(WeightsUnavailable, match="sha256"):
        resolve_weights(dataclasses.replace(SILENTFACE_V2, base_url=base_url))
    cache = weights_mod.weights_cache_dir() / "silentface"
    assert not cache.exists() or list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------
# Zero-shot behaviour on real data


def silentface_crop(bgr: np.ndarray, box: tuple[int, int, int, int], scale: float, size: int) -> np.ndarray:
    """Silent-Face's crop rule: the box (not made square) scaled about its centre, the scale
    capped so the region fits the image, shifted inside it, resized (bilinear) to size x size."""
    height, width = bgr.shape[:2]
    x, y, w, h = box
    scale = min((height - 1) / h, (width - 1) / w, scale)
    cx, cy = x + w / 2, y + h / 2
    x0, y0, x1, y1 = cx - w * scale / 2, cy - h * scale / 2, cx + w * scale / 2, cy + h * scale / 2
    if x0 < 0:
        x0, x1 = 0, x1 - x0
    if y0 < 0:
        y0, y1 = 0, y1 - y0
    if x1 > width - 1:
        x0, x1 = x0 - (x1 - width + 1), width - 1
    if y1 > height - 1:
        y0, y1 = y0 - (y1 - height + 1), height - 1
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    return cv2.resize(bgr[y0 : y1 + 1, x0 : x1 + 1], (size, size))


def _spread(folder: Path, n: int) -> list[Path]:
    files = sorted(folder.rglob("*.jpg"))
    return [files[i] for i in np.linspace(0, len(files) - 1, n).round().astype(int)]


def _tensor(bgr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1).float()[None]


def _called(scores: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(live called live, attack called attack) at threshold 0.5 on p(attack)."""
    return int((scores[labels == 0] < 0.5).sum()), int((scores[labels == 1] >= 0.5).sum())


@pytest.mark.nuaa
def test_zero_shot_on_nuaa_separates_live_from_print(face_pipeline, shared_weights):
    if not NUAA.is_dir():
        pytest.skip("../shared/datasets/nuaa is not beside the project")
    ensemble = create_model("minifasnet_ensemble", pretrained="silentface").eval()
    v2 = create_model("minifasnet_v2", pretrained="silentface").eval()
    v1se = create_model("minifasnet_v1se", pretrained="silentface").eval()
    labels, ours, theirs = [], [], []
    for label, folder in ((0, "ClientRaw"), (1, "ImposterRaw")):
        for path in _spread(NUAA / folder, 10):
            bgr = cv2.imread(str(path))
            detections = face_pipeline.detect(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if not detections:
                continue
            box = detections[0].box
            with torch.no_grad():
                # our ensemble: one 4.0x crop at 160; Silent-Face's release: one crop per model
                ours.append(ensemble(_tensor(silentface_crop(bgr, box, 4.0, 160))).softmax(1)[0, 1].item())
                p_v2 = v2(_tensor(silentface_crop(bgr, box, 2.7, 80))).softmax(1)[0, 1].item()
                p_v1se = v1se(_tensor(silentface_crop(bgr, box, 4.0, 80))).softmax(1)[0, 1].item()
            theirs.append((p_v2 + p_v1se) / 2)
            labels.append(label)
    y = np.array(labels)
    n_live, n_attack = int((y == 0).sum()), int((y == 1).sum())
    assert n_live >= 8 and n_attack >= 8, "too few faces detected"
    # Seen here: both AUC 1.000; 10/10 live and 10/10 attack called right at 0.5.
    for name, scores in (("ensemble", np.array(ours)), ("per-model crops", np.array(theirs))):
        live_ok, attack_ok = _called(scores, y)
        summary = f"{name}: AUC {auc(y, scores):.3f}, live {live_ok}/{n_live}, attack {attack_ok}/{n_attack}"
        assert auc(y, scores) >= 0.9, summary
        assert live_ok > n_live / 2 and attack_ok > n_attack / 2, summary
