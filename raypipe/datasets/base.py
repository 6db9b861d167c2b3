"""The contract every dataset adapter implements.

An adapter turns a dataset root in its *native* layout into :class:`Sample`
records. It never decodes media: preprocessing reads bytes (images) or frames
(videos, HDF5) inside the Ray Data pipeline, one file at a time.

Adding an adapter is one new module under ``raypipe/datasets/`` with a
subclass of :class:`DatasetAdapter`, plus one line in
``raypipe/datasets/__init__.py``'s ``ADAPTERS`` table.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from raypipe.labels import ATTACK, LIVE  # noqa: F401 - re-exported: the one definition is raypipe.labels

SPLITS = ("train", "dev", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".avi", ".mov", ".mp4", ".mkv", ".webm", ".m4v", ".wmv")


class DatasetLayoutError(ValueError):
    """The root does not look like the dataset's layout (missing lists, bad names)."""


def sample_id(dataset: str, rel_path: str, frame_index: int = -1) -> str:
    """Stable id of one sample: dataset + relative path (POSIX) + frame index."""
    key = f"{dataset}\x1f{Path(rel_path).as_posix()}\x1f{int(frame_index)}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]


@dataclass
class Sample:
    """One input of a dataset: a still image, or a whole video before frame sampling.

    ``media`` is ``"image"``, ``"video"`` (anything OpenCV's VideoCapture reads) or
    ``"hdf5"`` (3DMAD-style frame arrays). Videos are listed once with
    ``frame_index=-1``; preprocessing expands them into frames and gives each
    frame its own ``sample_id``.

    Capture conditions, filled only where the dataset's layout encodes them (None
    otherwise), so dev splits can hold out conditions training never saw:

    - ``session``: the capture session (time, place, lighting) as the dataset names
      it, e.g. NUAA ``"02"``; compared within one dataset only.
    - ``device``: the camera or phone that *recorded* the sample (not the attack
      instrument), e.g. OULU-NPU ``"phone3"``.
    - ``pai_type``: presentation attack instrument species, ``"print"``,
      ``"replay"`` or ``"mask"``; None for live samples. Left None, it is derived
      from ``attack_type`` when that names a known species (see :func:`pai_species`).
    """

    dataset: str
    split: str
    subject: str
    label: int
    attack_type: str
    path: str  # absolute path (or URI) used to read the file
    rel_path: str  # path relative to the dataset root, POSIX separators; part of the id
    media: str = "image"
    frame_index: int = -1
    session: str | None = None
    device: str | None = None
    pai_type: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    sample_id: str = ""

    def __post_init__(self) -> None:
        if self.label not in (LIVE, ATTACK):
            raise ValueError(f"label must be 0 (live) or 1 (attack), got {self.label!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.media not in ("image", "video", "hdf5"):
            raise ValueError(f"unknown media {self.media!r}")
        if self.label == LIVE and self.pai_type is not None:
            raise ValueError(f"a live sample has no attack instrument, got pai_type={self.pai_type!r}")
        if self.label == ATTACK and self.pai_type is None:
            self.pai_type = pai_species(self.attack_type)
        self.rel_path = Path(self.rel_path).as_posix()
        if not self.sample_id:
            self.sample_id = sample_id(self.dataset, self.rel_path, self.frame_index)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanReport:
    """What an adapter saw: files a protocol lists that the disk lacks, files skipped."""

    missing: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self, examples: int = 5) -> dict[str, Any]:
        return {
            "missing": len(self.missing),
            "missing_examples": self.missing[:examples],
            "skipped": len(self.skipped),
            "skipped_examples": self.skipped[:examples],
        }


class DatasetAdapter(abc.ABC):
    """Base class: subclasses set ``name`` and implement :meth:`scan`.

    ``options`` are adapter-specific keyword arguments (for example OULU-NPU's
    ``protocol`` and ``fold``); unknown options raise ``TypeError`` early.
    """

    name: ClassVar[str]
    #: option name -> default; documented in each adapter's docstring.
    default_options: ClassVar[dict[str, Any]] = {}
    #: options that list every sample of the release once, when other options only pick
    #: samples and assign splits (a protocol): the benchmark crops the release with these
    #: and carves each protocol from it (``raypipe.preprocess.carve``). None: nothing to carve.
    release_options: ClassVar[dict[str, Any] | None] = None

    def __init__(self, root: str | Path, **options: Any) -> None:
        unknown = set(options) - set(self.default_options)
        if unknown:
            raise TypeError(
                f"{self.name}: unknown option(s) {sorted(unknown)}; known: {sorted(self.default_options)}"
            )
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.name}: dataset root {self.root} is not a directory")
        self.options = {**self.default_options, **options}
        self.report = ScanReport()

    @abc.abstractmethod
    def scan(self) -> Iterator[Sample]:
        """Yield every sample of every split, recording missing files in ``self.report``."""

    def samples(self, split: str = "all") -> list[Sample]:
        """Samples of one split (``train``/``dev``/``test``) or ``all``, sorted by id."""
        if split != "all" and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS + ('all',)}, got {split!r}")
        self.report = ScanReport()
        out = [s for s in self.scan() if split == "all" or s.split == split]
        return sorted(out, key=lambda s: (s.split, s.rel_path, s.frame_index))

    # helpers shared by adapters -------------------------------------------------
    def rel(self, path: Path) -> str:
        """Path relative to the root; files outside it (CSV manifests may point anywhere) keep their full path."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def make(self, path: Path, dataset: str | None = None, **fields: Any) -> Sample:
        """Build a Sample for a file under the root (absolute path and rel_path filled in)."""
        return Sample(dataset=dataset or self.name, path=str(path), rel_path=self.rel(path), **fields)


#: attack-type words (as adapters and users write them) -> instrument species. Checked in
#: this order: a "paper_mask" is a mask and a "video_of_photo" a replay, not a print.
_PAI_WORDS = {
    "mask": ("mask",),
    "replay": ("replay", "video", "screen", "display", "monitor", "tablet", "phone", "ipad", "iphone"),
    "print": ("print", "photo", "paper", "poster", "a4", "warped"),
}


def pai_species(attack_type: str | None) -> str | None:
    """``"print"``, ``"replay"`` or ``"mask"`` for an attack type that names one, else None.

    Matches whole ``_``/``-``/space separated words (``printed_photo`` -> print,
    ``silicone_mask`` -> mask); ``"attack"`` or an unknown word gives None rather than a guess.
    """
    words = set((attack_type or "").lower().replace("-", "_").replace(" ", "_").split("_"))
    words |= {w.removesuffix("ed") for w in words}  # printed -> print
    for species, names in _PAI_WORDS.items():
        if words & set(names):
            return species
    return None


def media_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in (".h5", ".hdf5"):
        return "hdf5"
    return "image"
