"""Idiap Replay-Attack (Chingovska et al., BIOSIG 2012).

Layout::

    {train,devel,test}/real/client001_session01_webcam_authenticate_adverse_1.mov
    {train,devel,test}/attack/{fixed,hand}/attack_{highdef,mobile,print}_client001_session01_..._{photo,video}_...mov
    enroll/{train,devel,test}/...mov          (enrolment videos, real; excluded by default)
    face-locations/<same relative path>.face  (per-frame face boxes, optional)

The folders are the official protocol: ``devel`` -> ``dev``. Attack devices:
``attack_print`` -> ``print``; ``attack_highdef`` (iPad) and ``attack_mobile``
(iPhone) -> ``replay`` (photos or videos shown on a screen). The rest of the
name is read token by token (its order differs between releases): ``clientNNN``
(the subject), ``sessionNN``, ``adverse``/``controlled`` (lighting),
``photo``/``video`` (medium).

Options: ``include_enroll`` (default False) adds ``enroll/`` videos as live
samples of their split. Extras: ``support`` (``fixed``/``hand``, None for
real), ``device``, ``medium``, ``lighting``, ``session``, ``enroll``, and
``face_locations`` (absolute path of the ``.face`` box file, or None).

Capture fields: ``session`` = the lighting scenario, ``"controlled"`` (office
light, uniform background) or ``"adverse"`` (daylight, cluttered background):
Replay-Attack varies capture conditions by scenario, so that is what a held-out
session should be; the names' ``sessionNN`` number stays in ``extras["session"]``.
``device`` = ``"webcam"``: the laptop webcam recorded every video, real or
attack (the attack device -- print, iPhone, iPad -- is ``extras["device"]``).
``pai_type`` = ``print``/``replay``; ``fixed``/``hand`` stays in ``extras["support"]``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from raypipe.datasets._common import iter_files, require, sidecar, split_alias
from raypipe.datasets.base import ATTACK, LIVE, VIDEO_EXTENSIONS, DatasetAdapter, Sample, media_of

_SPLIT_DIRS = ("train", "devel", "test")
_ATTACK_DEVICE = re.compile(r"^attack_(?P<device>highdef|mobile|print)_", re.IGNORECASE)
_CLIENT = re.compile(r"(?:^|_)client(?P<client>\d+)(?:_|$)", re.IGNORECASE)
_SESSION = re.compile(r"(?:^|_)session(?P<session>\d+)(?:_|$)", re.IGNORECASE)
CAPTURE_DEVICE = "webcam"  # one laptop webcam filmed every access, real or attack


def parse_name(stem: str) -> dict[str, Any] | None:
    """Subject, device, medium, lighting and session of a Replay-Attack file name."""
    client = _CLIENT.search(stem)
    if client is None:
        return None
    tokens = {t.lower() for t in stem.split("_")}
    device = _ATTACK_DEVICE.match(stem)
    session = _SESSION.search(stem)
    return {
        "subject": client["client"],
        "device": device["device"].lower() if device else None,
        "medium": next((t for t in ("photo", "video") if t in tokens), None),
        "lighting": next((t for t in ("adverse", "controlled") if t in tokens), None),
        "session": int(session["session"]) if session else None,
    }


class ReplayAttackAdapter(DatasetAdapter):
    name = "replay_attack"
    default_options = {"include_enroll": False}

    def scan(self) -> Iterator[Sample]:
        split_dirs = [self.root / d for d in _SPLIT_DIRS
                      if (self.root / d / "real").is_dir() or (self.root / d / "attack").is_dir()]
        require(bool(split_dirs), self.name, f"no {{train,devel,test}}/{{real,attack}}/ under {self.root}")
        for split_dir in split_dirs:
            split = split_alias(split_dir.name)
            yield from self._scan_dir(split_dir / "real", split, enroll=False)
            yield from self._scan_dir(split_dir / "attack", split, enroll=False)
        if self.options["include_enroll"]:
            for split_dir in sorted(p for p in (self.root / "enroll").glob("*") if p.is_dir()):
                split = split_alias(split_dir.name)
                if split is not None:
                    yield from self._scan_dir(split_dir, split, enroll=True)

    def _scan_dir(self, base: Path, split: str, enroll: bool) -> Iterator[Sample]:
        for path in iter_files(base, VIDEO_EXTENSIONS):
            fields = parse_name(path.stem)
            attack = not enroll and base.name == "attack"
            if fields is None or (attack and fields["device"] is None):
                self.report.skipped.append(self.rel(path))
                continue
            yield self._sample(path, split, fields, attack, enroll, base)

    def _sample(self, path: Path, split: str, fields: dict[str, Any], attack: bool,
                enroll: bool, base: Path) -> Sample:
        subject = fields.pop("subject")
        support = path.relative_to(base).parts[0] if attack and len(path.relative_to(base).parts) > 1 else None
        attack_type = ("print" if fields["device"] == "print" else "replay") if attack else "live"
        extras = {**fields, "support": support, "enroll": enroll,
                  "face_locations": sidecar(path, ".face", mirror_root=self.root / "face-locations",
                                            root=self.root)}
        return self.make(path, split=split, subject=subject, label=ATTACK if attack else LIVE,
                         attack_type=attack_type, media=media_of(path), session=fields["lighting"],
                         device=CAPTURE_DEVICE, pai_type=attack_type if attack else None, extras=extras)
