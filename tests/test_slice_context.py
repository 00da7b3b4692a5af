"""2.5D DiffNet: the slice-with-neighbours layout, its training patches from a real IXI volume, and the inferer that
runs it over a whole volume."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer

from pipeline.data import slice_transforms_2d
from pipeline.inferers import SliceContextInferer, axial_slice_inferer
from pipeline.networks import DiffNet
from pipeline.transforms import SlicesWithContextd, slices_with_context


def test_layout_is_slice_then_neighbours_then_other_channels():
    volume = torch.stack([torch.arange(5.0).expand(2, 3, 5), 10 + torch.arange(5.0).expand(2, 3, 5)])  # (2,2,3,5)
    out = slices_with_context(volume, 2, [0, 2, 4])
    assert out.shape == (3, 1 + 4 + 1, 2, 3)
    # per slice z: [z, z-2, z-1, z+1, z+2] of channel 0 (clamped at the ends), then channel 1 at z
    assert out[:, :, 0, 0].tolist() == [[0, 0, 0, 1, 2, 10], [2, 0, 1, 3, 4, 12], [4, 2, 3, 4, 4, 14]]


def test_context_diffnet_takes_neighbours_and_map():
    net = DiffNet(context_slices=2, noise_map=True, guidance=True)
    assert net.in_channels == 6
    x = torch.rand(3, 6, 24, 24)
    assert net(x).shape == (3, 1, 24, 24)
    assert torch.allclose(net(x), x[:, :1])  # untrained free mode: the identity on the slice
    with pytest.raises(ValueError, match="4 neighbouring slices and noise map"):
        net(torch.rand(3, 2, 24, 24))
    with pytest.raises(ValueError, match="context_slices"):
        DiffNet(3, context_slices=1)
    assert DiffNet.paper().in_channels == 1 and sum(p.numel() for p in DiffNet.paper().parameters()) == 101310


def test_inferer_matches_running_the_network_slice_by_slice():
    torch.manual_seed(0)
    net = DiffNet(num_layers=2, estimator_channels=8, guidance=True, noise_map=True, context_slices=1).eval()
    for p in net.parameters():  # not the identity: random filters
        torch.nn.init.normal_(p, std=0.05)
    volume = torch.rand(1, 2, 16, 20, 7)
    with torch.no_grad():
        out = SliceContextInferer(1, sw_batch_size=3)(volume, net)
        expected = torch.stack([net(slices_with_context(volume[0], 1, [z]))[0] for z in range(7)], dim=-1)
    assert out.shape == (1, 1, 16, 20, 7)
    assert torch.allclose(out[0], expected, atol=1e-6)
    # without context the same network layout reduces to MONAI's SliceInferer
    flat = DiffNet(num_layers=2, estimator_channels=8, noise_map=True).eval()
    with torch.no_grad():
        assert torch.allclose(SliceContextInferer(1)(volume, lambda x: flat(x[:, [0, 3]])),
                              SliceInferer(roi_size=[-1, -1], spatial_dim=2, sw_batch_size=3)(volume, flat), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, C, H, W, D\)"):
        SliceContextInferer(1)(volume[0], net)


def test_axial_slice_inferer_picks_monai_slice_inferer_in_2d_and_the_context_inferer_in_2_5d():
    flat, volume = DiffNet(num_layers=2, estimator_channels=8, noise_map=True).eval(), torch.rand(1, 2, 16, 20, 7)
    inferer = axial_slice_inferer(0, sw_batch_size=4)
    assert isinstance(inferer, SliceInferer) and inferer.sw_batch_size == 4
    with torch.no_grad():
        assert torch.allclose(inferer(volume, flat), torch.stack([flat(volume[..., z]) for z in range(7)], dim=-1),
                              atol=1e-6)
    context = axial_slice_inferer(2)
    assert isinstance(context, SliceContextInferer) and context.context_slices == 2
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match="context_slices"):
            axial_slice_inferer(bad)


def test_training_patches_are_three_slices_thick(ixi_dir):
    path = sorted(ixi_dir.glob("*.nii.gz"))[0]
    items = slice_transforms_2d((48, 40), samples_per_volume=3, level_range=(0.1, 0.1), noise_map=True,
                                context_slices=1)({"label": str(path)})
    assert len(items) == 3
    for item in items:
        image, label, mask = (torch.as_tensor(item[k]) for k in ("image", "label", "mask"))
        assert image.shape == (4, 48, 40) and label.shape == mask.shape == (1, 48, 40)
        assert torch.allclose(image[3], torch.full_like(image[3], 0.1))  # the noise map, last
        head = mask[0] > 0
        noise = (image[0] - label[0])[head]
        assert 0.05 < noise.std().item() < 0.2  # the slice is the noisy label
        # its neighbours are other slices (anatomy changes), with their own noise
        assert (image[1] - image[0])[head].abs().mean() > 0.05 and (image[2] - image[0])[head].abs().mean() > 0.05


def test_slices_with_context_refuses_wrong_thickness():
    with pytest.raises(ValueError, match=r"\(C, h, w, 3\)"):
        SlicesWithContextd("image", 1)({"image": torch.rand(1, 8, 8, 5)})
