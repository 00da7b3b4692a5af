"""The compared methods. Each denoises a whole volume ``(1, H, W, D)`` (normalised so the reference intensity is
1.0, RAS, axial axis last) given the noise model and a noise level: the true one (oracle) or the one the project's
estimator finds in the noisy volume (blind), as a user would run it.

Classical methods are tuned on validation volumes per (noise, level); given a level that was not tuned (a blind
estimate), a method uses the parameters tuned at the nearest level of that noise model. Learned methods are the
bundle's networks with the bundle's inferer (2D: slice by slice along the axial axis).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage.restoration import denoise_nl_means

from pipeline.metrics import psnr
from pipeline.networks import PeronaMalik
from pipeline.tuning import tune_on_slices, tuned_parameters

# validation volumes at one (noise, level): a list of (noisy, clean, mask), each (1, H, W, D)
Validation = Callable[[str, float], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]

LABELS = {
    "noisy": "noisy input",
    "perona_malik": "Perona-Malik (tuned)",
    "nl_means": "non-local means 2D (tuned)",
    "bm4d": "BM4D (tuned)",
    "ants": "ANTs DenoiseImage (tuned)",
    "dipy_nlmeans": "DIPY nlmeans (tuned)",
    "diffnet_paper": "DiffNet (paper)",
    "diffnet_guided": "DiffNet 2.5D (shipped)",  # all three: guidance encoder and noise map
    "diffnet_2d": "DiffNet 2D (0.2.0)",
    "diffnet_diffusion": "DiffNet 2D, diffusion mode",
    "unet": "residual U-Net + noise map",
}


def axial(volume: torch.Tensor) -> torch.Tensor:
    """``(1, H, W, D)`` -> ``(D, 1, H, W)`` axial slices."""
    return volume.permute(3, 0, 1, 2)


def from_axial(slices: torch.Tensor) -> torch.Tensor:
    """``(D, 1, H, W)`` axial slices -> ``(1, H, W, D)``."""
    return slices.permute(1, 2, 3, 0)


def pooled_slices(volumes, every: int = 4, min_head: float = 0.25) -> tuple[torch.Tensor, ...]:
    """``(noisy, clean, mask)`` stacks ``(N, 1, H, W)`` of every ``every``-th axial slice with at least
    ``min_head`` head, from validation volumes: what slice-based classical methods are tuned on."""
    parts = []
    for noisy, clean, mask in volumes:
        keep = [z for z in range(0, clean.shape[-1], every) if mask[..., z].float().mean() >= min_head]
        parts.append(tuple(axial(t)[keep] for t in (noisy, clean, mask)))
    return tuple(torch.cat(ts) for ts in zip(*parts))


class Method:
    """Base: the identity (the noisy input itself). ``uses_level``: the output depends on the level given, so
    the method is run both with the true level (oracle) and with the estimated one (blind)."""

    uses_level = False

    def __init__(self, name: str) -> None:
        self.name, self.label, self.parameters = name, LABELS[name], 0
        self.settings: dict[tuple[str, float], dict] = {}  # per (noise, level): tuned parameters, for the report

    def tune(self, noise: str, level: float, validation: Validation) -> None:
        """Choose parameters for (noise, level); nothing to choose by default."""

    def setting(self, noise: str, level: float) -> dict:
        """The parameters tuned for ``noise`` at the tuned level nearest to ``level``."""
        tuned = [lv for (n, lv) in self.settings if n == noise]
        if not tuned:
            raise RuntimeError(f"{self.label} was not tuned for {noise} noise")
        return self.settings[noise, min(tuned, key=lambda lv: abs(lv - level))]

    def denoise(self, noisy: torch.Tensor, noise: str, level: float) -> torch.Tensor:
        return noisy


class TunedPeronaMalik(Method):
    """2D Perona-Malik on every axial slice, with K, steps and time step from a tuned-parameters file (the bundle's
    ``models/perona_malik.json``), or tuned here on validation slices."""

    uses_level = True

    def __init__(self, parameters_file: str | None = None) -> None:
        super().__init__("perona_malik")
        self.parameters_file = parameters_file

    def tune(self, noise, level, validation):
        if self.parameters_file:
            self.settings[noise, level] = tuned_parameters(self.parameters_file, noise, level)
        else:
            best = tune_on_slices(*pooled_slices(validation(noise, level)))
            self.settings[noise, level] = {k: best[k] for k in ("kappa", "num_iter", "dt")}

    def denoise(self, noisy, noise, level):
        p = self.setting(noise, level)
        with torch.no_grad():
            return from_axial(PeronaMalik(2, num_iter=p["num_iter"], kappa=p["kappa"], dt=p["dt"])(axial(noisy)))


class NonLocalMeans(Method):
    """scikit-image's non-local means on every axial slice (5x5 patches, 13x13 search), given sigma; the filter
    strength ``h = factor * sigma`` is tuned on validation slices."""

    uses_level = True

    def __init__(self, h_factors=(0.6, 0.8, 1.0, 1.2)) -> None:
        super().__init__("nl_means")
        self.h_factors = tuple(h_factors)

    @staticmethod
    def _run(slices: torch.Tensor, sigma: float, h: float) -> torch.Tensor:
        out = [denoise_nl_means(s[0].numpy(), h=h, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)
               for s in slices]
        return torch.from_numpy(np.stack(out)[:, None].astype(np.float32))

    def tune(self, noise, level, validation):
        noisy, clean, mask = pooled_slices(validation(noise, level))
        scores = {f: psnr(self._run(noisy, level, f * level), clean, mask).mean().item() for f in self.h_factors}
        self.settings[noise, level] = {"h_factor": max(scores, key=scores.get)}

    def denoise(self, noisy, noise, level):
        return from_axial(self._run(axial(noisy), level, self.setting(noise, level)["h_factor"] * level))


class Learned(Method):
    """A bundle network run with the bundle's ``inferer`` on ``device`` (no gradients); the output returns to the
    CPU. A noise-aware network (``noise_map``) is given the level as its second channel."""

    def __init__(self, name: str, network: torch.nn.Module, inferer, device: str | torch.device = "cpu") -> None:
        super().__init__(name)
        self.network, self.inferer, self.device = network.eval(), inferer, torch.device(device)
        self.parameters = sum(p.numel() for p in network.parameters())
        self.uses_level = bool(getattr(network, "noise_map", False))

    def denoise(self, noisy, noise, level):
        x = noisy[None].to(self.device)
        if self.uses_level:
            x = torch.cat([x, torch.full_like(x, float(level))], dim=1)
        self.network.eval()
        with torch.no_grad():
            return self.inferer(x, self.network)[0].cpu()
