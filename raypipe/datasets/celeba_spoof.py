"""CelebA-Spoof (Zhang et al., ECCV 2020).

Layout::

    Data/{train,test}/<id>/{live,spoof}/<n>.{jpg,png}
    Data/{train,test}/<id>/{live,spoof}/<n>_BB.txt      x y w h score
    metas/intra_test/train_label.json                   {"Data/train/...jpg": [44 ints], ...}
    metas/intra_test/test_label.json

Labels come from the JSON files (the official intra-dataset protocol), not from
the folders: index 43 is live (0) / spoof (1); index 40 the spoof type, which
becomes ``attack_type``: 0 live, 1 ``photo``, 2 ``poster``, 3 ``a4`` (print
family), 4 ``face_mask``, 5 ``upper_body_mask``, 6 ``region_mask``,
10 ``3d_mask`` (mask family), 7 ``pc``, 8 ``pad``, 9 ``phone`` (replay family).
``extras["attack_family"]`` is the coarse family (live/print/replay/mask), and
also ``pai_type`` for attacks; ``illumination`` (index 41) and ``environment``
(index 42) are kept as ints. ``session`` and ``device`` stay None (the labels
do not record them).

Each ``*_BB.txt`` box is in the coordinates of the image scaled to 224x224
(the dataset's convention): ``extras["bbox"]`` = [x, y, w, h] on that grid,
``extras["bbox_score"]``, ``extras["bbox_ref_size"]`` = 224 (None when the
file is absent or unreadable). Subject = the ``<id>`` folder.

Options: ``label_files`` (split -> JSON path relative to the root; default the
``intra_test`` pair above), ``read_bbox`` (default True; False skips opening
600k small text files when boxes are not needed). Entries whose image is
missing go to ``report.missing``; malformed entries to ``report.skipped``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from raypipe.datasets._common import require
from raypipe.datasets.base import ATTACK, LIVE, SPLITS, DatasetAdapter, Sample

# spoof-type index 40 -> (attack_type, family)
SPOOF_TYPES: dict[int, tuple[str, str]] = {
    0: ("live", "live"), 1: ("photo", "print"), 2: ("poster", "print"), 3: ("a4", "print"),
    4: ("face_mask", "mask"), 5: ("upper_body_mask", "mask"), 6: ("region_mask", "mask"),
    7: ("pc", "replay"), 8: ("pad", "replay"), 9: ("phone", "replay"), 10: ("3d_mask", "mask"),
}
BBOX_REF_SIZE = 224


class CelebaSpoofAdapter(DatasetAdapter):
    name = "celeba_spoof"
    default_options = {
        "label_files": {"train": "metas/intra_test/train_label.json",
                        "test": "metas/intra_test/test_label.json"},
        "read_bbox": True,
    }

    def scan(self) -> Iterator[Sample]:
        files = {s: self.root / p for s, p in self.options["label_files"].items()}
        bad = set(files) - set(SPLITS)
        if bad:
            raise ValueError(f"celeba_spoof: label_files has unknown split(s) {sorted(bad)}")
        present = {s: p for s, p in files.items() if p.is_file()}
        require(bool(present), self.name, f"no label file ({', '.join(map(str, files.values()))})")
        for split, label_file in present.items():
            labels = json.loads(label_file.read_text(encoding="utf-8"))
            require(isinstance(labels, dict), self.name, f"{label_file} is not a JSON object")
            for key in sorted(labels):
                yield from self._entry(split, key, labels[key])

    def _entry(self, split: str, key: str, values: Any) -> Iterator[Sample]:
        rel = key.replace("\\", "/").lstrip("/")
        path = self.root / rel
        if not _valid(values):
            self.report.skipped.append(rel)
            return
        if not path.is_file():
            self.report.missing.append(rel)
            return
        label = ATTACK if int(values[43]) == 1 else LIVE
        attack_type, family = SPOOF_TYPES[int(values[40])]
        if label == LIVE:  # index 43 is the binary ground truth; trust it over index 40
            attack_type, family = "live", "live"
        elif attack_type == "live":
            attack_type, family = "attack", "attack"
        extras = {"attack_family": family, "illumination": int(values[41]),
                  "environment": int(values[42]), **self._bbox(path)}
        pai_type = family if family in ("print", "replay", "mask") else None
        yield self.make(path, split=split, subject=_subject(rel), label=label, attack_type=attack_type,
                        media="image", pai_type=pai_type, extras=extras)

    def _bbox(self, path: Path) -> dict[str, Any]:
        """Box of ``<n>_BB.txt`` (224x224 grid) or Nones when absent/unreadable."""
        out: dict[str, Any] = {"bbox": None, "bbox_score": None, "bbox_ref_size": BBOX_REF_SIZE}
        box_file = path.with_name(f"{path.stem}_BB.txt")
        if not self.options["read_bbox"] or not box_file.is_file():
            return out
        try:
            values = [float(v) for v in box_file.read_text(encoding="utf-8").split()]
        except (OSError, ValueError):
            return out
        if len(values) >= 4:
            out["bbox"] = [int(round(v)) for v in values[:4]]
            out["bbox_score"] = values[4] if len(values) > 4 else None
        return out


def _subject(rel: str) -> str:
    """``Data/<split>/<id>/...`` -> ``<id>`` (the CelebA identity)."""
    parts = rel.split("/")
    if len(parts) > 3 and parts[0].lower() == "data":
        return parts[2]
    return parts[-3] if len(parts) >= 3 else "unknown"


def _valid(values: Any) -> bool:
    """A 44-int label vector with a known spoof type and a 0/1 live-spoof flag."""
    try:
        return (isinstance(values, list) and len(values) >= 44
                and int(values[40]) in SPOOF_TYPES and int(values[43]) in (0, 1))
    except (TypeError, ValueError):
        return False
