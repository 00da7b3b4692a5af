"""PSNR and SSIM per image, over the whole image or inside a (head) mask.

Intensities are normalised so the reference intensity is 1.0, so PSNR uses ``peak = 1.0`` and SSIM
``data_range = 1.0``. Whole-image values come straight from MONAI's ``PSNRMetric`` / ``SSIMMetric``; masked values
use the same formulas restricted to the voxels of the mask (for SSIM: the local SSIM map of MONAI's
``compute_ssim_and_cs``, averaged over mask voxels whose window lies inside the image).
"""

from __future__ import annotations

import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ssim_and_cs

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _check(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {list(pred.shape)} vs {list(target.shape)}")
    if pred.dim() not in (4, 5):
        raise ValueError(f"expected (B, C, H, W[, D]) tensors, got shape {list(pred.shape)}")
    if mask is not None and mask.shape != target.shape:
        raise ValueError(f"mask shape {list(mask.shape)} differs from image shape {list(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, peak: float = 1.0) -> torch.Tensor:
    """PSNR in dB per batch item, shape ``(B,)``; inside ``mask`` (same shape, non-zero = inside) when given."""
    _check(pred, target, mask)
    pred, target = pred.float(), target.float()
    if mask is None:
        return PSNRMetric(max_val=peak, reduction="none")(pred, target).reshape(-1)
    m = (mask > 0).float()
    mse = ((pred - target) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return 10 * torch.log10(peak**2 / mse)


def _ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float) -> torch.Tensor:
    spatial_dims = pred.dim() - 2
    ssim_map, _ = compute_ssim_and_cs(pred.float(), target.float(), spatial_dims, [SSIM_WINDOW] * spatial_dims,
                                      [SSIM_SIGMA] * spatial_dims, data_range=data_range)
    return ssim_map


def _mean_inside(ssim_map: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # the SSIM map is the 'valid' part of the convolution: crop the mask to the same window centres
    half = SSIM_WINDOW // 2
    m = (mask > 0).float()
    for axis in range(mask.dim() - 2):
        m = m.narrow(2 + axis, half, m.size(2 + axis) - 2 * half)
    return (ssim_map * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
         data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per batch item, shape ``(B,)`` (Gaussian window 11, sigma 1.5); inside ``mask`` when given."""
    _check(pred, target, mask)
    if mask is None:
        metric = SSIMMetric(pred.dim() - 2, data_range=data_range, win_size=SSIM_WINDOW, kernel_sigma=SSIM_SIGMA,
                            reduction="none")
        return metric(pred.float(), target.float()).reshape(-1)
    return _mean_inside(_ssim_map(pred, target, data_range), mask)


def ssim_inside_and_whole(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          data_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ssim(pred, target, mask), ssim(pred, target))`` from one SSIM map: half the work of two calls."""
    _check(pred, target, mask)
    ssim_map = _ssim_map(pred, target, data_range)
    return _mean_inside(ssim_map, mask), ssim_map.flatten(1).mean(1)
