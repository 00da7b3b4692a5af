"""The quick end-to-end demo: train DiffNet briefly on real axial slices and compare it with tuned Perona-Malik.

This is the project's main job until the full method comparison exists. Every step uses the library's public
parts: the Decathlon manifest, MONAI loaders, the noise transforms, ``DiffNet``, ``PeronaMalik`` and the metrics.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pandas as pd
import torch
from monai.utils import set_determinism
from tqdm import tqdm

from pipeline.data import eval_axial_slices, load_manifest, make_loader, slice_dataset_2d
from pipeline.metrics import psnr, ssim
from pipeline.networks import DiffNet, PeronaMalik
from pipeline.tuning import tune_on_slices


def train_diffnet(datalist, steps: int, batch_size: int, noise: str, level_range: tuple[float, float], seed: int,
                  lr: float = 2e-3) -> DiffNet:
    """DiffNet (paper preset + guidance) trained for ``steps`` Adam steps on 64x64 axial patches."""
    set_determinism(seed)
    per_volume = 8
    dataset = slice_dataset_2d(datalist, roi_size=(64, 64), samples_per_volume=per_volume, noise=noise,
                               level_range=level_range)
    # a loader batch of n volumes holds n * per_volume patches
    loader = make_loader(dataset, batch_size=max(1, batch_size // per_volume), shuffle=True)
    net = DiffNet.paper(2, guidance=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    progress = tqdm(range(steps), desc="training DiffNet", unit="step")
    for _ in progress:
        batch = next(batches)
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(batch["image"].float()), batch["label"].float())
        loss.backward()
        optimiser.step()
        schedule.step()
        progress.set_postfix(loss=f"{loss.item():.2e}")
    return net.eval()


def run_demo(manifest: str | Path, out_dir: str | Path, data_root: str | None = None, steps: int = 300,
             batch_size: int = 16, noise: str = "rician", level: float = 0.05, train_volumes: int = 16,
             eval_volumes: int = 4, seed: int = 0) -> pd.DataFrame:
    """Train, tune, evaluate; returns the results table and writes it (CSV) and the model next to it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise ValueError(f"output folder {out_dir} is not writable")
    train = load_manifest(manifest, "training", data_root)[:train_volumes]
    val = load_manifest(manifest, "validation", data_root)[:eval_volumes]
    test = load_manifest(manifest, "test", data_root)[:eval_volumes]

    # a brief training cannot learn every noise level: train around the level the demo evaluates
    level_range = (max(0.0, level - 0.02), level + 0.02)
    start = time.perf_counter()
    net = train_diffnet(train, steps, batch_size, noise, level_range, seed)
    train_seconds = time.perf_counter() - start

    pm = tune_on_slices(*eval_axial_slices(val, noise, level, seed))
    noisy, clean, mask = eval_axial_slices(test, noise, level, seed + 1)
    with torch.no_grad():
        outputs = {
            "noisy input": noisy,
            f"Perona-Malik (K={pm['kappa']}, {pm['num_iter']} steps)": PeronaMalik(
                2, num_iter=pm["num_iter"], kappa=pm["kappa"], dt=pm["dt"])(noisy),
            "DiffNet + guidance": net(noisy),
        }
    rows = []
    for method, out in outputs.items():
        rows.append({
            "method": method,
            "PSNR head (dB)": psnr(out, clean, mask).mean().item(),
            "SSIM head": ssim(out, clean, mask).mean().item(),
            "PSNR image (dB)": psnr(out, clean).mean().item(),
            "SSIM image": ssim(out, clean).mean().item(),
        })
    table = pd.DataFrame(rows).set_index("method")
    table.attrs.update(train_seconds=train_seconds, level_range=level_range, test_slices=len(clean), noise=noise,
                       level=level)

    checkpoint = out_dir / "diffnet_demo.pt"
    tmp = checkpoint.with_suffix(".pt.tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, checkpoint)
    csv = out_dir / "demo_results.csv"
    table.to_csv(csv.with_suffix(".csv.tmp"))
    os.replace(csv.with_suffix(".csv.tmp"), csv)
    return table
