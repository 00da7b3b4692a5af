"""Networks: DiffNet (learned anisotropic diffusion), its guidance encoder, Perona-Malik and the U-Net baseline."""

from pipeline.networks.diffnet import DiffNet
from pipeline.networks.guidance import GuidanceEncoder
from pipeline.networks.perona_malik import PeronaMalik
from pipeline.networks.unet import ResidualUNet, residual_unet

__all__ = ["DiffNet", "GuidanceEncoder", "PeronaMalik", "ResidualUNet", "residual_unet"]
