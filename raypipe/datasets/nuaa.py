"""NUAA Photograph Imposter Database (Tan et al., ECCV 2010).

Layout: ``ClientRaw/<subject>/*.jpg`` (live) and ``ImposterRaw/<subject>/*.jpg``
(hand-held printed photos), with the official split lists
``{client,imposter}_{train,test}_raw.txt`` (CRLF, ``\\`` or ``/`` separators).
Names follow ``ID_glasses_pos_session_picNo.jpg``. Lists name files the disk
may lack (the shared copy holds the training split only): those are counted in
``report.missing``, never fatal. NUAA defines no dev split.

``session`` is the name's session field as written (``"01"``-``"03"``): the
official training split holds sessions 01 and 02, the test split session 03
under other lighting, which is why dev is best held out by session. One
webcam recorded everything, so ``device`` stays None; attacks are hand-held
printed photos (``pai_type="print"``). ``extras`` keeps the numeric fields
(``glasses``, ``pos``, ``session``, ``pic``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import read_list
from raypipe.datasets.base import ATTACK, LIVE, DatasetAdapter, DatasetLayoutError, Sample

_NAME = re.compile(r"^(?P<id>\d+)_(?P<glasses>\d+)_(?P<pos>\d+)_(?P<session>\d+)_(?P<pic>\d+)$")
_LISTS = {
    ("train", LIVE): ("client_train_raw.txt", "ClientRaw"),
    ("train", ATTACK): ("imposter_train_raw.txt", "ImposterRaw"),
    ("test", LIVE): ("client_test_raw.txt", "ClientRaw"),
    ("test", ATTACK): ("imposter_test_raw.txt", "ImposterRaw"),
}


class NuaaAdapter(DatasetAdapter):
    name = "nuaa"

    def scan(self) -> Iterator[Sample]:
        found_any_list = False
        for (split, label), (list_name, folder) in _LISTS.items():
            list_path = self.root / list_name
            if not list_path.is_file():
                continue
            found_any_list = True
            for entry in read_list(list_path):
                path = self.root / folder / entry
                if not path.is_file():
                    self.report.missing.append(f"{folder}/{entry}")
                    continue
                yield self._sample(path, split, label)
        if not found_any_list:
            raise DatasetLayoutError(
                f"nuaa: no split list (client_train_raw.txt, ...) under {self.root}"
            )

    def _sample(self, path: Path, split: str, label: int) -> Sample:
        match = _NAME.match(path.stem)
        extras = {k: int(v) for k, v in match.groupdict().items() if k != "id"} if match else {}
        return self.make(
            path,
            split=split,
            subject=path.parent.name,
            label=label,
            attack_type="live" if label == LIVE else "print",
            media="image",
            session=match["session"] if match else None,
            pai_type=None if label == LIVE else "print",
            extras=extras,
        )
