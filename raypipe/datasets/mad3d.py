"""3DMAD, the 3D Mask Attack Database (Erdogmus and Marcel, BTAS 2013).

Layout: one HDF5 file per Kinect video, anywhere under the root (the release
has ``session01/Data/``, ``session02/Data/``, ``session03/Data/``), named
``<subject>_<session>_<n>.hdf5`` with datasets ``Color_Data`` (N, 3, 480, 640)
uint8 RGB, ``Depth_Data`` and ``Eye_Pos``. Sessions 01 and 02 are real
accesses, session 03 is the mask attack (``attack_type="mask"``, wearable
3D masks). ``media="hdf5"`` and ``extras["hdf5_key"] = "Color_Data"`` tell the
frame reader which dataset to sample.

3DMAD defines no official split. The option ``split_subjects`` maps
``train``/``dev``/``test`` to subject numbers; the default is the
deterministic 1-7 train, 8-12 dev, 13-17 test. Files of subjects in no split
go to ``report.skipped``. Extras: ``session``, ``shot`` (the ``<n>`` field),
``hdf5_key``.

Capture fields: ``session`` = the name's session field as written (``"01"``-
``"03"``); since session 03 holds every attack and no live video, no session can
serve as a held-out dev set (split planning then falls back to subjects).
``pai_type`` = ``"mask"``; ``device`` stays None.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import iter_files, require, subject_key, subjects_to_split
from raypipe.datasets.base import ATTACK, LIVE, DatasetAdapter, Sample

_NAME = re.compile(r"^(?P<subject>\d+)_(?P<session>\d+)_(?P<shot>\d+)$")
DEFAULT_SPLIT = {"train": list(range(1, 8)), "dev": list(range(8, 13)), "test": list(range(13, 18))}
ATTACK_SESSION = 3


class Mad3dAdapter(DatasetAdapter):
    name = "3dmad"
    default_options = {"split_subjects": DEFAULT_SPLIT}

    def scan(self) -> Iterator[Sample]:
        subject_split = subjects_to_split(self.options["split_subjects"], self.name)
        files = list(iter_files(self.root, (".hdf5", ".h5")))
        parsed = [(p, _NAME.match(p.stem)) for p in files]
        require(any(m for _, m in parsed), self.name,
                f"no <subject>_<session>_<n>.hdf5 file under {self.root}")
        for path, match in parsed:
            split = subject_split.get(subject_key(match["subject"])) if match else None
            if split is None or int(match["session"]) not in (1, 2, ATTACK_SESSION):
                self.report.skipped.append(self.rel(path))
                continue
            yield self._sample(path, split, match)

    def _sample(self, path: Path, split: str, match: re.Match[str]) -> Sample:
        session = int(match["session"])
        attack = session == ATTACK_SESSION
        return self.make(path, split=split, subject=match["subject"], label=ATTACK if attack else LIVE,
                         attack_type="mask" if attack else "live", media="hdf5", session=match["session"],
                         pai_type="mask" if attack else None,
                         extras={"session": session, "shot": int(match["shot"]), "hdf5_key": "Color_Data"})
