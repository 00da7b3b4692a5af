"""Paper experiment 2 (Arridge & Hauptmann, Sec. 5.2, Fig. 10): test PSNR against the size of the training set.

For each size in ``data_efficiency.sizes`` (``"all"``: every training slice), DiffNet (paper preset) and the residual
U-Net (1 channel) are trained by the bundle's training workflow with the same budget and seed on exactly that many
axial slices of the training subjects (slices with at least ``evaluation.min_head`` head), to remove one noise model
at one level (default Rician 5 %, training and validation). The training sets are nested and spread over the
training subjects as evenly as possible (:func:`balanced_slice_order`); the bundle trains on them through the
overrides ``train#datalist`` (one entry per subject, ``{"label": path, "slices": [z, ...]}``) and
``train_patches=pipeline.data.degraded.slice_patches_2d`` (patches centred on head voxels of the listed slices
only). Every size gets the same number of Adam steps: each epoch draws as many entries (with replacement) as there
are training subjects (``train#dataloader#sampler``), so the large sets are seen less often, as in the paper's fixed
budget. All networks are evaluated on the same seeded noisy test slices (noise added to whole volumes). Sizes larger
than the training set are dropped (and reported).

The paper (STL-10, inverting Perona-Malik) found DiffNet saturating after 500-1,000 training images while the U-Net
kept improving with more data.

Outputs in ``output_dir``: ``summary.csv`` (one row per network and size, plus the noisy input), ``per_subject.csv``,
``report.md``, ``psnr_vs_size.png`` and ``models/<network>_n<size>/`` (the bundle training's outputs).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.atomic_write import write_text_atomic
from pipeline.data.loaders import MASK_KEY, volume_transforms
from pipeline.experiments.common import (Run, bundle_recipe, metric_cells, metrics_row, network_label,
                                         steps_per_epoch, summarise, training_budget, training_subjects)
from pipeline.experiments.config import ExperimentConfig
from pipeline.figures import save_figure
from pipeline.transforms import MRINoised


def budget_text(config: ExperimentConfig) -> str:
    s = config.data_efficiency
    return (f"{training_budget(config, training_subjects(config))}, the same for every training-set size; "
            f"{s.noise} noise at {s.level:.0%} (training and test)")


def resolve_sizes(requested: list, available: int) -> tuple[list[int], list[int]]:
    """Sorted distinct sizes (``"all"`` = ``available``) and the requested sizes that exceed ``available``."""
    sizes = {available if size == "all" else int(size) for size in requested}
    return sorted(n for n in sizes if n <= available), sorted(n for n in sizes if n > available)


def head_slices(datalist: list[dict], min_head: float) -> list[list[int]]:
    """Per entry, the axial slices whose head mask covers at least ``min_head`` of the slice."""
    load = volume_transforms("label")
    found = []
    for entry in tqdm(datalist, desc="finding training slices", unit="volume", leave=False):
        head = load(entry)[MASK_KEY].float().mean(dim=(0, 1, 2))
        found.append([int(z) for z in np.flatnonzero(head.numpy() >= min_head)])
    return found


def balanced_slice_order(slices: list[list[int]], seed: int) -> list[tuple[int, int]]:
    """All ``(volume, slice)`` pairs in the order training sets take them: the first ``n`` are the set of size
    ``n``, so the sets are nested, and round by round every volume gives one more slice (volumes in a random order,
    each volume's slices in a random order), so a set takes from each volume as evenly as possible."""
    rng = np.random.RandomState(seed)
    volumes = rng.permutation(len(slices))
    shuffled = {int(v): [int(z) for z in rng.permutation(slices[v])] for v in volumes}
    rounds = max((len(z) for z in slices), default=0)
    return [(int(v), shuffled[int(v)][r]) for r in range(rounds) for v in volumes if r < len(shuffled[int(v)])]


def slice_datalist(datalist: list[dict], chosen: list[tuple[int, int]]) -> list[dict]:
    """One entry per volume with chosen slices: ``{**entry, "slices": [z, ...]}`` (sorted)."""
    per_volume: dict[int, list[int]] = {}
    for v, z in chosen:
        per_volume.setdefault(v, []).append(z)
    return [{**datalist[v], "slices": sorted(zs)} for v, zs in sorted(per_volume.items())]


def bundle_overrides(config: ExperimentConfig, datalist: list[dict], draws: int) -> dict:
    """Bundle config ids: train on ``datalist``'s slices, ``draws`` entries per epoch (with replacement), at the
    experiment's noise model and level, and validate at it."""
    s = config.data_efficiency
    return {"train_patches": "pipeline.data.degraded.slice_patches_2d", "train#datalist": datalist,
            "train#dataloader#shuffle": False,
            "train#dataloader#sampler": {"_target_": "torch.utils.data.RandomSampler", "data_source": "@train#dataset",
                                         "replacement": True, "num_samples": draws},
            "train_noise": [s.noise], "level_range": [s.level, s.level], "noise": s.noise, "val_level": s.level}


def run_data_efficiency(config: ExperimentConfig) -> dict:
    """Run the experiment; returns ``{"summary", "table", "files", "tracking_uri", "minutes"}``."""
    s, ev = config.data_efficiency, config.evaluation
    budget = budget_text(config)
    run = Run.start(config, budget)
    with run.tracker.failed_on_error():
        train = run.datalist("training", config.training.num_volumes)
        order = balanced_slice_order(head_slices(train, ev.min_head), config.seed)
        print(f"training data: {len(order)} axial slices of {len(train)} training volumes", flush=True)
        sizes, dropped = resolve_sizes(s.sizes, len(order))
        if dropped:
            note = f"sizes {dropped} exceed the {len(order)} training slices and were dropped"
            print(f"note: {note}", flush=True)
            run.notes.append(note)
        tests = run.test_slices(run.test_volumes(), [MRINoised(source_key="label", target_key="image", noise=s.noise,
                                                                level=s.level, seed=config.seed + 1)])
        rows = [metrics_row(noisy, clean, mask, method="noisy", train_slices=0, subject=subject)
                for subject, noisy, clean, mask in tests]
        seconds, counts = {}, {}
        for n in sizes:
            overrides = bundle_overrides(config, slice_datalist(train, order[:n]), len(train))
            for name in s.networks:
                trained = run.train(f"{name} n={n}", name,
                                    {"train_noise": s.noise, "train_level": s.level, "train_slices": n}, **overrides)
                counts[name], seconds[name, n] = trained.parameters, trained.seconds
                for subject, noisy, clean, mask in tests:
                    rows.append(metrics_row(run.run_network(trained.network, noisy), clean, mask, method=name,
                                            train_slices=n, subject=subject))
        per_subject = pd.DataFrame(rows)
        summary = summarise(per_subject, ["method", "train_slices"])
        summary["parameters"] = summary["method"].map(counts).fillna(0).astype(int)
        summary["train_seconds"] = [seconds.get((m, n)) for m, n in zip(summary["method"], summary["train_slices"])]
        files = {"summary": run.out / "summary.csv", "per_subject": run.out / "per_subject.csv",
                 "report": run.out / "report.md", "figure": run.out / "psnr_vs_size.png"}
        write_text_atomic(files["per_subject"], per_subject.to_csv(index=False))
        write_text_atomic(files["summary"], summary.to_csv(index=False))
        steps = config.training.epochs * steps_per_epoch(len(train),
                                                         bundle_recipe(config.training.overrides)["volumes_per_batch"])
        figure(summary, config.unet_preset, files["figure"],
               f"{s.noise} noise {s.level:.0%}: test PSNR against training-set size ({steps} steps each)")
        table = markdown_table(summary, config.unet_preset)
        header = run.header(
            "Data efficiency: test PSNR against training-set size", budget,
            [f"training sets: {', '.join(map(str, sizes))} axial slices drawn from the {len(order)} slices with at "
             f"least {ev.min_head:.0%} head of the {len(train)} training subjects (nested subsets spread evenly "
             f"over the subjects, seed {config.seed}); patches are centred on head voxels of those slices only; every "
             f"network sees the same patches and noise for a given size",
             f"the same {steps} steps for every size: each epoch draws {len(train)} subjects' slice sets with "
             f"replacement",
             f"U-Net: the `{config.unet_preset}` preset ({counts.get('unet', 0):,} parameters, 1 input channel) for "
             f"a CPU budget",
             "train s: wall time of the bundle's training workflow (loading the data, training, validating)",
             "paper (Fig. 10, STL-10, inverting Perona-Malik with 1 % noise, trained to convergence): DiffNet "
             "saturates after 500-1,000 training images, the U-Net needs more data"], len(tests),
            sum(len(clean) for _, _, clean, _ in tests))
        write_text_atomic(files["report"], header + "## Test results\n\n" + table + "\n")
        for row in summary.itertuples():
            run.tracker.result_run(f"{row.method} n={row.train_slices}", s.noise, s.level,
                                   {"network": row.method, "train_slices": int(row.train_slices),
                                    "label": network_label(row.method, config.unet_preset),
                                    "parameters": int(row.parameters)},
                                   {k: v for k, v in row._asdict().items()
                                    if k.endswith(("_mean", "_std", "_seconds")) and pd.notna(v)},
                                   [files["figure"]])
        run.tracker.finish({"minutes": run.minutes()}, list(files.values()))
    return {"summary": summary, "table": table, "files": files, "tracking_uri": run.tracking_uri,
            "minutes": run.minutes()}


def markdown_table(summary: pd.DataFrame, unet_preset: str) -> str:
    table = metric_cells(summary)
    table.insert(0, "training slices", ["-" if m == "noisy" else str(n) for m, n in zip(summary["method"],
                                                                                         summary["train_slices"])])
    table.insert(0, "method", ["noisy input" if m == "noisy" else network_label(m, unet_preset)
                               for m in summary["method"]])
    table["train s"] = [f"{v:.0f}" if pd.notna(v) else "" for v in summary["train_seconds"]]
    return table.to_markdown(index=False) + "\n"


def figure(summary: pd.DataFrame, unet_preset: str, path: Path, title: str) -> Path:
    """PSNR over the whole slice and inside the head against training-set size (log x), one line per network;
    the noisy input as a dashed line; error bars: std over test subjects."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    noisy = summary[summary["method"] == "noisy"]
    for ax, metric, name in zip(axes, ("psnr_image", "psnr_head"), ("PSNR image (dB)", "PSNR head (dB)")):
        for method, block in summary[summary["method"] != "noisy"].groupby("method", sort=False):
            ax.errorbar(block["train_slices"], block[f"{metric}_mean"], yerr=block[f"{metric}_std"].fillna(0),
                        marker="o", capsize=3, label=network_label(method, unet_preset))
        if len(noisy):
            ax.axhline(noisy[f"{metric}_mean"].iloc[0], color="grey", linestyle="--", label="noisy input")
        ax.set_xscale("log")
        ax.set_xlabel("training-set size (axial slices)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
