"""The comparison's report: per-subject and summary tables (CSV, Markdown) and figures (PNG), written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from pipeline.compare.methods import LABELS  # noqa: E402
from pipeline.figures import radiological, save_figure  # noqa: E402

METRICS = {"psnr_head": "PSNR head (dB)", "ssim_head": "SSIM head", "psnr_image": "PSNR image (dB)",
           "ssim_image": "SSIM image"}


def summarise(per_subject: pd.DataFrame, parameters: dict[str, int]) -> pd.DataFrame:
    """Mean and standard deviation over subjects of every metric, the median seconds per volume and the parameter
    count, one row per (method, noise, level[, sigma]), in the order methods were given; ``sigma`` is "oracle" (true
    noise level given) or "blind" (estimated level given)."""
    keys = ["method", "noise", "level"] + (["sigma"] if "sigma" in per_subject else [])
    grouped = per_subject.groupby(keys, sort=False)
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
        by = ["noise", "sigma"] if "sigma" in summary else ["noise"]
        for key, block in summary.groupby(by, sort=False):
            noise, sigma = (key, None) if isinstance(key, str) else (key[0], key[1] if len(key) > 1 else None)
            cells = block.assign(cell=[f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in
                                       zip(block[f"{metric}_mean"], block[f"{metric}_std"].fillna(0))])
            table = cells.pivot(index="method", columns="level", values="cell").reindex(methods)
            table.columns = [f"{level:.0%}" for level in table.columns]
            table.index = [LABELS[m] for m in table.index]
            given = {"oracle": ", true noise level given (oracle)",
                     "blind": ", noise level estimated from each volume (blind)"}.get(sigma, "")
            parts.append(f"### {title}, {noise} noise{given} (mean ± std over subjects)\n\n{table.to_markdown()}\n")
    costs = summary.groupby("method", sort=False).agg(parameters=("parameters", "first"),
                                                      seconds=("seconds_per_volume", "median"),
                                                      subjects=("subjects", "max"))
    costs.index = [LABELS[m] for m in costs.index]
    costs = pd.DataFrame({"parameters": costs["parameters"].map("{:,}".format),
                          "s / volume (median)": costs["seconds"].map("{:.2f}".format),
                          "subjects": costs["subjects"]}, index=costs.index)
    parts.append(f"### Size, inference time and subjects evaluated\n\n"
                 f"{costs.to_markdown(colalign=('left', 'right', 'right', 'right'))}\n")
    return "\n".join(parts)


def common_subjects_table(per_subject: pd.DataFrame) -> str:
    """When some methods ran on fewer test subjects (``evaluation.subjects``), the blind PSNR in the head of every
    method on only the subjects that all of them ran on, so that the slow methods are compared pairwise; else ""."""
    blind = per_subject[per_subject["sigma"] == "blind"]
    methods = list(dict.fromkeys(blind["method"]))
    common = set.intersection(*(set(blind.loc[blind["method"] == m, "subject"]) for m in methods))
    if not common or len(common) == blind["subject"].nunique():
        return ""
    block = blind[blind["subject"].isin(common)]
    table = block.groupby(["method", "noise", "level"], sort=False)["psnr_head"].mean().unstack(["noise", "level"])
    table = table.reindex(methods)
    table.columns = [f"{noise} {level:.0%}" for noise, level in table.columns]
    table.index = [LABELS[m] for m in table.index]
    return (f"### PSNR head (dB), noise level estimated (blind), on the {len(common)} test subject(s) every method "
            f"ran on ({', '.join(sorted(common))})\n\n{table.to_markdown(floatfmt='.2f')}\n")


def quality_time_plot(summary: pd.DataFrame, noise: str, level: float) -> plt.Figure:
    """PSNR in the head (mean, error bar: std over subjects) against median seconds per volume, one point per
    method, at one condition with the estimated noise level (blind); the noisy input is the dashed line."""
    rows = summary[(summary["noise"] == noise) & np.isclose(summary["level"], level) & (summary["sigma"] == "blind")]
    if rows.empty:
        raise ValueError(f"no blind results at {noise} noise, level {level}")
    fig, ax = plt.subplots(figsize=(8, 6.5), layout="constrained")
    for i, row in enumerate(rows.itertuples()):
        if row.method == "noisy":
            ax.axhline(row.psnr_head_mean, color="grey", linestyle="--", label=f"{LABELS['noisy']}")
            continue
        marker, _ = STYLES[i % len(STYLES)]
        ax.errorbar(row.seconds_per_volume, row.psnr_head_mean, yerr=0 if pd.isna(row.psnr_head_std)
                    else row.psnr_head_std, color=f"C{i}", marker=marker, markersize=9, capsize=3, linestyle="none",
                    label=f"{LABELS[row.method]} ({row.subjects} subjects)")
        ax.annotate(f"{row.psnr_head_mean:.2f} dB, {row.seconds_per_volume:.1f} s",
                    (row.seconds_per_volume, row.psnr_head_mean), textcoords="offset points",
                    xytext=(8, 6 if i % 2 else -12), fontsize=8)  # alternate above / below: close points stay legible
    ax.set_xscale("log")
    ax.set_xlabel("seconds per whole volume (median, log scale)")
    ax.set_ylabel(METRICS["psnr_head"])
    ax.set_title(f"Quality and time, {noise} noise {level:.0%}, noise level estimated from each volume")
    ax.grid(alpha=0.3, which="both")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return fig


def quality_time_figure(summary: pd.DataFrame, noise: str, level: float, path: Path) -> Path:
    """Write :func:`quality_time_plot` as a PNG."""
    return save_figure(quality_time_plot(summary, noise, level), path)


# one (marker, dash pattern) per method, in the order methods were given; colours follow matplotlib's cycle
STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (6, 2))), ("P", (0, (3, 1, 1, 1))),
          ("X", (0, (1, 1))), ("*", (0, (8, 2, 1, 2)))]


def metrics_plot(summary: pd.DataFrame) -> plt.Figure:
    """PSNR and SSIM inside the head against noise level, one line per method (error bars: std over subjects), one
    row per noise model. Each method has its own colour, marker and dash pattern, and its points are shifted a little
    sideways so that methods with close values do not hide each other; the x ticks are the evaluated levels."""
    noises = list(dict.fromkeys(summary["noise"]))
    methods = list(dict.fromkeys(summary["method"]))
    levels = np.round(100 * np.sort(summary["level"].unique()), 6)
    spacing = np.diff(levels).min() if len(levels) > 1 else 1.0
    shift = 0.2 * spacing / max(len(methods) - 1, 1)  # all methods together span a fifth of the closest levels' gap
    fig, axes = plt.subplots(len(noises), 2, figsize=(11, 4 * len(noises) + 0.8), squeeze=False,
                             layout="constrained")
    for row, noise in zip(axes, noises):
        for ax, metric in zip(row, ("psnr_head", "ssim_head")):
            for i, method in enumerate(methods):
                block = summary[(summary["noise"] == noise) & (summary["method"] == method)].sort_values("level")
                marker, dashes = STYLES[i % len(STYLES)]
                ax.errorbar(100 * block["level"] + (i - (len(methods) - 1) / 2) * shift, block[f"{metric}_mean"],
                            yerr=block[f"{metric}_std"].fillna(0), color=f"C{i}", marker=marker, linestyle=dashes,
                            capsize=3, label=LABELS[method])
            ax.set_xticks(levels, [f"{level:g} %" for level in levels])
            ax.set_xlabel(f"{noise} noise level (% of reference intensity)")
            ax.set_ylabel(METRICS[metric])
            ax.grid(alpha=0.3)
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(methods), 4))
    return fig


def metrics_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Write :func:`metrics_plot` as a PNG: the figure that compares the methods at every evaluated level."""
    return save_figure(metrics_plot(summary), path)


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


TILE = 3.5  # inches per tile: 385 px wide at save_figure's 110 dpi


def panel_plot(shown: dict, method_names: list[str], title: str, size: int = 32) -> plt.Figure:
    """One axial slice in the radiological convention (anterior up, the patient's right on the left), a column each
    for the clean slice, the noisy input and every method's output. Rows: the whole slice (the yellow box marks the
    zoomed window), a zoom on the most detailed ``size`` x ``size`` window inside the head, and the residual
    (image - clean); under the clean slice, the residuals' colour scale.

    ``shown`` holds ``(1, H, W)`` slices of a RAS-oriented volume under ``"clean"``, ``"mask"``, ``"noisy"`` and
    each method's name (as :func:`pipeline.compare.evaluation.evaluate` returns them)."""
    names = ["clean", "noisy"] + [m for m in method_names if m != "noisy"]
    images = {name: radiological(shown[name][0].numpy()) for name in names}
    labels = {**LABELS, "clean": "clean (reference)"}
    clean = images["clean"]
    top, left = detail_box(clean, radiological(shown["mask"][0].numpy()), size)
    aspect = clean.shape[0] / clean.shape[1]
    fig, axes = plt.subplot_mosaic(
        [names, [f"{name} zoom" for name in names], ["scale"] + [f"{name} residual" for name in names[1:]]],
        figsize=(TILE * len(names), TILE * (2 * aspect + 1) + 1.2), height_ratios=[aspect, 1, aspect],
        layout="constrained")
    for name in names:
        whole, zoom = axes[name], axes[f"{name} zoom"]
        whole.imshow(images[name], cmap="gray", vmin=0, vmax=1.2)
        whole.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, edgecolor="yellow", lw=1.2))
        whole.set_title(labels[name])
        zoom.imshow(images[name][top:top + size, left:left + size], cmap="gray", vmin=0, vmax=1.2,
                    interpolation="nearest")
        zoom.set_title(f"zoom: {labels[name]}")
        if name != "clean":
            residual = axes[f"{name} residual"]
            shown_residual = residual.imshow(images[name] - clean, cmap="RdBu_r", vmin=-0.15, vmax=0.15)
            residual.set_title(f"residual: {labels[name]}")
    scale = axes["scale"]
    fig.colorbar(shown_residual, cax=scale.inset_axes([0.42, 0.05, 0.12, 0.9]),
                 label="residual = image - clean")
    for ax in axes.values():
        ax.axis("off")
    fig.suptitle(title)
    return fig


def visual_panel(shown: dict, method_names: list[str], path: Path, title: str, size: int = 32) -> Path:
    """Write :func:`panel_plot` as a PNG."""
    return save_figure(panel_plot(shown, method_names, title, size), path)
