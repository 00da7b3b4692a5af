"""Paper experiment 3 (Arridge & Hauptmann, Sec. 5.3, Figs. 11-13): what a trained DiffNet does at each noise level.

A DiffNet with the paper preset (5 layers, free 5-point stencil) is loaded from ``interpretation.checkpoint`` (e.g.
``outputs/compare_full/models/diffnet_paper/model.pt``, written by the method comparison) or trained here by the
bundle's training workflow with the config's budget, noise-blind on ``interpretation.train_noises`` at
``level_range`` (the overrides ``train_noise`` and ``level_range``; the bundle's recipe is otherwise unchanged). It
then denoises the test slices at each of ``interpretation.levels`` (seeded noise on whole volumes), and
:meth:`~pipeline.networks.DiffNet.forward_with_filters` gives every layer's filter maps.

Filters and smoothing level. In free mode layer ``k`` updates the image as

    u_{k+1}(x) = u_k(x) + dt_k * sum_{j=0..4} f_{k,j}(x) * S_j u_k(x)

where ``S_0 u = u`` (centre) and ``S_1..S_4`` are the neighbours ``-x, +x, -y, +y`` (x, y: the first and second
array axes of the slice), and the five maps ``f_{k,j}`` are estimated by the layer's CNN from ``u_k``. The
**smoothing level** of layer ``k`` is the mean absolute sum of its filters,

    s_k = mean_x sum_{j=0..4} |f_{k,j}(x)|,

the mean taken over all voxels of a subject's evaluated slices (``smoothing_image``) or over its head-mask voxels
(``smoothing_head``), then averaged over test subjects. For a diffusion stencil ``f = c * [-4, 1, 1, 1, 1]``,
``sum_j |f_j| = 8 c`` is proportional to the local diffusivity ``c``, so ``s_k`` measures how strongly the layer
smooths (the paper's Fig. 13). As the filters and the learned time step are only determined up to their product,
the report also gives the **effective smoothing** ``|dt_k| * s_k`` and the time steps ``dt_k`` themselves
(:meth:`~pipeline.networks.DiffNet.time_steps`).

``s_k`` also counts the centre weight, which can act as a pointwise reaction (e.g. pulling the Rician noise floor of
the background to 0) rather than smoothing. Writing the update as

    sum_j f_{k,j} S_j u = (sum_{j=0..4} f_{k,j}) * u + sum_{j=1..4} f_{k,j} * (S_j u - u)

separates a reaction term (the signed **stencil sum**, ``stencil_sum``: 0 for a conservative diffusion) from a
diffusion whose conductances are the neighbour weights; the **neighbour conductance sum**
``d_k = mean_x sum_{j=1..4} f_{k,j}(x)`` (``diffusion``; ``4 c`` for the stencil above, > 0 smooths, < 0 sharpens)
is the smoothing without the reaction part.

Outputs in ``output_dir``: ``smoothing.csv`` (one row per noise level and layer), ``denoising.csv`` (PSNR/SSIM of the
noisy input and of DiffNet per level), ``per_subject.csv``, ``report.md``, ``smoothing_vs_level.png``,
``filters_<level>.png`` for each of ``figure_levels`` and, when trained here, ``models/diffnet_paper/`` (the bundle
training's outputs, ``model.pt`` the weights interpreted).
"""

from __future__ import annotations

import datetime
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from pipeline.atomic_write import write_text_atomic
from pipeline.compare.learned import load_learned
from pipeline.experiments.common import (Run, metric_cells, metrics_row, summarise, training_budget,
                                         training_subjects)
from pipeline.experiments.config import ExperimentConfig
from pipeline.figures import save_figure
from pipeline.networks import DiffNet
from pipeline.transforms import MRINoised

STENCIL = ("centre", "-x", "+x", "-y", "+y")


def budget_text(config: ExperimentConfig, loaded: bool) -> str:
    s = config.interpretation
    if loaded:
        return f"no training: DiffNet (paper preset) weights loaded from `{s.checkpoint}`"
    return (f"{training_budget(config, training_subjects(config))}; noise-blind: {'+'.join(s.train_noises)} noise "
            f"at {s.level_range[0]:.0%}-{s.level_range[1]:.0%} drawn per patch, validated on {s.noise} noise")


def filter_statistics(network: DiffNet, noisy: torch.Tensor, mask: torch.Tensor, device: torch.device,
                      chunk: int = 32, keep: int | None = None) -> tuple[torch.Tensor, dict, list | None]:
    """DiffNet's output for ``noisy`` ``(N, 1, H, W)`` and, per layer ``k``, the voxel means of ``sum_j |f_kj|``
    (over all voxels and inside ``mask``), of ``sum_j f_kj`` and of the neighbour sum ``sum_{j>=1} f_kj`` (over
    all voxels and inside ``mask``); with ``keep``, also the filter maps ``(5, H, W)`` of every layer for slice
    ``keep``."""
    network.eval()
    layers = len(network.layers)
    sums = torch.zeros(layers, 5, dtype=torch.float64)
    voxels, head, outputs, kept = 0, 0.0, [], None
    with torch.no_grad():
        for start in range(0, len(noisy), chunk):
            x, m = noisy[start:start + chunk].to(device), (mask[start:start + chunk, 0] > 0).to(device)
            out, filters = network.forward_with_filters(x)
            outputs.append(out.cpu())
            for k, f in enumerate(filters):
                magnitude = f.abs().sum(1)
                sums[k, 0] += magnitude.sum().double().cpu()
                sums[k, 1] += magnitude[m].sum().double().cpu()
                sums[k, 2] += f.sum(1).sum().double().cpu()
                conductance = f[:, 1:].sum(1)
                sums[k, 3] += conductance.sum().double().cpu()
                sums[k, 4] += conductance[m].sum().double().cpu()
            if keep is not None and start <= keep < start + len(x):
                kept = [f[keep - start].cpu() for f in filters]
            voxels += x[:, 0].numel()
            head += float(m.sum())
    stats = {"smoothing_image": (sums[:, 0] / voxels).tolist(), "smoothing_head": (sums[:, 1] / max(head, 1)).tolist(),
             "stencil_sum_image": (sums[:, 2] / voxels).tolist(), "diffusion_image": (sums[:, 3] / voxels).tolist(),
             "diffusion_head": (sums[:, 4] / max(head, 1)).tolist()}
    out = torch.cat(outputs)
    if not torch.isfinite(out).all():
        raise FloatingPointError("DiffNet produced NaN/Inf on the test slices")
    return out, stats, kept


def run_interpretation(config: ExperimentConfig) -> dict:
    """Run the experiment; returns ``{"summary", "table", "files", "tracking_uri", "minutes"}``."""
    s = config.interpretation
    loaded = bool(s.checkpoint) and Path(s.checkpoint).is_file()
    budget = budget_text(config, loaded)
    run = Run.start(config, budget, {"checkpoint": s.checkpoint if loaded else "none (trained here)"})
    with run.tracker.failed_on_error():
        if loaded:
            network = load_learned("diffnet_paper", s.checkpoint, run.device, noise_map=False).network
            modified = datetime.datetime.fromtimestamp(Path(s.checkpoint).stat().st_mtime)
            source = f"weights loaded from `{s.checkpoint}` (written {modified:%Y-%m-%d %H:%M})"
            print(f"interpreting DiffNet {source}", flush=True)
        else:
            if s.checkpoint:
                run.notes.append(f"checkpoint `{s.checkpoint}` not found: trained here instead")
                print(f"note: checkpoint {s.checkpoint} not found, training one", flush=True)
            trained = run.train("diffnet_paper", "diffnet_paper",
                                {"noises": "+".join(s.train_noises), "level_range": str(s.level_range)},
                                train_noise=list(s.train_noises), level_range=list(s.level_range), noise=s.noise)
            network = trained.network
            source = f"trained here by the bundle's training workflow, saved to `{trained.checkpoint}`"
        if not isinstance(network, DiffNet):
            raise ValueError(f"the bundle's diffnet_paper network is a {type(network).__name__}, not a DiffNet")
        time_steps = network.time_steps().detach().cpu().tolist()
        volumes = run.test_volumes()
        rows, smoothing_rows, shown, num_slices = [], [], {}, 0
        for level in s.levels:
            noise = MRINoised(source_key="label", target_key="image", noise=s.noise, level=level, seed=config.seed + 1)
            for i, (subject, noisy, clean, mask) in enumerate(run.test_slices(volumes, [noise])):
                keep = len(noisy) // 2 if i == 0 and level in s.figure_levels else None
                out, stats, kept = filter_statistics(network, noisy, mask, run.device, keep=keep)
                num_slices += len(noisy) if level == s.levels[0] else 0
                rows.append(metrics_row(noisy, clean, mask, method="noisy", level=level, subject=subject))
                rows.append(metrics_row(out, clean, mask, method="diffnet_paper", level=level, subject=subject))
                for k in range(len(time_steps)):
                    smoothing_rows.append({"level": level, "layer": k + 1, "subject": subject,
                                           **{name: values[k] for name, values in stats.items()}})
                if kept is not None:
                    shown[level] = {"clean": clean[keep, 0], "noisy": noisy[keep, 0], "output": out[keep, 0],
                                    "filters": kept}
        per_subject = pd.DataFrame(rows)
        denoising = summarise(per_subject, ["method", "level"])
        per_layer = pd.DataFrame(smoothing_rows)
        smoothing = per_layer.groupby(["level", "layer"], sort=False).agg(
            smoothing_image_mean=("smoothing_image", "mean"), smoothing_image_std=("smoothing_image", "std"),
            smoothing_head_mean=("smoothing_head", "mean"), smoothing_head_std=("smoothing_head", "std"),
            stencil_sum_image_mean=("stencil_sum_image", "mean"), diffusion_image_mean=("diffusion_image", "mean"),
            diffusion_head_mean=("diffusion_head", "mean"), diffusion_head_std=("diffusion_head", "std"),
            subjects=("subject", "nunique")).reset_index()
        smoothing.insert(0, "noise", s.noise)
        smoothing.insert(3, "time_step", [time_steps[k - 1] for k in smoothing["layer"]])
        smoothing["effective_smoothing_image_mean"] = smoothing["time_step"].abs() * smoothing["smoothing_image_mean"]
        files = {"smoothing": run.out / "smoothing.csv", "denoising": run.out / "denoising.csv",
                 "per_subject": run.out / "per_subject.csv", "report": run.out / "report.md",
                 "figure": run.out / "smoothing_vs_level.png"}
        write_text_atomic(files["smoothing"], smoothing.to_csv(index=False))
        write_text_atomic(files["denoising"], denoising.to_csv(index=False))
        write_text_atomic(files["per_subject"], per_subject.merge(
            per_layer.pivot_table(index=["level", "subject"], columns="layer",
                                  values="smoothing_image").add_prefix("smoothing_image_layer").reset_index(),
            on=["level", "subject"], how="left").to_csv(index=False))
        smoothing_figure(smoothing, files["figure"], s.noise)
        for level, images in shown.items():
            files[f"filters_{level:g}"] = filter_figure(images, time_steps, run.out / f"filters_{level:g}.png",
                                                        f"DiffNet filters, {s.noise} noise {level:.0%}, first test "
                                                        f"subject, middle evaluated slice")
        table = markdown_tables(smoothing, denoising, time_steps)
        header = run.header(
            "Interpreting DiffNet: filters and smoothing level against noise level", budget,
            [f"network: DiffNet paper preset, {source}",
             f"test noise: {s.noise}, levels {', '.join(f'{lv:.0%}' for lv in s.levels)}, seeded per volume",
             "smoothing level of layer k: s_k = mean over voxels x of sum_j |f_kj(x)|, the absolute sum of the "
             "layer's 5-point stencil (centre, -x, +x, -y, +y), over the whole slices (image) or the head mask "
             "(head), mean over subjects; effective: |dt_k| * s_k",
             "s_k includes the centre weight; the update splits into a reaction (stencil sum sum_j f_kj, 0 for a "
             "conservative diffusion) and a diffusion with the neighbour weights as conductances: the neighbour "
             "conductance sum d_k = mean_x sum_{j=1..4} f_kj(x) (> 0 smooths, < 0 sharpens) is the smoothing "
             "without the reaction part",
             "paper (Figs. 11-13): a denoising DiffNet's filter maps per layer and their smoothing level against "
             "the noise level; compare the trend per layer, not the values (other data, training and scale)"],
            len(volumes), num_slices)
        write_text_atomic(files["report"], header + table)
        for level in s.levels:
            block = smoothing[smoothing["level"] == level]
            metrics = {f"{name}_layer{int(k)}": v for k, row in zip(block["layer"], block.itertuples())
                       for name, v in (("smoothing_image", row.smoothing_image_mean),
                                       ("smoothing_head", row.smoothing_head_mean),
                                       ("effective_smoothing_image", row.effective_smoothing_image_mean),
                                       ("stencil_sum_image", row.stencil_sum_image_mean),
                                       ("diffusion_image", row.diffusion_image_mean),
                                       ("diffusion_head", row.diffusion_head_mean))}
            for row in denoising[denoising["level"] == level].itertuples():
                metrics.update({f"{row.method}_{k}": v for k, v in row._asdict().items()
                                if k.endswith(("_mean", "_std")) and pd.notna(v)})
            artifacts = [files[f"filters_{level:g}"]] if f"filters_{level:g}" in files else []
            run.tracker.result_run("diffnet_paper", s.noise, level,
                                   {"source": source[:500], "subjects": len(volumes)}, metrics, artifacts)
        run.tracker.finish({"minutes": run.minutes(), **{f"time_step_layer{k + 1}": v
                                                         for k, v in enumerate(time_steps)}},
                           list(files.values()))
    return {"summary": smoothing, "denoising": denoising, "time_steps": time_steps, "table": table, "files": files,
            "tracking_uri": run.tracking_uri, "minutes": run.minutes()}


def markdown_tables(smoothing: pd.DataFrame, denoising: pd.DataFrame, time_steps: list[float]) -> str:
    parts = []
    for metric, title in (("smoothing_image_mean", "Smoothing level s_k (whole slices), mean over subjects"),
                          ("smoothing_head_mean", "Smoothing level s_k (inside the head), mean over subjects"),
                          ("effective_smoothing_image_mean", "Effective smoothing |dt_k| * s_k (whole slices)"),
                          ("stencil_sum_image_mean", "Reaction: mean stencil sum (whole slices; 0 = conservative)"),
                          ("diffusion_head_mean", "Diffusion: neighbour conductance sum d_k (inside the head)"),
                          ("diffusion_image_mean", "Diffusion: neighbour conductance sum d_k (whole slices)")):
        table = smoothing.pivot(index="layer", columns="level", values=metric)
        table.columns = [f"{lv:.0%}" for lv in table.columns]
        table.index = [f"layer {k}" for k in table.index]
        if metric == "smoothing_image_mean":
            table.insert(0, "time step dt_k", time_steps)
        parts.append(f"## {title}\n\n{table.to_markdown(floatfmt='.4g')}\n")
    cells = metric_cells(denoising)
    cells.insert(0, "level", [f"{lv:.0%}" for lv in denoising["level"]])
    cells.insert(0, "method", ["noisy input" if m == "noisy" else "DiffNet (paper)" for m in denoising["method"]])
    parts.append(f"## Denoising at each level (test subjects)\n\n{cells.to_markdown(index=False)}\n")
    return "\n".join(parts)


def smoothing_figure(smoothing: pd.DataFrame, path: Path, noise: str) -> Path:
    """Like the paper's Fig. 13: smoothing level against noise level, one line per layer (error bars: std over
    subjects), over the whole slices and inside the head; right: the neighbour conductance sum inside the head."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    panels = (("smoothing_image", "smoothing level s_k, whole slices"), ("smoothing_head", "smoothing level s_k, head"),
              ("diffusion_head", "neighbour conductance sum d_k, head"))
    for ax, (metric, label) in zip(axes, panels):
        for layer, block in smoothing.groupby("layer"):
            ax.errorbar(100 * block["level"], block[f"{metric}_mean"], yerr=block[f"{metric}_std"].fillna(0),
                        marker="o", capsize=3, label=f"layer {layer} (dt {block['time_step'].iloc[0]:.3g})")
        ax.set_xlabel(f"{noise} noise level (% of reference intensity)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("DiffNet per layer against noise level: s_k = mean_x sum_j |f_kj(x)|, d_k = mean_x sum_{j>=1} "
                 "f_kj(x) (test slices, mean over subjects)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def filter_figure(images: dict, time_steps: list[float], path: Path, title: str) -> Path:
    """Like the paper's Figs. 11-12: top row clean, noisy and DiffNet's output; then one row per layer with its five
    stencil maps (shared symmetric colour scale per row), their absolute sum and the neighbour conductance sum."""
    filters = images["filters"]
    columns = len(STENCIL) + 2
    fig, axes = plt.subplots(len(filters) + 1, columns, figsize=(2.2 * columns + 1.2, 1.9 * (len(filters) + 1)),
                             squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], ("clean", "noisy", "output")):
        ax.imshow(images[key].numpy(), cmap="gray", vmin=0, vmax=1.2, origin="lower")
        ax.set_title("DiffNet output" if key == "output" else key, fontsize=8)
    for k, f in enumerate(filters):
        f = f.numpy()
        limit = float(np.percentile(np.abs(f), 99)) or 1.0
        for j, name in enumerate(STENCIL):
            shown = axes[k + 1, j].imshow(f[j], cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
            axes[k + 1, j].set_title(f"layer {k + 1}: f {name}", fontsize=8)
        fig.colorbar(shown, ax=axes[k + 1, len(STENCIL) - 1], fraction=0.05, pad=0.02)
        magnitude = np.abs(f).sum(0)
        total = axes[k + 1, -2].imshow(magnitude, cmap="magma", vmin=0,
                                       vmax=float(np.percentile(magnitude, 99)) or 1.0, origin="lower")
        axes[k + 1, -2].set_title(f"sum |f| (mean {magnitude.mean():.3g}), dt {time_steps[k]:.3g}", fontsize=7)
        fig.colorbar(total, ax=axes[k + 1, -2], fraction=0.05, pad=0.02)
        conductance = f[1:].sum(0)
        bound = float(np.percentile(np.abs(conductance), 99)) or 1.0
        diffusion = axes[k + 1, -1].imshow(conductance, cmap="PuOr_r", vmin=-bound, vmax=bound, origin="lower")
        axes[k + 1, -1].set_title(f"neighbour sum (mean {conductance.mean():.3g})", fontsize=7)
        fig.colorbar(diffusion, ax=axes[k + 1, -1], fraction=0.05, pad=0.02)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title + " (x: first array axis, vertical)", fontsize=9)
    return save_figure(fig, path)
