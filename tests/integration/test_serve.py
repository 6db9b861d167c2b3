"""The Ray Serve liveness API on real Ray Serve, a real MLflow registry and real models.

One app (``rp-main``: API keys on, rate limit, crop digests exposed) serves most tests;
the slow tests deploy their own small apps (scale to zero, model switch under load)
and delete them afterwards. Serve listens on a free port of 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import yaml
from jsonschema import Draft202012Validator

from raypipe.face import FaceConfig, FacePipeline, decode_crop
from tests.fixtures.images import astronaut_rgb, bad_inputs, encode, grace_hopper_rgb, no_face_rgb, write

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "test-attacknet"
KEY_A, KEY_B = "key-alpha-0123456789", "key-bravo-9876543210"
MAIN = {"app": "rp-main", "prefix": "/"}
LIMITS = {"max_body_bytes": 3_000_000, "max_image_bytes": 2_000_000, "max_pixels": 25_000_000, "max_frames": 4}


# --------------------------------------------------------------------------------------
# Fixtures: a registry with two model versions, Serve on a free port, the main app


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[dict]:
    """SQLite MLflow store with two fresh AttackNets; version 1 is the champion."""
    import mlflow
    import torch

    from raypipe.models import create_model
    from raypipe.models.store import configure_tracking, ensure_experiment, log_and_register

    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    configure_tracking(uri)
    experiment = ensure_experiment("serve-tests")
    for seed, threshold in ((0, 0.5), (1, 0.35)):
        torch.manual_seed(seed)
        with mlflow.start_run(experiment_id=experiment):
            log_and_register(create_model("attacknet"), threshold=threshold, register_as=MODEL_NAME,
                             promote=(seed == 0), extra_tags={"pipeline_version": FaceConfig().version()})
    yield {"tracking_uri": uri, "champion": f"models:/{MODEL_NAME}@champion",
           "v1": f"models:/{MODEL_NAME}/1", "v2": f"models:/{MODEL_NAME}/2"}
    mlflow.set_tracking_uri(previous)  # other test modules keep their own store


@pytest.fixture(scope="module")
def serve_url(ray_session) -> Iterator[str]:
    """Serve on a free local port; shut down (all our apps with it) after the module."""
    from ray import serve
    from ray.serve.context import _get_global_client

    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
    port = _get_global_client().http_config.port
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _options(downscale_to_zero_s: float = 600, max_replicas: int = 1) -> dict:
    def scaling(initial: int) -> dict:
        return {"autoscaling_config": {"min_replicas": 0, "initial_replicas": initial, "max_replicas": max_replicas,
                                       "target_ongoing_requests": 8, "metrics_interval_s": 1, "upscale_delay_s": 1,
                                       "downscale_delay_s": 2, "downscale_to_zero_delay_s": downscale_to_zero_s}}

    return {"Ingress": scaling(1), "FaceDetector": scaling(0), "Classifier": scaling(1), "ModelResolver": scaling(0)}


def run_app(name: str, prefix: str, settings: dict, options: dict) -> None:
    from ray import serve

    from raypipe.serve.app import compose
    from raypipe.serve.settings import ServeSettings

    serve.run(compose(ServeSettings.model_validate(settings), options), name=name, route_prefix=prefix,
              blocking=False)
    wait_app(name, "RUNNING")


def wait_app(name: str, status: str, timeout: float = 240) -> None:
    from ray import serve

    start = time.time()
    while time.time() - start < timeout:
        app = serve.status().applications.get(name)
        if app is not None and app.status == status:
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            raise AssertionError(f"{name} failed to deploy: {app.message}")
        time.sleep(0.5)
    raise TimeoutError(f"{name} not {status} after {timeout} s")


@pytest.fixture(scope="module")
def main_app(serve_url, registry, tmp_path_factory) -> Iterator[str]:
    from ray import serve

    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# test keys\n{KEY_A}\n{KEY_B}\n")
    settings = {"model_uri": registry["champion"], "tracking_uri": registry["tracking_uri"],
                "api_keys_file": str(keys), "rate_limit_per_s": 10, "rate_limit_burst": 60,
                "expose_crop_digest": True, **LIMITS}
    run_app(MAIN["app"], MAIN["prefix"], settings, _options())
    yield serve_url
    serve.delete(MAIN["app"])


@pytest.fixture(scope="module")
def client(main_app) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=main_app, headers={"X-API-Key": KEY_A}, timeout=120) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def detect(client: httpx.Client, data: bytes, **kwargs) -> httpx.Response:
    return client.post("/v1/detect", json={"image": b64(data)}, **kwargs)


# --------------------------------------------------------------------------------------
# Contract


def test_healthz_docs_and_page(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert health.json()["pipeline_version"] == FaceConfig().version()
    model = client.get("/healthz", params={"deep": "true"}).json()["model"]
    assert model["version"] == "1" and model["runtime"] == "onnx"
    # The lean path: the Classifier replica runs ONNX Runtime and never imported torch or MLflow.
    assert model["imports"] == {"torch": False, "mlflow": False}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/detect", "/v1/detect-frames", "/healthz"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "getUserMedia" in page.text


def test_detect_answers_the_contract_for_a_face_photo(client, registry):
    from raypipe.models.store import configure_tracking, load_model
    from raypipe.serve.core import ModelRunner

    data = encode(astronaut_rgb(), quality=92)
    answer = detect(client, data)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == {"name": MODEL_NAME, "version": "1", "threshold": 0.5, "runtime": "onnx"}
    assert {"decode", "detect", "classify", "total"} <= set(body["timing_ms"])
    [face] = body["faces"]
    assert set(face) >= {"box", "det_score", "label", "spoof_probability", "confidence"}
    p = face["spoof_probability"]
    assert face["label"] == ("spoof" if p >= 0.5 else "real")
    t = body["model"]["threshold"]
    expected = 0.5 + 0.5 * ((p - t) / (1 - t) if face["label"] == "spoof" else (t - p) / t)
    assert face["confidence"] == pytest.approx(expected, abs=1e-5) and 0.5 <= face["confidence"] <= 1
    # The same probability from the registry model run here on preprocessing's crop.
    configure_tracking(registry["tracking_uri"])
    with FacePipeline(FaceConfig()) as pipeline:
        result = pipeline.process(data)
    runner = ModelRunner(load_model(registry["champion"]))
    expected = runner.spoof_probabilities(result.primary.crop[None], np.array([result.primary.box_in_crop]))[0]
    assert p == pytest.approx(float(expected), abs=1e-5)
    assert face["box"] == list(result.primary.box)


class PublishedSchema:
    """The live ``/openapi.json``: checks answers against the schema their route publishes
    for their status, and records which published properties the answers used."""

    def __init__(self, spec: dict) -> None:
        self.components = spec["components"]
        self.paths = spec["paths"]
        self.seen: set[tuple[str, str]] = set()

    def schema(self, path: str, method: str, status: int) -> dict:
        responses = self.paths[path][method]["responses"]
        key = next((k for k in (str(status), f"{status // 100}XX", "default") if k in responses), None)
        assert key, f"{method.upper()} {path} publishes no {status} answer, only {sorted(responses)}"
        return responses[key]["content"]["application/json"]["schema"]

    def validator(self, schema: dict) -> Draft202012Validator:
        # Response schemas $ref into components/schemas: validate inside a document that holds them.
        return Draft202012Validator({**schema, "components": self.components})

    def check(self, response: httpx.Response, path: str, method: str = "post") -> dict:
        schema, body = self.schema(path, method, response.status_code), response.json()
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                  for e in self.validator(schema).iter_errors(body)]
        assert not errors, f"{method.upper()} {path} -> {response.status_code} breaks its schema: {errors}"
        self._record(schema, body, "")
        return body

    def _record(self, schema: dict, value: object, owner: str) -> None:
        if "$ref" in schema:
            owner = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.components["schemas"][owner]
        for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
            if self.validator(alternative).is_valid(value):
                self._record(alternative, value, owner)
                break
        properties = schema.get("properties", {})
        if isinstance(value, dict):
            for key in value.keys() & properties.keys():
                self.seen.add((owner, key))
                self._record(properties[key], value[key], owner)
        if isinstance(value, list) and "items" in schema:
            for item in value:
                self._record(schema["items"], item, owner)

    def never_answered(self) -> list[str]:
        published = {(name, key) for name, schema in self.components["schemas"].items()
                     for key in schema.get("properties", {})}
        return sorted(f"{name}.{key}" for name, key in published - self.seen)


def test_live_answers_match_the_published_openapi_schema(client):
    """Every answer validates against the schema /openapi.json publishes for its route and
    status (closed objects: a field added on one side only fails), and every published
    property shows up in some answer (a field dropped from the answers fails too)."""
    schema = PublishedSchema(client.get("/openapi.json").json())
    face, no_face = encode(two_face_image(), quality=90), encode(no_face_rgb(), quality=90)
    schema.check(client.get("/healthz"), "/healthz", "get")
    deep = schema.check(client.get("/healthz", params={"deep": "true"}), "/healthz", "get")
    assert {"uri", "load_s"} <= set(deep["model"])
    answer = detect(client, face)
    assert answer.status_code == 200, answer.text
    assert len(schema.check(answer, "/v1/detect")["faces"]) == 2
    frames = client.post("/v1/detect-frames", json={"frames": [b64(face), b64(no_face)]})
    assert frames.status_code == 200, frames.text
    schema.check(frames, "/v1/detect-frames")
    errors = [(client.post("/v1/detect", content=b'{"image": ', headers={"Content-Type": "application/json"}),
               "/v1/detect", 400),
              (detect(client, face, headers={"X-API-Key": ""}), "/v1/detect", 401),
              (client.post("/v1/detect-frames", json={"frames": [b64(face)] * (LIMITS["max_frames"] + 1)}),
               "/v1/detect-frames", 413),
              (client.post("/v1/detect", content=face, headers={"Content-Type": "text/plain"}), "/v1/detect", 415),
              (detect(client, no_face), "/v1/detect", 422),
              (client.get("/healthz", params={"deep": "maybe"}), "/healthz", 400)]
    for response, path, status in errors:
        assert response.status_code == status, f"{path}: {response.status_code} {response.text[:200]}"
        schema.check(response, path, "get" if path == "/healthz" else "post")
    assert not schema.never_answered(), f"published but never answered: {schema.never_answered()}"


@pytest.mark.parametrize("form", ["data_url", "multipart", "raw_jpeg", "line_wrapped", "urlsafe_unpadded"])
def test_every_accepted_body_form_gives_the_same_answer(client, form):
    data = encode(grace_hopper_rgb(), quality=90)
    reference = detect(client, data).json()["faces"]
    if form == "data_url":
        answer = client.post("/v1/detect", json={"image": "data:image/jpeg;base64," + b64(data)})
    elif form == "multipart":
        answer = client.post("/v1/detect", files={"file": ("grace.jpg", data, "image/jpeg")})
    elif form == "raw_jpeg":
        answer = client.post("/v1/detect", content=data, headers={"Content-Type": "image/jpeg"})
    elif form == "line_wrapped":
        text = b64(data)
        answer = client.post("/v1/detect", json={"image": "\n".join(text[i:i + 76] for i in range(0, len(text), 76))})
    else:
        answer = client.post("/v1/detect", json={"image": base64.urlsafe_b64encode(data).decode().rstrip("=")})
    assert answer.status_code == 200, answer.text
    assert answer.json()["faces"] == reference


# --------------------------------------------------------------------------------------
# Served crop == stored crop


def two_face_image() -> np.ndarray:
    """Astronaut and Grace Hopper side by side: serving must report both faces."""
    left = astronaut_rgb()[0:320, 100:420]  # close crops: the short-range detector misses small faces
    right = cv2.resize(grace_hopper_rgb()[0:384, 64:448], (320, 320))
    return np.ascontiguousarray(np.concatenate([left, right], axis=1))


def test_the_classified_crop_equals_the_crop_preprocessing_stores(client, ray_session, tmp_path):
    """Ray Data preprocessing stores crops (lossless PNG) in Parquet; the service reports the
    SHA-256 of each uint8 crop as its classifier received it. Equal digests prove equal
    pixels without keeping any image."""
    import pyarrow.dataset as pads

    from raypipe.preprocess import PreprocessConfig, run_preprocess

    images = {"astronaut.jpg": encode(astronaut_rgb(), quality=92),
              "grace.png": encode(grace_hopper_rgb(), "PNG"),
              "astronaut_flipped.jpg": encode(np.ascontiguousarray(astronaut_rgb()[:, ::-1]), quality=80),
              "two_faces.jpg": encode(two_face_image(), quality=90)}
    root = tmp_path / "photos"
    for name, payload in images.items():
        write(root / "live" / name, payload)
    out = tmp_path / "out"
    run_preprocess(PreprocessConfig(dataset="folder", root=str(root), out=str(out), workers=1))
    rows = pads.dataset(out / "crops", format="parquet", partitioning="hive").to_table().to_pylist()
    assert len(rows) == len(images)
    for row in rows:
        stored = decode_crop(row["crop"])
        answer = detect(client, images[Path(row["rel_path"]).name])
        assert answer.status_code == 200, answer.text
        body = answer.json()
        primary = body["faces"][0]
        assert primary["box"] == list(row["box"])
        assert primary["crop_sha256"] == hashlib.sha256(stored.tobytes()).hexdigest(), row["rel_path"]
        assert body["pipeline_version"] == row["pipeline_version"]
        assert len(body["faces"]) == row["n_faces"]
    # Every face, not only the primary one, is cropped with the same pipeline calls.
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(images["two_faces.jpg"], np.uint8), cv2.IMREAD_COLOR),
                       cv2.COLOR_BGR2RGB)
    with FacePipeline(FaceConfig()) as pipeline:
        crops = pipeline.process(rgb, all_faces=True).faces
    expected = [hashlib.sha256(c.crop.tobytes()).hexdigest() for c in crops]
    faces = detect(client, images["two_faces.jpg"]).json()["faces"]
    assert len(expected) == 2 and [f["crop_sha256"] for f in faces] == expected


# --------------------------------------------------------------------------------------
# Bursts


def test_detect_frames_scores_each_frame_and_fuses(client):
    face = encode(astronaut_rgb(), quality=90)
    frames = [face, encode(no_face_rgb(), quality=90), encode(np.ascontiguousarray(astronaut_rgb()[:, ::-1]))]
    answer = client.post("/v1/detect-frames", json={"frames": [b64(f) for f in frames]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [("face" in f, f.get("error", {}).get("code")) for f in body["frames"]] == [
        (True, None), (False, "no_face"), (True, None)]
    probabilities = [f["face"]["spoof_probability"] for f in body["frames"] if "face" in f]
    fused = body["fused"]
    assert fused["frames_used"] == 2
    assert fused["spoof_probability"] == pytest.approx(np.mean(probabilities), abs=1e-5)
    assert fused["label"] == ("spoof" if fused["spoof_probability"] >= body["model"]["threshold"] else "real")
    multipart = client.post("/v1/detect-frames", files=[("file", (f"f{i}.jpg", f, "image/jpeg"))
                                                         for i, f in enumerate(frames)])
    assert multipart.status_code == 200 and multipart.json()["fused"] == fused


# --------------------------------------------------------------------------------------
# Malformed requests


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid 1-bit PNG of width x height: ~50 KB on the wire, 400 MP once decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = "rpboundary") -> bytes:
    lines = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        lines.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(lines) + f"--{boundary}--\r\n".encode()


def malformed_requests() -> list[tuple[str, dict, int, str | None]]:
    """(name, httpx request kwargs, expected status, expected error code)."""
    bad = bad_inputs()
    face = encode(astronaut_rgb(), quality=90)
    text = b"plain text pretending to be an image\n" * 3
    js = {"headers": {"Content-Type": "application/json"}}
    mp = {"headers": {"Content-Type": "multipart/form-data; boundary=rpboundary"}}
    over_pixels = png_bomb(6000, 5000)  # 30 MP: over max_pixels, under Pillow's own bomb limit
    cases = [
        ("empty body", {"content": b"", **js}, 400, "empty"),
        ("empty object", {"content": b"{}", **js}, 400, "missing_field"),
        ("broken JSON", {"content": b'{"image": ', **js}, 400, "invalid_json"),
        ("JSON array", {"content": b"[1, 2]", **js}, 400, "invalid_json"),
        ("JSON string", {"content": b'"abc"', **js}, 400, "invalid_json"),
        ("not UTF-8", {"content": b'{"image": "\xff\xfe"}', **js}, 400, "invalid_json"),
        ("JSON nested 100000 deep", {"content": b"[" * 100_000 + b"]" * 100_000, **js}, 400, "invalid_json"),
        ("image is a number", {"json": {"image": 42}}, 400, "invalid_field"),
        ("image is null", {"json": {"image": None}}, 400, "invalid_field"),
        ("image is a list", {"json": {"image": [b64(face)]}}, 400, "invalid_field"),
        ("image is empty", {"json": {"image": ""}}, 400, "empty"),
        ("wrong field name", {"json": {"photo": b64(face)}}, 400, "missing_field"),
        ("bad base64", {"json": {"image": "@@@not base64@@@"}}, 400, "bad_base64"),
        ("non-ASCII base64", {"json": {"image": "ÿÿÿÿ" + b64(face)[:100]}}, 400, "bad_base64"),
        ("base64 of one char", {"json": {"image": "A"}}, 400, "bad_base64"),
        ("data URL without base64", {"json": {"image": "data:image/jpeg,abcd"}}, 400, "bad_base64"),
        ("empty data URL", {"json": {"image": "data:image/jpeg;base64,"}}, 400, "empty"),
        ("text as image", {"json": {"image": b64(text)}}, 400, "undecodable"),
        ("truncated JPEG", {"json": {"image": b64(bad["truncated.jpg"][0])}}, 400, "truncated"),
        ("truncated PNG", {"json": {"image": b64(encode(astronaut_rgb(), "PNG")[:-40])}}, 400, "truncated"),
        ("1x1 image", {"json": {"image": b64(bad["tiny.png"][0])}}, 422, "too_small"),
        ("no face", {"json": {"image": b64(bad["noface.jpg"][0])}}, 422, "no_face"),
        ("20000x20000 PNG bomb", {"json": {"image": b64(png_bomb())}}, 413, "too_large"),
        ("pixel count over the limit", {"json": {"image": b64(over_pixels)}}, 413, "too_large"),
        ("body over the limit", {"json": {"image": "A" * (LIMITS["max_body_bytes"] + 10)}}, 413, "too_large"),
        ("chunked body over the limit", {"content": iter([b"x" * 1_000_000] * 4), **js}, 413, "too_large"),
        ("image over the limit", {"json": {"image": "A" * int(LIMITS["max_image_bytes"] * 1.4)}}, 413, "too_large"),
        ("text/plain", {"content": b64(face).encode(), "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("no content type", {"content": face, "headers": {"Content-Type": ""}}, 415, "unsupported_media_type"),
        ("application/xml", {"content": b"<image/>", "headers": {"Content-Type": "application/xml"}}, 415,
         "unsupported_media_type"),
        ("raw image/jpeg of text", {"content": text, "headers": {"Content-Type": "image/jpeg"}}, 400, "undecodable"),
        ("multipart without boundary", {"content": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
         400, "bad_multipart"),
        ("multipart without file", {"content": multipart_body([("image", None, b64(face).encode())]), **mp}, 400,
         "missing_field"),
        ("multipart file as a text field", {"content": multipart_body([("file", None, face)]), **mp}, 400,
         "invalid_field"),
        ("multipart two files", {"content": multipart_body([("file", "a.jpg", face), ("file", "b.jpg", face)]), **mp},
         400, "invalid_field"),
        ("multipart text file", {"content": multipart_body([("file", "a.jpg", text)]), **mp}, 400, "undecodable"),
        ("multipart garbage", {"content": b"\x00garbage\xff" * 50, **mp}, 400, None),
        ("missing API key", {"json": {"image": b64(face)}, "headers": {"X-API-Key": ""}}, 401, "unauthorized"),
        ("wrong API key", {"json": {"image": b64(face)}, "headers": {"X-API-Key": "nope"}}, 401, "unauthorized"),
    ]
    frames = [
        ("frames not a list", {"json": {"frames": b64(face)}}, 400, "invalid_field"),
        ("frames empty", {"json": {"frames": []}}, 400, "empty"),
        ("too many frames", {"json": {"frames": [b64(face)] * (LIMITS["max_frames"] + 1)}}, 413, "too_many_frames"),
        ("a frame undecodable", {"json": {"frames": [b64(face), b64(text)]}}, 400, "undecodable"),
        ("no face in any frame", {"json": {"frames": [b64(bad["noface.jpg"][0])] * 2}}, 422, "no_face"),
        ("frames as raw image", {"content": face, "headers": {"Content-Type": "image/jpeg"}}, 415,
         "unsupported_media_type"),
    ]
    return [(n, {"url": "/v1/detect", **kw}, s, c) for n, kw, s, c in cases] + \
           [(n, {"url": "/v1/detect-frames", **kw}, s, c) for n, kw, s, c in frames] + [
        ("GET on a POST route", {"url": "/v1/detect", "method": "GET"}, 405, "method_not_allowed"),
        ("unknown route", {"url": "/v1/nothing-here", "method": "POST", "json": {}}, 404, "not_found"),
    ]


def test_malformed_requests_get_their_4xx_and_a_json_error(client):
    cases = malformed_requests()
    assert len(cases) >= 30
    failures = []
    for name, kwargs, status, code in cases:
        kwargs = dict(kwargs)
        method = kwargs.pop("method", "POST")
        headers = {"X-API-Key": KEY_A, **kwargs.pop("headers", {})}
        if headers.get("Content-Type") == "":
            headers.pop("Content-Type")  # really no Content-Type header at all
        response = client.request(method, headers=headers, **kwargs)
        try:
            error = response.json()["error"]
            shaped = isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError):
            error, shaped = None, False
        if response.status_code != status or not shaped or (code and error["code"] != code):
            failures.append(f"{name}: {response.status_code} {response.text[:160]!r}, expected {status} {code}")
        assert response.status_code < 500, f"{name} gave a 5xx: {response.text[:200]}"
    assert not failures, "\n".join(failures)
    # The service is unharmed: normal answers afterwards.
    for data in (encode(astronaut_rgb(), quality=92), encode(grace_hopper_rgb(), "PNG")):
        answer = detect(client, data)
        assert answer.status_code == 200 and answer.json()["faces"]


# --------------------------------------------------------------------------------------
# Protection


def test_api_key_is_required_and_checked(main_app):
    data = {"image": b64(encode(astronaut_rgb(), quality=90))}
    with httpx.Client(base_url=main_app, timeout=120) as anonymous:
        assert anonymous.post("/v1/detect", json=data).status_code == 401
        wrong = anonymous.post("/v1/detect", json=data, headers={"X-API-Key": KEY_A + "x"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        assert anonymous.post("/v1/detect", json=data, headers={"X-API-Key": KEY_B}).status_code == 200
        assert anonymous.get("/healthz").status_code == 200  # health and the page stay public
        assert anonymous.get("/").status_code == 200


def test_rate_limit_answers_429_per_key_and_recovers(main_app):
    """Key B floods cheap requests until 429; key A is unaffected; B recovers after Retry-After."""
    def cheap(key: str) -> httpx.Response:
        with httpx.Client(base_url=main_app, timeout=60) as c:
            return c.post("/v1/detect", json={}, headers={"X-API-Key": key})

    statuses, retry_after = [], None
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):
            responses = list(pool.map(cheap, [KEY_B] * 40))
            statuses += [r.status_code for r in responses]
            limited = [r for r in responses if r.status_code == 429]
            if limited:
                retry_after = int(limited[0].headers["Retry-After"])
                assert limited[0].json()["error"]["code"] == "rate_limited"
                break
    assert retry_after is not None, f"never rate limited: {sorted(set(statuses))}"
    assert set(statuses) <= {400, 429}
    assert cheap(KEY_A).status_code == 400  # another key has its own bucket
    time.sleep(retry_after + 0.5)
    assert cheap(KEY_B).status_code == 400


def test_no_image_bytes_in_replica_logs(client, ray_session):
    """Images are biometric data: nothing of the request body reaches the logs."""
    marker = b64(encode(astronaut_rgb(), quality=91))
    detect(client, base64.b64decode(marker))
    client.post("/v1/detect", json={"image": marker[:5000] + "@@"})  # an error path too
    time.sleep(1)
    log_dir = Path(ray_session._private.worker._global_node.get_session_dir_path()) / "logs"
    needle = marker[100:160]
    for path in log_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 200_000_000:
            assert needle not in path.read_text(errors="ignore"), f"image data in {path}"


# --------------------------------------------------------------------------------------
# Metrics


def test_metrics_are_exported_for_prometheus(client, ray_session):
    """Ray's metrics agent (in every node's dashboard agent, even without the dashboard)
    binds a free export port at start-up and registers it with the node; Serve replicas
    report every few seconds, so the metrics appear within the minute or never."""
    from ray._common.network_utils import build_address

    node = ray_session._private.worker._global_node
    assert node.metrics_export_port > 0, f"metrics export port {node.metrics_export_port}: metrics collection is off"
    url = f"http://{build_address(node.node_ip_address, node.metrics_export_port)}/metrics"
    detect(client, encode(astronaut_rgb(), quality=90))
    client.post("/v1/detect", json={})
    wanted = ["raypipe_requests_total", "raypipe_verdicts_total", "raypipe_errors_total",
              "raypipe_detector_latency_ms_bucket", "raypipe_classifier_latency_ms_bucket",
              "raypipe_classifier_batch_size_bucket"]
    deadline, text, problem = time.time() + 60, "", ""
    while time.time() < deadline:
        try:  # a busy agent can miss one scrape: retry until the deadline, not give up
            text, problem = httpx.get(url, timeout=10).text, ""
        except httpx.HTTPError as exc:
            problem = f"{url}: {type(exc).__name__} {exc}"
        if all(name in text for name in wanted):
            break
        time.sleep(2)
    missing = [name for name in wanted if name not in text]
    assert not missing, f"not exported after 60 s: {missing} {problem}"
    assert 'code="missing_field"' in text


# --------------------------------------------------------------------------------------
# The web page in headless Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, which `bash scripts/setup.sh --test` installs (make test runs it)."""
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed: run `bash scripts/setup.sh --test` (as root, for apt-get)")
    return path


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws, self.next_id = connect(url, max_size=None), 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"page never satisfied {expression}")


@pytest.fixture
def browser(chromium, tmp_path) -> Iterator[DevTools]:
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
                             "--remote-allow-origins=*", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(p for p in pages if p["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        yield tools
        tools.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_web_page_uploads_a_photo_and_shows_the_verdict(client, browser, tmp_path):
    photo = write(tmp_path / "astronaut.jpg", encode(astronaut_rgb(), quality=92))
    expected = detect(client, photo.read_bytes()).json()["faces"]
    browser.call("Page.enable")
    browser.call("Page.navigate", url=str(client.base_url).rstrip("/") + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('file')")
    browser.evaluate(f"document.getElementById('api-key').value = {json.dumps(KEY_A)}")
    root = browser.call("DOM.getDocument")["root"]["nodeId"]
    file_input = browser.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.call("DOM.setFileInputFiles", files=[str(photo)], nodeId=file_input)
    state = browser.wait_for("['done', 'error'].includes(document.getElementById('result').dataset.state) && "
                             "document.getElementById('result').dataset.state")
    shown = browser.evaluate("JSON.stringify({text: document.getElementById('result').textContent, "
                             "faces: [...document.querySelectorAll('li.face')].map(li => li.dataset.label), "
                             "canvas: getComputedStyle(document.getElementById('canvas')).display, "
                             "width: document.getElementById('canvas').width})")
    shown = json.loads(shown)
    assert state == "done", shown["text"]
    assert shown["faces"] == [f["label"] for f in expected]
    assert shown["canvas"] == "block" and shown["width"] == 512  # the photo is drawn with its boxes
    assert expected[0]["label"] in shown["text"]


# --------------------------------------------------------------------------------------
# Scale to zero, and a model switch under load (own apps, deleted afterwards)


def running_replicas(app: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications[app]
    return {name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()}


@pytest.mark.slow
def test_idle_app_scales_to_zero_and_the_next_request_succeeds(serve_url, registry):
    """All three deployments (detector in its own deployment here) reach zero replicas,
    as serve.status() shows, and the next request brings them back."""
    from ray import serve

    name = "rp-zero"
    settings = {"model_uri": registry["champion"], "tracking_uri": registry["tracking_uri"],
                "detector": "deployment", "expose_crop_digest": True}
    run_app(name, "/zero", settings, _options(downscale_to_zero_s=3))
    try:
        data = encode(astronaut_rgb(), quality=92)
        with httpx.Client(base_url=serve_url + "/zero", timeout=180) as c:
            first = detect(c, data)
            assert first.status_code == 200, first.text
            assert running_replicas(name)["FaceDetector"] == 1
            deadline = time.time() + 180
            while any(running_replicas(name).values()):
                assert time.time() < deadline, f"still running after 180 s: {running_replicas(name)}"
                time.sleep(1)
            assert running_replicas(name) == {"Ingress": 0, "FaceDetector": 0, "Classifier": 0, "ModelResolver": 0}
            assert serve.status().applications[name].status == "RUNNING"  # idle, not broken
            start = time.time()
            again = detect(c, data)
            cold_s = time.time() - start
        assert again.status_code == 200, again.text
        assert again.json()["faces"] == first.json()["faces"]  # same crop digest, same answer
        print(f"cold start from zero replicas: {cold_s:.1f} s")
    finally:
        serve.delete(name)


def switch_config(registry: dict, name: str, prefix: str, model_uri: str | None) -> dict:
    """serve_config.yaml's application, renamed; ``model_uri`` set as the Classifier's user_config."""
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    app = config["applications"][0]
    app.update(name=name, route_prefix=prefix)
    app["args"].update(model_uri=registry["champion"], tracking_uri=registry["tracking_uri"], rate_limit_per_s=0)
    for deployment in app["deployments"]:
        deployment["autoscaling_config"]["max_replicas"] = 1
        if deployment["name"] == "Classifier" and model_uri:
            deployment["user_config"] = {"model_uri": model_uri, "max_batch_size": 16, "batch_wait_timeout_s": 0.0}
    return {"applications": [app]}


class VersionedLoad:
    """Concurrent clients posting ``body`` until stopped; each answer recorded as
    (time, HTTP status or -1, the model version that answered or the error's name)."""

    def __init__(self, url: str, body: dict, clients: int = 4) -> None:
        self.url, self.body, self.results = url, body, []
        self.stop = threading.Event()
        self.workers = [threading.Thread(target=self._hammer) for _ in range(clients)]

    def _hammer(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop.is_set():
                try:
                    r = c.post("/v1/detect", json=self.body)
                    self.results.append((time.time(), r.status_code,
                                         r.json()["model"]["version"] if r.status_code == 200 else None))
                except httpx.HTTPError as exc:
                    self.results.append((time.time(), -1, type(exc).__name__))

    def start(self) -> VersionedLoad:
        for w in self.workers:
            w.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for w in self.workers:
            if w.ident is not None:  # started
                w.join(timeout=150)

    def failed(self) -> list:
        return [r for r in self.results if r[1] != 200]

    def versions(self) -> list:
        return [r[2] for r in self.results]


@pytest.mark.slow
def test_model_switch_under_load_drops_no_request(serve_url, registry):
    """Deployed from serve_config.yaml like `serve deploy`; then only the Classifier's
    user_config changes (v1 -> v2): a lightweight reconfigure under concurrent load."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    name, prefix = "rp-switch", "/switch"
    deploy = _get_global_client().deploy_apps
    deploy(ServeDeploySchema.model_validate(switch_config(registry, name, prefix, None)))
    wait_app(name, "RUNNING")
    body = {"image": b64(encode(astronaut_rgb(), quality=92))}
    load = VersionedLoad(serve_url + prefix, body)
    try:
        with httpx.Client(base_url=serve_url + prefix, timeout=180) as c:
            assert c.post("/v1/detect", json=body).json()["model"]["version"] == "1"
        load.start()
        time.sleep(5)
        switched_at = time.time()
        deploy(ServeDeploySchema.model_validate(switch_config(registry, name, prefix, registry["v2"])))
        deadline = time.time() + 120
        while time.time() < deadline and not [r for r in load.results if r[0] > switched_at and r[2] == "2"]:
            time.sleep(0.5)
        time.sleep(5)  # keep the load on after the switch
        load.finish()
        failed, versions = load.failed(), load.versions()
        assert not failed, f"{len(failed)} of {len(versions)} requests failed: {failed[:5]}"
        assert "1" in versions and "2" in versions, set(versions)
        first_v2 = versions.index("2")
        assert set(versions[first_v2 + 8:]) == {"2"}  # once switched, it stays switched (in-flight aside)
        replicas = serve.status().applications[name].deployments["Classifier"].replica_states
        assert replicas.get("RUNNING") == 1  # reconfigured in place, not replaced
        print(f"{len(versions)} requests, none failed; v2 from request {first_v2}")
    finally:
        load.finish()
        serve.delete(name)


@pytest.mark.slow
def test_a_promotion_rolls_out_to_running_replicas_under_load(serve_url, registry):
    """The champion alias moves in the registry and nothing else happens: the running
    Classifier follows it within model_refresh_s, in place, and no request fails meanwhile."""
    import mlflow
    import torch
    from ray import serve

    from raypipe.models import create_model
    from raypipe.models.store import CHAMPION, configure_tracking, ensure_experiment, log_and_register

    configure_tracking(registry["tracking_uri"])
    for seed in (0, 1):
        torch.manual_seed(seed)
        with mlflow.start_run(experiment_id=ensure_experiment("serve-tests")):
            log_and_register(create_model("attacknet"), threshold=0.5, register_as="follow", promote=seed == 0,
                             extra_tags={"pipeline_version": FaceConfig().version()})
    name, prefix, refresh_s = "rp-follow", "/follow", 1.0
    settings = {"model_uri": "models:/follow@champion", "tracking_uri": registry["tracking_uri"],
                "rate_limit_per_s": 0, "model_refresh_s": refresh_s}
    run_app(name, prefix, settings, _options())
    body = {"image": b64(encode(astronaut_rgb(), quality=92))}
    load = VersionedLoad(serve_url + prefix, body)
    try:
        with httpx.Client(base_url=serve_url + prefix, timeout=180) as c:
            assert c.post("/v1/detect", json=body).json()["model"]["version"] == "1"
        load.start()
        time.sleep(3)
        moved_at = time.time()
        mlflow.MlflowClient().set_registered_model_alias("follow", CHAMPION, "2")
        deadline = moved_at + 60
        while time.time() < deadline and "2" not in load.versions():
            time.sleep(0.2)
        time.sleep(3)  # keep the load on after the switch
        load.finish()
        failed, versions = load.failed(), load.versions()
        assert not failed, f"{len(failed)} of {len(versions)} requests failed: {failed[:5]}"
        assert "1" in versions and "2" in versions, set(versions)
        first_v2 = versions.index("2")
        # How soon is a measurement, not a test assertion (a loaded CI machine took 24 s where
        # an idle one takes 2-9 s): benchmarks/serve.py and docs/serving.md report it. What is
        # asserted is that the running replica followed the alias by itself, within the deadline.
        switch_s = load.results[first_v2][0] - moved_at
        assert set(versions[first_v2 + 8:]) == {"2"}
        replicas = serve.status().applications[name].deployments["Classifier"].replica_states
        assert replicas.get("RUNNING") == 1  # switched in place: no redeploy, no new replica
        print(f"{len(versions)} requests, none failed; the alias was followed in {switch_s:.1f} s")
    finally:
        load.finish()
        serve.delete(name)


def test_the_model_can_run_inside_the_ingress_replica(serve_url, registry, client):
    """classifier: ingress (one Serve hop fewer): same answer as the Classifier deployment,
    the Classifier stays at zero replicas, and the ingress replica imports no torch or MLflow."""
    from ray import serve

    name, prefix = "rp-onehop", "/onehop"
    settings = {"model_uri": registry["champion"], "tracking_uri": registry["tracking_uri"],
                "classifier": "ingress", "rate_limit_per_s": 0}
    run_app(name, prefix, settings, _options())
    try:
        data = encode(astronaut_rgb(), quality=92)
        with httpx.Client(base_url=serve_url + prefix, timeout=120) as c:
            here = detect(c, data)
            health = c.get("/healthz", params={"deep": "true"}).json()
        there = detect(client, data)
        assert here.status_code == 200, here.text
        assert [f["spoof_probability"] for f in here.json()["faces"]] == \
            pytest.approx([f["spoof_probability"] for f in there.json()["faces"]], abs=1e-6)
        assert here.json()["model"] == there.json()["model"]
        assert health["classifier"] == "ingress" and health["model"]["imports"] == {"torch": False, "mlflow": False}
        assert serve.status().applications[name].deployments["Classifier"].replica_states.get("RUNNING", 0) == 0
    finally:
        serve.delete(name)
