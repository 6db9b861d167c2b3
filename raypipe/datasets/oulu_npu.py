"""OULU-NPU (Boulkenafet et al., FG 2017).

Layout::

    Train_files/1_1_01_1.avi   Dev_files/...   Test_files/...   (a flat root works too)
    Protocols/Protocol_1/{Train,Dev,Test}.txt
    Protocols/Protocol_2/{Train,Dev,Test}.txt
    Protocols/Protocol_3/{Train,Dev,Test}_<k>.txt   k = 1..6 (leave-one-phone-out)
    Protocols/Protocol_4/{Train,Dev,Test}_<k>.txt

Video names are ``Phone_Session_User_File``: File 1 = real access, 2-3 = print
attacks (printer 1/2), 4-5 = replay attacks (display 1/2). The label and
attack type come from the file name (the lists' own ``+1``/``-1``/``-2`` label
column is kept in ``extras["list_label"]``). Protocol lines are
``label,video`` with the video named without folder or extension; the adapter
looks it up anywhere under the root (preferring ``<Split>_files/``).

Options: ``protocol`` (1-4, default 1) and ``fold`` (1-6, protocols 3 and 4
only, default 1). Only the videos of the chosen protocol are yielded; the
others are counted in ``report.skipped``. ``protocol=0`` is the whole release
instead, no list read: every video under ``{Train,Dev,Test}_files/``, split by
that folder (what the leave-one-dataset-out benchmarks call "O", see
``raypipe.protocols``). Subject = the User field; extras:
``phone``, ``session``, ``pai`` (presentation attack instrument 1/2, 0 for
real), ``protocol``, ``fold``, ``list_label``, and ``eye_positions`` (the
per-video ``.txt`` annotation beside the video, when present).

Capture fields: ``session`` = the Session field as written (``"1"``-``"3"``:
three sessions of different place and lighting), ``device`` = ``"phone<N>"``
from the Phone field (six smartphones), ``pai_type`` = ``print``/``replay``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from raypipe.datasets._common import FileIndex, iter_files, read_list, require, sidecar
from raypipe.datasets.base import ATTACK, LIVE, VIDEO_EXTENSIONS, DatasetAdapter, Sample, media_of

_VIDEO = re.compile(r"^(?P<phone>\d+)_(?P<session>\d+)_(?P<user>\d+)_(?P<file>\d+)$")
_SPLIT_FILES = {"train": "Train", "dev": "Dev", "test": "Test"}
_FILE_TYPES = {1: ("live", 0), 2: ("print", 1), 3: ("print", 2), 4: ("replay", 1), 5: ("replay", 2)}


class OuluNpuAdapter(DatasetAdapter):
    name = "oulu_npu"
    default_options = {"protocol": 1, "fold": 1}
    release_options = {"protocol": 0}  # every video, split by its folder; protocols 1-4 pick from it

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        protocol, fold = self.options["protocol"], self.options["fold"]
        if protocol not in (0, 1, 2, 3, 4):
            raise ValueError(f"oulu_npu: protocol must be 1-4 (or 0: every video by folder), got {protocol!r}")
        if fold not in range(1, 7):
            raise ValueError(f"oulu_npu: fold must be 1-6, got {fold!r}")
        if protocol in (0, 1, 2) and fold != 1:
            raise ValueError(f"oulu_npu: protocol {protocol} has no folds (fold={fold})")

    def list_path(self, split: str) -> Path:
        """Protocol list of one split for the chosen protocol/fold."""
        protocol, fold = self.options["protocol"], self.options["fold"]
        suffix = f"_{fold}" if protocol in (3, 4) else ""
        return self.root / "Protocols" / f"Protocol_{protocol}" / f"{_SPLIT_FILES[split]}{suffix}.txt"

    def scan(self) -> Iterator[Sample]:
        if self.options["protocol"] == 0:
            yield from self._scan_release_folders()
            return
        protocol_dir = self.list_path("train").parent
        require((self.root / "Protocols").is_dir(), self.name, f"no Protocols/ folder under {self.root}")
        lists = {split: self.list_path(split) for split in _SPLIT_FILES}
        require(any(p.is_file() for p in lists.values()), self.name,
                f"no {lists['train'].name}/Dev/Test list in {self.rel(protocol_dir)}/")
        index = FileIndex(self.root, VIDEO_EXTENSIONS, exclude=["Protocols"])
        used: set[Path] = set()
        for split, list_path in lists.items():
            if not list_path.is_file():
                self.report.missing.append(self.rel(list_path))
                continue
            for list_label, video in self._entries(list_path):
                path = index.find(video, prefer=f"{_SPLIT_FILES[split]}_files")
                if path is None:
                    self.report.missing.append(f"{self.rel(list_path)}:{video}")
                    continue
                sample = self._sample(path, split, list_label)
                if sample is None:
                    self.report.skipped.append(self.rel(path))
                    continue
                used.add(path)
                yield sample
        self.report.skipped.extend(self.rel(p) for p in index.files if p not in used)

    def _scan_release_folders(self) -> Iterator[Sample]:
        """Protocol 0: every video of ``<Split>_files/``, its split from the folder (lists unused)."""
        found = False
        for split, folder in _SPLIT_FILES.items():
            for path in iter_files(self.root / f"{folder}_files", VIDEO_EXTENSIONS):
                sample = self._sample(path, split, "")
                if sample is None:
                    self.report.skipped.append(self.rel(path))
                    continue
                found = True
                yield sample
        require(found, self.name, f"protocol 0 reads Train_files/, Dev_files/, Test_files/: no video under {self.root}")

    def _entries(self, list_path: Path) -> Iterator[tuple[str, str]]:
        """(label column, video name) of each line ``label,video`` (either order tolerated)."""
        for line in read_list(list_path):
            parts = [p.strip() for p in line.split(",") if p.strip()]
            videos = [p for p in parts if _VIDEO.match(Path(p).stem)]
            if not videos:
                self.report.skipped.append(f"{self.rel(list_path)}:{line}")
                continue
            labels = [p for p in parts if p not in videos]
            yield (labels[0] if labels else ""), videos[0]

    def _sample(self, path: Path, split: str, list_label: str) -> Sample | None:
        match = _VIDEO.match(path.stem)
        kind = _FILE_TYPES.get(int(match["file"])) if match else None
        if kind is None:
            return None
        attack_type, pai = kind
        extras = {
            "phone": int(match["phone"]), "session": int(match["session"]), "pai": pai,
            "protocol": self.options["protocol"],
            "fold": self.options["fold"] if self.options["protocol"] in (3, 4) else None,
            "list_label": list_label, "eye_positions": sidecar(path, ".txt"),
        }
        return self.make(path, split=split, subject=match["user"],
                         label=LIVE if attack_type == "live" else ATTACK,
                         attack_type=attack_type, media=media_of(path), session=match["session"],
                         device=f"phone{int(match['phone'])}",
                         pai_type=None if attack_type == "live" else attack_type, extras=extras)
