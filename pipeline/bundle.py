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
    root = json.loads(manifest.read_text()).get("data_root", ".")
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
        return record.read_text().strip()
    name = f"{method}-{workflow}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 logs to MLflow, so only it records
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(name + "\n")
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


def inference_datalist(dataset_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> list[dict]:
    """``[{"image": path}, ...]`` for a single volume file, a DICOM series folder, or a folder of volumes
    (NIfTI, MHA/MHD, DICOM series sub-folders).

    With ``output_dir``, refuses (before any work) when an output ``<name>_denoised.nii.gz`` would overwrite one of
    the inputs.
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
    return items

