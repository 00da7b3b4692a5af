"""Evaluation of every method on the same seeded noisy test slices, per subject.

Noise is added to whole volumes by ``MRINoised`` (seeded by the run's seed and the file name), then every
``slice_every``-th axial slice with enough head is kept, so all methods see bit-identical inputs. Per subject:

- PSNR over all voxels of its evaluated slices (inside the head mask, and over the whole slices);
- SSIM (2D, window 11) averaged over its evaluated slices, inside the head mask and over the whole slices;
- seconds per volume: the time to denoise its evaluated slices, scaled to the volume's number of axial slices.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm import tqdm

from pipeline.compare.methods import Method
from pipeline.data.loaders import axial_slices, volume_transforms
from pipeline.metrics import psnr, ssim
from pipeline.transforms import MRINoised


def load_volumes(datalist: Sequence[dict], desc: str) -> list[dict]:
    """Clean, oriented, normalised volumes with head masks (see :func:`pipeline.data.volume_transforms`)."""
    load = volume_transforms("label")
    volumes = []
    for entry in tqdm(datalist, desc=desc, unit="volume", leave=False):
        item = load(entry)
        item["subject"] = entry.get("subject", str(entry["label"]))
        volumes.append(item)
    return volumes


class NoisySlices:
    """Seeded noisy slices of loaded volumes: ``per_volume(noise, level)`` yields ``(volume, (noisy, clean,
    mask))`` for each volume; ``pooled(noise, level)`` stacks the slices of all volumes (for tuning)."""

    def __init__(self, volumes: list[dict], seed: int, every: int, min_head: float) -> None:
        self.volumes, self.seed, self.every, self.min_head = volumes, seed, every, min_head

    def per_volume(self, noise: str, level: float):
        noiser = MRINoised(source_key="label", target_key="image", noise=noise, level=level, seed=self.seed)
        for volume in self.volumes:
            yield volume, axial_slices([noiser(volume)], self.every, self.min_head)

    def pooled(self, noise: str, level: float):
        parts = [slices for _, slices in self.per_volume(noise, level)]
        return tuple(torch.cat(ts) for ts in zip(*parts))


def as_volume(slices: torch.Tensor) -> torch.Tensor:
    """``(N, 1, H, W)`` slices -> one ``(1, 1, H, W, N)`` volume, so PSNR pools the error over all of them."""
    return slices.permute(1, 2, 3, 0).unsqueeze(0)


def subject_metrics(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> dict:
    return {
        "psnr_head": psnr(as_volume(out), as_volume(clean), as_volume(mask)).item(),
        "ssim_head": ssim(out, clean, mask).mean().item(),
        "psnr_image": psnr(as_volume(out), as_volume(clean)).item(),
        "ssim_image": ssim(out, clean).mean().item(),
    }


def evaluate(methods: Sequence[Method], test: NoisySlices, noises: Sequence[str], levels: Sequence[float],
             panel: tuple[str, float] | None = None) -> tuple[list[dict], dict]:
    """Rows ``{method, noise, level, subject, psnr_head, ssim_head, psnr_image, ssim_image, seconds_per_volume}``
    and, for the ``panel`` condition, the middle evaluated slice of the first subject: ``{"clean", "noisy",
    <method name>: output}`` (each ``(1, H, W)``)."""
    rows, shown = [], {}
    conditions = [(noise, level) for noise in noises for level in levels]
    for noise, level in tqdm(conditions, desc="evaluating", unit="condition"):
        for i, (volume, (noisy, clean, mask)) in enumerate(test.per_volume(noise, level)):
            show = i == 0 and (noise, level) == panel
            if show:
                k = len(clean) // 2
                shown.update(clean=clean[k], noisy=noisy[k], mask=mask[k])
            for method in methods:
                start = time.perf_counter()
                out = method.denoise(noisy, noise, level)
                seconds = (time.perf_counter() - start) * volume["label"].shape[-1] / len(noisy)
                if not torch.isfinite(out).all():
                    raise FloatingPointError(f"{method.label} produced NaN/Inf on {volume['subject']}")
                rows.append({"method": method.name, "noise": noise, "level": level, "subject": volume["subject"],
                             **subject_metrics(out, clean, mask), "seconds_per_volume": seconds})
                if show:
                    shown[method.name] = out[len(clean) // 2]
    return rows, shown
