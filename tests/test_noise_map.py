"""The noise-level map as a second input channel: DiffNet and the U-Net (2D and 3D, constant and spatially
varying maps), the NoiseMapd transform, the multi-model training noise and the log-MSE loss."""

import numpy as np
import pytest
import torch

from test_diffnet import randomise

from pipeline.losses import LogMSELoss
from pipeline.networks import DiffNet, residual_unet
from pipeline.transforms import NoiseMapd, RandMRINoised


def test_paper_preset_stays_the_papers_one_channel_network():
    net = DiffNet.paper(2)
    assert sum(p.numel() for p in net.parameters()) == 101_310
    assert net.in_channels == 1 and not net.noise_map
    with pytest.raises(ValueError, match=r"\(B, 1, \*2 spatial dims\)"):
        net(torch.zeros(1, 2, 16, 16))


@pytest.mark.parametrize("spatial_dims, shape", [(2, (20, 24)), (3, (12, 14, 10))])
@pytest.mark.parametrize("guidance", [False, True])
def test_noise_map_channel_is_used_constant_or_spatially_varying(spatial_dims, shape, guidance):
    net = randomise(DiffNet(spatial_dims, num_layers=2, estimator_channels=8, guidance=guidance, noise_map=True),
                    scale=0.05)
    assert net.in_channels == 2 and (not guidance or net.guidance.in_channels == 2)
    image = torch.rand(2, 1, *shape)
    constant = torch.full_like(image, 0.05)
    varying = 0.05 + 0.1 * torch.linspace(0, 1, shape[0]).reshape(1, 1, shape[0], *([1] * (spatial_dims - 1)))
    varying = varying.expand_as(image)
    with torch.no_grad():
        out_constant = net(torch.cat([image, constant], 1))
        out_higher = net(torch.cat([image, constant * 3], 1))
        out_varying = net(torch.cat([image, varying], 1))
    assert out_constant.shape == (2, 1, *shape)
    assert not torch.allclose(out_constant, out_higher)  # the level changes the filters
    assert not torch.allclose(out_constant, out_varying)
    with pytest.raises(ValueError, match="image and noise map"):
        net(image)


def test_noise_map_diffnet_and_unet_train_and_script():
    for net in (DiffNet(2, num_layers=2, estimator_channels=8, guidance=True, noise_map=True),
                residual_unet("small", 2, noise_map=True)):
        x = torch.rand(2, 2, 32, 32)
        out = net(x)
        assert out.shape == (2, 1, 32, 32)
        LogMSELoss()(out, x[:, :1] * 0.9).backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    scripted = torch.jit.script(DiffNet(2, num_layers=2, estimator_channels=8, guidance=True, noise_map=True).eval())
    x = torch.rand(1, 2, 24, 24)
    assert scripted(x).shape == (1, 1, 24, 24)


def test_residual_unet_with_noise_map_adds_its_correction_to_the_image_channel():
    net = residual_unet("small", 2, noise_map=True).eval()
    torch.nn.init.zeros_(net.unet.final_conv.weight)
    torch.nn.init.zeros_(net.unet.final_conv.bias)
    x = torch.rand(1, 2, 30, 30)
    assert torch.equal(net(x), x[:, :1])  # a zero correction returns the image, not the map


def test_noise_mapd_adds_the_level_as_a_channel_and_keeps_metadata():
    from monai.data import MetaTensor

    image = MetaTensor(torch.rand(1, 6, 5, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = NoiseMapd()({"image": image, "noise_level": 0.07})["image"]
    assert out.shape == (2, 6, 5, 4) and isinstance(out, MetaTensor)
    assert torch.equal(out[0], image[0]) and torch.allclose(out[1], torch.full((6, 5, 4), 0.07))
    assert torch.equal(out.affine, image.affine)
    spatial = np.random.RandomState(0).uniform(0.01, 0.2, (6, 5, 4)).astype(np.float32)
    out = NoiseMapd()({"image": image, "noise_level": spatial})["image"]
    assert np.allclose(out[1].numpy(), spatial)


@pytest.mark.parametrize("level, message", [((3, 3), "spatial shape"), (-0.1, ">= 0"), (float("nan"), "finite")])
def test_noise_mapd_refuses_bad_levels(level, message):
    with pytest.raises(ValueError, match=message):
        NoiseMapd()({"image": torch.rand(1, 4, 4), "noise_level": level})
    with pytest.raises(KeyError, match="noise_level"):
        NoiseMapd()({"image": torch.rand(1, 4, 4)})


def test_training_noise_draws_the_model_per_call_and_records_the_level():
    clean = torch.full((1, 64, 64), 0.0)  # zero signal: Rician noise is never negative, Gaussian is
    noiser = RandMRINoised(noise=["rician", "gaussian"], level_range=(0.05, 0.05)).set_random_state(0)
    negative = [bool((noiser({"label": clean})["image"] < 0).any()) for _ in range(20)]
    assert 0 < sum(negative) < 20
    assert noiser({"label": clean})["noise_level"] == pytest.approx(0.05)


def test_log_mse_loss_is_minus_a_tenth_of_the_mean_psnr():
    target = torch.zeros(2, 1, 8, 8)
    pred = torch.stack([torch.full((1, 8, 8), 0.1), torch.full((1, 8, 8), 0.01)])
    assert LogMSELoss(eps=1e-12)(pred, target).item() == pytest.approx(-(20 + 40) / 2 / 10, rel=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        LogMSELoss()(pred, target[:1])
