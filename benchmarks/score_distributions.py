"""Where a model's spoof scores fall, per dataset, label and group: why one threshold can or
cannot serve two databases.

A threshold chosen on one database serves another only if the second's attacks score above
the first's live faces. This script prints, for preprocessed crops (``raypipe preprocess``
outputs), each group's spoof-probability quantiles under a zero-shot published model
(or any registered model's architecture with ``--pretrained``), at the model's own crop and
with its context scaled (``--context 0.8,1,1.25``): the measurement behind issue 11's
cross-database finding in docs/training.md.

    .venv/bin/python benchmarks/score_distributions.py --data data/nuaa data/msu \\
        [--models minifasnet_v2,minifasnet_v1se,minifasnet_ensemble] [--context 1] \\
        [--group-regex '(?:^|/)(\\d)\\d+\\.jpg$']

``--group-regex``: a pattern on each row's ``rel_path`` whose first group names the row's
group (MSU client 001's frames: the file name's thousands digit is the video). Writes
benchmarks/results/score_distributions.json. Needs the published weights
(RAYPIPE_WEIGHTS_DIR, as the Makefile sets from ../shared/weights).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch

from raypipe import crops
from raypipe.face import cut_face_regions, decode_crop
from raypipe.metrics import auc
from raypipe.models import build_transforms, create_model
from raypipe.predict import spoof_probabilities

RESULTS = Path(__file__).resolve().parent / "results" / "score_distributions.json"
QUANTILES = (0.05, 0.5, 0.95)


def read_rows(data: str) -> pa.Table:
    """Every accepted row of a preprocess output (rejects carry no crop)."""
    dataset = pads.dataset(crops.crops_path(data), format="parquet", partitioning="hive")
    table = dataset.to_table(columns=["rel_path", "label", "crop", "box", "crop_box", "crop_size"])
    return table.filter(pc.is_valid(table["crop"]))


def scores(model: torch.nn.Module, table: pa.Table, context: float) -> np.ndarray:
    spec = model.spec
    images = np.stack([decode_crop(blob) for blob in table["crop"].to_pylist()])
    inputs = cut_face_regions(images, crops.crop_boxes(table), spec.input_size, spec.crop.scale * context,
                              spec.crop.shape)
    transform = build_transforms(spec)
    return np.concatenate([spoof_probabilities(model, transform(inputs[i:i + 256]))
                           for i in range(0, len(inputs), 256)])


def groups(table: pa.Table, pattern: str | None) -> np.ndarray:
    labels = ["attack" if label else "live" for label in table["label"].to_pylist()]
    if not pattern:
        return np.array(labels)
    found = [re.search(pattern, path) for path in table["rel_path"].to_pylist()]
    return np.array([f"{label} {m.group(1) if m else '?'}" for label, m in zip(labels, found)])


def describe(values: np.ndarray) -> dict:
    return {"n": int(len(values)), **{f"q{int(q * 100):02d}": round(float(np.quantile(values, q)), 4)
                                      for q in QUANTILES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="preprocess outputs")
    parser.add_argument("--models", default="minifasnet_v2,minifasnet_v1se,minifasnet_ensemble")
    parser.add_argument("--pretrained", default="silentface")
    parser.add_argument("--context", default="1", help="factors on each model's crop scale, e.g. 0.8,1,1.25")
    parser.add_argument("--group-regex", default=None)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    tables = {data: read_rows(data) for data in args.data}
    rows = []
    for name in args.models.split(","):
        model = create_model(name, pretrained=args.pretrained).eval()
        for context in (float(c) for c in args.context.split(",")):
            for data, table in tables.items():
                s, labels = scores(model, table, context), np.array(table["label"].to_pylist())
                by_group = {g: describe(s[groups(table, args.group_regex) == g])
                            for g in sorted(set(groups(table, args.group_regex)))}
                rows.append({"model": name, "context": context, "data": data, "auc": round(auc(labels, s), 4),
                             "apcer_at_0.5": round(float(np.mean(s[labels == 1] < 0.5)), 4),
                             "bpcer_at_0.5": round(float(np.mean(s[labels == 0] >= 0.5)), 4), "groups": by_group})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "score_distributions", "pretrained": args.pretrained,
                               "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
