"""ROSE-Youtu Face Liveness Detection Database (Li et al., TIFS 2018).

Layout: one folder per client holding videos such as ``G_NT_5s_g_E_2_1.mp4``
(the folders may be nested, e.g. ``client/rgb/adaptation/2/``), plus the
official lists ``adaptation_list.txt`` (-> ``train``) and ``test_list.txt``
(-> ``test``) naming files (a relative path, a bare file name or a stem; extra
columns on a line are ignored). There is no dev split.

File names are ``<code>_<...>_<client>_<index>``; the first field is the
presentation code: ``G`` genuine; ``Ps`` still / ``Pq`` quivering printed
paper -> ``print``; ``Vl`` Lenovo / ``Vm`` Mac screen -> ``replay``; ``Mc``,
``Mf``, ``Mu`` paper masks -> ``mask`` (``extras["code"]`` keeps the code).
The third field is kept as ``extras["device"]`` and as ``device`` (the capture
device: its values ``5s``, ``HW``, ``IP``, ``ZTE``, ``HS`` match the five
phones/tablets of the paper), and the fields between the code and the client
id verbatim in ``extras["name_fields"]``: their other meanings are not verified
here. ``pai_type`` = the attack type (print/replay/mask); ``session`` stays None.

Subject: the client id from the file name (the second-to-last field), because
it is present however the files are arranged (lists flatten folders); the
parent folder's name is used only when a name has no numeric client field.
Listed files absent from disk go to ``report.missing``; media files that no
list names go to ``report.skipped``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import FileIndex, read_list, require
from raypipe.datasets.base import (ATTACK, IMAGE_EXTENSIONS, LIVE, VIDEO_EXTENSIONS, DatasetAdapter,
                                   Sample, media_of)

_CODES = {"G": "live", "Ps": "print", "Pq": "print", "Vl": "replay", "Vm": "replay",
          "Mc": "mask", "Mf": "mask", "Mu": "mask"}
_NAME = re.compile(r"^(?P<code>[A-Za-z]{1,2})(?:_(?P<middle>.*))?_(?P<client>\d+)_(?P<index>\d+)$")
_LISTS = {"train": "adaptation_list.txt", "test": "test_list.txt"}
_MEDIA = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS


class RoseYoutuAdapter(DatasetAdapter):
    name = "rose_youtu"

    def scan(self) -> Iterator[Sample]:
        lists = {s: self.root / n for s, n in _LISTS.items() if (self.root / n).is_file()}
        require(bool(lists), self.name, f"no adaptation_list.txt / test_list.txt under {self.root}")
        index = FileIndex(self.root, _MEDIA)
        used: set[Path] = set()
        for split, list_path in lists.items():
            for entry in read_list(list_path):
                name = _entry_name(entry)
                path = index.find(name)
                if path is None:
                    self.report.missing.append(f"{list_path.name}:{name}")
                    continue
                sample = self._sample(path, split)
                if sample is None:
                    self.report.skipped.append(self.rel(path))
                    continue
                used.add(path)
                yield sample
        self.report.skipped.extend(self.rel(p) for p in index.files if p not in used)

    def _sample(self, path: Path, split: str) -> Sample | None:
        code = _canonical_code(path.stem.split("_", 1)[0])
        if code is None:
            return None
        attack_type = _CODES[code]
        match = _NAME.match(path.stem)
        fields = match["middle"].split("_") if match and match["middle"] else []
        extras = {"code": code, "device": fields[1] if len(fields) > 1 else None,
                  "name_fields": fields, "index": int(match["index"]) if match else None}
        return self.make(path, split=split, subject=match["client"] if match else path.parent.name,
                         label=LIVE if attack_type == "live" else ATTACK, attack_type=attack_type,
                         media=media_of(path), device=extras["device"],
                         pai_type=None if attack_type == "live" else attack_type, extras=extras)


def _entry_name(entry: str) -> str:
    """The file a list line names: the token with a media suffix, else the first token."""
    tokens = re.split(r"[\s,]+", entry.strip())
    with_suffix = [t for t in tokens if t.lower().endswith(_MEDIA)]
    return with_suffix[0] if with_suffix else tokens[0]


def _canonical_code(raw: str) -> str | None:
    code = raw[:1].upper() + raw[1:].lower()
    return code if code in _CODES else None
