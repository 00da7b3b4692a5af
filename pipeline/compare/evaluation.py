"""Evaluation of every method on the same seeded noisy whole test volumes, as a user would run them: with the true
noise level (oracle) and with the level the project's estimator finds in each noisy volume (blind).

Noise is added to whole volumes by ``MRINoised`` (seeded by the seed and the file name), so every method sees
bit-identical inputs. Per subject, over the whole volume, with the functions of the bundle's ``ImageQuality``
handler (so a checkpoint scores the same here as in ``monai.bundle run evaluating``):

- PSNR and SSIM inside the head mask, and over the whole image;
- seconds to denoise that volume, measured on it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from pipeline.compare.methods import Method
from pipeline.data.loaders import volume_transforms
from pipeline.metrics import psnr, ssim_inside_and_whole
from pipeline.transforms import EstimateNoiseLevel, MRINoised, NoiseEstimateWarning

MODES = ("oracle", "blind")


def load_volumes(datalist: Sequence[dict], desc: str) -> list[dict]:
    """Clean, oriented, normalised volumes with head masks (see :func:`pipeline.data.volume_transforms`)."""
    load = volume_transforms("label")
    volumes = []
    for entry in tqdm(datalist, desc=desc, unit="volume", leave=False):
        item = load(entry)
        item["subject"] = entry.get("subject", str(entry["label"]))
        volumes.append(item)
    return volumes


class NoisyVolumes:
    """Seeded noisy copies of loaded volumes. Calling it with ``(noise, level)`` gives ``[(noisy, clean, mask)]``,
    each ``(1, H, W, D)`` (the :data:`pipeline.compare.methods.Validation` form); the last condition is cached."""

    def __init__(self, volumes: list[dict], seed: int) -> None:
        self.volumes, self.seed = volumes, seed
        self._cached: tuple[tuple[str, float], list] | None = None

    def __call__(self, noise: str, level: float) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._cached is None or self._cached[0] != (noise, level):
            noiser = MRINoised(source_key="label", target_key="image", noise=noise, level=level, seed=self.seed)
            triples = []
            for volume in self.volumes:
                item = noiser(volume)
                triples.append(tuple(torch.as_tensor(item[k]).float() for k in ("image", "label", "mask")))
            self._cached = ((noise, level), triples)
        return self._cached[1]


def volume_metrics(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> dict:
    """PSNR and SSIM of one ``(1, H, W, D)`` volume, inside the head and over the image."""
    out, clean, mask = out[None].float(), clean[None], mask[None]
    ssim_head, ssim_image = ssim_inside_and_whole(out, clean, mask)
    return {
        "psnr_head": psnr(out, clean, mask).item(),
        "ssim_head": ssim_head.item(),
        "psnr_image": psnr(out, clean).item(),
        "ssim_image": ssim_image.item(),
    }


def estimate_level(noisy: torch.Tensor, fallback: float) -> float:
    """The project's blind estimate of the noise level of a normalised volume (``fallback`` if it cannot tell)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoiseEstimateWarning)
        sigma = EstimateNoiseLevel()(noisy).sigma
    return fallback if sigma is None else sigma


def evaluate(methods: Sequence[Method], test: NoisyVolumes, noises: Sequence[str], levels: Sequence[float],
             panel: tuple[str, float] | None = None, subjects: Mapping[str, int] | None = None,
             oracle_subjects: int | None = None,
             after_condition: Callable[[list[dict]], None] | None = None) -> tuple[list[dict], dict]:
    """Rows ``{method, noise, level, sigma, level_used, subject, psnr_head, ssim_head, psnr_image, ssim_image,
    seconds_per_volume}``, ``sigma`` being "oracle" (the true level given) or "blind" (the estimated level given).
    A method whose output does not depend on the level runs once, and its row stands for both. For the ``panel``
    condition, the middle axial slice of the first subject: ``{"clean", "noisy", "mask", <method name>: blind
    output}`` (each ``(1, H, W)``).

    ``subjects`` limits a (slow) method to the first n test subjects, ``oracle_subjects`` the oracle runs of every
    method to the first n; ``after_condition(rows)`` is called with the rows so far after each condition (to save
    them as they come)."""
    subjects = subjects or {}
    rows, shown = [], {}
    conditions = [(noise, level) for noise in noises for level in levels]
    for noise, level in tqdm(conditions, desc="evaluating", unit="condition"):
        for i, ((noisy, clean, mask), volume) in enumerate(zip(test(noise, level), test.volumes)):
            estimated = estimate_level(noisy, level)
            show = i == 0 and (noise, level) == panel
            in_oracle = oracle_subjects is None or i < oracle_subjects  # this subject also gets oracle runs
            z = clean.shape[-1] // 2
            if show:
                shown.update(clean=clean[..., z], noisy=noisy[..., z], mask=mask[..., z])
            for method in methods:
                if i >= subjects.get(method.name, len(test.volumes)):
                    continue
                runs = {"oracle": level, "blind": estimated} if method.uses_level and in_oracle else {"blind": estimated}
                for mode, given in runs.items():
                    start = time.perf_counter()
                    out = method.denoise(noisy, noise, given)
                    seconds = time.perf_counter() - start
                    if not torch.isfinite(out).all():
                        raise FloatingPointError(f"{method.label} produced NaN/Inf on {volume['subject']}")
                    row = {"method": method.name, "noise": noise, "level": level,
                           "level_used": given if method.uses_level else float("nan"),
                           "subject": volume["subject"], **volume_metrics(out, clean, mask),
                           "seconds_per_volume": seconds}
                    # a level-free method's output stands for both modes, on the subjects each mode covers
                    modes = [mode] if method.uses_level else list(MODES) if in_oracle else ["blind"]
                    rows += [{**row, "sigma": m} for m in modes]
                    if show and mode == "blind":
                        shown[method.name] = out[..., z]
        if after_condition is not None:
            after_condition(rows)
    return rows, shown
