"""The comparison's report: per-subject and summary tables (CSV, Markdown) and figures (PNG), written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mpl_toolkits.axes_grid1.inset_locator import inset_axes, mark_inset  # noqa: E402

from pipeline.compare.methods import LABELS  # noqa: E402
from pipeline.figures import save_figure  # noqa: E402

METRICS = {"psnr_head": "PSNR head (dB)", "ssim_head": "SSIM head", "psnr_image": "PSNR image (dB)",
           "ssim_image": "SSIM image"}


def summarise(per_subject: pd.DataFrame, parameters: dict[str, int]) -> pd.DataFrame:
    """Mean and standard deviation over subjects of every metric, the median seconds per volume and the parameter
    count, one row per (method, noise, level), in the order methods were given."""
    grouped = per_subject.groupby(["method", "noise", "level"], sort=False)
    summary = grouped[list(METRICS)].agg(["mean", "std"])
    summary.columns = [f"{metric}_{stat}" for metric, stat in summary.columns]
    summary["seconds_per_volume"] = grouped["seconds_per_volume"].median()
    summary["subjects"] = grouped.size()
    summary = summary.reset_index()
    summary["parameters"] = summary["method"].map(parameters).fillna(0).astype(int)
    return summary


def markdown_tables(summary: pd.DataFrame) -> str:
    """One table per metric and noise model: methods by noise level, cells ``mean ± std``; then parameters and
    seconds per volume."""
    parts = []
    methods = list(dict.fromkeys(summary["method"]))
    for metric, title in METRICS.items():
        digits = 2 if metric.startswith("psnr") else 3
        for noise, block in summary.groupby("noise", sort=False):
            cells = block.assign(cell=[f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in
                                       zip(block[f"{metric}_mean"], block[f"{metric}_std"].fillna(0))])
            table = cells.pivot(index="method", columns="level", values="cell").reindex(methods)
            table.columns = [f"{level:.0%}" for level in table.columns]
            table.index = [LABELS[m] for m in table.index]
            parts.append(f"### {title}, {noise} noise (mean ± std over subjects)\n\n{table.to_markdown()}\n")
    costs = summary.groupby("method", sort=False).agg(parameters=("parameters", "first"),
                                                      seconds=("seconds_per_volume", "median"))
    costs.index = [LABELS[m] for m in costs.index]
    costs = pd.DataFrame({"parameters": costs["parameters"].map("{:,}".format),
                          "s / volume (median)": costs["seconds"].map("{:.2f}".format)}, index=costs.index)
    parts.append(f"### Size and inference time\n\n{costs.to_markdown(colalign=('left', 'right', 'right'))}\n")
    return "\n".join(parts)


def metrics_figure(summary: pd.DataFrame, path: Path) -> Path:
    """PSNR and SSIM inside the head against noise level, one line per method (error bars: std over subjects),
    one row per noise model."""
    noises = list(dict.fromkeys(summary["noise"]))
    fig, axes = plt.subplots(len(noises), 2, figsize=(11, 4 * len(noises)), squeeze=False)
    for row, noise in zip(axes, noises):
        for ax, metric in zip(row, ("psnr_head", "ssim_head")):
            for method, block in summary[summary["noise"] == noise].groupby("method", sort=False):
                ax.errorbar(100 * block["level"], block[f"{metric}_mean"], yerr=block[f"{metric}_std"].fillna(0),
                            marker="o", capsize=3, label=LABELS[method])
            ax.set_xlabel(f"{noise} noise level (% of reference intensity)")
            ax.set_ylabel(METRICS[metric])
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def detail_box(clean: np.ndarray, mask: np.ndarray, size: int = 32) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window inside the head with the most fine detail (largest mean
    gradient magnitude of the clean slice)."""
    gy, gx = np.gradient(clean)
    energy = np.hypot(gx, gy) * (mask > 0)
    h, w = clean.shape
    best, corner = -1.0, (0, 0)
    for top in range(0, max(h - size, 0) + 1, 4):
        for left in range(0, max(w - size, 0) + 1, 4):
            score = energy[top:top + size, left:left + size].mean()
            if score > best:
                best, corner = score, (top, left)
    return corner


def visual_panel(shown: dict, method_names: list[str], path: Path, title: str, size: int = 32) -> Path:
    """Top row: clean, noisy and every method's output with a zoomed inset on the most detailed part of the head;
    bottom row: residuals (image - clean)."""
    clean, mask = shown["clean"][0].numpy(), shown["mask"][0].numpy()
    top, left = detail_box(clean, mask, size)
    columns = ["clean", "noisy"] + [m for m in method_names if m != "noisy"]
    fig, axes = plt.subplots(2, len(columns), figsize=(2.6 * len(columns), 5.6), squeeze=False)
    for col, name in enumerate(columns):
        img = shown[name][0].numpy()
        ax = axes[0, col]
        ax.imshow(img, cmap="gray", vmin=0, vmax=1.2, origin="lower")
        ax.set_title("clean" if name == "clean" else LABELS[name], fontsize=8)
        zoom = inset_axes(ax, width="45%", height="45%", loc="lower right", borderpad=0.2)
        zoom.imshow(img, cmap="gray", vmin=0, vmax=1.2, origin="lower")
        zoom.set_xlim(left, left + size)
        zoom.set_ylim(top, top + size)
        zoom.set_xticks([])
        zoom.set_yticks([])
        mark_inset(ax, zoom, loc1=2, loc2=4, fc="none", ec="yellow", lw=0.8)
        residual = axes[1, col]
        shown_residual = residual.imshow(img - clean, cmap="RdBu_r", vmin=-0.15, vmax=0.15, origin="lower")
        residual.set_title("residual" if name != "clean" else "residual scale", fontsize=8)
        for a in (ax, residual):
            a.axis("off")
    fig.colorbar(shown_residual, ax=axes[1, :].tolist(), fraction=0.02)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
