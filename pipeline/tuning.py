"""Perona-Malik tuned on validation data: a grid search over K, step count and time step, per noise model and
level, stored as JSON so that evaluation and inference use the parameters chosen on validation subjects only."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from pipeline.atomic_write import write_text_atomic
from pipeline.data.loaders import axial_slices, volume_transforms
from pipeline.metrics import psnr
from pipeline.networks import PeronaMalik
from pipeline.transforms import MRINoised

KAPPAS = (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.32, 0.48)
STEPS = (1, 2, 4, 8, 16, 32)
DT_FRACTIONS = (1.0, 0.5, 0.25)  # of the stability bound 1 / (2 * spatial_dims)


def tune_on_slices(noisy: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor, kappas=KAPPAS, steps=STEPS,
                   dt_fractions=DT_FRACTIONS) -> dict:
    """Best ``{"kappa", "num_iter", "dt", "val_psnr_head"}`` for 2D slices ``(N, 1, H, W)`` by PSNR in the mask."""
    best = {"val_psnr_head": -float("inf")}
    with torch.no_grad():
        for dt in (fraction / 4 for fraction in dt_fractions):
            for kappa in kappas:
                u, done = noisy, 0
                for n in sorted(steps):  # n steps continue the previous, shorter run
                    u = PeronaMalik(2, num_iter=n - done, kappa=kappa, dt=dt)(u)
                    done = n
                    score = psnr(u, clean, mask).mean().item()
                    if score > best["val_psnr_head"]:
                        best = {"kappa": kappa, "num_iter": n, "dt": dt, "val_psnr_head": score}
    return best


def tune_perona_malik(datalist, noise: str, levels, seed: int, out_file: str | os.PathLike) -> dict:
    """Tune for every level on the validation ``datalist``; merge into ``out_file`` (JSON, written atomically)."""
    out_file = Path(out_file)
    table = json.loads(out_file.read_text(encoding="utf-8")) if out_file.is_file() else {}
    volumes = [volume_transforms("label")(item) for item in datalist]  # loaded once, noised per level
    for level in levels:
        noiser = MRINoised(source_key="label", target_key="image", noise=noise, level=level, seed=seed)
        best = tune_on_slices(*axial_slices([noiser(v) for v in volumes]))
        table.setdefault(noise, {})[f"{level:g}"] = best
        print(f"Perona-Malik {noise} {level:g}: K={best['kappa']}, {best['num_iter']} steps, dt={best['dt']:.4g} "
              f"-> validation PSNR in head {best['val_psnr_head']:.2f} dB", flush=True)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_file, json.dumps(table, indent=2) + "\n")
    return table


def tuned_parameters(path: str | os.PathLike, noise: str, level: float) -> dict:
    """``{"kappa", "num_iter", "dt"}`` tuned for ``noise`` at ``level``; a clear error if it was never tuned."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the Perona-Malik 'tuning' workflow first")
    table = json.loads(path.read_text(encoding="utf-8")).get(noise, {})
    key = f"{level:g}"
    if key not in table:
        raise ValueError(f"{path} has no Perona-Malik parameters for {noise} noise at level {key}; "
                         f"tuned levels: {sorted(table)}")
    return {k: table[key][k] for k in ("kappa", "num_iter", "dt")}
