"""Dataset adapters by name: one module per native layout, one line each below."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from raypipe.datasets.base import (
    ATTACK,
    LIVE,
    DatasetAdapter,
    DatasetLayoutError,
    Sample,
    ScanReport,
    sample_id,
)

# name -> "module:Class". Adding a dataset = one new module + one line here.
ADAPTERS: dict[str, str] = {
    "nuaa": "raypipe.datasets.nuaa:NuaaAdapter",
    "oulu_npu": "raypipe.datasets.oulu_npu:OuluNpuAdapter",
    "replay_attack": "raypipe.datasets.replay_attack:ReplayAttackAdapter",
    "casia_fasd": "raypipe.datasets.casia_fasd:CasiaFasdAdapter",
    "msu_mfsd": "raypipe.datasets.msu_mfsd:MsuMfsdAdapter",
    "rose_youtu": "raypipe.datasets.rose_youtu:RoseYoutuAdapter",
    "lcc_fasd": "raypipe.datasets.lcc_fasd:LccFasdAdapter",
    "celeba_spoof": "raypipe.datasets.celeba_spoof:CelebaSpoofAdapter",
    "siw": "raypipe.datasets.siw:SiwAdapter",
    "3dmad": "raypipe.datasets.mad3d:Mad3dAdapter",
    "csmad": "raypipe.datasets.csmad:CsmadAdapter",
    "msspoof": "raypipe.datasets.msspoof:MsspoofAdapter",
    "folder": "raypipe.datasets.folder:FolderAdapter",
}


def adapter_names() -> list[str]:
    return sorted(ADAPTERS)


def adapter_class(name: str) -> type[DatasetAdapter]:
    """The adapter class registered under ``name`` (``-`` and ``_`` are equivalent)."""
    key = name.lower().replace("-", "_")
    if key not in ADAPTERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(adapter_names())}")
    module_name, class_name = ADAPTERS[key].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_adapter(name: str, root: str | Path, **options: Any) -> DatasetAdapter:
    """Instantiate the adapter registered under ``name`` (``-`` and ``_`` are equivalent)."""
    return adapter_class(name)(root, **options)


__all__ = [
    "ADAPTERS",
    "ATTACK",
    "LIVE",
    "DatasetAdapter",
    "DatasetLayoutError",
    "Sample",
    "ScanReport",
    "adapter_class",
    "adapter_names",
    "get_adapter",
    "sample_id",
]
