"""CASIA-FASD (Zhang et al., ICB 2012).

Layout::

    train_release/<subject>/{1,2,3,4,5,6,7,8,HR_1,HR_2,HR_3,HR_4}.avi   (20 subjects)
    test_release/<subject>/...                                           (30 subjects)

File codes: 1, 2, HR_1 real; 3, 4, HR_2 warped photo; 5, 6, HR_3 cut photo
(eyes cut out); 7, 8, HR_4 video replay. Odd numbers are the low-quality
camera, even numbers the normal-quality one, ``HR_*`` the high-quality one.
Warped and cut photos are both ``attack_type="print"``; ``extras["variant"]``
says ``warped`` or ``cut``.

Subject folders restart at 1 in ``test_release`` although they are different
people, so the subject is ``<split>_<folder>`` (``train_1``, ``test_1``) to
keep subject-disjoint splitting correct. CASIA-FASD has no dev split.
Extras: ``quality`` (low/normal/high), ``variant``, ``code`` (the file code).

Capture fields: ``device`` = the camera, ``"low_quality"``, ``"normal_quality"``
or ``"high_quality"`` (three cameras, told apart by the file code);
``pai_type`` = ``print``/``replay``; ``session`` stays None (not encoded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import iter_files, require
from raypipe.datasets.base import ATTACK, LIVE, VIDEO_EXTENSIONS, DatasetAdapter, Sample, media_of

_SPLIT_DIRS = {"train_release": "train", "test_release": "test"}
# code -> (attack_type, variant, quality)
_CODES: dict[str, tuple[str, str | None, str]] = {
    "1": ("live", None, "low"), "2": ("live", None, "normal"), "HR_1": ("live", None, "high"),
    "3": ("print", "warped", "low"), "4": ("print", "warped", "normal"), "HR_2": ("print", "warped", "high"),
    "5": ("print", "cut", "low"), "6": ("print", "cut", "normal"), "HR_3": ("print", "cut", "high"),
    "7": ("replay", None, "low"), "8": ("replay", None, "normal"), "HR_4": ("replay", None, "high"),
}


class CasiaFasdAdapter(DatasetAdapter):
    name = "casia_fasd"

    def scan(self) -> Iterator[Sample]:
        present = {d: s for d, s in _SPLIT_DIRS.items() if (self.root / d).is_dir()}
        require(bool(present), self.name, f"no train_release/ or test_release/ under {self.root}")
        for folder, split in present.items():
            for path in iter_files(self.root / folder, VIDEO_EXTENSIONS):
                code = path.stem.upper()
                if code not in _CODES or path.parent.parent != self.root / folder:
                    self.report.skipped.append(self.rel(path))
                    continue
                yield self._sample(path, split, code)

    def _sample(self, path: Path, split: str, code: str) -> Sample:
        attack_type, variant, quality = _CODES[code]
        return self.make(path, split=split, subject=f"{split}_{path.parent.name}",
                         label=LIVE if attack_type == "live" else ATTACK, attack_type=attack_type,
                         media=media_of(path), device=f"{quality}_quality",
                         pai_type=None if attack_type == "live" else attack_type,
                         extras={"quality": quality, "variant": variant, "code": code})
