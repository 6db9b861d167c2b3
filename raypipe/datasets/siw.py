"""SiW, Spoof in the Wild (Liu, Jourabloo and Liu, CVPR 2018).

Layout::

    {Train,Test}/{live,spoof}/<sid>/<sid>-<sensor>-<type>-<medium>-<session>.mov
    (optional) <same stem>.face beside each video: per-frame face boxes

``type``: 1 live, 2 print, 3 replay; the label and attack type come from it
(the ``live``/``spoof`` folder must agree, else the file is skipped).
``Train`` -> ``train``, ``Test`` -> ``test``; SiW defines no dev split. Its
three evaluation protocols are rules over these fields (frames, medium,
attack type), not lists, so they are left to the evaluation stage; the fields
are in ``extras``: ``sensor``, ``medium``, ``session`` (ints) and
``face_locations`` (absolute path of the ``.face`` file, or None).

Capture fields: ``session`` = the name's session field as written, ``device`` =
``"sensor<N>"`` from the sensor field (the two cameras), ``pai_type`` =
``print``/``replay``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import iter_files, require, sidecar
from raypipe.datasets.base import ATTACK, LIVE, VIDEO_EXTENSIONS, DatasetAdapter, Sample, media_of

_NAME = re.compile(r"^(?P<sid>\d+)-(?P<sensor>\d+)-(?P<type>\d+)-(?P<medium>\d+)-(?P<session>\d+)$")
_SPLIT_DIRS = {"Train": "train", "Test": "test"}
_TYPES = {1: "live", 2: "print", 3: "replay"}
_LABEL_DIRS = {"live": LIVE, "spoof": ATTACK}


class SiwAdapter(DatasetAdapter):
    name = "siw"

    def scan(self) -> Iterator[Sample]:
        present = {p: s for d, s in _SPLIT_DIRS.items() if (p := self._dir(d)) is not None}
        require(bool(present), self.name, f"no Train/ or Test/ folder under {self.root}")
        for split_dir, split in present.items():
            for label_name, folder_label in _LABEL_DIRS.items():
                for path in iter_files(split_dir / label_name, VIDEO_EXTENSIONS):
                    sample = self._sample(path, split, folder_label)
                    if sample is None:
                        self.report.skipped.append(self.rel(path))
                    else:
                        yield sample

    def _dir(self, name: str) -> Path | None:
        """``Train``/``Test`` whatever the case (some copies are lower-case)."""
        for candidate in (name, name.lower()):
            if (self.root / candidate).is_dir():
                return self.root / candidate
        return None

    def _sample(self, path: Path, split: str, folder_label: int) -> Sample | None:
        match = _NAME.match(path.stem)
        attack_type = _TYPES.get(int(match["type"])) if match else None
        label = LIVE if attack_type == "live" else ATTACK
        if attack_type is None or label != folder_label:
            return None
        extras = {"sensor": int(match["sensor"]), "medium": int(match["medium"]),
                  "session": int(match["session"]), "face_locations": sidecar(path, ".face")}
        return self.make(path, split=split, subject=match["sid"], label=label,
                         attack_type=attack_type, media=media_of(path), session=match["session"],
                         device=f"sensor{int(match['sensor'])}",
                         pai_type=None if label == LIVE else attack_type, extras=extras)
