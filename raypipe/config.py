"""Every stage's settings, one source each: the dataclasses the library takes.

The CLI builds its flags from these fields (:func:`raypipe.cli.add_fields`: default,
type and help come from here), :class:`PipelineConfig` nests the stage configs instead
of re-declaring their fields, and the crop settings (:class:`raypipe.face.FaceConfig`)
travel from preprocessing to the registered model to serving. Stdlib and face.py only,
so ``raypipe --help`` never imports torch.

Add a setting = one field here with ``help`` metadata; it appears as a CLI flag of every
command that lists the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from raypipe.face import FaceConfig

DEV_RULES = ("auto", "session", "subject", "fraction")  # see raypipe.crops.plan_splits
VIDEO_SCORE_RULES = ("mean", "median", "max")  # see raypipe.metrics.video_scores (not imported: it needs numpy)


def setting(default: Any = None, help: str = "", *, flag: str | None = None, factory: Any = None,
            choices: tuple | None = None, exclusive: str | None = None) -> Any:
    """A dataclass field with its CLI help (and, when they apply, its flag name and choices).

    Fields sharing an ``exclusive`` group name become mutually exclusive flags (argparse
    refuses both, exit 2); the dataclass must check the same in ``__post_init__``.
    """
    metadata = {"help": help, **({"flag": flag} if flag else {}), **({"choices": choices} if choices else {}),
                **({"exclusive": exclusive} if exclusive else {})}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def required(help: str, *, flag: str | None = None) -> Any:
    return field(metadata={"help": help, **({"flag": flag} if flag else {})})


@dataclass
class PreprocessConfig:
    dataset: str = required("adapter name, e.g. nuaa, oulu_npu, folder")
    root: str = required("dataset root in its native layout")
    out: str = required("output directory (local, NFS, or s3://...)")
    split: str = setting("all", "which split of the dataset", choices=("train", "dev", "test", "all"))
    # None for both means 5 evenly spaced frames (raypipe.datasets.frames.check_sampling); a default
    # of 5 here would make every --every run carry both settings.
    frames_per_video: int | None = setting(None, "N evenly spaced frames per video (default: 5 unless --every)",
                                           exclusive="frame sampling")
    every: int | None = setting(None, "every k-th frame instead of N evenly spaced", exclusive="frame sampling")
    limit: int | None = setting(None, "a deterministic pseudo-random subset of N inputs")
    name: str | None = setting(None, "the dataset name the crops are stored and read under (default: the adapter's, "
                                     "followed by its protocol/fold where they are not the defaults, e.g. "
                                     "oulu_npu.protocol2: protocols of one dataset share an --out)")
    face: FaceConfig = setting(factory=FaceConfig)
    workers: int | None = setting(None, "a fixed pool of N face-cropper actors (default: an autoscaling pool, "
                                        "see --max-actors)", exclusive="actor pool")
    # The pool asks at once for an actor per batch up to this (pending actors are what makes an
    # autoscaler add nodes) and shrinks to 1 as inputs run out (raypipe.preprocess.pool_size);
    # the default is one per CPU the cluster can grow to (raypipe.runtime.cluster_capacity).
    max_actors: int | None = setting(None, "the most face-cropper actors of the autoscaling pool (default: one "
                                           "per CPU the cluster can have)", exclusive="actor pool")
    resume: bool = setting(False, "continue a run that stopped: keep what it wrote, crop only the inputs "
                                  "it had not written")
    cpus_per_worker: float = 0.75  # fractional so writers still get CPU on a 2-core laptop
    batch_size: int = 64  # measured: 64 beats 16 by ~8% (fewer tasks, less per-batch Arrow overhead)
    adapter_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from raypipe.datasets.frames import check_sampling  # lazy: this module stays stdlib + face.py

        check_sampling(self.frames_per_video, self.every)  # FrameSamplingError before any Ray work
        if self.workers is not None and self.max_actors is not None:
            raise ValueError("give --workers (a fixed pool) or --max-actors (an autoscaling pool), not both")
        for name, value in (("workers", self.workers), ("max_actors", self.max_actors)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass
class AugmentConfig:
    """Training augmentation, in torchvision terms (built by
    :func:`raypipe.models.transforms.build_augmentation`); each part on its own flag, so
    each can be measured on a session-held-out dev (docs/training.md says which helped).

    The paper's set (Keras ImageDataGenerator style), ``affine``:

    - rotation: uniform in +-``rotation_degrees``.
    - shift: up to ``width_shift`` / ``height_shift`` of the width / height.
    - shear: the paper's 0.2 is read as radians (old Keras semantics), 0.2 rad = 11.5 deg.
    - zoom: scale uniform in [1 - zoom, 1 + zoom] (Keras ``zoom_range=0.2``).
      Areas uncovered by the affine transform are filled with black (Keras would
      repeat the edge pixels; torchvision only fills with a constant).

    Then horizontal flip with probability ``horizontal_flip_p`` (faces are left-right
    symmetric), and capture-condition changes, off by default: ``brightness`` (brightness
    and contrast factors in [1 - b, 1 + b]), ``gamma`` (in [1 - g, 1 + g]), Gaussian
    ``blur_p`` and ``jpeg_p`` (re-compression at quality 40-95), each a probability.
    """

    enabled: bool = setting(True, "augmentation at all (--no-augment turns every part off)", flag="--augment")
    affine: bool = setting(True, "the paper's rotation/shift/shear/zoom", flag="--aug-affine")
    rotation_degrees: float = 20.0
    width_shift: float = 0.2
    height_shift: float = 0.2
    shear_degrees: float = 11.5
    zoom: float = 0.2
    horizontal_flip_p: float = setting(0.5, "probability of a horizontal flip", flag="--aug-flip")
    brightness: float = setting(0.0, "brightness/contrast jitter: factors in [1-b, 1+b]", flag="--aug-brightness")
    gamma: float = setting(0.0, "gamma in [1-g, 1+g]", flag="--aug-gamma")
    blur_p: float = setting(0.0, "probability of a Gaussian blur (sigma 0.1-1.5 px)", flag="--aug-blur")
    jpeg_p: float = setting(0.0, "probability of JPEG re-compression (quality 40-95)", flag="--aug-jpeg")


@dataclass
class TrainConfig:
    data: str = required("preprocess output directory (or its crops/ folder)")
    model: str = setting("attacknet", "attacknet, resnet18, mobilenet_v3_small, shufflenet_v2_x0_5, minifasnet_v2, ...")
    epochs: int = setting(100, "at most (the paper's recipe); early stopping on dev loss")
    batch_size: int = setting(64, "per worker")
    lr: float = setting(1e-3, "Adam learning rate")
    patience: int = setting(10, "early stopping: epochs without a better dev loss")
    weight_decay: float = 0.0
    workers: int = setting(2, "Ray Train workers (DDP)")
    cpus_per_worker: int = setting(1, "CPUs each worker holds and uses as PyTorch threads (e.g. one worker per "
                                      "node with all its CPUs; CPUs for a GPU worker's input work)")
    stream: bool | None = setting(None, "stream the crops from Parquet every epoch, nothing held in the object "
                                        "store (default: when the decoded inputs would fill more than a quarter "
                                        "of it)", flag="--stream")
    shuffle_buffer: int = setting(1024, "streamed: rows each worker mixes before batching (the files' order is "
                                        "shuffled every epoch too)")
    use_gpu: bool | None = setting(None, "one GPU per worker (default: when the cluster has GPU nodes or its "
                                         "autoscaler can start them)", flag="--gpu")
    loss: str = setting("ce", "ce, am_softmax, ce+0.1*similarity, ...")
    am_margin: float = 0.35
    cosine_scale: float = 30.0
    augment: AugmentConfig = setting(factory=AugmentConfig)
    pretrained: str | None = setting(None, "'imagenet' (if cached locally), 'silentface' (MiniFASNet) or a weights file")
    freeze_norm: bool | None = setting(None, "keep BatchNorm statistics fixed while training (default: when starting "
                                             "from pretrained weights)")
    datasets: list[str] | None = setting(None, "comma-separated datasets of the data directory")
    dev_by: str = setting("auto", "how dev is carved from train where a dataset has no dev split "
                                  "(auto: by session when the data records sessions, else by subject)",
                          choices=DEV_RULES)
    dev_fraction: float = setting(0.2, "share of subjects/sessions/samples carved into dev")
    seed: int = setting(0, "seed of the dev carving and of training")
    threshold_rule: str = setting("eer", "eer, apcer:<target>, bpcer:<target> or a fixed number, chosen on dev")
    cross_data: str | None = setting(None, "another preprocess output (e.g. another database) scored after "
                                           "training at the dev threshold: the generalisation report")
    experiment: str = setting("raypipe", "MLflow experiment")
    run_name: str | None = setting(None, "MLflow run name")
    register: str | None = setting(None, "registered model name")
    promote: bool = setting(False, "move the 'champion' alias to the new version if its dev HTER is no worse "
                                   "than the champion's (same dev rule)")
    force: bool = setting(False, "with --promote: promote even when the gate refuses (worse or incomparable dev HTER)")
    storage_path: str | None = setting(None, "Ray Train checkpoints: local, NFS, s3://, gs:// (default: data/ray_results)")
    max_failures: int = 2
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else data/mlflow.db)")
    resume: bool = setting(False, "continue the experiment's latest run that stopped (of --run-name, if given) "
                                  "from its last checkpoint in --storage-path, into the same MLflow run")

    def resolved_freeze_norm(self) -> bool:
        return bool(self.pretrained) if self.freeze_norm is None else self.freeze_norm


@dataclass
class RegisterPretrainedConfig:
    """A published model registered without training (zero-shot), optionally calibrated:
    its threshold chosen on the dev split of the user's data instead of the published 0.5."""

    model: str = setting("minifasnet_ensemble", "minifasnet_v2, minifasnet_v1se or minifasnet_ensemble")
    pretrained: str = setting("silentface", "the published weights to load")
    register: str = setting("minifasnet", "registered model name")
    promote: bool = setting(False, "move the 'champion' alias to the new version if its dev HTER is no worse "
                                   "than the champion's (same dev rule)")
    force: bool = setting(False, "with --promote: promote even when the gate refuses (worse or incomparable dev HTER)")
    calibration_data: str | None = setting(None, "a preprocess output whose dev split chooses the threshold "
                                                 "(default: the published decision point 0.5)")
    datasets: list[str] | None = setting(None, "comma-separated datasets of the calibration data")
    threshold_rule: str = setting("eer", "eer, apcer:<target> or bpcer:<target>, applied to the calibration dev split")
    dev_by: str = setting("auto", "how dev is carved from the calibration data (as in training)", choices=DEV_RULES)
    dev_fraction: float = setting(0.2, "as in training")
    seed: int = setting(0, "as in training")
    experiment: str = setting("raypipe-pretrained", "MLflow experiment")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else data/mlflow.db)")


@dataclass
class ExportConfig:
    """A registered model as a portable ONNX file (``model.onnx`` + ``model.json``)."""

    model_uri: str = required("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a run id",
                              flag="--model")
    out: str = required("directory to write model.onnx and model.json to")
    data: str | None = setting(None, "a preprocess output whose crops re-check the export against PyTorch "
                                     "(only for models registered before raypipe exported ONNX)")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else data/mlflow.db)")


@dataclass
class EvaluateConfig:
    model_uri: str = required("models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/model or a run id", flag="--model")
    data: str = required("preprocess output directory")
    split: str = setting("test", "roles planned as in training", choices=("train", "dev", "test"))
    datasets: list[str] | None = setting(None, "comma-separated datasets of the data directory")
    threshold: str | None = setting(None, "the model's stored threshold unless given: a number, or a rule "
                                          "(eer, apcer:<target>) re-chosen on the data's dev split")
    video_score: str = setting("mean", "a video's score from its frames' spoof probabilities, for the "
                                       "video-level metrics of video datasets", choices=VIDEO_SCORE_RULES)
    experiment: str = setting("raypipe-eval", "MLflow experiment")
    log_to_mlflow: bool = setting(True, "log an evaluation run", flag="--mlflow")
    batch_size: int = setting(256, "scoring batch size")
    dev_by: str = setting("auto", "as in training, for split dev/train on carved datasets", choices=DEV_RULES)
    dev_fraction: float = setting(0.2, "as in training, for split dev/train on carved datasets")
    seed: int = setting(0, "as in training")
    out: str | None = setting(None, "also write the metrics JSON and plots here")
    gradcam_per_class: int = setting(4, "Grad-CAM crops per class (0 = none)", flag="--gradcam")
    device: str = setting("auto", "auto (CUDA when present), cpu, cuda, cuda:1, ...")
    actors: int = setting(0, "score on a Ray Data actor pool of up to this many actors, metrics reduced here "
                             "(0: score in this process, fastest for thousands of crops)")
    gpu: bool = setting(False, "with --actors: each scoring actor asks for a GPU (the autoscaler starts GPU nodes)")
    address: str | None = setting(None, "Ray cluster address for --actors (default: RAY_ADDRESS, else a local cluster)")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else data/mlflow.db)")


@dataclass
class CrossDatasetConfig:
    """Train on each dataset (and all fused), test on every dataset; ``train`` is the template
    of every model's training (its ``data``/``datasets``/``register`` are set per model)."""

    data: str = required("preprocess output directory holding every dataset")
    datasets: list[str] = required("comma-separated datasets of the data directory")
    out: str = setting("cross_dataset", "where the matrix (CSV, Markdown, JSON) is written")
    experiment: str = setting("raypipe-cross-dataset", "MLflow experiment")
    fused: bool = setting(True, "also train one model on all datasets together")
    log_to_mlflow: bool = True
    log_cells: bool = False  # also log one evaluation run (with plots) per cell
    batch_size: int = 256
    train: TrainConfig = field(default_factory=lambda: TrainConfig(data=""))


@dataclass
class BenchmarkConfig:
    """A published protocol end to end (``raypipe.protocols``): preprocess what is missing,
    train each fold, threshold on its dev set, score its test set(s); ``train`` is the
    template of every fold's training (its ``data``/``datasets``/``experiment`` are set per fold)."""

    protocol: str = required("oulu-p1 ... oulu-p4, ocim-O/C/I/M, nuaa-official, or a protocol YAML file")
    roots: list[str] = required("dataset roots in their native layout, NAME=PATH (e.g. "
                                "nuaa=../shared/datasets/nuaa); a bare PATH when the protocol uses one dataset")
    work: str = setting("data/benchmark", "preprocess outputs, one folder per set of datasets, reused when present")
    out: str = setting("data/benchmark-results", "results (Markdown, CSV, JSON) and plots go to OUT/<protocol>/")
    folds: list[str] | None = setting(None, "run only these folds or targets (e.g. 1,2 or M)")
    threshold: str | None = setting(None, "rule choosing the threshold on the protocol's dev set (default: the "
                                          "protocol's, eer): eer, apcer:<target>, bpcer:<target> or a number")
    video_score: str = setting("mean", "a video's score from its frames' spoof probabilities",
                               choices=VIDEO_SCORE_RULES)
    frames_per_video: int = setting(5, "evenly spaced frames preprocessed per video")
    experiment: str = setting("raypipe-benchmark", "MLflow experiment (parent run, a child run per fold)")
    concurrent_folds: int | None = setting(None, "folds trained side by side, each in a Ray task (default: as "
                                                 "many trainings as the cluster can hold; 1: one after another "
                                                 "on the driver)")
    dry_run: bool = setting(False, "list each fold's datasets and samples per split, then stop (nothing "
                                   "preprocessed or trained)")
    log_to_mlflow: bool = True
    batch_size: int = 256  # scoring
    train: TrainConfig = field(default_factory=lambda: TrainConfig(data=""))


@dataclass
class PipelineConfig:
    """preprocess -> train -> evaluate -> register + promote; the stages' own configs, nested.

    ``train.data`` is the preprocess output (set by :func:`pipeline_config`)."""

    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate_experiment: str | None = None  # default: "<train.experiment>-eval"
    address: str | None = None


def pipeline_config(preprocess: PreprocessConfig, train: TrainConfig, address: str | None = None) -> PipelineConfig:
    """A pipeline whose training reads what its preprocessing writes."""
    train.data = preprocess.out
    return PipelineConfig(preprocess=preprocess, train=train, address=address)


@dataclass
class DemoConfig:
    dataset: str = setting("demo", "'demo' (built in) or a dataset adapter name")
    root: str | None = setting(None, "dataset root when --dataset is not 'demo'")
    work_dir: str = setting("data/demo", "crops, MLflow store and checkpoints go here")
    model: str = setting("auto", "model to train; auto: MiniFASNet V2 fine-tuned from the published weights "
                                 "when they are available, else AttackNet from scratch")
    epochs: int = setting(30, "at most; early stopping on dev loss usually ends it sooner")
    workers: int = setting(2, "Ray Train workers")
    limit: int | None = setting(None, "preprocess only N inputs")
    serve: bool = setting(True, "start Serve and ask it about one image")
    port: int = setting(8000, "Serve HTTP port")
    address: str | None = setting(None, "Ray cluster address (default: RAY_ADDRESS or a local cluster)")
