"""Residual U-Net baseline (Jin et al., "Deep Convolutional Neural Network for Inverse Problems in Imaging",
IEEE TIP 2017, the FBPConvNet): ``output = input + U-Net(input)``, built on MONAI's ``BasicUNet``.

The paper preset reproduces the FBPConvNet layout that Arridge & Hauptmann compared against: five levels of
64-128-256-512-1024 features, two 3x3 conv + batch norm + ReLU blocks per level, and 3x3 stride-2 transposed
convolutions for upsampling (MONAI's ``BasicUNet`` uses 2x2 ones; they are swapped for 3x3 here). It has
34,634,625 parameters in 2D; Arridge & Hauptmann report 34,512,705 for theirs (0.35 % fewer).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets import BasicUNet
from torch import nn

PRESETS: Dict[str, Sequence[int]] = {
    "paper": (64, 128, 256, 512, 1024),
    "small": (16, 32, 64, 128, 256),
}


class ResidualUNet(nn.Module):
    """``(B, C, *spatial)`` -> ``(B, 1, *spatial)``: the image (channel 0) plus a U-Net's correction.

    ``features`` are the five encoder widths. ``noise_map=True`` takes ``C = 2``: the image and its noise-level
    map, as :class:`pipeline.networks.DiffNet` does, so both learned methods are told the same. Any spatial size works: the input is replicate-padded up to a
    multiple of 16 and the output cropped back, so odd sizes such as 90 axial slices need no resampling.
    """

    def __init__(self, spatial_dims: int = 2, features: Sequence[int] = PRESETS["paper"], norm: str = "batch",
                 noise_map: bool = False) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if len(features) != 5 or min(features) < 1:
            raise ValueError(f"features must be five positive encoder widths, got {features!r}")
        self.spatial_dims = spatial_dims
        self.noise_map = bool(noise_map)
        self.in_channels = 2 if noise_map else 1
        self.multiple = 16  # four stride-2 poolings
        self.unet = BasicUNet(spatial_dims, self.in_channels, 1, features=(*features, features[0]), act="relu", norm=norm)
        for name in ("upcat_4", "upcat_3", "upcat_2", "upcat_1"):
            upsample = getattr(self.unet, name).upsample
            old = upsample.deconv
            upsample.deconv = Conv[Conv.CONVTRANS, spatial_dims](
                old.in_channels, old.out_channels, kernel_size=3, stride=2, padding=1, output_padding=1
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.size(1) != self.in_channels:
            raise ValueError(f"ResidualUNet({self.spatial_dims}D) expects input of shape (B, {self.in_channels}, "
                             f"*{self.spatial_dims} spatial dims), got {list(x.shape)}")
        pad: List[int] = []
        for axis in range(self.spatial_dims - 1, -1, -1):  # F.pad lists the last axis first
            pad += [0, (self.multiple - x.size(2 + axis) % self.multiple) % self.multiple]
        correction = self.unet(F.pad(x, pad, mode="replicate") if sum(pad) > 0 else x)
        for axis in range(self.spatial_dims):
            correction = correction.narrow(2 + axis, 0, x.size(2 + axis))
        return x.narrow(1, 0, 1) + correction


def residual_unet(preset: str = "small", spatial_dims: int = 2, **kwargs) -> ResidualUNet:
    """Build the baseline by name: ``"paper"`` (34,634,625 parameters in 2D) or ``"small"`` (for CPU)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
    return ResidualUNet(spatial_dims=spatial_dims, features=PRESETS[preset], **kwargs)
