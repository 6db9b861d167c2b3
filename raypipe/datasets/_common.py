"""Parsing helpers shared by the dataset adapters (not part of the public API).

Kept out of ``base.py`` on purpose: ``base.py`` is the adapter *contract*; these
are conveniences for reading native layouts (split lists, file look-ups by
name, side-car annotation files, configurable regex layouts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from raypipe.datasets.base import ATTACK, LIVE, SPLITS, DatasetAdapter, DatasetLayoutError, Sample, media_of

#: split folder / list names used by the datasets -> our split names.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train", "dev": "dev", "devel": "dev",
    "development": "dev", "val": "dev", "valid": "dev", "validation": "dev",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}
LIVE_WORDS = {"live", "real", "genuine", "bonafide", "bona_fide", "bona-fide", "0"}
ATTACK_WORDS = {"spoof", "attack", "fake", "imposter", "impostor", "1"}


def read_list(path: Path) -> list[str]:
    """Entries of a split list: CRLF/LF, backslashes normalised, blanks dropped, order kept."""
    text = path.read_text(encoding="utf-8", errors="replace")
    entries = (line.strip().replace("\\", "/") for line in text.splitlines())
    return list(dict.fromkeys(e for e in entries if e))


def split_alias(name: str) -> str | None:
    """Our split name for a dataset's split word (``devel`` -> ``dev``), else None."""
    return SPLIT_ALIASES.get(name.strip().lower())


def label_word(word: str) -> int | None:
    """0/1 for the usual live/attack folder words, None when the word is neither."""
    key = word.strip().lower()
    if key in LIVE_WORDS:
        return LIVE
    if key in ATTACK_WORDS:
        return ATTACK
    return None


def iter_files(base: Path, extensions: Iterable[str]) -> Iterator[Path]:
    """Files under ``base`` (recursive) whose suffix is one of ``extensions``, sorted."""
    exts = {e.lower() for e in extensions}
    if not base.is_dir():
        return iter(())
    return iter(sorted(p for p in base.rglob("*") if p.suffix.lower() in exts and p.is_file()))


def sidecar(path: Path, suffix: str, *, mirror_root: Path | None = None, root: Path | None = None) -> str | None:
    """Absolute path of an annotation file beside ``path`` (or mirrored under ``mirror_root``).

    ``mirror_root`` + ``root``: the side-car lives at ``mirror_root/<path relative to
    root>`` with the new suffix (Replay-Attack's ``face-locations/`` tree).
    """
    candidate = path.with_suffix(suffix)
    if mirror_root is not None and root is not None:
        candidate = mirror_root / path.relative_to(root).with_suffix(suffix)
    return str(candidate) if candidate.is_file() else None


class FileIndex:
    """Find files that lists name by relative path, file name or bare stem.

    Lists often name a file without its folder (OULU-NPU's ``Train_files/``) or
    without its extension; indexing the tree once keeps look-ups O(1).
    """

    def __init__(self, root: Path, extensions: Iterable[str], exclude: Iterable[str] = ()) -> None:
        self.root = root
        excluded = tuple(root / e for e in exclude)
        self.files = [p for p in iter_files(root, extensions)
                      if not any(p.is_relative_to(e) for e in excluded)]
        self._by_name: dict[str, list[Path]] = {}
        self._by_stem: dict[str, list[Path]] = {}
        for p in self.files:
            self._by_name.setdefault(p.name.lower(), []).append(p)
            self._by_stem.setdefault(p.stem.lower(), []).append(p)

    def find(self, entry: str, prefer: str | None = None) -> Path | None:
        """The file an entry names, or None; ``prefer`` (a folder name) breaks ties."""
        entry = entry.strip().replace("\\", "/").lstrip("/")
        direct = self.root / entry
        if direct.is_file():
            return direct
        name = entry.rsplit("/", 1)[-1].lower()
        candidates = self._by_name.get(name) or self._by_stem.get(name) or []
        if len(candidates) > 1:
            # several copies: the one whose path ends like the entry, then the preferred folder
            tail = [p for p in candidates if p.as_posix().lower().endswith(entry.lower())]
            pref = [p for p in candidates if prefer and prefer.lower() in (x.lower() for x in p.parts)]
            candidates = tail or pref or candidates
        return candidates[0] if candidates else None


def subject_key(subject: Any) -> str:
    """Comparable subject id: ``"007"``, ``7`` and ``"7"`` are the same subject."""
    text = str(subject).strip()
    return str(int(text)) if text.isdigit() else text.lower()


def subjects_to_split(mapping: Mapping[str, Iterable[Any]], dataset: str) -> dict[str, str]:
    """Invert ``{"train": [1, 2], "dev": [3], ...}`` into ``{"1": "train", ...}``, checked."""
    out: dict[str, str] = {}
    for split, subjects in mapping.items():
        if split not in SPLITS:
            raise ValueError(f"{dataset}: split_subjects has unknown split {split!r}")
        if isinstance(subjects, (str, int)):
            raise ValueError(f"{dataset}: split_subjects[{split!r}] must be a list of subjects")
        for subject in subjects:
            key = subject_key(subject)
            if key in out:
                raise ValueError(f"{dataset}: subject {key} is in both {out[key]} and {split}")
            out[key] = split
    return out


class PatternLayout:
    """A layout described by globs + regexes, for datasets whose layout is unverified.

    Options (all overridable by the user):

    - ``glob``: glob(s) relative to the root selecting media files.
    - ``regex``: regex(es) tried in order with ``re.search`` on the POSIX path
      relative to the root (case-insensitive). Named groups: ``subject``
      (required), ``label``, ``attack_type``, ``split``, ``session``, ``device``
      (the capture fields of :class:`~raypipe.datasets.base.Sample`); any other
      named group goes to ``extras``.
    - ``label_map``: raw ``label`` text -> 0/1 (merged over the usual words
      live/real/bonafide -> 0, attack/spoof/fake -> 1).
    - ``attack_type_map``: raw ``attack_type`` text -> attack type name.
    - ``default_attack_type``: attack type of attacks when no group gives one.
    - ``split_map``: raw ``split`` text -> train/dev/test (merged over aliases).
    - ``split_subjects``: ``{"train": [...], "dev": [...], "test": [...]}`` used
      when the regex has no ``split`` group; without either, everything is
      ``train`` (training carves dev by subject).
    """

    def __init__(self, dataset: str, options: Mapping[str, Any]) -> None:
        self.dataset = dataset
        self.globs = _as_list(options["glob"])
        self.regexes = [re.compile(r, re.IGNORECASE) for r in _as_list(options["regex"])]
        if not all("subject" in r.groupindex for r in self.regexes):
            raise ValueError(f"{dataset}: every regex needs a named group 'subject'")
        self.label_map = {str(k).lower(): int(v) for k, v in (options.get("label_map") or {}).items()}
        self.attack_map = {str(k).lower(): str(v) for k, v in (options.get("attack_type_map") or {}).items()}
        self.default_attack = options.get("default_attack_type") or "attack"
        self.split_map = {str(k).lower(): str(v) for k, v in (options.get("split_map") or {}).items()}
        if not set(self.label_map.values()) <= {LIVE, ATTACK}:
            raise ValueError(f"{dataset}: label_map values must be 0 (live) or 1 (attack)")
        if not set(self.split_map.values()) <= set(SPLITS):
            raise ValueError(f"{dataset}: split_map values must be among {SPLITS}")
        subjects = options.get("split_subjects")
        self.subject_split = subjects_to_split(subjects, dataset) if subjects else None

    def files(self, root: Path) -> list[Path]:
        found = {p for g in self.globs for p in root.glob(g) if p.is_file()}
        return sorted(found)

    def parse(self, rel_path: str) -> dict[str, Any] | None:
        """Fields of one file (subject, label, attack_type, split, extras), or None."""
        for regex in self.regexes:
            match = regex.search(rel_path)
            if match:
                return self._fields({k: v for k, v in match.groupdict().items() if v is not None})
        return None

    def _fields(self, groups: dict[str, str]) -> dict[str, Any] | None:
        label = self._label(groups)
        if label is None or "subject" not in groups:
            return None
        split = self._split(groups)
        if split is None:
            return None
        raw_attack = groups.get("attack_type", "")
        attack_type = "live" if label == LIVE else (
            self.attack_map.get(raw_attack.lower(), raw_attack.lower()) or self.default_attack)
        extras = {k: v for k, v in groups.items() if k not in _FIELD_GROUPS}
        return {"subject": groups["subject"], "label": label, "attack_type": attack_type,
                "split": split, "session": groups.get("session"), "device": groups.get("device"),
                "extras": extras}

    def _label(self, groups: dict[str, str]) -> int | None:
        if "label" in groups:
            raw = groups["label"].lower()
            return self.label_map[raw] if raw in self.label_map else label_word(raw)
        # no label group: an attack_type group alone means an attack
        return ATTACK if groups.get("attack_type") else None

    def _split(self, groups: dict[str, str]) -> str | None:
        if "split" in groups:
            raw = groups["split"].lower()
            return self.split_map.get(raw) or split_alias(raw)
        if self.subject_split is not None:
            return self.subject_split.get(subject_key(groups["subject"]))
        return "train"


#: named regex groups that become Sample fields rather than extras.
_FIELD_GROUPS = ("subject", "label", "attack_type", "split", "session", "device")


def _as_list(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def require(condition: bool, dataset: str, message: str) -> None:
    """Raise :class:`DatasetLayoutError` (``<dataset>: <message>``) unless ``condition``."""
    if not condition:
        raise DatasetLayoutError(f"{dataset}: {message}")


class PatternAdapter(DatasetAdapter):
    """An adapter whose layout is entirely given by :class:`PatternLayout` options.

    Subclasses set ``name`` and ``default_options`` (every key of
    :data:`PATTERN_OPTIONS`). The options are checked when the adapter is built,
    so a bad regex fails before any scan.
    """

    def __init__(self, root: str | Path, **options: Any) -> None:
        super().__init__(root, **options)
        self.layout = PatternLayout(self.name, self.options)

    def scan(self) -> Iterator[Sample]:
        files = self.layout.files(self.root)
        require(bool(files), self.name, f"no file matches glob {self.layout.globs} under {self.root} "
                                        "(layout unverified: set the 'glob' option)")
        matched = 0
        for path in files:
            fields = self.layout.parse(self.rel(path))
            if fields is None:
                self.report.skipped.append(self.rel(path))
                continue
            matched += 1
            yield self._sample(path, fields)
        require(matched > 0, self.name,
                f"none of {len(files)} files (e.g. {self.rel(files[0])}) matches the regex option "
                "(layout unverified: set 'regex' with named groups subject/label/attack_type)")

    def _sample(self, path: Path, fields: dict[str, Any]) -> Sample:
        media = media_of(path)
        extras = dict(fields["extras"])
        if media == "hdf5":
            extras["hdf5_key"] = self.options["hdf5_key"]  # None: the frame reader looks for colour frames
        return self.make(path, split=fields["split"], subject=fields["subject"], label=fields["label"],
                         attack_type=fields["attack_type"], media=media, session=fields["session"],
                         device=fields["device"], extras=extras)


#: option names of a :class:`PatternAdapter` (defaults are per dataset).
PATTERN_OPTIONS = ("glob", "regex", "label_map", "attack_type_map", "default_attack_type",
                   "split_map", "split_subjects", "hdf5_key")
