"""Generic layout for users' own data: folders or a CSV manifest.

Folders: ``<root>/[<split>/]{live,spoof}/[<attack_type>/]**/<file>``. Live folder
names: ``live``, ``real``, ``genuine``, ``bonafide``, ``bona_fide``; attack folder
names: ``spoof``, ``attack``, ``fake``, ``imposter``. Without split folders
everything is ``train`` (training carves dev from it), or the split named by the
option ``split`` (``--option split=test`` for a held-out set scored as a whole, e.g.
another database's frames for a cross-dataset check). The subject is the
``subject_pattern`` regex's ``subject`` group on the file name (default: the
text before the first ``_``), else the parent folder's name.

Manifest (option ``manifest``, a CSV path relative to the root or absolute):
columns ``path,label`` and optionally ``split,subject,attack_type`` and the
capture fields ``session,device,pai_type`` (empty cells = unknown); ``label`` is
``0``/``1`` or ``live``/``spoof`` (and the folder names above). A ``session``
column lets training hold a session out as dev. The folder layout records no
session or device; ``pai_type`` follows from the attack type folder when it
names one (``print``, ``replay``, ``mask``, ...).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets.base import (
    ATTACK,
    IMAGE_EXTENSIONS,
    LIVE,
    SPLITS,
    VIDEO_EXTENSIONS,
    DatasetAdapter,
    DatasetLayoutError,
    Sample,
    media_of,
)

LIVE_NAMES = {"live", "real", "genuine", "bonafide", "bona_fide", "0"}
ATTACK_NAMES = {"spoof", "attack", "fake", "imposter", "1"}
SPLIT_ALIASES = {"train": "train", "dev": "dev", "devel": "dev", "val": "dev",
                 "valid": "dev", "validation": "dev", "test": "test", "eval": "test"}
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + (".h5", ".hdf5")
CAPTURE_COLUMNS = ("session", "device", "pai_type")  # optional manifest columns


def parse_label(value: str) -> int:
    key = str(value).strip().lower()
    if key in LIVE_NAMES:
        return LIVE
    if key in ATTACK_NAMES:
        return ATTACK
    raise DatasetLayoutError(f"folder: cannot read label {value!r} (use 0/1 or live/spoof)")


class FolderAdapter(DatasetAdapter):
    name = "folder"
    default_options = {"manifest": None, "subject_pattern": r"^(?P<subject>[^_]+)_", "dataset_name": "folder",
                       "split": "train"}

    def scan(self) -> Iterator[Sample]:
        if self.options["manifest"]:
            yield from self._scan_manifest(Path(self.options["manifest"]))
            return
        split_dirs = {SPLIT_ALIASES[p.name.lower()]: p for p in self.root.iterdir()
                      if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
        bases = split_dirs.items() if split_dirs else [(self._default_split(), self.root)]
        found = False
        for split, base in bases:
            for label_dir in sorted(p for p in base.iterdir() if p.is_dir()):
                key = label_dir.name.lower()
                if key not in LIVE_NAMES | ATTACK_NAMES:
                    continue
                found = True
                label = parse_label(key)
                for path in sorted(label_dir.rglob("*")):
                    if path.is_file() and path.suffix.lower() in MEDIA_EXTENSIONS:
                        yield self._sample(path, split, label, self._attack_type(path, label_dir, label))
                    elif path.is_file():
                        self.report.skipped.append(self.rel(path))
        if not found:
            raise DatasetLayoutError(f"folder: no live/ or spoof/ folder under {self.root}")

    def _default_split(self) -> str:
        split = SPLIT_ALIASES.get(str(self.options["split"]).lower())
        if split not in SPLITS:
            raise DatasetLayoutError(f"folder: option split must be one of {SPLITS}, got {self.options['split']!r}")
        return split

    def _attack_type(self, path: Path, label_dir: Path, label: int) -> str:
        if label == LIVE:
            return "live"
        parts = path.relative_to(label_dir).parts
        return parts[0].lower() if len(parts) > 1 else "attack"

    def _subject(self, path: Path) -> str:
        match = re.search(self.options["subject_pattern"], path.name)
        return match.group("subject") if match else path.parent.name

    def _sample(self, path: Path, split: str, label: int, attack_type: str, subject: str | None = None,
                **capture: str | None) -> Sample:
        return self.make(path, dataset=self.options["dataset_name"], split=split,
                         subject=subject or self._subject(path), label=label, attack_type=attack_type,
                         media=media_of(path), **capture)

    def _scan_manifest(self, manifest: Path) -> Iterator[Sample]:
        manifest = manifest if manifest.is_absolute() else self.root / manifest
        if not manifest.is_file():
            raise DatasetLayoutError(f"folder: manifest {manifest} does not exist")
        with manifest.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if "path" not in row or "label" not in row:
                    raise DatasetLayoutError("folder: manifest needs columns path,label")
                path = Path(row["path"])
                path = path if path.is_absolute() else self.root / path
                if not path.is_file():
                    self.report.missing.append(row["path"])
                    continue
                label = parse_label(row["label"])
                split = SPLIT_ALIASES.get((row.get("split") or "train").strip().lower())
                if split not in SPLITS:
                    raise DatasetLayoutError(f"folder: unknown split {row.get('split')!r}")
                attack_type = (row.get("attack_type") or "").strip() or ("live" if label == LIVE else "attack")
                capture = {key: (row.get(key) or "").strip() or None for key in CAPTURE_COLUMNS}
                yield self._sample(path, split, label, attack_type, (row.get("subject") or "").strip() or None,
                                   **capture)
