"""Classical 3D denoisers that MRI users run, as compared methods: BM4D, ANTs ``DenoiseImage`` and DIPY ``nlmeans``.

Each denoises a whole volume ``(1, H, W, D)`` (normalised so the reference intensity is 1.0, so a level is sigma in
the image's units) and is tuned per (noise, level) on validation volumes: every point of a small parameter grid is
run on them and the one with the best mean PSNR inside the head mask is kept (ties: the earlier point, so the first
point, the default, wins unless another is better). Given a level that was not tuned (a blind estimate), a method uses
the parameters tuned at the nearest level (:meth:`Method.setting`).

Their packages are optional at import time: :func:`available` says whether one imports, with a one-line note when it
does not, and the comparison then skips the method. Licences: BM4D (``bm4d``) is free for non-profit use only; ANTs
(``antspyx``, Apache-2.0) and DIPY (``dipy``, BSD) are open source.

Measured on IXI T1 (120 x 120 x 90 at 2 mm, 8-bit) at 5 % Rician noise, what shapes the grids below
(``benchmarks/classical_speed.py`` prints the numbers):

- BM4D's default profile takes ~1.5 min per volume on a loaded 2-core CPU; a 3-voxel search window and a step of 4 in
  both stages halve that at a cost of < 0.1 dB (:attr:`BM4D.FAST_PROFILE`).
- DIPY 1.12's default ``method="blockwise"`` lowers PSNR below the noisy input (and alters a noise-free volume to
  ~40 dB even with a tiny sigma): its blocks are averaged from neighbouring blocks only, the centre block is never
  included, so the output is a shifted blur that barely depends on sigma. ``method="classic"`` (the voxelwise NLM with
  the Rician correction) is used instead.
- ANTs ``DenoiseImage`` takes no noise level: it estimates the noise per voxel from the most similar (mean-removed)
  patch in the search window. On these 2 mm volumes that estimate takes anatomy for noise, so ANTs smooths even a
  noise-free volume (to ~25 dB) and stays below the noisy input at 5 % Rician; it helps from ~10 %. This does not
  depend on the intensity scale (x255 and x1000 give the same PSNR), on float32 vs. float64, or on the voxel spacing.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipeline.compare.methods import Method, Validation
from pipeline.metrics import psnr

__all__ = ["ANTsDenoise", "BM4D", "DipyNLMeans", "METHODS", "available", "rician_vst", "rician_vst_inverse"]

# method name -> (module to import, distribution, note when it is missing)
_PACKAGES = {
    "bm4d": ("bm4d", "bm4d", "bm4d is not installed (pip install '.[bm4d]'; licence: non-profit use only)"),
    "ants": ("ants", "antspyx", "antspyx is not installed (pip install antspyx)"),
    "dipy_nlmeans": ("dipy.denoise.nlmeans", "dipy", "dipy is not installed (pip install dipy)"),
}


def available(name: str) -> str | None:
    """None when the package of method ``name`` imports, else a one-line note saying why it cannot be run."""
    if name not in _PACKAGES:
        raise ValueError(f"unknown classical method {name!r}; known: {', '.join(_PACKAGES)}")
    module, distribution, missing = _PACKAGES[name]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return missing
    try:
        importlib.import_module(module)
    except (ImportError, OSError) as error:  # installed but broken (e.g. built against another numpy)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{distribution} is installed but does not import ({type(error).__name__}: {first_line})"
    return None


def _volume(noisy: torch.Tensor) -> np.ndarray:
    """``(1, H, W, D)`` tensor (MetaTensor or plain) -> C-contiguous float32 ``(H, W, D)`` array."""
    if noisy.dim() != 4 or noisy.shape[0] != 1:
        raise ValueError(f"expected a (1, H, W, D) volume, got shape {list(noisy.shape)}")
    x = noisy.detach().cpu().float()
    if hasattr(x, "as_tensor"):  # MetaTensor: its plain data
        x = x.as_tensor()
    return np.ascontiguousarray(x[0].numpy(), dtype=np.float32)


def _tensor(volume: np.ndarray) -> torch.Tensor:
    """``(H, W, D)`` array -> ``(1, H, W, D)`` float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]


class GridTuned(Method):
    """A classical method tuned over a grid. ``grid`` maps parameter names to candidate values (the first value of
    each is the default); the candidates are all combinations, tried in order. Parameters not in the grid keep the
    class's :attr:`FIXED` values. ``settings[noise, level]`` holds every parameter of the chosen point and
    ``scores[noise, level]`` the mean validation PSNR of each point (for the report)."""

    DEFAULT_GRID: Mapping[str, Sequence] = {}
    FIXED: Mapping[str, object] = {}

    def __init__(self, name: str, grid: Mapping[str, Sequence] | None = None) -> None:
        super().__init__(name)
        grid = self.DEFAULT_GRID if grid is None else grid
        unknown = set(grid) - set(self.FIXED)
        if unknown:
            raise ValueError(f"{self.label}: unknown parameters {sorted(unknown)}; known: {sorted(self.FIXED)}")
        self.grid = {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in grid.items()}
        if any(not values for values in self.grid.values()):
            raise ValueError(f"{self.label}: every grid parameter needs at least one value, got {grid}")
        self.scores: dict[tuple[str, float], dict[str, float]] = {}

    def points(self) -> list[dict]:
        """Every parameter combination of the grid, default first, each with the fixed parameters filled in."""
        return [{**self.FIXED, **dict(zip(self.grid, values))} for values in itertools.product(*self.grid.values())]

    @staticmethod
    def describe(point: Mapping) -> str:
        return ", ".join(f"{k}={v}" for k, v in point.items())

    def run(self, noisy: torch.Tensor, noise: str, level: float, parameters: Mapping) -> torch.Tensor:
        """Denoise ``(1, H, W, D)`` with explicit parameters (what tuning and :meth:`denoise` call)."""
        raise NotImplementedError

    def tune(self, noise: str, level: float, validation: Validation) -> None:
        volumes = validation(noise, level)
        if not volumes:
            raise ValueError(f"{self.label}: no validation volumes to tune on for {noise} noise at level {level}")
        points = self.points()
        if len(points) == 1:  # nothing to choose: no validation runs
            self.settings[noise, level] = dict(points[0])
            return
        scores = {}
        for point in points:
            values = [psnr(self.run(noisy, noise, level, point)[None], clean[None], mask[None]).item()
                      for noisy, clean, mask in volumes]
            scores[self.describe(point)] = (float(np.mean(values)), point)
        best = max(scores, key=lambda k: scores[k][0])  # first maximal: ties keep the earlier (default) point
        self.settings[noise, level] = dict(scores[best][1])
        self.scores[noise, level] = {k: v[0] for k, v in scores.items()}

    def denoise(self, noisy: torch.Tensor, noise: str, level: float) -> torch.Tensor:
        return self.run(noisy, noise, level, self.setting(noise, level))


# ---------------------------------------------------------------------------------------------------------------
# Rician variance-stabilising transform (Foi 2011) for BM4D
# ---------------------------------------------------------------------------------------------------------------


def _rice_mean(a: np.ndarray) -> np.ndarray:
    """E[M] of a Rice variable of parameter ``a`` and unit sigma (scaled Bessel functions: no overflow)."""
    from scipy.special import i0e, i1e

    x = a * a / 2
    return np.sqrt(np.pi / 2) * ((1 + x) * i0e(x / 2) + x * i1e(x / 2))


@functools.cache
def _vst_tables() -> tuple[np.ndarray, ...]:
    """Tables of the stabiliser for unit sigma: ``(z, f(z))`` of the forward transform and ``(A, E[f(M) | A])`` of
    its exact unbiased inverse. ``f(z) = integral_0^z dt / std(M | A(t))`` with ``A(t)`` the signal whose Rice mean
    is ``t`` (below the mean at ``A = 0``, the slope ``1 / std(M | 0)``); beyond the tables (A > 40, where Rice noise
    is Gaussian to 1e-4) both are continued with slope 1."""
    from scipy.integrate import trapezoid
    from scipy.special import i0e

    a = np.concatenate([np.linspace(0, 8, 801), np.linspace(8.05, 40, 640)])
    mean = _rice_mean(a)
    std = np.sqrt(np.maximum(a * a + 2 - mean**2, 1e-12))
    z = np.concatenate([[0.0], mean])
    slope = np.concatenate([[1 / std[0]], 1 / std])
    f = np.concatenate([[0.0], np.cumsum(0.5 * (slope[1:] + slope[:-1]) * np.diff(z))])
    m = np.linspace(0, 52, 5201)  # Rice support for every tabulated A (A + 12 sigma)
    fm = np.interp(m, z, f, right=np.nan)
    fm = np.where(np.isnan(fm), f[-1] + (m - z[-1]), fm)
    expected = np.empty_like(a)
    for k, ak in enumerate(a):
        pdf = m * i0e(m * ak) * np.exp(-0.5 * (m - ak) ** 2)  # Rice density up to a constant
        expected[k] = trapezoid(pdf * fm, m) / trapezoid(pdf, m)
    return z, f, a, expected


def rician_vst(z: np.ndarray, sigma: float) -> np.ndarray:
    """Forward VST of Rician magnitudes ``z`` of noise ``sigma``: the output has noise std ~1 (0.89-1.06) at every
    signal level, so a Gaussian denoiser can be run on it with sigma 1."""
    zt, ft, _, _ = _vst_tables()
    u = np.asarray(z, dtype=np.float64) / sigma
    return np.where(u <= zt[-1], np.interp(u, zt, ft), ft[-1] + (u - zt[-1]))


def rician_vst_inverse(d: np.ndarray, sigma: float) -> np.ndarray:
    """Exact unbiased inverse: the signal ``A`` (in the image's units) whose stabilised mean ``E[f(M) | A]`` is the
    denoised ``d``."""
    _, _, at, et = _vst_tables()
    d = np.asarray(d, dtype=np.float64)
    return sigma * np.where(d <= et[-1], np.interp(d, et, at), at[-1] + (d - et[-1]))


# ---------------------------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------------------------


class BM4D(GridTuned):
    """BM4D (Maggioni et al. 2013, ``bm4d`` 4.2.x, Gaussian noise model only), both stages (hard thresholding, then
    Wiener filtering), given ``sigma = sigma_factor * level``.

    Rician noise is handled with a variance-stabilising transform (Foi 2011): the magnitudes are stabilised to unit
    noise, BM4D runs with sigma ``sigma_factor`` on them, and the exact unbiased inverse maps the result back (the
    stabiliser is the integral of the inverse Rician std, computed here, not Foi's optimised tables). On IXI at 5 %
    it gains ~0.1-0.2 dB over running BM4D plainly on the magnitudes, at no extra cost; ``vst=False`` runs it
    plainly. Gaussian noise is always run plainly.

    ``fast=True`` (default) uses :attr:`FAST_PROFILE` (search window 3, step 4 in both stages): about half the time
    of the package's default profile for < 0.1 dB. ``fast=False`` uses the package's default profile.
    """

    uses_level = True
    DEFAULT_GRID = {"sigma_factor": (1.0, 0.8, 1.2)}
    FIXED = {"sigma_factor": 1.0, "vst": True}
    FAST_PROFILE = {"search_window_ht": (3, 3, 3), "search_window_wiener": (3, 3, 3),
                    "step_ht": (4, 4, 4), "step_wiener": (4, 4, 4)}

    def __init__(self, grid: Mapping[str, Sequence] | None = None, fast: bool = True) -> None:
        super().__init__("bm4d", grid)
        self.fast = fast

    def profile(self):
        import bm4d

        profile = bm4d.BM4DProfile()
        for key, value in (self.FAST_PROFILE if self.fast else {}).items():
            setattr(profile, key, value)
        return profile

    def run(self, noisy, noise, level, parameters):
        import bm4d

        x = _volume(noisy).astype(np.float64)
        sigma = float(parameters["sigma_factor"]) * float(level)
        if sigma <= 0:
            return _tensor(x)
        stages = bm4d.BM4DStages.ALL_STAGES
        if noise == "rician" and parameters["vst"]:
            # stabilised with the level itself (the noise it has); the factor scales only the denoiser's sigma
            y = bm4d.bm4d(rician_vst(x, level), float(parameters["sigma_factor"]), profile=self.profile(),
                          stage_arg=stages)
            out = rician_vst_inverse(y, level)
        else:
            out = bm4d.bm4d(x, sigma, profile=self.profile(), stage_arg=stages)
        return _tensor(out)


class ANTsDenoise(GridTuned):
    """ANTs ``DenoiseImage`` (``ants.denoise_image``, adaptive non-local means of Manjon et al. 2010) with the
    Rician noise model for Rician noise (Gaussian otherwise), on the voxel grid (unit spacing; patch and search radii
    in voxels). It takes no noise level: it estimates the noise itself, voxel by voxel, so ``uses_level`` is False and
    the level only picks the parameters tuned at the nearest level.

    Grid: search radius ``r`` 2 (ANTs' default) or 1, and ``shrink_factor`` 1 or 2 (which denoises a 2x downsampled
    copy and subtracts its upsampled noise estimate: faster, but it removes only coarse noise). A patch radius ``p``
    of 2 is left out: 3-6x slower than ``p=1`` and ~2 dB worse on IXI.
    """

    uses_level = False
    DEFAULT_GRID = {"r": (2, 1), "shrink_factor": (1, 2)}
    FIXED = {"shrink_factor": 1, "p": 1, "r": 2}

    def __init__(self, grid: Mapping[str, Sequence] | None = None) -> None:
        super().__init__("ants", grid)

    def run(self, noisy, noise, level, parameters):
        import ants

        image = ants.from_numpy(_volume(noisy))
        out = ants.denoise_image(image, shrink_factor=int(parameters["shrink_factor"]), p=int(parameters["p"]),
                                 r=int(parameters["r"]), noise_model="Rician" if noise == "rician" else "Gaussian")
        return _tensor(out.numpy())


class DipyNLMeans(GridTuned):
    """DIPY's 3D non-local means (``dipy.denoise.nlmeans.nlmeans``) with its Rician correction for Rician noise,
    given ``sigma = sigma_factor * level``.

    ``method="classic"`` (voxelwise NLM; ``patch_radius`` 1 = 3^3 patches, ``block_radius`` = search radius): DIPY
    1.12's default ``"blockwise"`` leaves the centre block out of its averages and comes out below the noisy input on
    IXI (see the module docstring); it can still be put in a grid. Grid: search radius 3 or 2 (5, DIPY's classic
    default, is ~5x slower than 3 and no better), ``sigma_factor`` 1.0 or 1.25.
    """

    uses_level = True
    DEFAULT_GRID = {"block_radius": (3, 2), "sigma_factor": (1.0, 1.25)}
    FIXED = {"method": "classic", "patch_radius": 1, "block_radius": 3, "sigma_factor": 1.0}

    def __init__(self, grid: Mapping[str, Sequence] | None = None) -> None:
        super().__init__("dipy_nlmeans", grid)

    def run(self, noisy, noise, level, parameters):
        from dipy.denoise.nlmeans import nlmeans

        x = _volume(noisy)
        sigma = float(parameters["sigma_factor"]) * float(level)
        if sigma <= 0:
            return _tensor(x)
        out = nlmeans(x, sigma, patch_radius=int(parameters["patch_radius"]),
                      block_radius=int(parameters["block_radius"]), rician=noise == "rician",
                      method=str(parameters["method"]))
        return _tensor(out)


METHODS: dict[str, type[GridTuned]] = {"bm4d": BM4D, "ants": ANTsDenoise, "dipy_nlmeans": DipyNLMeans}
