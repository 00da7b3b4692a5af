"""Blind noise estimation for magnitude MRI: the noise sigma of a scan, without a reference.

Two estimators, the first trusted when it can be:

1. **Background (primary)**: in the air around the head a magnitude image is pure noise, Rayleigh distributed for
   Rician noise, so ``E[M^2] = 2 sigma^2`` there. Following Aja-Fernandez et al. (IEEE TIP 2008, "Noise
   estimation in single- and multiple-coil MRI"), the local second moment ``mean(M^2)`` over a small window is
   computed at every voxel; the background, the largest homogeneous region, is the mode of its distribution, so
   ``sigma = sqrt(mode / 2)``. No head mask is needed, so it holds at noise levels where thresholding fails.
   A background with many negative values is not magnitude data but Gaussian noise (``E[M^2] = sigma^2``).
2. **Signal region (fallback)** for backgrounds that were zeroed, masked or cropped away (skull-stripped images):
   the robust median absolute deviation of the finest diagonal Haar wavelet coefficients (Donoho 1995), which
   smooth anatomy barely touches, over voxels well inside the object, where Rician noise is close to Gaussian.

If neither can be trusted (no background and too little object), a :class:`NoiseEstimateWarning` says so and the
estimate is ``None``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import numpy as np
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_numpy
from scipy import ndimage as ndi

__all__ = ["EstimateNoiseLevel", "EstimateNoiseLeveld", "NoiseEstimate", "NoiseEstimateWarning",
           "RecordNoiseLeveld", "DESCRIPTION_KEY"]

DESCRIPTION_KEY = "description"  # metadata key that AtomicSaveImage writes to a NIfTI header's descrip field

# Haar diagonal coefficient at the finest scale: variance sigma^2 for white noise, ~0 for smooth anatomy
_MAD_TO_SIGMA = 1.4826


class NoiseEstimateWarning(UserWarning):
    """The noise level of a volume could not be estimated reliably."""


@dataclass
class NoiseEstimate:
    """``sigma`` in the image's intensity units (None if unknown), the ``method`` that gave it ("background",
    "signal" or "none") and the number of voxels it rests on."""

    sigma: float | None
    method: str
    voxels: int


def _box_mean(x: np.ndarray, size: int) -> np.ndarray:
    return ndi.uniform_filter(x, size=size, mode="nearest")


def background_sigma(image: np.ndarray, window: int = 5, min_fraction: float = 0.05) -> NoiseEstimate:
    """Mode of the local second moments (see the module docstring) of a ``(*spatial)`` magnitude image.

    Trusted when the voxels whose local second moment lies within +-50 % of the mode make up at least
    ``min_fraction`` of the image and the mode is not an exactly-zero background.
    """
    x = image.astype(np.float64, copy=False)
    zero = np.count_nonzero(x == 0) / x.size
    if zero > 0.2:  # a zeroed (masked, skull-stripped) background carries no noise to measure
        return NoiseEstimate(None, "none", 0)
    moment = _box_mean(x * x, window)
    positive = moment[moment > 0]
    if positive.size == 0:
        return NoiseEstimate(None, "none", 0)
    # the mode, on a log scale: the background is one narrow peak whatever the noise level
    logs = np.log(positive)
    low, high = np.percentile(logs, [0.5, 99.5])
    counts, edges = np.histogram(logs, bins=400, range=(low, high))
    counts = ndi.gaussian_filter1d(counts.astype(np.float64), 2)
    peak = int(np.argmax(counts))
    mode = float(np.exp(0.5 * (edges[peak] + edges[peak + 1])))
    near = (moment > 0.5 * mode) & (moment < 1.5 * mode)
    voxels = int(np.count_nonzero(near))
    if voxels < min_fraction * x.size:
        return NoiseEstimate(None, "none", voxels)
    n = window ** x.ndim
    mode *= n / (n - 1)  # the mode of a mean of n exponentials lies at (n - 1) / n of their mean
    gaussian = np.count_nonzero(x[near] < 0) > 0.2 * voxels  # magnitude data are never negative
    return NoiseEstimate(float(np.sqrt(mode if gaussian else mode / 2)), "background", voxels)


def _haar_diagonal(x: np.ndarray) -> np.ndarray:
    """Finest-scale diagonal Haar coefficients (one per 2x2(x2) block), unit gain for white noise."""
    blocks = x[tuple(slice(0, s - s % 2) for s in x.shape)]
    out = blocks
    for axis in range(x.ndim):
        even = np.take(out, np.arange(0, out.shape[axis], 2), axis=axis)
        odd = np.take(out, np.arange(1, out.shape[axis], 2), axis=axis)
        out = (even - odd) / np.sqrt(2.0)
    return out


def signal_sigma(image: np.ndarray, min_voxels: int = 2000) -> NoiseEstimate:
    """Robust MAD of the finest diagonal Haar coefficients over blocks well inside the object (see the module
    docstring). The object is where a smoothed image exceeds 20 % of its 99th percentile, eroded by two voxels,
    and of it the flatter half (gradient magnitude below its median): there, at the SNR of usable scans, Rician
    noise is close to Gaussian with the same sigma, and anatomy adds least to the coefficients."""
    x = image.astype(np.float64, copy=False)
    smooth = ndi.gaussian_filter(x, 1.5)
    high = np.percentile(smooth, 99)
    if high <= 0:
        return NoiseEstimate(None, "none", 0)
    inside = ndi.binary_erosion(smooth > 0.2 * high, iterations=2)
    # keep the flattest half of the object: edges of anatomy leak into the diagonal coefficients at low noise
    gradient = ndi.gaussian_gradient_magnitude(x, 2.0)
    if inside.any():
        inside &= gradient <= np.median(gradient[inside])
    detail = _haar_diagonal(x)
    block_inside = np.ones(detail.shape, dtype=bool)
    for offsets in np.ndindex(*(2,) * x.ndim):  # a block is inside when all of its voxels are
        index = tuple(slice(o, s - s % 2, 2) for o, s in zip(offsets, x.shape))
        block_inside &= inside[index]
    values = detail[block_inside]
    if values.size < min_voxels:
        return NoiseEstimate(None, "none", int(values.size))
    mad = np.median(np.abs(values - np.median(values)))
    return NoiseEstimate(float(_MAD_TO_SIGMA * mad), "signal", int(values.size))


class EstimateNoiseLevel(Transform):
    """Estimate the noise sigma of a channel-first magnitude image ``(1, *spatial)`` (2D or 3D).

    Returns a :class:`NoiseEstimate` with ``sigma`` in the image's own intensity units: after
    :class:`pipeline.transforms.ScaleToReferenced` that is the noise level, a fraction of the reference intensity.
    Warns (:class:`NoiseEstimateWarning`) when neither estimator can be trusted.
    """

    def __init__(self, window: int = 5, min_background_fraction: float = 0.05) -> None:
        if int(window) < 2:
            raise ValueError(f"window must be at least 2 voxels, got {window}")
        if not 0 < min_background_fraction < 1:
            raise ValueError(f"min_background_fraction must be in (0, 1), got {min_background_fraction}")
        self.window, self.min_background_fraction = int(window), float(min_background_fraction)

    def __call__(self, img: NdarrayOrTensor, name: str = "image") -> NoiseEstimate:
        arr = convert_to_numpy(img)
        if arr.ndim not in (3, 4) or arr.shape[0] != 1:
            raise ValueError(f"{name}: noise estimation expects a one-channel (1, H, W) or (1, H, W, D) image, got "
                             f"shape {list(arr.shape)}")
        estimate = background_sigma(arr[0], self.window, self.min_background_fraction)
        if estimate.sigma is None:
            estimate = signal_sigma(arr[0])
        if estimate.sigma is None:
            warnings.warn(f"{name}: the noise level cannot be estimated (no noise-only background and too little "
                          f"uniform tissue); give it with --noise_level", NoiseEstimateWarning, stacklevel=2)
        return estimate


def _name(img, key) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj") or key)


class EstimateNoiseLeveld(MapTransform):
    """Set ``data[level_key]`` to the noise level of ``data[key]``: ``level`` when given (by the user), else the
    level already in the data (e.g. from a noise transform), else the estimate of :class:`EstimateNoiseLevel`.

    Run it after :class:`pipeline.transforms.ScaleToReferenced`, so the estimate is a fraction of the reference
    intensity. Also records ``data[method_key]``: "background", "signal", "given", or "default" when nothing could
    be estimated and ``default_level`` is used (with a :class:`NoiseEstimateWarning`), and logs the level per file.
    """

    def __init__(self, keys="image", level: float | None = None, level_key: str = "noise_level",
                 method_key: str = "noise_level_method", default_level: float = 0.05,
                 allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        if level is not None and not (np.isfinite(float(level)) and float(level) >= 0):
            raise ValueError(f"noise level must be a finite fraction of the reference intensity >= 0, got {level}")
        self.level = None if level is None else float(level)
        self.level_key, self.method_key = level_key, method_key
        self.default_level = float(default_level)
        self.estimator = EstimateNoiseLevel(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            name = _name(d[key], key)
            if self.level is not None:
                d[self.level_key], d[self.method_key] = self.level, "given"
            elif d.get(self.level_key) is not None:
                d[self.method_key] = d.get(self.method_key, "given")
            else:
                estimate = self.estimator(d[key], name=name)
                if estimate.sigma is None:
                    warnings.warn(f"{name}: using the default noise level {self.default_level:g}",
                                  NoiseEstimateWarning, stacklevel=2)
                    d[self.level_key], d[self.method_key] = self.default_level, "default"
                else:
                    d[self.level_key], d[self.method_key] = estimate.sigma, estimate.method
            logging.getLogger("pipeline").info(f"{name}: noise level {float(d[self.level_key]):.2%} of the reference "
                                               f"intensity ({d[self.method_key]})")
        return d


class RecordNoiseLeveld(MapTransform):
    """Write the noise level used into ``data[keys].meta["description"]`` (``"denoised; noise level 0.0512
    (background)"``), which :class:`pipeline.transforms.AtomicSaveImage` stores in a NIfTI header's ``descrip``."""

    def __init__(self, keys="pred", level_key: str = "noise_level", method_key: str = "noise_level_method",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.level_key, self.method_key = level_key, method_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if d.get(self.level_key) is None:
            return d
        text = f"denoised; noise level {float(d[self.level_key]):.4f} ({d.get(self.method_key, 'given')})"
        for key in self.key_iterator(d):
            if hasattr(d[key], "meta"):
                d[key].meta[DESCRIPTION_KEY] = text[:79]  # the NIfTI field holds 80 bytes
        return d
