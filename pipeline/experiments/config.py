"""A paper experiment's configuration: a YAML file under ``configs/`` read into a checked :class:`ExperimentConfig`.

Plain YAML, no code (nothing is evaluated, as in :mod:`pipeline.compare.config`). ``kind`` names the experiment
(``invert_pm``, ``data_efficiency`` or ``interpretation``); its own section (same name) holds its settings and the
sections of the other experiments are refused. Unknown keys are refused too, so a typo never silently falls back to
a default. Relative paths are relative to the current directory (run from the repository root).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.compare import config as compare_config
from pipeline.compare.config import read_yaml_config
from pipeline.transforms.noise import NOISE_MODELS

KINDS = ("invert_pm", "data_efficiency", "interpretation")
NETWORKS = ("diffnet_paper", "unet")


def _positive_int(value, where: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be a positive integer{' or null' if allow_none else ''}, got {value!r}")


def _fraction(value, where: str, low_open: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (0 < value < 1) if low_open else (0 <= value < 1)):
        raise ValueError(f"{where} must be a fraction in {'(0' if low_open else '[0'}, 1), got {value!r}")


def _networks(values, where: str) -> None:
    if not isinstance(values, list) or not values or any(v not in NETWORKS for v in values) \
            or len(set(values)) != len(values):
        raise ValueError(f"{where} must be a non-empty list of distinct networks from {NETWORKS}, got {values!r}")


@dataclass
class Evaluation:
    """Test subjects and slices, as in the method comparison."""

    num_subjects: int | None = None  # None: every test subject of the manifest
    slice_every: int = 6  # every n-th axial slice ...
    min_head: float = 0.25  # ... whose head mask covers at least this fraction of the slice

    def __post_init__(self) -> None:
        _positive_int(self.num_subjects, "evaluation.num_subjects", allow_none=True)
        _positive_int(self.slice_every, "evaluation.slice_every")
        _fraction(self.min_head, "evaluation.min_head", low_open=False)


# bundle config ids each experiment sets itself (its data, its networks, the run's folders and MLflow run): a budget
# override may not change them
EXPERIMENT_IDS = ("train_patches", "train#", "validate#", "noise_map", "train_noise", "level_range", "noise",
                  "val_level", "method", "network_def", "unet_preset", "manifest", "dataset_dir", "output_dir", "seed",
                  "device", "amp", "run_name", "run_params", "tracking_uri", "experiment_name", "epochs",
                  "val_interval", "num_train_volumes", "num_val_volumes")


@dataclass
class Training(compare_config.Training):
    """The budget of every network an experiment trains, in the bundle's terms: the networks are trained by the
    bundle's training workflow (``bundles/diffnet_mri_denoising/configs/train.yaml``: Adam, cosine schedule, log-MSE
    loss, ``volumes_per_batch`` x ``patches_per_volume`` patches of ``roi_size`` per step) for ``epochs`` epochs over
    ``num_volumes`` training subjects, as the method comparison's :class:`pipeline.compare.config.Training`. Only
    the last epoch is validated (on ``num_val_volumes`` validation subjects), so the checkpoint is the last epoch's
    weights. ``overrides``: other bundle config ids of the recipe (``learning_rate``, ``volumes_per_batch``,
    ``patches_per_volume``, ``roi_size``), not those the experiment sets itself."""

    epochs: int = 4
    num_volumes: int | None = None  # None: every training subject
    num_val_volumes: int = 2
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive_int(self.epochs, "training.epochs")
        _positive_int(self.num_volumes, "training.num_volumes", allow_none=True)
        _positive_int(self.num_val_volumes, "training.num_val_volumes")
        if not isinstance(self.overrides, dict) or not all(isinstance(k, str) for k in self.overrides):
            raise ValueError(f"training.overrides must map bundle config ids to values, got {self.overrides!r}")
        taken = sorted(k for k in self.overrides
                       if any(k == i or (i.endswith("#") and k.startswith(i)) for i in EXPERIMENT_IDS))
        if taken:
            raise ValueError(f"training.overrides: {taken} are set by the experiment itself (budget keys: epochs, "
                             f"num_volumes, num_val_volumes; experiment settings in its own section)")


@dataclass
class InvertPM:
    """Paper Sec. 5.1-5.2: undo ``num_iter`` Perona-Malik steps (rational diffusivity, dt = 1/4), each noise level."""

    num_iter: int = 4
    kappa: float = 0.1  # edge threshold on the normalised scale (reference intensity 1.0)
    noise_sigmas: list[float] = field(default_factory=lambda: [0.0, 0.01])  # Gaussian noise after the diffusion
    networks: list[str] = field(default_factory=lambda: list(NETWORKS))

    def __post_init__(self) -> None:
        _positive_int(self.num_iter, "invert_pm.num_iter")
        if isinstance(self.kappa, bool) or not isinstance(self.kappa, (int, float)) or not self.kappa > 0:
            raise ValueError(f"invert_pm.kappa must be a number > 0, got {self.kappa!r}")
        if not isinstance(self.noise_sigmas, list) or not self.noise_sigmas:
            raise ValueError(f"invert_pm.noise_sigmas must be a non-empty list, got {self.noise_sigmas!r}")
        for sigma in self.noise_sigmas:
            _fraction(sigma, "invert_pm.noise_sigmas entries", low_open=False)
        _networks(self.networks, "invert_pm.networks")


@dataclass
class DataEfficiency:
    """Paper Sec. 5.2, Fig. 10: test PSNR against the number of training slices, one noise model and level."""

    sizes: list = field(default_factory=lambda: [10, 50, 200, 1000, "all"])  # "all": every training slice
    noise: str = "rician"
    level: float = 0.05
    networks: list[str] = field(default_factory=lambda: list(NETWORKS))

    def __post_init__(self) -> None:
        if not isinstance(self.sizes, list) or not self.sizes:
            raise ValueError(f"data_efficiency.sizes must be a non-empty list, got {self.sizes!r}")
        for size in self.sizes:
            if size != "all":
                _positive_int(size, "data_efficiency.sizes entries (or 'all')")
        if self.noise not in NOISE_MODELS:
            raise ValueError(f"data_efficiency.noise must be one of {NOISE_MODELS}, got {self.noise!r}")
        _fraction(self.level, "data_efficiency.level")
        _networks(self.networks, "data_efficiency.networks")


@dataclass
class Interpretation:
    """Paper Sec. 5.3, Figs. 11-13: DiffNet's filters and its smoothing level against the noise level.

    ``checkpoint``: DiffNet (paper preset) weights to interpret. ``None``: train one with the ``training`` budget.
    A checkpoint that does not exist is an error, unless ``train_if_missing`` is true (then one is trained).
    """

    checkpoint: str | None = None
    train_if_missing: bool = False
    train_noises: list[str] = field(default_factory=lambda: list(NOISE_MODELS))  # when training here
    level_range: list[float] = field(default_factory=lambda: [0.02, 0.16])
    noise: str = "rician"  # noise model of the test slices
    levels: list[float] = field(default_factory=lambda: [0.01, 0.03, 0.05, 0.07, 0.09, 0.15])
    figure_levels: list[float] = field(default_factory=lambda: [0.01, 0.15])  # a filter figure for each

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            raise ValueError(f"interpretation.checkpoint must be a path or null, got {self.checkpoint!r}")
        if not isinstance(self.train_if_missing, bool):
            raise ValueError(f"interpretation.train_if_missing must be true or false, got {self.train_if_missing!r}")
        for noise in [*self.train_noises, self.noise]:
            if noise not in NOISE_MODELS:
                raise ValueError(f"interpretation noise must be one of {NOISE_MODELS}, got {noise!r}")
        if not isinstance(self.level_range, list) or len(self.level_range) != 2 \
                or not 0 < self.level_range[0] <= self.level_range[1] < 1:
            raise ValueError(f"interpretation.level_range must be [low, high] with 0 < low <= high < 1, "
                             f"got {self.level_range!r}")
        if not isinstance(self.levels, list) or not self.levels:
            raise ValueError(f"interpretation.levels must be a non-empty list, got {self.levels!r}")
        for level in self.levels:
            _fraction(level, "interpretation.levels entries")
        missing = [lv for lv in self.figure_levels if lv not in self.levels]
        if missing:
            raise ValueError(f"interpretation.figure_levels {missing} are not in interpretation.levels {self.levels}")


SECTIONS = {"invert_pm": InvertPM, "data_efficiency": DataEfficiency, "interpretation": Interpretation}


@dataclass
class ExperimentConfig:
    name: str
    kind: str
    manifest: str = "data_manifests/ixi_t1.json"
    data_root: str | None = None
    output_dir: str | None = None  # None: outputs/<name>
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db
    experiment: str = "diffnet_mri_paper"  # MLflow experiment
    seed: int = 0
    device: str = "auto"
    unet_preset: str = "small"
    evaluation: Evaluation = field(default_factory=Evaluation)
    training: Training = field(default_factory=Training)
    invert_pm: InvertPM | None = None  # the section of ``kind``; default settings when absent
    data_efficiency: DataEfficiency | None = None
    interpretation: Interpretation | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        others = [k for k in KINDS if k != self.kind and getattr(self, k) is not None]
        if others:
            raise ValueError(f"sections {others} do not belong to an experiment of kind {self.kind!r}")
        if getattr(self, self.kind) is None:
            setattr(self, self.kind, SECTIONS[self.kind]())
        if self.unet_preset not in ("small", "paper"):
            raise ValueError(f"unet_preset must be 'small' or 'paper', got {self.unet_preset!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.output_dir is None:
            self.output_dir = f"outputs/{self.name}"

    @property
    def settings(self):
        """The section of this experiment's kind."""
        return getattr(self, self.kind)

    def as_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in KINDS or k == self.kind}


NESTED = {"evaluation": Evaluation, "training": Training, **SECTIONS}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {k: _build(NESTED[k], v, f"{where}.{k}") if k in NESTED and v is not None else v
              for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required key is missing
        raise ValueError(f"{where}: {err}") from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def load_config(path: str | Path, checkpoint: str | None = None, **overrides) -> ExperimentConfig:
    """Read and check an experiment config.

    ``overrides`` (top-level keys, ``None`` ignored) replace its values. ``checkpoint`` (interpretation only) sets
    ``interpretation.checkpoint`` and requires the file to exist (``train_if_missing`` is turned off). A checkpoint
    that is missing while ``train_if_missing`` is false fails here, before any work starts.
    """
    path = Path(path)
    values = read_yaml_config(path, "experiment")
    if "kind" not in values:
        raise ValueError(f"{path}: 'kind' is missing; it must be one of {KINDS}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    if checkpoint is not None:
        if values.get("kind") != "interpretation":
            raise ValueError(f"{path}: --checkpoint applies to kind 'interpretation' only, not {values.get('kind')!r}")
        section = values.get("interpretation") or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path}.interpretation: expected a mapping, got {type(section).__name__}")
        values["interpretation"] = {**section, "checkpoint": checkpoint, "train_if_missing": False}
    config = _build(ExperimentConfig, values, str(path))
    if config.kind == "interpretation":
        s = config.interpretation
        if s.checkpoint and not s.train_if_missing and not Path(s.checkpoint).is_file():
            raise FileNotFoundError(f"{path}: interpretation.checkpoint {s.checkpoint} not found (give an existing "
                                    f"DiffNet paper-preset state dict, or set train_if_missing: true to train one)")
    return config
