"""Paper experiment 2 (Arridge & Hauptmann, Sec. 5.2, Fig. 10): test PSNR against the size of the training set.

For each size in ``data_efficiency.sizes`` (``"all"``: every training slice), DiffNet (paper preset) and the residual
U-Net are trained with the same budget (steps, batch, seed) on that many axial slices of the training subjects, drawn
with :meth:`pipeline.training.SliceBank.subset` (the same seed, so the smaller sets are nested in the larger ones),
to remove one noise model at one level (default Rician 5 %, as :func:`pipeline.training.noise_degradation`). All are
evaluated on the same seeded noisy test slices, exactly as the method comparison adds noise (whole volumes,
:class:`pipeline.compare.evaluation.NoisySlices`). Sizes larger than the training set are dropped (and reported).

The paper (STL-10, inverting Perona-Malik) found DiffNet saturating after 500-1,000 training images while the U-Net
kept improving with more data; here every size gets the same number of steps, so the large sets are seen less often.

Outputs in ``output_dir``: ``summary.csv`` (one row per network and size, plus the noisy input), ``per_subject.csv``,
``report.md``, ``psnr_vs_size.png`` and ``models/<network>_n<size>.pt``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from pipeline.compare.evaluation import NoisySlices
from pipeline.atomic_write import write_text_atomic
from pipeline.figures import save_figure
from pipeline.experiments.common import (Run, build_network, metric_cells, metrics_row, network_label, parameters,
                                         summarise, training_budget)
from pipeline.experiments.config import ExperimentConfig
from pipeline.training import noise_degradation


def budget_text(config: ExperimentConfig) -> str:
    s = config.data_efficiency
    return (f"{training_budget(config)}, the same for every training-set size; {s.noise} noise at {s.level:.0%} "
            f"(training and test)")


def resolve_sizes(requested: list, available: int) -> tuple[list[int], list[int]]:
    """Sorted distinct sizes (``"all"`` = ``available``) and the requested sizes that exceed ``available``."""
    sizes = {available if size == "all" else int(size) for size in requested}
    return sorted(n for n in sizes if n <= available), sorted(n for n in sizes if n > available)


def run_data_efficiency(config: ExperimentConfig) -> dict:
    """Run the experiment; returns ``{"summary", "table", "files", "tracking_uri", "minutes"}``."""
    s = config.data_efficiency
    budget = budget_text(config)
    run = Run.start(config, budget)
    with run.tracker.failed_on_error():
        bank = run.training_bank()
        sizes, dropped = resolve_sizes(s.sizes, len(bank))
        if dropped:
            note = (f"sizes {dropped} exceed the {len(bank)} training slices and were dropped")
            print(f"note: {note}", flush=True)
            run.notes.append(note)
        test = NoisySlices(run.test_volumes(), config.seed, config.evaluation.slice_every,
                           config.evaluation.min_head)
        tests = [(volume["subject"], *slices) for volume, slices in test.per_volume(s.noise, s.level)]
        rows = [metrics_row(noisy, clean, mask, method="noisy", train_slices=0, subject=subject)
                for subject, noisy, clean, mask in tests]
        degrade = noise_degradation((s.noise,), (s.level, s.level))
        seconds, counts = {}, {}
        for n in sizes:
            subset = bank.subset(n, config.seed) if n < len(bank) else bank
            for name in s.networks:
                network = build_network(name, config.unet_preset, config.seed)
                counts[name] = parameters(network)
                result = run.train(f"{name} n={n}", network, subset, degrade, {"network": name, "noise": s.noise,
                                                                                 "level": s.level})
                seconds[name, n] = result["seconds"]
                for subject, noisy, clean, mask in tests:
                    rows.append(metrics_row(run.run_network(network, noisy), clean, mask, method=name,
                                            train_slices=n, subject=subject))
        per_subject = pd.DataFrame(rows)
        summary = summarise(per_subject, ["method", "train_slices"])
        summary["parameters"] = summary["method"].map(counts).fillna(0).astype(int)
        summary["train_seconds"] = [seconds.get((m, n)) for m, n in zip(summary["method"], summary["train_slices"])]
        files = {"summary": run.out / "summary.csv", "per_subject": run.out / "per_subject.csv",
                 "report": run.out / "report.md", "figure": run.out / "psnr_vs_size.png"}
        write_text_atomic(files["per_subject"], per_subject.to_csv(index=False))
        write_text_atomic(files["summary"], summary.to_csv(index=False))
        figure(summary, config.unet_preset, files["figure"],
               f"{s.noise} noise {s.level:.0%}: test PSNR against training-set size ({config.training.steps} steps "
               f"each)")
        table = markdown_table(summary, config.unet_preset)
        header = run.header(
            "Data efficiency: test PSNR against training-set size", budget,
            [f"training sets: {', '.join(map(str, sizes))} axial slices drawn from the {len(bank)} slices of the "
             f"training subjects (nested subsets, seed {config.seed}); every network sees the same patches and "
             f"noise for a given size",
             f"U-Net: the `{config.unet_preset}` preset ({counts.get('unet', 0):,} parameters) for a CPU budget",
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
