"""Request bodies -> encoded image bytes, with every malformed case mapped to a 4xx.

Accepted: JSON ``{"image": "<base64>"}`` (``data:image/...;base64,`` prefix allowed),
``{"frames": ["<base64>", ...]}`` for bursts, multipart ``file`` field(s), and for
convenience a raw ``image/*`` body. Multipart is parsed in memory from the already
size-limited body: Starlette's parser spools uploads over 1 MiB to a temporary file,
and the service must never write an image anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from raypipe.serve.errors import ApiError

DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
MAX_PARTS = 64


def media_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return parse_options_header(content_type)[0].decode("latin-1").lower()


def decode_base64(text: Any, limit: int, what: str = "image") -> bytes:
    """Base64 (standard or URL-safe, padding optional, data-URL prefix allowed) -> bytes."""
    if not isinstance(text, str):
        raise ApiError(400, "invalid_field", f"'{what}' must be a base64 string, got {type(text).__name__}")
    text = text.strip()
    if text[:5].lower() == "data:":
        match = DATA_URL.match(text)
        if not match or not match.group("b64"):
            raise ApiError(400, "bad_base64", f"'{what}': a data URL must be data:<type>;base64,<data>")
        text = text[match.end():]
    text = "".join(text.split())  # tolerate line-wrapped base64 (MIME style, 76 columns)
    if not text:
        raise ApiError(400, "empty", f"'{what}' is empty")
    if len(text) * 3 // 4 > limit:  # refuse before allocating the decoded copy
        raise ApiError(413, "too_large", f"'{what}' decodes to more than {limit} bytes")
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"'{what}' is not valid base64") from None


def parse_json(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except RecursionError:  # "[[[[..." nested past the parser's stack: malformed, not a crash
        raise ApiError(400, "invalid_json", "body is not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 or out of range"
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({reason})") from None
    if not isinstance(document, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    return document


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, bytes]]:
    """In-memory multipart/form-data -> [(field name, file name or None, data)]."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart body without a boundary parameter")
    parts: list[dict] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(413, "too_large", f"more than {MAX_PARTS} multipart parts")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"].decode("latin-1")
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({type(exc).__name__})") from None
    return [_named_part(part) for part in parts]


def _named_part(part: dict) -> tuple[str, str | None, bytes]:
    disposition = part["headers"].get("content-disposition", "")
    _, options = parse_options_header(disposition)
    name = options.get(b"name", b"").decode("utf-8", "replace")
    filename = options.get(b"filename")
    return name, (filename.decode("utf-8", "replace") if filename is not None else None), bytes(part["data"])


def _file_parts(parts: list[tuple[str, str | None, bytes]], names: tuple[str, ...]) -> list[bytes]:
    found = [(filename, data) for name, filename, data in parts if name in names]
    if not found:
        raise ApiError(400, "missing_field", f"multipart body has no '{names[0]}' field")
    if any(filename is None for filename, _ in found):
        raise ApiError(400, "invalid_field", f"'{names[0]}' must be a file upload (with a filename)")
    return [data for _, data in found]


def images_from_body(body: bytes, content_type: str | None, *, frames: bool, max_image_bytes: int,
                     max_frames: int = 1) -> list[bytes]:
    """The encoded image(s) of a request; one for /v1/detect, 1..max_frames for frames."""
    kind = media_type(content_type)
    if kind == "application/json" or kind.endswith("+json"):
        if not body:
            raise ApiError(400, "empty", "empty request body")
        document = parse_json(body)
        return _json_images(document, frames, max_image_bytes, max_frames)
    if kind == "multipart/form-data":
        parts = parse_multipart(body, content_type or "")
        images = _file_parts(parts, ("file", "files", "frames") if frames else ("file",))
        if frames and len(images) > max_frames:
            raise ApiError(413, "too_many_frames", f"{len(images)} frames sent, at most {max_frames}")
        if not frames and len(images) > 1:
            raise ApiError(400, "invalid_field", "send one 'file' to /v1/detect (bursts go to /v1/detect-frames)")
        return images
    if kind.startswith("image/") and not frames:
        return [body]
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {kind or '(none)'} is not supported; use application/json or multipart/form-data")


def _json_images(document: dict, frames: bool, max_image_bytes: int, max_frames: int) -> list[bytes]:
    field = "frames" if frames else "image"
    if field not in document:
        raise ApiError(400, "missing_field", f"JSON body has no '{field}' field")
    if not frames:
        return [decode_base64(document["image"], max_image_bytes)]
    items = document["frames"]
    if not isinstance(items, list):
        raise ApiError(400, "invalid_field", "'frames' must be a list of base64 strings")
    if not items:
        raise ApiError(400, "empty", "'frames' is empty")
    if len(items) > max_frames:
        raise ApiError(413, "too_many_frames", f"{len(items)} frames sent, at most {max_frames}")
    return [decode_base64(item, max_image_bytes, f"frames[{i}]") for i, item in enumerate(items)]
