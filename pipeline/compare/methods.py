"""The compared methods, each a ``denoise(noisy, noise, level)`` on axial slices ``(N, 1, H, W)``.

Classical methods get the true noise model and level, and are tuned on validation slices per (noise, level): the
kindest setting for them. Learned methods are trained once, noise-blind, on the whole range of levels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.restoration import denoise_nl_means

from pipeline.metrics import psnr
from pipeline.networks import DiffNet, PeronaMalik, residual_unet
from pipeline.tuning import tune_on_slices, tuned_parameters

# validation slices at one (noise, level): (noisy, clean, mask), each (N, 1, H, W)
ValidationSlices = Callable[[str, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

LABELS = {
    "noisy": "noisy input",
    "perona_malik": "Perona-Malik (tuned)",
    "nl_means": "non-local means (tuned)",
    "diffnet_paper": "DiffNet (paper)",
    "diffnet_guided": "DiffNet + guidance",
    "diffnet_diffusion": "DiffNet + guidance, diffusion mode",
    "unet": "residual U-Net",
}


def build_network(method: str, unet_preset: str = "small") -> torch.nn.Module:
    """The untrained 2D network of a learned method."""
    if method == "diffnet_paper":
        return DiffNet.paper(2)
    if method == "diffnet_guided":
        return DiffNet.paper(2, guidance=True)
    if method == "diffnet_diffusion":
        return DiffNet.paper(2, guidance=True, mode="diffusion")
    if method == "unet":
        return residual_unet(unet_preset, 2)
    raise ValueError(f"{method!r} is not a learned method")


class Method:
    """Base: the identity (the noisy input itself)."""

    def __init__(self, name: str) -> None:
        self.name, self.label, self.parameters = name, LABELS[name], 0
        self.settings: dict[tuple[str, float], dict] = {}  # per (noise, level): tuned parameters, for the report

    def tune(self, noise: str, level: float, validation: ValidationSlices) -> None:
        """Choose parameters for (noise, level); nothing to choose by default."""

    def denoise(self, noisy: torch.Tensor, noise: str, level: float) -> torch.Tensor:
        return noisy


class TunedPeronaMalik(Method):
    """Perona-Malik with K, steps and time step from a tuned-parameters file, or tuned here on validation slices."""

    def __init__(self, parameters_file: str | None = None) -> None:
        super().__init__("perona_malik")
        self.parameters_file = parameters_file

    def tune(self, noise, level, validation):
        if self.parameters_file:
            self.settings[noise, level] = tuned_parameters(self.parameters_file, noise, level)
        else:
            best = tune_on_slices(*validation(noise, level))
            self.settings[noise, level] = {k: best[k] for k in ("kappa", "num_iter", "dt")}

    def denoise(self, noisy, noise, level):
        p = self.settings[noise, level]
        with torch.no_grad():
            return PeronaMalik(2, num_iter=p["num_iter"], kappa=p["kappa"], dt=p["dt"])(noisy)


class NonLocalMeans(Method):
    """scikit-image's non-local means per slice (5x5 patches, 13x13 search), given the true sigma; the filter
    strength ``h = factor * sigma`` is tuned on validation slices."""

    def __init__(self, h_factors=(0.6, 0.8, 1.0, 1.2)) -> None:
        super().__init__("nl_means")
        self.h_factors = tuple(h_factors)

    @staticmethod
    def _run(noisy: torch.Tensor, sigma: float, h: float) -> torch.Tensor:
        out = [denoise_nl_means(s[0].numpy(), h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
               for s in noisy]
        return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))

    def tune(self, noise, level, validation):
        noisy, clean, mask = validation(noise, level)
        scores = {f: psnr(self._run(noisy, level, f * level), clean, mask).mean().item() for f in self.h_factors}
        self.settings[noise, level] = {"h_factor": max(scores, key=scores.get)}

    def denoise(self, noisy, noise, level):
        return self._run(noisy, level, self.settings[noise, level]["h_factor"] * level)


class Learned(Method):
    """A trained network run on slices in chunks (no gradients) on ``device``; outputs return to the CPU."""

    def __init__(self, name: str, network: torch.nn.Module, device: str | torch.device = "cpu",
                 chunk: int = 32) -> None:
        super().__init__(name)
        self.network, self.device, self.chunk = network.eval(), torch.device(device), chunk
        self.parameters = sum(p.numel() for p in network.parameters())

    def denoise(self, noisy, noise, level):
        self.network.eval()
        with torch.no_grad():
            return torch.cat([self.network(part.to(self.device)).cpu() for part in noisy.split(self.chunk)])
