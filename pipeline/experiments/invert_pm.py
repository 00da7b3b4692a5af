"""Paper experiment 1 (Arridge & Hauptmann, Sec. 5.1-5.2, Figs. 6-9, Table 1): invert Perona-Malik diffusion.

The forward model is :func:`pipeline.data.degraded.perona_malik_degradation`: ``invert_pm.num_iter`` explicit
Perona-Malik steps on every whole axial slice (rational diffusivity ``1 / (1 + (|grad u| / kappa)^2)``, dt = 1/4,
zero-Neumann) with edge threshold ``invert_pm.kappa`` on the normalised scale (reference intensity 1.0), then
Gaussian noise of each ``invert_pm.noise_sigmas`` (a fraction of the reference intensity; the paper's 1 % on [0, 1]
images). For every noise level, DiffNet (paper preset) and the residual U-Net (1 channel) are trained by the bundle's
training workflow with the same budget, seed and patches, to recover the clean slice: the overrides
``train_patches=pipeline.data.degraded.perona_malik_patches_2d`` (patches of the diffused slices, noise drawn per
patch) and ``validate#preprocessing=pipeline.data.degraded.perona_malik_eval_transforms`` (the validation subjects
degraded the same way, seeded), so the validation metrics logged to MLflow measure this task; only the last epoch is
validated, so the checkpoint is the last epoch's weights. The networks are evaluated on the test subjects' slices
degraded by the same operator (whole volumes, seeded noise). The degraded input itself is scored too.

Outputs in ``output_dir``: ``summary.csv`` (one row per method and noise level, with the paper's STL-10 PSNR
alongside), ``per_subject.csv``, ``report.md``, ``panel.png`` and ``models/<network>_sigma<level>/`` (the bundle
training's outputs: ``model.pt``, the epoch checkpoint, ``train_metrics.csv``).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.atomic_write import write_text_atomic
from pipeline.data.degraded import perona_malik_degradation
from pipeline.experiments.common import (Run, metric_cells, metrics_row, network_label, summarise, training_budget,
                                         training_subjects)
from pipeline.experiments.config import ExperimentConfig, InvertPM
from pipeline.figures import save_figure
from pipeline.metrics import psnr

# Arridge & Hauptmann, Table 1 (STL-10 test images, PSNR in dB), keyed by noise sigma
PAPER_PSNR = {0.0: {"diffnet_paper": 65.34, "unet": 61.08}, 0.01: {"diffnet_paper": 34.96, "unet": 35.27}}


def sigma_text(sigma: float) -> str:
    return "none" if sigma == 0 else f"{sigma:.0%}" if 100 * sigma == round(100 * sigma) else f"{sigma:.1%}"


def budget_text(config: ExperimentConfig) -> str:
    s = config.invert_pm
    return (f"{training_budget(config, training_subjects(config))}; one network per noise level; forward model "
            f"{s.num_iter} Perona-Malik steps, kappa {s.kappa:g}, dt 1/4, rational diffusivity, Gaussian noise sigma "
            f"{', '.join(sigma_text(v) for v in s.noise_sigmas)}")


def bundle_overrides(s: InvertPM, sigma: float) -> dict:
    """Bundle config ids that train on (and validate with) the Perona-Malik forward model at noise ``sigma``."""
    forward = {"num_iter": s.num_iter, "kappa": s.kappa, "noise_sigma": sigma}
    return {"train_patches": "pipeline.data.degraded.perona_malik_patches_2d",
            **{f"train#preprocessing#{k}": v for k, v in forward.items()},
            "validate#preprocessing": {"_target_": "pipeline.data.degraded.perona_malik_eval_transforms",
                                       **forward, "seed": "@seed"},
            "run_params#noise_model": f"perona_malik({s.num_iter} steps, kappa {s.kappa:g})+gaussian",
            "run_params#train_noise_levels": [sigma, sigma], "run_params#val_noise_level": sigma}


def run_invert_pm(config: ExperimentConfig) -> dict:
    """Run the experiment; returns ``{"summary", "table", "files", "tracking_uri", "minutes"}``."""
    s = config.invert_pm
    budget = budget_text(config)
    run = Run.start(config, budget)
    with run.tracker.failed_on_error():
        volumes = run.test_volumes()
        rows, shown, seconds, sizes, slices = [], {}, {}, {}, 0
        for sigma in s.noise_sigmas:
            tests = run.test_slices(volumes, perona_malik_degradation(s.num_iter, s.kappa, sigma, config.seed + 1))
            slices = sum(len(clean) for _, _, clean, _ in tests)
            k = len(tests[0][2]) // 2  # the figure: middle evaluated slice of the first test subject
            shown[sigma] = {"clean": tests[0][2][k, 0], "degraded": tests[0][1][k, 0]}
            for subject, degraded, clean, mask in tests:
                rows.append(metrics_row(degraded, clean, mask, method="degraded", noise_sigma=sigma, subject=subject))
            for name in s.networks:
                trained = run.train(f"{name} sigma={sigma:g}", name,
                                    {"noise_sigma": sigma, "kappa": s.kappa, "num_iter": s.num_iter},
                                    **bundle_overrides(s, sigma))
                sizes[name], seconds[name, sigma] = trained.parameters, trained.seconds
                for subject, degraded, clean, mask in tests:
                    out = run.run_network(trained.network, degraded)
                    rows.append(metrics_row(out, clean, mask, method=name, noise_sigma=sigma, subject=subject))
                    if subject == tests[0][0]:
                        shown[sigma][name] = out[k, 0]
        per_subject = pd.DataFrame(rows)
        summary = summarise(per_subject, ["method", "noise_sigma"])
        summary["parameters"] = summary["method"].map(sizes).fillna(0).astype(int)
        summary["train_seconds"] = [seconds.get((m, sg), np.nan) for m, sg in zip(summary["method"],
                                                                                   summary["noise_sigma"])]
        summary["paper_psnr_stl10"] = [PAPER_PSNR.get(sg, {}).get(m, np.nan) for m, sg in zip(summary["method"],
                                                                                              summary["noise_sigma"])]
        files = {"summary": run.out / "summary.csv", "per_subject": run.out / "per_subject.csv",
                 "report": run.out / "report.md", "figure": run.out / "panel.png"}
        write_text_atomic(files["per_subject"], per_subject.to_csv(index=False))
        write_text_atomic(files["summary"], summary.to_csv(index=False))
        panel(shown, s.networks, config.unet_preset, files["figure"],
              f"Inverting {s.num_iter} Perona-Malik steps (kappa {s.kappa:g}): first test subject, middle evaluated "
              f"slice; bottom rows: error (image - clean)")
        table = markdown_table(summary, config.unet_preset)
        header = run.header(
            "Inverting Perona-Malik diffusion", budget,
            [f"forward model: {s.num_iter} explicit Perona-Malik steps on each whole axial slice, rational "
             f"diffusivity, kappa = {s.kappa:g} (normalised scale, reference intensity 1.0), dt = 1/4, then Gaussian "
             f"noise; test noise seeded per subject",
             f"training: the bundle's training workflow on patches (centred on the head) of the diffused axial "
             f"slices of the training subjects, Gaussian noise drawn per patch; the same patches and noise (seed "
             f"{config.seed}) for every network",
             f"U-Net: the `{config.unet_preset}` preset ({sizes.get('unet', 0):,} parameters, 1 input channel) for "
             f"a CPU budget; the paper's U-Net has 34.5 M parameters" if "unet" in s.networks else "U-Net not run",
             "train s: wall time of the bundle's training workflow (loading the data, training, validating)",
             "paper: STL-10 96x96 images, trained to convergence on a GPU; its PSNR is over whole images (compare "
             "with PSNR image)"], len(volumes), slices)
        write_text_atomic(files["report"], header + "## Test results\n\n" + table + "\n")
        for row in summary.itertuples():
            run.tracker.result_run(row.method, "perona_malik+gaussian", row.noise_sigma,
                                   {"label": network_label(row.method, config.unet_preset),
                                    "parameters": int(row.parameters), "kappa": s.kappa, "num_iter": s.num_iter},
                                   {k: v for k, v in row._asdict().items()
                                    if k.endswith(("_mean", "_std", "_seconds", "_stl10")) and pd.notna(v)},
                                   [files["figure"]])
        run.tracker.finish({"minutes": run.minutes()}, list(files.values()))
    return {"summary": summary, "table": table, "files": files, "tracking_uri": run.tracking_uri,
            "minutes": run.minutes()}


def markdown_table(summary: pd.DataFrame, unet_preset: str) -> str:
    table = metric_cells(summary)
    table.insert(0, "noise sigma", [sigma_text(v) for v in summary["noise_sigma"]])
    table.insert(0, "method", ["degraded input" if m == "degraded" else network_label(m, unet_preset)
                               for m in summary["method"]])
    table["paper PSNR, STL-10 (dB)"] = [f"{v:.2f}" if pd.notna(v) else "" for v in summary["paper_psnr_stl10"]]
    table["train s"] = [f"{v:.0f}" if pd.notna(v) else "" for v in summary["train_seconds"]]
    return table.to_markdown(index=False) + "\n"


def panel(shown: dict, networks: list[str], unet_preset: str, path: Path, title: str) -> Path:
    """Per noise level: clean, degraded and each network's output (PSNR of the slice in the title), then errors."""
    columns = ["clean", "degraded", *networks]
    fig, axes = plt.subplots(2 * len(shown), len(columns), figsize=(2.6 * len(columns) + 0.6, 4.6 * len(shown)),
                             squeeze=False, layout="constrained")
    for i, (sigma, images) in enumerate(shown.items()):
        clean = images["clean"]
        for j, name in enumerate(columns):
            img = images[name]
            label = "clean" if name == "clean" else "degraded" if name == "degraded" \
                else network_label(name, unet_preset)
            ax, err = axes[2 * i, j], axes[2 * i + 1, j]
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=1.2, origin="lower")
            if name != "clean":
                value = psnr(img[None, None], clean[None, None]).item()
                label += f"\n{value:.1f} dB"
            ax.set_title(f"{label}, noise {sigma_text(sigma)}" if name == "clean" else label, fontsize=8)
            shown_err = err.imshow((img - clean).numpy(), cmap="RdBu_r", vmin=-0.1, vmax=0.1, origin="lower")
            err.set_title("error" if name != "clean" else "error scale: +-0.1", fontsize=7)
            for a in (ax, err):
                a.axis("off")
        fig.colorbar(shown_err, ax=axes[2 * i + 1, -1], fraction=0.05, pad=0.02)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
