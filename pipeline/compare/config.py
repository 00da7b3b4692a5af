"""The comparison's configuration: a YAML file under ``configs/`` read into a checked :class:`CompareConfig`.

Plain YAML, no code: unlike MONAI bundle configs nothing in it is evaluated, so a comparison config from anywhere is
safe to run. Relative paths are relative to the current directory (run from the repository root). Unknown keys are
refused, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.transforms.noise import NOISE_MODELS

CLASSICAL = ("perona_malik", "nl_means", "bm4d", "ants", "dipy_nlmeans")
LEARNED = ("diffnet_paper", "diffnet_guided", "diffnet_2d", "diffnet_diffusion", "unet")
METHODS = ("noisy", *CLASSICAL, *LEARNED)


@dataclass
class Evaluation:
    noises: list[str] = field(default_factory=lambda: list(NOISE_MODELS))
    levels: list[float] = field(default_factory=lambda: [0.03, 0.05, 0.07, 0.09, 0.15])
    split: str = "test"  # "validation": an ablation or a model choice, never tuned on the test split
    first_subject: int = 0  # skip the split's first subjects (validation: those that picked the checkpoint)
    num_subjects: int | None = None  # None: every subject of the split from first_subject on (whole volumes)
    subjects: dict[str, int] = field(default_factory=dict)  # method -> only its first n test subjects (slow ones)
    oracle_subjects: int | None = None  # oracle runs (true level given) on the first n test subjects only; None: all
    panel_noise: str = "rician"
    panel_level: float = 0.05


@dataclass
class Training:
    """Learned methods without a checkpoint are trained by the bundle's training workflow (configs/train.yaml and
    the method's file): its recipe, with these settings (bundle config ids) changed for every learned method."""

    epochs: int = 80
    num_volumes: int | None = None  # None: every training subject
    num_val_volumes: int = 6  # validation subjects that pick the checkpoint
    # any other bundle config id, e.g. {learning_rate: 0.002}; also applied when a network is loaded (trained here or
    # from checkpoints), so ids that change the network, e.g. {context_slices: 2}, load the weights they trained
    overrides: dict = field(default_factory=dict)

    def bundle_overrides(self) -> dict:
        return {"epochs": self.epochs, "val_interval": self.epochs, "num_train_volumes": self.num_volumes,
                "num_val_volumes": self.num_val_volumes, **self.overrides}


@dataclass
class Tuning:
    """Classical methods are tuned per noise model and level on validation subjects."""

    num_volumes: int = 4
    perona_malik_file: str | None = None  # parameters tuned beforehand (bundle's models/perona_malik.json); None: tune
    nl_means_h: list[float] = field(default_factory=lambda: [0.6, 0.8, 1.0, 1.2])  # h / sigma candidates
    volumes: dict[str, int] = field(default_factory=dict)  # method -> tuned on its first n validation subjects only
    grids: dict[str, dict] = field(default_factory=dict)  # bm4d / ants / dipy_nlmeans -> {parameter: [candidates]}


@dataclass
class CompareConfig:
    name: str
    manifest: str = "data_manifests/ixi_t1.json"
    data_root: str | None = None
    output_dir: str | None = None  # None: outputs/<name>
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db
    experiment: str = "diffnet_mri_compare"
    seed: int = 0
    device: str = "auto"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    unet_preset: str = "small"
    checkpoints: dict[str, str] = field(default_factory=dict)  # learned method -> weights to load instead of training
    evaluation: Evaluation = field(default_factory=Evaluation)
    training: Training = field(default_factory=Training)
    tuning: Tuning = field(default_factory=Tuning)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise ValueError(f"methods must be a non-empty list from {METHODS}, got unknown {unknown}")
        for noise in self.evaluation.noises:
            if noise not in NOISE_MODELS:
                raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
        if not self.evaluation.levels or not all(0 < lv < 1 for lv in self.evaluation.levels):
            raise ValueError(f"evaluation levels must be fractions in (0, 1), got {self.evaluation.levels}")
        if self.unet_preset not in ("small", "paper"):
            raise ValueError(f"unet_preset must be 'small' or 'paper', got {self.unet_preset!r}")
        for where, counts in (("evaluation.subjects", self.evaluation.subjects),
                              ("tuning.volumes", self.tuning.volumes)):
            if not isinstance(counts, dict) or set(counts) - set(METHODS):
                raise ValueError(f"{where} maps method names {METHODS} to a number of subjects, got {counts!r}")
            if not all(isinstance(n, int) and n >= 1 for n in counts.values()):
                raise ValueError(f"{where}: every number of subjects must be a positive integer, got {counts}")
        if self.evaluation.split not in ("test", "validation"):
            raise ValueError(f"evaluation.split must be 'test' or 'validation', got {self.evaluation.split!r}")
        if not isinstance(self.evaluation.first_subject, int) or self.evaluation.first_subject < 0:
            raise ValueError(f"evaluation.first_subject must be a non-negative integer, got "
                             f"{self.evaluation.first_subject!r}")
        oracle = self.evaluation.oracle_subjects
        if oracle is not None and not (isinstance(oracle, int) and oracle >= 1):
            raise ValueError(f"evaluation.oracle_subjects must be a positive integer or null, got {oracle!r}")
        if not isinstance(self.tuning.grids, dict) or set(self.tuning.grids) - {"bm4d", "ants", "dipy_nlmeans"}:
            raise ValueError(f"tuning.grids are for bm4d, ants and dipy_nlmeans only, got {self.tuning.grids!r}")
        bad = sorted(set(self.checkpoints) - set(LEARNED))
        if bad:
            raise ValueError(f"checkpoints are for learned methods {LEARNED} only, got {bad}")
        if self.output_dir is None:
            self.output_dir = f"outputs/{self.name}"

    @property
    def learned(self) -> list[str]:
        return [m for m in self.methods if m in LEARNED]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    nested = {"evaluation": Evaluation, "training": Training, "tuning": Tuning}
    kwargs = {k: _build(nested[k], v, f"{where}.{k}") if k in nested else v for k, v in values.items()}
    return cls(**kwargs)


def read_yaml_config(path: str | Path, what: str = "comparison") -> dict:
    """The top-level mapping of a plain-YAML config (``name`` defaults to the file's stem), or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} config {path} not found")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    values.setdefault("name", path.stem)
    return values


def load_config(path: str | Path, **overrides) -> CompareConfig:
    """Read and check a comparison config; ``overrides`` (top-level keys, ``None`` ignored) replace its values."""
    values = read_yaml_config(path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return _build(CompareConfig, values, str(path))
    except TypeError as err:
        raise ValueError(f"{path}: {err}") from None
