"""What the paper experiments share: output folder, device, MLflow parent run, training with a child run, test
slices of held-out subjects, per-subject metrics and the report header.

Test slices are chosen as in the method comparison (:mod:`pipeline.compare`): every ``slice_every``-th axial slice
of each test subject whose head mask covers at least ``min_head`` of it. Metrics per subject are those of
:func:`pipeline.compare.evaluation.subject_metrics`: PSNR pooled over all evaluated slices of the subject and SSIM
averaged over them, over the whole slices (``*_image``) and inside the head mask (``*_head``); tables give the mean
and standard deviation over subjects.
"""

from __future__ import annotations

import datetime
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.compare.evaluation import load_volumes, subject_metrics
from pipeline.compare.run import check_output_dir, hardware, resolve_device, save_weights
from pipeline.compare.tracking import ComparisonTracker, default_tracking_uri
from pipeline.data import load_manifest
from pipeline.data.loaders import axial_slices
from pipeline.experiments.config import ExperimentConfig
from pipeline.networks import DiffNet, residual_unet
from pipeline.training import Degradation, SliceBank, train_network

METRICS = ("psnr_image", "psnr_head", "ssim_image", "ssim_head")
PAPER = "Arridge & Hauptmann, Networks for Nonlinear Diffusion Problems in Imaging, JMIV 2020 (arXiv:1811.12084)"


def network_label(name: str, unet_preset: str = "small") -> str:
    return {"diffnet_paper": "DiffNet (paper)", "unet": f"residual U-Net ({unet_preset})"}.get(name, name)


def build_network(name: str, unet_preset: str = "small", seed: int = 0) -> torch.nn.Module:
    """The untrained 2D network, its initial weights drawn with ``seed`` (reproducible whatever ran before)."""
    torch.manual_seed(seed)
    if name == "diffnet_paper":
        return DiffNet.paper(2)
    if name == "unet":
        return residual_unet(unet_preset, 2)
    raise ValueError(f"unknown network {name!r}")


def parameters(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


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
        entries = load_manifest(self.config.manifest, split, self.config.data_root)[:limit]
        if not entries:
            raise ValueError(f"{self.config.manifest} has no {split} subjects")
        return entries

    def training_bank(self) -> SliceBank:
        """Every axial slice with enough head of the training subjects (``training.num_volumes`` of them)."""
        train = self.datalist("training", self.config.training.num_volumes)
        bank = SliceBank.from_datalist(train, self.config.evaluation.min_head)
        print(f"training data: {len(bank)} axial slices of {len(train)} training volumes", flush=True)
        return bank

    def test_volumes(self) -> list[dict]:
        return load_volumes(self.datalist("test", self.config.evaluation.num_subjects), "loading test volumes")

    def clean_slices(self, volume: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Clean evaluated slices and head masks ``(N, 1, H, W)`` of one loaded test volume."""
        ev = self.config.evaluation
        _, clean, mask = axial_slices([{**volume, "image": volume["label"]}], ev.slice_every, ev.min_head)
        return clean, mask

    def train(self, key: str, network: torch.nn.Module, bank: SliceBank, degrade: Degradation,
              params: dict | None = None) -> dict:
        """Train ``network`` with the config's budget (a child run ``train <key>`` logs the loss) and save its
        weights to ``models/<key>.pt``; returns :func:`train_network`'s result."""
        t = self.config.training
        log, finish = self.tracker.training_run(key, {"steps": t.steps, "batch_size": t.batch_size,
                                                      "patch_size": t.patch_size, "lr": t.lr,
                                                      "train_slices": len(bank), **(params or {})})
        result = train_network(network, bank, degrade, t.steps, t.batch_size, t.patch_size, t.lr, self.config.seed,
                               self.device, desc=f"training {key}", on_log=log)
        finish(result)
        print(f"trained {key} in {result['seconds']:.0f} s (final loss {result['final_loss']:.3g})", flush=True)
        save_weights(network, self.out / "models" / f"{key.replace(' ', '_').replace('=', '')}.pt")
        network.eval()
        return result

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
                f"slice with at least {ev.min_head:.0%} head ({slices} slices); PSNR pooled over a subject's "
                f"slices, SSIM averaged over them; over the whole slice (image) and inside the head mask (head); "
                f"mean ± std over subjects\n"
                + "".join(f"- {line}\n" for line in lines + self.notes) + "\n")


def training_budget(config: ExperimentConfig) -> str:
    t = config.training
    return (f"{t.steps} Adam steps x {t.batch_size} patches of {t.patch_size}x{t.patch_size} per network "
            f"(lr {t.lr:g}, cosine), seed {config.seed}")


def subject_seed(seed: int, subject: str, *salt) -> int:
    """A stable per-subject seed (independent of the order of subjects and of the Python hash seed)."""
    return (seed * 1_000_003 + zlib.crc32("/".join([subject, *map(str, salt)]).encode())) % 2**31


def metrics_row(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, **keys) -> dict:
    return {**keys, **subject_metrics(out, clean, mask)}


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
