"""The comparison's learned methods are the bundle's own: the network and inferer of the bundle's configs, trained
by the bundle's training workflow (``configs/train.yaml`` plus the method's file, run in-process as a MONAI
``ConfigWorkflow``, the same ``SupervisedTrainer``, handlers and MLflow logging as ``monai.bundle run training``)
or loaded from a checkpoint it wrote, such as the shipped ``models/model.pt``. What the comparison measures is
therefore what the bundle trains and ships.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from pathlib import Path

import torch

from pipeline.bundle import read_bundle_config, run_bundle_workflow
from pipeline.compare.methods import Learned
from pipeline.handlers.checkpoint import load_weights

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "diffnet_mri_denoising"
METHOD_FILES = {
    "diffnet_guided": [],  # train.yaml itself: the shipped model (2.5D)
    "diffnet_2d": ["methods/diffnet_2d.yaml"],  # the 2D model shipped in 0.2.0
    "diffnet_paper": ["methods/diffnet_paper.yaml"],
    "diffnet_diffusion": ["methods/diffnet_diffusion.yaml"],
    "unet": ["methods/unet.yaml"],
}


def config_files(method: str, bundle: Path = BUNDLE) -> list[str]:
    """The bundle config files of a learned method: ``train.yaml`` and its method file."""
    if method not in METHOD_FILES:
        raise ValueError(f"{method!r} is not a learned method; choose one of {sorted(METHOD_FILES)}")
    return [str(bundle / "configs" / f) for f in ["train.yaml", *METHOD_FILES[method]]]


def load_learned(method: str, checkpoint: str | os.PathLike, device: torch.device, bundle: Path = BUNDLE,
                 **overrides) -> Learned:
    """The bundle's network of ``method`` with the weights of ``checkpoint``, and the bundle's volume inferer."""
    parser = read_bundle_config(config_files(method, bundle), bundle_root=str(bundle), **overrides)
    network = parser.get_parsed_content("network_def")
    load_weights(network, str(checkpoint))
    return Learned(method, network.to(device), parser.get_parsed_content("volume_inferer"), device)


def data_overrides(manifest: str | os.PathLike, seed: int, device: torch.device,
                   data_root: str | os.PathLike | None = None) -> dict:
    """The bundle config ids that point a training at a manifest, its data folder, a seed and a device."""
    return {"manifest": str(Path(manifest).resolve()), "seed": seed, "device": f"$torch.device('{device}')",
            "amp": device.type == "cuda", **({"dataset_dir": str(Path(data_root).resolve())} if data_root else {})}


def train_tracked(tracker, key: str, method: str, output_dir: str | os.PathLike, params: dict | None = None,
                  **overrides) -> tuple[Path, float]:
    """:func:`train_learned` logged into a child run ``train <key> (<time>-<random>)`` of ``tracker``'s parent
    run (``tracker``: a :class:`pipeline.compare.tracking.ComparisonTracker`); returns the checkpoint and the
    training's seconds, also logged as ``train_seconds``. A failed training closes its run as FAILED."""
    from monai.utils import set_determinism

    run_name = f"train {key} ({datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]})"
    run_id = tracker.training_run(run_name, {"network": method, **(params or {})})  # the bundle logs "method"
    tracking = {"tracking_uri": tracker.tracking_uri, "experiment_name": tracker.experiment, "run_name": run_name} \
        if run_id else {}
    print(f"training {key} with the bundle's training workflow -> {output_dir}", flush=True)
    start = time.perf_counter()
    try:
        checkpoint = train_learned(method, output_dir, **tracking, **overrides)
    except BaseException:
        tracker.end_training_run(run_id, {}, "FAILED")
        raise
    finally:
        set_determinism(seed=None)  # the workflow seeded this process
    seconds = time.perf_counter() - start
    tracker.end_training_run(run_id, {"train_seconds": seconds})
    return checkpoint, seconds


def train_learned(method: str, output_dir: str | os.PathLike, bundle: Path = BUNDLE, tracking_uri: str | None = None,
                  experiment_name: str | None = None, run_name: str | None = None, **overrides) -> Path:
    """Train ``method`` with the bundle's training workflow; returns the checkpoint it selected (``model.pt``, the
    best validation PSNR in the head). ``overrides`` are bundle config ids (``epochs``, ``num_train_volumes``, ...);
    with ``tracking_uri``, the run is logged to MLflow by the bundle's own handlers."""
    output_dir = Path(output_dir)
    settings = dict(bundle_root=str(bundle), output_dir=str(output_dir), **overrides)
    if tracking_uri:
        settings.update(tracking_uri=tracking_uri, **({"experiment_name": experiment_name} if experiment_name else {}),
                        **({"run_name": run_name} if run_name else {}))
    run_bundle_workflow(config_files(method, bundle), bundle / "configs" / "metadata.json", "train",
                        "mlflow" if tracking_uri else None, **settings)
    checkpoint = output_dir / "model.pt"
    if not checkpoint.is_file():
        raise RuntimeError(f"training {method} wrote no {checkpoint}: was validation run (epochs a multiple of "
                           f"val_interval)?")
    return checkpoint
