"""The field's benchmark protocols, end to end: preprocess -> train -> dev threshold -> test.

``run_benchmark(BenchmarkConfig(protocol="oulu-p3", roots=["oulu_npu=/data/oulu"]))`` runs
every fold of a protocol and returns (and writes, and logs to MLflow) one row per fold and
test set, with mean ± std over the rows:

* ``oulu-p1`` … ``oulu-p4``: OULU-NPU's own lists (``Protocols/Protocol_N``); protocols 3
  and 4 have 6 folds each (leave one phone out). Headline: the ISO ACER per video.
* ``ocim-O``, ``ocim-C``, ``ocim-I``, ``ocim-M``: leave one dataset out over OULU-NPU (the
  whole release, split by its folders: adapter option ``protocol=0``), CASIA-FASD,
  Replay-Attack (Idiap) and MSU-MFSD: train on the train splits of three, choose the
  threshold on their dev splits (own or carved), test on the fourth's test split.
  Headline: HTER per video, with AUC.
* ``nuaa-official``: NUAA's official train/test lists; dev is carved from train (by
  session). Where the test images are missing (the copy at hand holds the training split
  only) the row reports the dev (training) side and says so.
* a YAML file (:func:`protocol_from_yaml`): train sets, dev sets, test sets, threshold rule.

A fold's datasets are preprocessed together into one folder under ``work`` named after them
and their adapter options (OULU-NPU's protocol and fold pick which videos get which split),
and a dataset already there (same root, every split, same frame sampling) is not
preprocessed again. A dataset whose adapter has ``release_options`` (OULU-NPU: protocol 0,
every video) is cropped once, whole, into ``work/<dataset>.<options>``, and each fold's split
assignment is carved from it (:func:`raypipe.preprocess.carve`): the 6 folds of protocols 3
and 4, protocols 1 and 2 and the O of OCIM share one face-detection pass.

Each fold trains with :func:`raypipe.train.run_training` (Ray Train), picks its threshold on
its dev set by evaluating there (:func:`raypipe.evaluate.evaluate_model` with the rule) and
scores each test set at that number. Every fold's data is prepared first; then, when the
cluster can hold several trainings (``concurrent_folds``, default from its capacity), each
fold runs in a Ray task that asks for no CPU (its training asks for its own workers), at
most that many at once; otherwise (a 2-core machine holds one training) one after another
on the driver.

MLflow: one parent run per benchmark (results table, plots, mean/std), one child run per
fold (its figures and plots); the fold's training and evaluation runs are nested under that
child (``mlflow.parentRunId``), so the UI shows the tree. Like :mod:`raypipe.experiments`,
this module chains stages and no stage imports it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raypipe import metrics, storage
from raypipe.config import BenchmarkConfig, EvaluateConfig, PreprocessConfig, TrainConfig
from raypipe.crops import read_index
from raypipe.datasets import ADAPTERS, adapter_class, get_adapter
from raypipe.evaluate import evaluate_model

log = logging.getLogger(__name__)

OULU_FOLDS = {1: 1, 2: 1, 3: 6, 4: 6}
#: leave-one-dataset-out letters as the domain-generalisation papers write them
OCIM = {"O": "oulu_npu", "C": "casia_fasd", "I": "replay_attack", "M": "msu_mfsd"}
OCIM_OPTIONS = {"oulu_npu": {"protocol": 0}}  # the whole OULU-NPU release, split by its folders
HEADLINES = ("acer", "hter")
#: the figures of a row summarised as mean ± std over rows
SUMMARY_KEYS = ("apcer", "bpcer", "acer", "hter", "auc", "eer")


@dataclass
class Fold:
    """One train/dev/test assignment; ``sources`` are the datasets (with adapter options)
    preprocessed together into its data folder."""

    name: str
    sources: dict[str, dict[str, Any]]
    train: list[str]
    dev: list[str]
    test: list[str]

    def data_key(self) -> str:
        """The data folder's name: datasets and options, so folds with the same data share it."""
        return data_key(self.sources)


def data_key(sources: dict[str, dict[str, Any]]) -> str:
    """A folder name for datasets preprocessed with these adapter options."""
    return "+".join(name + "".join(f".{k}{v}" for k, v in sorted(options.items()))
                    for name, options in sorted(sources.items()))


@dataclass
class Protocol:
    name: str
    title: str
    folds: list[Fold]
    headline: str = "hter"  # "acer": ISO ACER (worst species); "hter": (FAR + FRR) / 2
    threshold: str = "eer"  # the rule applied on each fold's dev set


# ----------------------------------------------------------------------------- definitions


def oulu_protocol(number: int) -> Protocol:
    """OULU-NPU protocol 1-4 from the release's own lists, one fold per list set."""
    folds = []
    for k in range(1, OULU_FOLDS[number] + 1):
        options = {"protocol": number, **({"fold": k} if OULU_FOLDS[number] > 1 else {})}
        folds.append(Fold(str(k), {"oulu_npu": options}, ["oulu_npu"], ["oulu_npu"], ["oulu_npu"]))
    titles = {1: "unseen environment (session 3)", 2: "unseen attack instruments (printer, display)",
              3: "unseen phone (leave one out, 6 folds)", 4: "unseen environment, instruments and phone (6 folds)"}
    return Protocol(f"oulu-p{number}", f"OULU-NPU protocol {number}: {titles[number]}", folds, headline="acer")


def ocim_protocol(target: str) -> Protocol:
    """Leave one of O, C, I, M out: train on the other three, test on it."""
    sources = {name: dict(OCIM_OPTIONS.get(name, {})) for name in OCIM.values()}
    others = [name for letter, name in OCIM.items() if letter != target]
    fold = Fold(target, sources, others, list(others), [OCIM[target]])
    sources_text = "&".join(letter for letter in OCIM if letter != target)
    return Protocol(f"ocim-{target}", f"leave one dataset out: {sources_text} -> {target} ({OCIM[target]})",
                    [fold], headline="hter")


def nuaa_protocol() -> Protocol:
    fold = Fold("official", {"nuaa": {}}, ["nuaa"], ["nuaa"], ["nuaa"])
    return Protocol("nuaa-official", "NUAA official split: train sessions 01-02, test session 03 (+7 subjects)",
                    [fold], headline="hter")


BUILTIN: dict[str, Callable[[], Protocol]] = {
    **{f"oulu-p{n}": (lambda n=n: oulu_protocol(n)) for n in OULU_FOLDS},
    **{f"ocim-{t.lower()}": (lambda t=t: ocim_protocol(t)) for t in OCIM},
    "nuaa-official": nuaa_protocol,
}
YAML_KEYS = {"name", "description", "threshold", "headline", "options", "train", "dev", "test", "folds"}


def load_protocol(name: str) -> Protocol:
    """A built-in protocol by name (case-insensitive) or a protocol YAML file."""
    if name.lower() in BUILTIN:
        return BUILTIN[name.lower()]()
    if Path(name).suffix.lower() in (".yaml", ".yml") or Path(name).is_file():
        return protocol_from_yaml(Path(name))
    raise ValueError(f"unknown protocol {name!r}: one of {', '.join(sorted(BUILTIN))} or a YAML file")


def protocol_from_yaml(path: Path) -> Protocol:
    """A user protocol. One fold::

        name: casia-to-replay
        train: [casia_fasd]          # their train splits train, their dev splits (own or carved) are dev
        dev: [casia_fasd]            # where the threshold is chosen (default: the train sets)
        test: [replay_attack]        # each scored on its test split
        threshold: eer               # or apcer:0.05, bpcer:0.01, 0.5
        headline: hter               # or acer (ISO, worst species)
        options: {oulu_npu: {protocol: 0}}   # adapter options per dataset

    or ``folds: [{name, train, dev, test}, ...]`` in place of the top-level train/dev/test.
    """
    import yaml

    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - YAML_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(YAML_KEYS)}")
    options = spec.get("options") or {}
    fold_specs = spec.get("folds") or [{"name": "1", **{k: spec[k] for k in ("train", "dev", "test") if k in spec}}]
    folds = [_yaml_fold(path, i, fold, options) for i, fold in enumerate(fold_specs, start=1)]
    protocol = Protocol(str(spec.get("name") or path.stem), str(spec.get("description") or ""), folds,
                        headline=str(spec.get("headline", "hter")), threshold=str(spec.get("threshold", "eer")))
    if protocol.headline not in HEADLINES:
        raise ValueError(f"{path}: headline must be one of {HEADLINES}, got {protocol.headline!r}")
    metrics.parse_threshold_rule(protocol.threshold)
    return protocol


def _yaml_fold(path: Path, number: int, spec: dict[str, Any], options: dict[str, Any]) -> Fold:
    def names(key: str) -> list[str]:
        value = spec.get(key)
        return [value] if isinstance(value, str) else list(value or [])

    train, test = names("train"), names("test")
    if not train or not test:
        raise ValueError(f"{path}: fold {spec.get('name', number)} needs train and test datasets")
    dev = names("dev") or list(train)
    used = list(dict.fromkeys(train + dev + test))
    unknown = [d for d in used if d not in ADAPTERS]
    if unknown:
        raise ValueError(f"{path}: unknown dataset(s) {unknown}; known: {', '.join(sorted(ADAPTERS))}")
    return Fold(str(spec.get("name", number)), {d: dict(options.get(d) or {}) for d in used}, train, dev, test)


def select_folds(protocol: Protocol, names: list[str] | None) -> list[Fold]:
    """The folds asked for (all by default), in the protocol's order."""
    if not names:
        return list(protocol.folds)
    known = {f.name.lower(): f for f in protocol.folds}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ValueError(f"{protocol.name} has no fold {unknown}; its folds: {', '.join(known)}")
    wanted = {n.lower() for n in names}
    return [f for f in protocol.folds if f.name.lower() in wanted]


def parse_roots(entries: list[str], datasets: list[str]) -> dict[str, str]:
    """``NAME=PATH`` entries (a bare PATH when one dataset is needed) -> {dataset: root}."""
    roots: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            if len(datasets) != 1:
                raise ValueError(f"give each root as NAME=PATH (this protocol reads {', '.join(datasets)})")
            name, path = datasets[0], entry
        roots[name.strip()] = path.strip()
    missing = [d for d in datasets if d not in roots]
    if missing:
        raise ValueError(f"no root given for {', '.join(missing)} (--roots NAME=PATH,...)")
    return roots


# ----------------------------------------------------------------------------- data


def fold_members(fold: Fold, roots: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """{dataset: {split: [relative paths]}}: what the adapters assign to each split for this fold
    (no media read); what preprocessing will write, and what a dry run reports."""
    members: dict[str, dict[str, list[str]]] = {}
    for dataset, options in fold.sources.items():
        samples = get_adapter(dataset, roots[dataset], **options).samples()
        members[dataset] = {split: [s.rel_path for s in samples if s.split == split]
                            for split in ("train", "dev", "test")}
    return members


def fold_data(config: BenchmarkConfig, fold: Fold) -> str:
    return storage.join(storage.absolute(config.work), fold.data_key())


def is_preprocessed(data: str, dataset: str, root: str, frames_per_video: int) -> bool:
    """Whether ``data`` holds ``dataset`` from ``root``, every split, with the same frame sampling."""
    entry = storage.read_json(storage.join(data, "manifest.json"), default={}).get(dataset)
    return bool(entry) and entry.get("split") == "all" and entry.get("root") == storage.redact(root) and \
        entry.get("frames_per_video") == frames_per_video


def prepare_data(config: BenchmarkConfig, fold: Fold, roots: dict[str, str], address: str | None) -> dict[str, str]:
    """Preprocess the fold's datasets that its data folder lacks;
    {dataset: "reused" | "preprocessed" | "carved"}."""
    from raypipe.preprocess import run_preprocess

    data, done = fold_data(config, fold), {}
    for dataset, options in fold.sources.items():
        if is_preprocessed(data, dataset, roots[dataset], config.frames_per_video):
            done[dataset] = "reused"
            continue
        # Stored under the bare dataset name: each fold's data folder holds one protocol/fold
        # of it, and the fold's roles name datasets (see preprocess.stored_name).
        job = PreprocessConfig(dataset=dataset, root=roots[dataset], out=data, name=dataset,
                               frames_per_video=config.frames_per_video, adapter_options=dict(options))
        release = adapter_class(dataset).release_options
        if release is not None and release_dir(config, dataset, release) != data:
            carve_from_release(config, job, release, address)
            done[dataset] = "carved"
            continue
        log.info("benchmark: preprocessing %s (%s) into %s", dataset, options or "default options", data)
        run_preprocess(job, address=address)
        done[dataset] = "preprocessed"
    return done


def release_dir(config: BenchmarkConfig, dataset: str, release: dict[str, Any]) -> str:
    return storage.join(storage.absolute(config.work), data_key({dataset: release}))


def carve_from_release(config: BenchmarkConfig, job: PreprocessConfig, release: dict[str, Any],
                       address: str | None) -> dict[str, Any]:
    """Crop the whole release once (into :func:`release_dir`, kept for every later fold and
    protocol), then carve ``job``'s split assignment from it."""
    from raypipe.preprocess import carve, run_preprocess

    whole = release_dir(config, job.dataset, release)
    if not is_preprocessed(whole, job.dataset, job.root, config.frames_per_video):
        log.info("benchmark: cropping the whole %s release once into %s", job.dataset, whole)
        run_preprocess(dataclasses.replace(job, out=whole, adapter_options=dict(release)), address=address)
    log.info("benchmark: carving %s (%s) from %s into %s", job.dataset, job.adapter_options, whole, job.out)
    return carve(whole, job, release)


def has_test_rows(data: str, datasets: list[str]) -> dict[str, bool]:
    """{dataset: whether it has test crops}."""
    index = read_index(data, datasets, columns=["dataset", "split"])
    present = set(zip(index["dataset"].to_pylist(), index["split"].to_pylist()))
    return {d: (d, "test") in present for d in datasets}


def missing_note(data: str, dataset: str) -> str:
    manifest = storage.read_json(storage.join(data, "manifest.json"), default={}).get(dataset) or {}
    listed = ((manifest.get("summary") or {}).get("listed_but_missing") or {}).get("missing")
    why = f" ({listed} files its lists name are missing from {manifest.get('root')})" if listed else ""
    return (f"{dataset}: no test images{why}: the row reports the training side only, the dev split the "
            "threshold was chosen on (optimistic)")


# ----------------------------------------------------------------------------- one fold


def level_figures(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """("video", the video section) for video data, else ("frame", the frame-level figures)."""
    return ("video", result["video"]) if result.get("video") else ("frame", result)


def result_row(result: dict[str, Any]) -> dict[str, Any]:
    """The table's figures of one evaluation: at the protocol's level (videos where there are
    videos), ISO APCER/ACER (worst species), frame-level HTER/AUC beside them."""
    level, figures = level_figures(result)
    iso = figures.get("iso") or {}
    return {"level": level, "threshold": result["threshold"], "n_live": figures["n_live"],
            "n_attack": figures["n_attack"], "apcer": iso.get("apcer_max"),
            "apcer_species": iso.get("apcer_max_species"),
            "bpcer": iso.get("bpcer", figures["bpcer"]), "acer": iso.get("acer"), "hter": figures["hter"],
            "auc": figures["auc"], "eer": figures["eer"], "bpcer20": iso.get("bpcer20"),
            "frame_hter": result["hter"], "frame_auc": result["auc"], "n_frames": result["n"]}


def level_plots(directory: Path, result: dict[str, Any], video_score: str) -> list[Path]:
    """ROC and DET at the row's level, from the evaluation's own score table (scores.csv)."""
    from raypipe import plots

    frames = pd.read_csv(directory / "scores.csv")
    level, _ = level_figures(result)
    if level == "video":
        frames = metrics.video_scores(frames[["video", "score", "label", "attack_type", "species"]], video_score)
    labels, scores = frames["label"].to_numpy(np.int64), frames["score"].to_numpy(np.float64)
    return [plots.roc_figure(labels, scores, directory / f"roc_{level}.png"),
            plots.det_figure(labels, scores, directory / f"det_{level}.png")]


def _evaluate(config: BenchmarkConfig, model_uri: str, data: str, split: str, datasets: list[str],
              threshold: str, out: Path) -> dict[str, Any]:
    train = config.train
    return evaluate_model(EvaluateConfig(
        model_uri=model_uri, data=data, split=split, datasets=datasets, threshold=threshold,
        video_score=config.video_score, experiment=config.experiment, log_to_mlflow=config.log_to_mlflow,
        batch_size=config.batch_size, dev_by=train.dev_by, dev_fraction=train.dev_fraction, seed=train.seed,
        out=str(out), gradcam_per_class=0, tracking_uri=train.tracking_uri))


#: trains one fold from its TrainConfig; returns run_training's summary ("run_id", "dev_rule", ...)
TrainFn = Callable[[TrainConfig], dict[str, Any]]
FoldResult = tuple[list[dict[str, Any]], list[str], dict[str, Any]]


def run_fold(config: BenchmarkConfig, protocol: Protocol, fold: Fold, rule: str, data: str,
             address: str | None, train_fn: TrainFn | None = None) -> FoldResult:
    """Train (``train_fn``, default Ray Train's :func:`raypipe.train.run_training`), choose the
    threshold on dev, score each test set: (rows, notes, run ids)."""
    from raypipe.train import run_training

    train = train_fn or (lambda c: run_training(c, address=address))
    trained = train(dataclasses.replace(
        config.train, data=data, datasets=list(fold.train), experiment=config.experiment, threshold_rule=rule,
        run_name=f"{protocol.name} fold {fold.name}: train", register=None, promote=False))
    model_uri, out = trained["run_id"], results_dir(config, protocol) / _safe(fold.name)
    dev = _evaluate(config, model_uri, data, "dev", list(fold.dev), rule, out / "dev")
    threshold = repr(float(dev["threshold"]))  # the number every test set is scored at
    has_test = has_test_rows(data, list(fold.test))
    rows, notes, tests = [], [], []
    for dataset in fold.test:
        if has_test[dataset]:
            result, where = _evaluate(config, model_uri, data, "test", [dataset], threshold, out / dataset), dataset
            tests.append(result.get("mlflow_run_id"))
        else:  # NUAA here: the lists name test images the disk lacks
            result, where = dev, "dev"
            notes.append(missing_note(data, dataset))
        row = fold_row(protocol, fold, dataset, result, dev, trained, rule)
        row["plots"] = [str(p) for p in level_plots(out / where, result, config.video_score)]
        rows.append(row)
    return rows, notes, {"train": trained["run_id"], "dev": dev.get("mlflow_run_id"), "tests": tests}


def fold_slots(config: BenchmarkConfig, folds: int) -> int:
    """How many folds train side by side: ``concurrent_folds``, else as many trainings as the
    cluster can hold (GPUs per training's workers, or its workers' CPUs + one for its data)."""
    from raypipe.runtime import cluster_capacity, resolve_use_gpu

    if folds <= 1:
        return 1
    if config.concurrent_folds:
        return max(1, min(config.concurrent_folds, folds))
    capacity, train = cluster_capacity(), config.train
    if resolve_use_gpu(train.use_gpu):
        room = capacity.get("GPU", 0) // train.workers
    else:
        room = capacity.get("CPU", 0) // (train.workers * train.cpus_per_worker + 1)
    return int(max(1, min(room, folds)))


def run_folds(config: BenchmarkConfig, protocol: Protocol, folds: list[Fold], rule: str, address: str | None,
              train_fn: TrainFn | None = None) -> list[FoldResult]:
    """Each fold's :func:`run_fold`, in the folds' order: on the driver one after another, or
    in Ray tasks (no CPU of their own) :func:`fold_slots` at a time."""
    from raypipe.runtime import init_ray, run_at_most

    init_ray(address)
    slots = fold_slots(config, len(folds))
    if slots <= 1:
        return [run_fold(config, protocol, fold, rule, fold_data(config, fold), address, train_fn) for fold in folds]
    import ray

    portable = for_tasks(config)
    task = ray.remote(num_cpus=0, max_retries=0)(run_fold)
    log.info("benchmark: %d folds in Ray tasks, %d at a time", len(folds), slots)
    return run_at_most([lambda f=fold: task.remote(portable, protocol, f, rule, fold_data(portable, f), None, train_fn)
                        for fold in folds], slots)


def for_tasks(config: BenchmarkConfig) -> BenchmarkConfig:
    """The config with what the driver resolves from its own environment made explicit (the
    MLflow store, where checkpoints go, the work folder): a task's worker process does not
    share the driver's environment variables or working directory."""
    from raypipe.models.store import default_tracking_uri
    from raypipe.train import default_storage

    train = dataclasses.replace(config.train, tracking_uri=config.train.tracking_uri or default_tracking_uri(),
                                storage_path=config.train.storage_path or default_storage())
    return dataclasses.replace(config, work=storage.absolute(config.work), out=str(Path(config.out).resolve()),
                               train=train)


def fold_row(protocol: Protocol, fold: Fold, test: str, result: dict[str, Any], dev: dict[str, Any],
             trained: dict[str, Any], rule: str) -> dict[str, Any]:
    """One line of the results: where it comes from, the figures, how the fold was trained."""
    dev_rule = "; ".join(f"{d}: {words}" for d, words in (trained.get("dev_rule") or {}).items())
    return {"protocol": protocol.name, "fold": fold.name, "train": ",".join(fold.train), "dev": ",".join(fold.dev),
            "test": test, "split": "dev" if result is dev else "test", **result_row(result),
            "threshold_rule": f"{rule} on dev ({','.join(fold.dev)})", "dev_hter": level_figures(dev)[1]["hter"],
            "dev_rule": dev_rule, "epochs_run": trained.get("epochs_run"), "best_epoch": trained.get("best_epoch"),
            "train_run_id": trained["run_id"], "eval_run_id": result.get("mlflow_run_id")}


def results_dir(config: BenchmarkConfig, protocol: Protocol) -> Path:
    """OUT/<protocol>: each protocol's results beside the others'."""
    return Path(config.out) / _safe(protocol.name)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# ----------------------------------------------------------------------------- the benchmark


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and standard deviation (n denominator) of each figure over the rows that have it."""
    out: dict[str, dict[str, float | None]] = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values)) if values else None, "n": len(values)}
    return out


def plan(config: BenchmarkConfig) -> dict[str, Any]:
    """The protocol's folds and what each would train, choose on and test on (a dry run)."""
    protocol, folds, roots, rule = _resolve(config)
    return {"protocol": protocol.name, "title": protocol.title, "headline": protocol.headline, "threshold": rule,
            "folds": [{"fold": f.name, "data": fold_data(config, f), "train": f.train, "dev": f.dev, "test": f.test,
                       "samples": {d: {s: len(p) for s, p in splits.items()}
                                   for d, splits in fold_members(f, roots).items()}} for f in folds]}


def _resolve(config: BenchmarkConfig) -> tuple[Protocol, list[Fold], dict[str, str], str]:
    """Everything that can be checked before any work: protocol, folds, roots, threshold rule."""
    protocol = load_protocol(config.protocol)
    folds = select_folds(protocol, config.folds)
    datasets = list(dict.fromkeys(d for f in folds for d in f.sources))
    roots = parse_roots(config.roots, datasets)
    rule = config.threshold or protocol.threshold
    metrics.parse_threshold_rule(rule)
    if config.video_score not in metrics.VIDEO_SCORE_RULES:
        raise ValueError(f"video_score must be one of {metrics.VIDEO_SCORE_RULES}, got {config.video_score!r}")
    return protocol, folds, roots, rule


def run_benchmark(config: BenchmarkConfig, address: str | None = None,
                  train_fn: TrainFn | None = None) -> dict[str, Any]:
    """Every selected fold of the protocol; returns ``{"protocol", "rows", "summary", "notes", "files",
    "mlflow_run_id", ...}`` (one row per fold and test set) and writes the results under ``config.out``.
    With ``dry_run`` only :func:`plan` (nothing preprocessed or trained). ``train_fn`` replaces
    Ray Train for every fold (an importable function when folds run in Ray tasks)."""
    if config.dry_run:
        return plan(config)
    started = time.perf_counter()
    protocol, folds, roots, rule = _resolve(config)
    tracker = _Tracker(config, protocol, rule) if config.log_to_mlflow else None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    data_status: dict[str, dict[str, str]] = {}
    try:
        for fold in folds:
            data_status[fold.name] = prepare_data(config, fold, roots, address)
        for fold, (fold_rows, fold_notes, runs) in zip(folds, run_folds(config, protocol, folds, rule, address,
                                                                         train_fn)):
            rows += fold_rows
            notes += [n for n in fold_notes if n not in notes]
            if tracker:
                tracker.log_fold(fold, fold_rows, runs)
        result = {"protocol": protocol.name, "title": protocol.title, "headline": protocol.headline,
                  "concurrent_folds": fold_slots(config, len(folds)), "threshold_rule": rule, "video_score": config.video_score, "model": config.train.model,
                  "epochs": config.train.epochs, "folds": [f.name for f in folds], "data": data_status,
                  "rows": rows, "summary": summarize(rows), "notes": notes, "mlflow_run_id": None}
        result["files"] = [str(p) for p in write_results(results_dir(config, protocol), result)]
        if tracker:
            result["mlflow_run_id"] = tracker.finish(result)
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


# ----------------------------------------------------------------------------- results


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _mean_std(summary: dict[str, Any], key: str, scale: float = 100.0) -> str:
    s = summary[key]
    if s["mean"] is None:
        return "–"
    digits = 2 if scale == 100.0 else 4
    return f"{scale * s['mean']:.{digits}f} ± {scale * s['std']:.{digits}f}"


TABLE_HEADER = ("| fold | trained on | tested on | threshold | APCER (%) | BPCER (%) | ACER (%) | HTER (%) | AUC "
                "| EER (%) | live / attack |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")


def _caption(result: dict[str, Any], level: str) -> str:
    videos = f" (a video's score is the {result['video_score']} of its frames')" if level == "video" else ""
    return (f"{result['model']}, {result['epochs']} epoch(s) at most; threshold: {result['threshold_rule']} on each "
            f"fold's dev set; figures per {level}{videos}; headline: **{result['headline'].upper()}**. "
            "APCER and ACER are ISO/IEC 30107-3's (worst PAI species).")


def results_markdown(result: dict[str, Any]) -> str:
    """The results table: one line per fold and test set, then mean ± std over them."""
    rows, summary = result["rows"], result["summary"]
    level = rows[0]["level"] if rows else "frame"
    lines = [f"# {result['protocol']}: {result['title']}", "", _caption(result, level), "", TABLE_HEADER]
    for r in rows:
        mark = "" if r["split"] == "test" else " (dev†)"
        auc = "–" if r["auc"] is None else f"{r['auc']:.4f}"
        lines.append(f"| {r['fold']} | {r['train']} | {r['test']}{mark} | {r['threshold']:.4f} | {_pct(r['apcer'])} "
                     f"| {_pct(r['bpcer'])} | {_pct(r['acer'])} | {_pct(r['hter'])} | {auc} | {_pct(r['eer'])} "
                     f"| {r['n_live']} / {r['n_attack']} |")
    if len(rows) > 1:
        lines.append(f"| **mean ± std** ({len(rows)}) | | | | {_mean_std(summary, 'apcer')} | "
                     f"{_mean_std(summary, 'bpcer')} | {_mean_std(summary, 'acer')} | {_mean_std(summary, 'hter')} | "
                     f"{_mean_std(summary, 'auc', 1.0)} | {_mean_std(summary, 'eer')} | |")
    per_fold = [_fold_line(r) for r in rows if r is _first_of_fold(rows, r)]
    lines += ["", "Dev sets and training, per fold:", "", *per_fold]
    if result["notes"]:
        lines += [""] + [f"† {note}" for note in result["notes"]]
    return "\n".join(lines) + "\n"


def _first_of_fold(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in rows if r["fold"] == row["fold"])


def _fold_line(row: dict[str, Any]) -> str:
    best = row.get("best_epoch")
    epochs = f"; weights of epoch {best + 1} of {row.get('epochs_run')} (lowest dev loss)" if best is not None else ""
    return f"- fold {row['fold']}: {row.get('dev_rule') or 'dev as planned by training'}{epochs}"


CSV_KEYS = ("protocol", "fold", "train", "dev", "test", "split", "level", "threshold", "threshold_rule", "n_live",
            "n_attack", "n_frames", "apcer", "apcer_species", "bpcer", "acer", "hter", "auc", "eer", "bpcer20",
            "frame_hter", "frame_auc", "dev_hter", "dev_rule", "epochs_run", "best_epoch", "train_run_id",
            "eval_run_id")


def write_results(out: Path, result: dict[str, Any]) -> list[Path]:
    """results.md, results.csv (one line per row, every figure) and results.json under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, table, js = out / "results.md", out / "results.csv", out / "results.json"
    md.write_text(results_markdown(result))
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CSV_KEYS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    js.write_text(json.dumps(result, indent=2, default=str))
    return [md, table, js]


def _metric_values(row: dict[str, Any]) -> dict[str, float]:
    return {f"{row['test']}/{key}": float(row[key]) for key in (*SUMMARY_KEYS, "threshold", "dev_hter", "frame_hter")
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])}


class _Tracker:
    """The MLflow tree: a parent run, a child per fold, the fold's own runs nested under it.

    Runs are made with the client, never made active: training and evaluation start runs of
    their own, which an active run would turn into an error."""

    def __init__(self, config: BenchmarkConfig, protocol: Protocol, rule: str) -> None:
        import mlflow

        from raypipe.models.store import configure_tracking, ensure_experiment

        configure_tracking(config.train.tracking_uri)
        self.client = mlflow.MlflowClient()
        self.experiment = ensure_experiment(config.experiment)
        self.protocol = protocol
        self.parent = self.client.create_run(self.experiment, run_name=f"benchmark {protocol.name}",
                                             tags={"raypipe.kind": "benchmark", "raypipe.protocol": protocol.name})
        self.parent_id = self.parent.info.run_id
        params = {"protocol": protocol.name, "headline": protocol.headline, "threshold_rule": rule,
                  "video_score": config.video_score, "frames_per_video": config.frames_per_video,
                  "folds": ",".join(f.name for f in select_folds(protocol, config.folds)),
                  "train": json.dumps(dataclasses.asdict(config.train), default=str)[:5000]}
        for key, value in params.items():
            self.client.log_param(self.parent_id, key, value)

    def log_fold(self, fold: Fold, rows: list[dict[str, Any]], runs: dict[str, Any]) -> str:
        child = self.client.create_run(self.experiment, run_name=f"{self.protocol.name} fold {fold.name}",
                                       tags={"mlflow.parentRunId": self.parent_id, "raypipe.kind": "benchmark-fold",
                                             "raypipe.fold": fold.name})
        child_id = child.info.run_id
        for own in [runs["train"], runs["dev"], *runs["tests"]]:
            if own:
                self.client.set_tag(own, "mlflow.parentRunId", child_id)
        for key, value in {"train": ",".join(fold.train), "dev": ",".join(fold.dev), "test": ",".join(fold.test),
                           "data": fold.data_key()}.items():
            self.client.log_param(child_id, key, value)
        for row in rows:
            for key, value in _metric_values(row).items():
                self.client.log_metric(child_id, key, value)
            for path in row["plots"]:
                self.client.log_artifact(child_id, path, f"plots/{row['test']}")
                self.client.log_artifact(self.parent_id, path, f"plots/{_safe(fold.name)}/{row['test']}")
        self.client.log_dict(child_id, rows, "rows.json")
        self.client.set_terminated(child_id, "FINISHED")
        return child_id

    def finish(self, result: dict[str, Any]) -> str:
        for key, stats in result["summary"].items():
            for stat in ("mean", "std"):
                if stats[stat] is not None:
                    self.client.log_metric(self.parent_id, f"{stat}_{key}", stats[stat])
        for path in result["files"]:
            self.client.log_artifact(self.parent_id, path)
        self.client.set_terminated(self.parent_id, "FINISHED")
        return self.parent_id

    def fail(self) -> None:
        self.client.set_terminated(self.parent_id, "FAILED")
