"""Third-party weight files: a configured folder, else the per-user cache, else downloaded.

Resolution order for a :class:`WeightFile` (as :func:`raypipe.face.resolve_model_path`
does for the BlazeFace detector):

1. ``$RAYPIPE_WEIGHTS_DIR/<source>/<file>`` when that variable is set (a folder laid
   out like the project's shared ``weights/`` folder, e.g. ``silentface/<file>``).
   An explicit setting wins: a missing or corrupted file there is an error, never a
   silent fall-back to something else.
2. the per-user cache ``<cache root>/weights/<source>/<file>`` (cache root:
   ``$RAYPIPE_CACHE_DIR`` or ``~/.cache/raypipe``, shared with the face detector).
3. a download from the published URL into that cache (short timeout, size cap,
   sha256-verified, atomic rename).

Every file is sha256-verified before use; failure is a :class:`WeightsUnavailable`
naming ``RAYPIPE_WEIGHTS_DIR``. Weight files never belong in the repository.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from raypipe.face import cache_dir

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "RAYPIPE_WEIGHTS_DIR"
SILENTFACE_BASE_URL = (
    "https://raw.githubusercontent.com/minivision-ai/Silent-Face-Anti-Spoofing/master/resources/anti_spoof_models"
)
# A machine without internet must fail at once, not hang a training job or a replica start.
DOWNLOAD_TIMEOUT_S = 15.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024  # the files are ~2 MB; anything far larger is not them
_CHUNK = 1 << 16


class WeightsUnavailable(RuntimeError):
    """A weight file could not be found, verified or fetched."""


@dataclass(frozen=True)
class WeightFile:
    """One published weight file: ``source`` is its folder (``silentface``), ``file`` its name."""

    source: str
    file: str
    sha256: str
    base_url: str

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.file}"

    def tag(self) -> str:
        """``source:file:sha256-prefix``, what ``model.pretrained_source`` records."""
        return f"{self.source}:{self.file}:{self.sha256[:12]}"


SILENTFACE_V2 = WeightFile(
    "silentface",
    "2.7_80x80_MiniFASNetV2.pth",
    "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
    SILENTFACE_BASE_URL,
)
SILENTFACE_V1SE = WeightFile(
    "silentface",
    "4_0_0_80x80_MiniFASNetV1SE.pth",
    "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
    SILENTFACE_BASE_URL,
)


def weights_cache_dir() -> Path:
    """``<cache root>/weights``: the face detector's cache root (read at call time)."""
    return cache_dir().parent / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(weights: WeightFile, fetch: bool = True) -> Path:
    """Path of a verified copy of ``weights``: configured folder, else cache, else downloaded."""
    configured = os.environ.get(WEIGHTS_DIR_ENV)
    if configured:
        return _configured(weights, Path(configured).expanduser())
    cached = weights_cache_dir() / weights.source / weights.file
    if cached.is_file() and sha256_of(cached) == weights.sha256:
        return cached
    reason = f"{cached} has the wrong sha256" if cached.is_file() else f"not in the cache ({cached})"
    if fetch:
        try:
            _download(weights, cached)
            return cached
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
            reason += f"; download from {weights.url} failed: {exc}"
    raise WeightsUnavailable(
        f"{weights.source} weights {weights.file}: {reason}. Set {WEIGHTS_DIR_ENV} to a folder holding "
        f"{weights.source}/{weights.file} (sha256 {weights.sha256}), or put the file in {cached.parent}"
    )


def _configured(weights: WeightFile, folder: Path) -> Path:
    path = folder / weights.source / weights.file
    if not path.is_file():
        raise WeightsUnavailable(f"{WEIGHTS_DIR_ENV}={folder}: {path} does not exist")
    actual = sha256_of(path)
    if actual != weights.sha256:
        raise WeightsUnavailable(
            f"{WEIGHTS_DIR_ENV}={folder}: {path} has sha256 {actual}, expected {weights.sha256} "
            "(corrupted or another file)"
        )
    return path


def _download(weights: WeightFile, dest: Path) -> None:
    """Stream ``weights.url`` into ``dest``: verified before an atomic rename, so a concurrent
    reader (another actor, another process) never sees half a file or a wrong one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = dest.parent / f".{dest.name}.{os.getpid()}.{threading.get_ident()}.tmp"  # one per downloader
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(weights.url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(staged, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"more than {MAX_DOWNLOAD_BYTES} bytes")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != weights.sha256:
            raise ValueError(f"downloaded sha256 {digest.hexdigest()} != expected {weights.sha256}")
        os.replace(staged, dest)
        log.info("downloaded %s into %s", weights.url, dest)
    finally:
        staged.unlink(missing_ok=True)
