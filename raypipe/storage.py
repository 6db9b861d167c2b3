"""Where outputs live: a local path, a shared mount, or an object-store URI (s3://, gs://, ...).

pyarrow's filesystems do the work -- the same layer Ray Data and Ray Train use for their
own paths -- so one code path serves a laptop and a cluster. A URI may carry pyarrow's
options as a query string, e.g. ``s3://bucket/crops?endpoint_override=minio:9000&scheme=http``.
Plain paths are made absolute (Ray workers do not share the driver's working directory).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def absolute(location: str | Path) -> str:
    """A URI unchanged; a local path expanded and made absolute."""
    return str(location) if is_uri(location) else str(Path(location).expanduser().resolve())


def redact(location: str | Path) -> str:
    """The location without credentials (``s3://key:secret@bucket`` -> ``s3://***@bucket``), for logs and summaries."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]+@", r"\1***@", str(location))


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI."""
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), absolute(location)


def join(location: str, *parts: str) -> str:
    """Join path parts onto a location, keeping a URI's query string at the end."""
    base, sep, query = str(location).partition("?")
    joined = "/".join([base.rstrip("/"), *parts])
    return joined + sep + query


def is_dir(location: str | Path) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


def list_files(location: str | Path, suffix: str = "") -> list[str]:
    """Files directly under a directory (paths inside its filesystem), sorted; [] if it is absent."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def list_dirs(location: str | Path) -> list[str]:
    """Folders directly under a directory, as locations (a URI keeps its scheme), sorted; [] if it is absent."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(path))
    return sorted(join(str(location), i.base_name) for i in infos if i.type == pafs.FileType.Directory)


def delete_dir(location: str | Path) -> None:
    """Remove a directory and everything under it; nothing happens when it is absent."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        filesystem.delete_dir(path)


def move_dir(source: str | Path, target: str | Path) -> None:
    """Move a directory tree. A rename on local disks and mounts; object stores have no
    directories to rename (pyarrow's S3/GCS ``move`` takes files only), so copy, then delete."""
    filesystem, source_path = resolve(source)
    _, target_path = resolve(target)
    filesystem.create_dir(target_path.rsplit("/", 1)[0], recursive=True)
    if isinstance(filesystem, pafs.LocalFileSystem):
        os.replace(source_path, target_path)
        return
    pafs.copy_files(source_path, target_path, source_filesystem=filesystem, destination_filesystem=filesystem)
    filesystem.delete_dir(source_path)


def read_json(location: str | Path, default: Any = None) -> Any:
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return default
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())


def write_json(location: str | Path, value: Any) -> None:
    filesystem, path = resolve(location)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(json.dumps(value, indent=2, sort_keys=True).encode())


def data_dir() -> Path:
    """raypipe's working directory for local defaults (MLflow store, Ray Train checkpoints):
    ``RAYPIPE_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("RAYPIPE_DATA_DIR", Path.cwd() / "data")).resolve()
