"""What the paper experiments share: output folder, device, MLflow parent run, training by the bundle's workflow
with a child run, test slices of held-out subjects, per-subject metrics and the report header.

Every network is trained by the bundle's training workflow (``configs/train.yaml`` plus the network's method file,
run in-process by :func:`pipeline.compare.learned.train_learned`), the one training recipe of the project, with the
config's budget (:class:`pipeline.experiments.config.Training`) and the experiment's data as bundle overrides. The
networks are the paper's 1-channel ones: DiffNet's paper preset and the residual U-Net without a noise map.

Test slices are chosen as in the earlier slice-based comparison: every ``slice_every``-th axial slice of each test
subject whose head mask covers at least ``min_head`` of it, after the degradation (noise, Perona-Malik) was applied
to the whole volume with seed ``seed + 1`` (the bundle's validation uses ``seed``). Metrics per subject: PSNR pooled
over all evaluated slices of the subject and SSIM (2D) averaged over them, over the whole slices (``*_image``) and
inside the head mask (``*_head``); tables give the mean and standard deviation over subjects.
"""

from __future__ import annotations

import csv
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from pipeline.compare.evaluation import load_volumes
from pipeline.compare.learned import BUNDLE, data_overrides, load_learned, train_tracked
from pipeline.compare.run import check_output_dir, hardware, resolve_device
from pipeline.compare.tracking import ComparisonTracker, default_tracking_uri
from pipeline.data import load_manifest
from pipeline.data.loaders import axial_slices
from pipeline.experiments.config import ExperimentConfig
from pipeline.metrics import psnr, ssim_inside_and_whole

METRICS = ("psnr_image", "psnr_head", "ssim_image", "ssim_head")
PAPER = "Arridge & Hauptmann, Networks for Nonlinear Diffusion Problems in Imaging, JMIV 2020 (arXiv:1811.12084)"
RECIPE = ("learning_rate", "volumes_per_batch", "patches_per_volume", "roi_size")  # train.yaml ids in the budget text


def network_label(name: str, unet_preset: str = "small") -> str:
    return {"diffnet_paper": "DiffNet (paper)", "unet": f"residual U-Net ({unet_preset})"}.get(name, name)


def network_overrides(name: str, unet_preset: str = "small") -> dict:
    """Bundle overrides that make ``name`` the paper's 1-channel network (the U-Net's noise map off)."""
    return {"noise_map": False, **({"unet_preset": unet_preset} if name == "unet" else {})}


def bundle_recipe(overrides: dict | None = None) -> dict:
    """The budget ids of ``configs/train.yaml`` (:data:`RECIPE`), with ``overrides`` applied (read as plain YAML)."""
    train = yaml.safe_load((BUNDLE / "configs" / "train.yaml").read_text(encoding="utf-8"))
    return {key: (overrides or {}).get(key, train[key]) for key in RECIPE}


@dataclass
class Trained:
    """A network trained by the bundle's workflow: the module (weights of ``checkpoint``, on the run's device)."""

    network: torch.nn.Module
    checkpoint: Path
    seconds: float
    parameters: int


@dataclass
class Run:
    """One experiment run: its config, output folder, device, start time and MLflow tracker."""

    config: ExperimentConfig
    out: Path
    device: torch.device
    started: datetime.datetime
    tracker: ComparisonTracker
    tracking_uri: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, config: ExperimentConfig, budget: str, extra_params: dict | None = None) -> Run:
        started = datetime.datetime.now()
        out = Path(config.output_dir)
        check_output_dir(out)
        (out / "models").mkdir(exist_ok=True)
        device = resolve_device(config.device)
        uri = config.tracking_uri or default_tracking_uri()
        tracker = ComparisonTracker(uri, config.experiment, f"{config.name} {started:%Y-%m-%d %H:%M:%S}",
                                    {"config": config.as_dict(), "kind": config.kind, "hardware": hardware(),
                                     "budget": budget, **(extra_params or {})})
        return cls(config, out, device, started, tracker, uri)

    def minutes(self) -> float:
        return (datetime.datetime.now() - self.started).total_seconds() / 60

    def datalist(self, split: str, limit: int | None) -> list[dict]:
        """Manifest entries of ``split`` (the first ``limit``), with absolute paths."""
        entries = load_manifest(self.config.manifest, split, self.config.data_root)[:limit]
        if not entries:
            raise ValueError(f"{self.config.manifest} has no {split} subjects")
        return [{**e, "label": str(Path(e["label"]).resolve())} for e in entries]

    def train(self, key: str, network: str, params: dict | None = None, **overrides) -> Trained:
        """Train ``network`` (``"diffnet_paper"`` or ``"unet"``) with the bundle's training workflow and the config's
        budget; ``overrides`` (bundle config ids) give it the experiment's data. The outputs (``model.pt``, the
        epoch checkpoint, ``train_metrics.csv``, the executed config) go to ``models/<key>/``; the bundle's MLflow
        handlers log to a child run ``train <key> ...`` of the experiment's run. Returns the trained network."""
        c = self.config
        folder = self.out / "models" / key.replace(" ", "_").replace("=", "")
        settings = {**data_overrides(c.manifest, c.seed, self.device, c.data_root), **c.training.bundle_overrides(),
                    **network_overrides(network, c.unet_preset), **overrides}
        checkpoint, seconds = train_tracked(self.tracker, key, network, folder, params, **settings)
        learned = load_learned(network, checkpoint, self.device, **network_overrides(network, c.unet_preset))
        last = last_metrics(folder / "train_metrics.csv")
        print(f"trained {key} in {seconds:.0f} s (last loss {last.get('train_loss', float('nan')):.3g}, validation "
              f"PSNR head {last.get('val_psnr_head', float('nan')):.2f} dB)", flush=True)
        return Trained(learned.network, checkpoint, seconds, learned.parameters)

    def test_volumes(self) -> list[dict]:
        return load_volumes(self.datalist("test", self.config.evaluation.num_subjects), "loading test volumes")

    def test_slices(self, volumes: list[dict], degrade: Sequence) -> list[tuple]:
        """``[(subject, input, clean, mask)]``, slices ``(N, 1, H, W)`` of each test volume: the dictionary
        transforms ``degrade`` (e.g. seeded noise) turn the whole volume's ``"label"`` into ``"image"``, then the
        evaluated slices are taken."""
        ev, out = self.config.evaluation, []
        for volume in volumes:
            item = dict(volume)
            for transform in degrade:
                item = transform(item)
            out.append((volume["subject"], *axial_slices([item], ev.slice_every, ev.min_head)))
        return out

    def run_network(self, network: torch.nn.Module, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
        network.eval()
        with torch.no_grad():
            out = torch.cat([network(part.to(self.device)).cpu() for part in x.split(chunk)])
        if not torch.isfinite(out).all():
            raise FloatingPointError("a network produced NaN/Inf on the test slices")
        return out

    def header(self, title: str, budget: str, lines: list[str], subjects: int, slices: int) -> str:
        ev = self.config.evaluation
        return (f"# {title} (`{self.config.name}`)\n\n"
                f"Reproduces an experiment of {PAPER} on IXI T1 axial slices.\n\n"
                f"- date: {self.started:%Y-%m-%d %H:%M}, wall time {self.minutes():.1f} min\n"
                f"- hardware: {hardware()}\n"
                f"- budget: {budget}\n"
                f"- test: {subjects} test subjects of `{self.config.manifest}`, every {ev.slice_every}th axial "
                f"slice with at least {ev.min_head:.0%} head ({slices} slices), degraded as whole volumes (seed "
                f"{self.config.seed + 1}); PSNR pooled over a subject's slices, SSIM averaged over them; over the "
                f"whole slice (image) and inside the head mask (head); mean ± std over subjects\n"
                + "".join(f"- {line}\n" for line in lines + self.notes) + "\n")


def training_subjects(config: ExperimentConfig) -> int:
    """How many training subjects the budget uses (``training.num_volumes`` of the manifest's, or all)."""
    return len(load_manifest(config.manifest, "training", config.data_root)[:config.training.num_volumes])


def last_metrics(path: Path) -> dict:
    """The last value of each metric in a bundle training's ``train_metrics.csv`` (empty if there is none)."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as f:
        return {row["name"]: float(row["value"]) for row in csv.DictReader(f)}


def steps_per_epoch(volumes: int, volumes_per_batch: int) -> int:
    return math.ceil(volumes / int(volumes_per_batch))


def training_budget(config: ExperimentConfig, volumes: int | None = None) -> str:
    """The budget in words: the bundle recipe, epochs, subjects and (given the number of training ``volumes`` per
    epoch) the Adam steps."""
    t = config.training
    r = bundle_recipe(t.overrides)
    per_step = f"{r['volumes_per_batch']} volumes x {r['patches_per_volume']} patches of " \
               f"{'x'.join(map(str, r['roi_size']))}"
    steps = f" = {t.epochs * steps_per_epoch(volumes, r['volumes_per_batch'])} Adam steps" if volumes else ""
    extra = {k: v for k, v in t.overrides.items() if k not in RECIPE}
    return (f"the bundle's training workflow (configs/train.yaml: Adam lr {float(r['learning_rate']):g} with a cosine "
            f"schedule, log-MSE loss, {per_step} per step{', ' + str(extra) if extra else ''}), {t.epochs} epochs "
            f"over {volumes or t.num_volumes or 'all'} training subjects{steps} per network; the last epoch's "
            f"weights are kept (validated on {t.num_val_volumes} validation subjects); seed {config.seed}")


def slice_metrics(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> dict:
    """PSNR pooled over all slices ``(N, 1, H, W)`` (the slices as one volume) and 2D SSIM averaged over them,
    inside the head mask and over the whole slices."""
    def volume(slices: torch.Tensor) -> torch.Tensor:  # (N, 1, H, W) -> (1, 1, H, W, N)
        return slices.permute(1, 2, 3, 0).unsqueeze(0)

    ssim_head, ssim_image = ssim_inside_and_whole(out, clean, mask)
    return {
        "psnr_head": psnr(volume(out), volume(clean), volume(mask)).item(),
        "ssim_head": ssim_head.mean().item(),
        "psnr_image": psnr(volume(out), volume(clean)).item(),
        "ssim_image": ssim_image.mean().item(),
    }


def metrics_row(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, **keys) -> dict:
    return {**keys, **slice_metrics(out, clean, mask)}


def summarise(per_subject: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean and standard deviation over subjects of every metric per group (groups in order of appearance)."""
    grouped = per_subject.groupby(by, sort=False, dropna=False)
    summary = grouped[list(METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["subjects"] = grouped.size()
    return summary.reset_index()


def cell(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f} ± {0 if np.isnan(std) else std:.{digits}f}"


def metric_cells(summary: pd.DataFrame) -> pd.DataFrame:
    """``mean ± std`` text per metric, for the Markdown tables."""
    return pd.DataFrame({name: [cell(m, s, 2 if name.startswith("PSNR") else 3)
                                for m, s in zip(summary[f"{metric}_mean"], summary[f"{metric}_std"])]
                         for metric, name in zip(METRICS, ("PSNR image (dB)", "PSNR head (dB)", "SSIM image",
                                                           "SSIM head"))}, index=summary.index)
