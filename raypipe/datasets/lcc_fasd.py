"""LCC-FASD (Timoshenko et al., VISAPP 2019): face images cut from web videos.

Layout::

    LCC_FASD_training/{real,spoof}/*.png     -> train
    LCC_FASD_development/{real,spoof}/*.png  -> dev
    LCC_FASD_evaluation/{real,spoof}/*.png   -> test

The root may also be the folder *containing* ``LCC_FASD/`` with these three
folders inside. LCC-FASD gives no attack types (``attack_type="attack"``) and
**no subject ids**. The subject is derived from the file name prefix: the
``subject_pattern`` option's ``subject`` group (default: the name without its
trailing ``_<number>`` groups, so ``YOUTUBE_id124_s0_112.png`` ->
``YOUTUBE_id124_s0``). That groups frames of one source clip together -- a
proxy for identity, not a true subject id -- so subject-disjoint splitting
keeps frames of one clip on one side.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import iter_files
from raypipe.datasets.base import ATTACK, IMAGE_EXTENSIONS, LIVE, DatasetAdapter, DatasetLayoutError, Sample

_SPLIT_DIRS = {"LCC_FASD_training": "train", "LCC_FASD_development": "dev", "LCC_FASD_evaluation": "test"}
_LABEL_DIRS = {"real": LIVE, "spoof": ATTACK}


class LccFasdAdapter(DatasetAdapter):
    name = "lcc_fasd"
    default_options = {"subject_pattern": r"^(?P<subject>.+?)(?:[_-]\d+)*$"}

    def scan(self) -> Iterator[Sample]:
        base = self._base()
        pattern = re.compile(self.options["subject_pattern"])
        for folder, split in _SPLIT_DIRS.items():
            for label_name, label in _LABEL_DIRS.items():
                for path in iter_files(base / folder / label_name, IMAGE_EXTENSIONS):
                    match = pattern.search(path.stem)
                    subject = match["subject"] if match and match["subject"] else path.stem
                    yield self.make(path, split=split, subject=subject, label=label,
                                    attack_type="live" if label == LIVE else "attack", media="image")

    def _base(self) -> Path:
        """The folder holding the three LCC_FASD_* folders (the root or root/LCC_FASD)."""
        for base in (self.root, self.root / "LCC_FASD"):
            if any((base / d).is_dir() for d in _SPLIT_DIRS):
                return base
        raise DatasetLayoutError(f"lcc_fasd: no LCC_FASD_{{training,development,evaluation}}/ under {self.root}")
