"""MSU-MFSD (Wen, Han and Jain, TIFS 2015).

Layout (videos may sit at the root or anywhere below it, e.g. ``scene01/real/``
and ``scene01/attack/``)::

    real_client001_android_SD_scene01.mp4
    real_client001_laptop_SD_scene01.mov
    attack_client001_{android,laptop}_{SD,HD}_{ipad_video,iphone_video,printed_photo}_scene01.{mp4,mov}
    train_sub_list.txt   test_sub_list.txt   (client numbers, one a line)

The official protocol splits by subject: clients in ``train_sub_list.txt`` are
``train``, clients in ``test_sub_list.txt`` are ``test`` (no dev split).
Videos of clients in neither list go to ``report.skipped``; a listed client with
no video goes to ``report.missing`` as ``<list>:client<NNN>``. Attack types:
``printed_photo`` -> ``print``; ``ipad_video``/``iphone_video`` -> ``replay``.
Extras: ``device`` (android/laptop capture), ``resolution`` (SD/HD), ``pai``
(the attack instrument code), ``scene``.

Capture fields: ``device`` = ``android``/``laptop`` (the recording camera);
``pai_type`` = ``print``/``replay``; ``session`` stays None (the names' ``scene``
field stays in extras: the protocol does not split by it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from raypipe.datasets._common import iter_files, read_list, require, subject_key
from raypipe.datasets.base import ATTACK, LIVE, VIDEO_EXTENSIONS, DatasetAdapter, Sample, media_of

_NAME = re.compile(
    r"^(?P<kind>real|attack)_client(?P<client>\d+)_(?P<device>android|laptop)_(?P<resolution>SD|HD)"
    r"(?:_(?P<pai>ipad_video|iphone_video|printed_photo))?_(?P<scene>scene\d+)$",
    re.IGNORECASE,
)
_LISTS = {"train": "train_sub_list.txt", "test": "test_sub_list.txt"}


class MsuMfsdAdapter(DatasetAdapter):
    name = "msu_mfsd"

    def scan(self) -> Iterator[Sample]:
        splits = self._subject_splits()
        seen: set[str] = set()
        for path in iter_files(self.root, VIDEO_EXTENSIONS):
            match = _NAME.match(path.stem)
            split = splits.get(subject_key(match["client"])) if match else None
            if match is None or split is None or (match["kind"].lower() == "attack") != bool(match["pai"]):
                self.report.skipped.append(self.rel(path))
                continue
            seen.add(subject_key(match["client"]))
            yield self._sample(path, split, match)
        for client, split in splits.items():
            if client not in seen:
                self.report.missing.append(f"{_LISTS[split]}:client{int(client):03d}")

    def _subject_splits(self) -> dict[str, str]:
        """Client key -> split from the official subject lists."""
        present = {s: self.root / name for s, name in _LISTS.items() if (self.root / name).is_file()}
        require(bool(present), self.name, f"no train_sub_list.txt / test_sub_list.txt under {self.root}")
        splits: dict[str, str] = {}
        for split, list_path in present.items():
            for entry in read_list(list_path):
                digits = re.sub(r"\D", "", entry)  # tolerate "client001" as well as "1"/"001"
                if digits:
                    splits[subject_key(digits)] = split
        return splits

    def _sample(self, path: Path, split: str, match: re.Match[str]) -> Sample:
        pai = match["pai"].lower() if match["pai"] else None
        attack_type = "live" if pai is None else ("print" if pai == "printed_photo" else "replay")
        extras = {"device": match["device"].lower(), "resolution": match["resolution"].upper(),
                  "pai": pai, "scene": match["scene"].lower()}
        return self.make(path, split=split, subject=f"{int(match['client']):03d}",
                         label=LIVE if pai is None else ATTACK, attack_type=attack_type,
                         media=media_of(path), device=extras["device"],
                         pai_type=None if pai is None else attack_type, extras=extras)
