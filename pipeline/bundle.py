"""Small helpers the bundle configs call (``$pipeline.bundle.<name>(...)``): defaults, run names, checkpoints and
the inference datalist. Kept here, in Python, so the configs stay declarative and the logic is tested."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from pathlib import Path

from torch import nn

from pipeline.data.manifest import find_volumes, volume_stem
from pipeline.handlers.resume import epoch_checkpoints

RUN_NAME_FILE = "mlflow_run_name.txt"


def as_bool(value) -> bool:
    """A config flag as a bool. Command-line overrides arrive as text (``--resume true``), and the string
    ``"false"`` would otherwise count as true."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", "none", ""):
            return False
        raise ValueError(f"expected true or false, got {value!r}")
    return bool(value)


def default_dataset_dir(manifest: str | os.PathLike) -> str:
    """``$PIPELINE_DATA_ROOT`` if set, else the manifest's own ``data_root`` (relative to the manifest file)."""
    if os.environ.get("PIPELINE_DATA_ROOT"):
        return os.environ["PIPELINE_DATA_ROOT"]
    manifest = Path(manifest)
    root = json.loads(manifest.read_text(encoding="utf-8")).get("data_root", ".")
    return str((manifest.parent / root).resolve())


def default_tracking_uri(bundle_root: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a local SQLite store ``<bundle_root>/mlruns.db``."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str((Path(bundle_root) / "mlruns.db").resolve())


def run_name(method: str, workflow: str, output_dir: str | os.PathLike, resume: bool = False) -> str:
    """A unique MLflow run name ``<method>-<workflow>-<time>-<random>``.

    It is written to ``output_dir``; a resumed training reuses the name found there, so MONAI's ``MLFlowHandler``
    continues the interrupted (still unfinished) run instead of starting an unrelated one.
    """
    record = Path(output_dir) / f"{workflow}_{RUN_NAME_FILE}"
    if as_bool(resume) and record.is_file():
        return record.read_text(encoding="utf-8").strip()
    name = f"{method}-{workflow}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 logs to MLflow, so only it records
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(name + "\n", encoding="utf-8")
    return name


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``*checkpoint_epoch=N.pt`` written by the training's ``CheckpointSaver``, or None."""
    found = epoch_checkpoints(output_dir)
    return str(found[-1][1]) if found else None


def resume_checkpoint(output_dir: str | os.PathLike, resume: bool) -> str | None:
    """The checkpoint to resume from when ``resume`` is true; a clear error if there is none."""
    if not as_bool(resume):
        return None
    path = latest_checkpoint(output_dir)
    if path is None:
        raise FileNotFoundError(f"resume=true but no checkpoint '*checkpoint_epoch=N.pt' in {output_dir}")
    return path


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def inference_datalist(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None,
                       spatial_dims: int | None = None, max_memory_gb: float | None = None) -> list[dict]:
    """``[{"image": path}, ...]`` for a single volume file, a DICOM series folder, or a folder of volumes
    (NIfTI, MHA/MHD, DICOM series sub-folders).

    With ``output_dir``, refuses (before any work) when an output ``<name>_denoised.nii.gz`` would overwrite one of
    the inputs. With ``spatial_dims`` (the model's), also refuses when any input fails
    :func:`pipeline.data.check_volume_file` (header-level checks and the ``max_memory_gb`` budget), listing every
    bad input as ``<path>: <problem>``.
    """
    root = Path(dataset_dir)
    if root.is_file():
        items = [{"image": str(root)}]
    elif root.is_dir():
        volumes = find_volumes(root)
        if not volumes:
            raise FileNotFoundError(f"no NIfTI, MHA or DICOM volume found in {root}")
        items = [{"image": str(root / v)} for v in volumes]
    else:
        raise FileNotFoundError(f"dataset_dir {root} does not exist")
    if output_dir is not None:
        inputs = {Path(item["image"]).resolve() for item in items}
        for item in items:
            planned = (Path(output_dir) / (volume_stem(item["image"]) + "_denoised.nii.gz")).resolve()
            if planned in inputs:
                raise ValueError(f"output {planned} would overwrite an input file; choose another output_dir")
    if spatial_dims is not None:
        from pipeline.data.checks import VolumeError, check_volume_file

        problems = []
        for item in items:
            try:
                check_volume_file(item["image"], int(spatial_dims), max_memory_gb)
            except VolumeError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("\n".join(problems) + f"\n({len(problems)} of {len(items)} input(s) cannot be denoised: "
                             "fix or remove them, or run `python -m pipeline denoise`, which skips them)")
    return items


def inference_network(network: nn.Module, ckpt_path: str | os.PathLike, load_weights=True, device="cpu") -> nn.Module:
    """``network`` on ``device`` in eval mode, with the weights of ``ckpt_path`` when ``load_weights`` (a checkpoint
    that is a state dict or holds one under ``"model"``, loaded weights-only; a clear error naming the file)."""
    from pipeline.handlers.checkpoint import load_weights as load

    if as_bool(load_weights):
        load(network, str(ckpt_path))
        print(f"loaded weights from {ckpt_path}", flush=True)
    return network.to(device).eval()


def training_space_mb(network: nn.Module, kept_checkpoints: int = 1, margin_mb: float = 50.0) -> float:
    """Free disk space (MB) a training needs in ``output_dir``: ``kept_checkpoints`` epoch checkpoints (float32
    weights plus Adam's two moments each), one more being written before the oldest is removed, ``model.pt``, and
    ``margin_mb`` for logs, CSV files and the executed config."""
    weights_mb = count_parameters(network) * 4 / 2**20
    return margin_mb + weights_mb * (3 * (kept_checkpoints + 1) + 1)


def check_output_dir(output_dir: str | os.PathLike, min_free_mb: float = 0.0) -> str:
    """Creates ``output_dir`` if needed and checks, before any long work, that a file can be written in it and that
    its disk has at least ``min_free_mb`` MB free. Returns the folder; raises ``OSError`` with a clear message."""
    import shutil
    import tempfile

    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OSError(f"output_dir {path} is not writable ({err.strerror or err}): choose another --output_dir "
                      f"or fix its permissions") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < float(min_free_mb):
        raise OSError(f"not enough free disk space for output_dir {path}: {free_mb:.0f} MB free, "
                      f"{float(min_free_mb):.0f} MB needed (min_free_mb); free some space or choose another "
                      f"--output_dir")
    return str(path)


def _announce(files) -> None:
    import sys

    names = ", ".join(str(Path(f).resolve()) for f in files)
    print(f"evaluating bundle config {names} (bundle configs run code: use only bundles you trust)",
          file=sys.stderr, flush=True)


def run_bundle_workflow(config_files, meta_file, workflow_type: str = "train", tracking: str | None = None,
                        **overrides) -> None:
    """Run a bundle workflow in-process (MONAI ``ConfigWorkflow``: initialize, run, finalize), after printing (to
    stderr) which config files it evaluates, as :func:`read_bundle_config` does."""
    from monai.bundle import ConfigWorkflow

    files = [str(f) for f in config_files]
    _announce(files)
    workflow = ConfigWorkflow(files, meta_file=str(meta_file), logging_file=False, workflow_type=workflow_type,
                              tracking=tracking, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def read_bundle_config(config_file, **overrides):
    """A MONAI ``ConfigParser`` of bundle config file(s), after printing (to stderr) which file it evaluates.

    Bundle configs run code (``$`` expressions, ``_target_``). The project's commands read a bundle config only
    through this function, so that evaluating one, e.g. from a user-given ``--bundle`` folder, is never silent.
    ``overrides`` are set on the parser (``{"output_dir": ...}``).
    """
    from monai.bundle import ConfigParser

    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    _announce(files)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser
