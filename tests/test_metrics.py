"""Masked and whole-image PSNR / SSIM agree with MONAI's metrics and with their definitions."""

import math

import pytest
import torch
from monai.metrics import PSNRMetric, SSIMMetric

from pipeline.metrics import psnr, ssim, ssim_inside_and_whole


def images(shape=(2, 1, 40, 36), seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=gen)
    return target + 0.05 * torch.randn(shape, generator=gen), target


@pytest.mark.parametrize("shape", [(2, 1, 40, 36), (1, 1, 20, 18, 16)])
def test_full_mask_equals_monai_whole_image_metrics(shape):
    pred, target = images(shape)
    ones = torch.ones_like(target)
    assert torch.allclose(psnr(pred, target, ones), PSNRMetric(1.0, reduction="none")(pred, target).reshape(-1))
    monai_ssim = SSIMMetric(len(shape) - 2, data_range=1.0, reduction="none")(pred, target).reshape(-1)
    assert torch.allclose(ssim(pred, target, ones), monai_ssim, atol=1e-6)
    assert torch.allclose(ssim(pred, target), monai_ssim, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 40, 36), (1, 1, 20, 18, 16)])
def test_one_ssim_map_gives_the_masked_and_the_whole_image_ssim(shape):
    pred, target = images(shape)
    mask = torch.zeros_like(target)
    mask[:, :, : shape[2] // 2] = 1
    pred = pred + 0.2 * mask * torch.randn_like(pred)  # noisier inside the mask
    inside, whole = ssim_inside_and_whole(pred, target, mask)
    assert torch.allclose(inside, ssim(pred, target, mask), atol=1e-6)
    assert torch.allclose(whole, ssim(pred, target), atol=1e-6)
    assert (inside < whole - 0.05).all()  # the mask does change the mean


def test_masked_psnr_counts_only_mask_voxels():
    target = torch.zeros(1, 1, 10, 10)
    pred = target.clone()
    pred[..., :5, :] = 0.1  # error only in the top half
    mask = torch.zeros_like(target)
    mask[..., :5, :] = 1
    assert psnr(pred, target, mask).item() == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    assert psnr(pred, target).item() == pytest.approx(10 * math.log10(1 / 0.005), abs=1e-3)


def test_ssim_is_one_for_identical_images_and_lower_with_noise():
    pred, target = images()
    assert torch.allclose(ssim(target, target), torch.ones(2), atol=1e-5)
    assert (ssim(pred, target) < 0.99).all()


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
