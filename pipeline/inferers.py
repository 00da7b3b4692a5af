"""``SliceContextInferer``: a 2.5D network (``DiffNet(context_slices=k)``) over a whole volume, axial slice by
axial slice, each with its neighbouring slices as input channels, as MONAI's ``SliceInferer`` runs a 2D network;
:func:`axial_slice_inferer` picks one of the two for a bundle's ``context_slices``."""

from __future__ import annotations

import torch
from monai.inferers import Inferer, SliceInferer
from monai.utils import convert_to_dst_type

from pipeline.transforms.slice_context import slices_with_context


class SliceContextInferer(Inferer):
    """``(B, C, H, W, D)`` -> ``(B, 1, H, W, D)``: the network sees ``sw_batch_size`` axial slices at a time in the
    :func:`pipeline.transforms.slices_with_context` layout (the slice, its ``2 * context_slices`` neighbours, the
    other channels such as the noise map) and returns each denoised slice."""

    def __init__(self, context_slices: int, sw_batch_size: int = 30) -> None:
        super().__init__()
        if not isinstance(context_slices, int) or context_slices < 1:
            raise ValueError(f"context_slices must be a positive integer, got {context_slices!r}")
        if not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
        self.context_slices, self.sw_batch_size = context_slices, sw_batch_size

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> torch.Tensor:
        if inputs.dim() != 5:
            raise ValueError(f"SliceContextInferer expects (B, C, H, W, D) volumes, got shape {list(inputs.shape)}")
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        depth, volumes = x.shape[-1], []
        for volume in x:
            slices = [network(slices_with_context(volume, self.context_slices, range(z, min(z + self.sw_batch_size,
                                                                                         depth))), *args, **kwargs)
                      for z in range(0, depth, self.sw_batch_size)]
            volumes.append(torch.cat(slices).permute(1, 2, 3, 0))
        return convert_to_dst_type(torch.stack(volumes), inputs)[0]


def axial_slice_inferer(context_slices: int = 0, sw_batch_size: int = 30) -> Inferer:
    """The whole-volume inferer of a 2D network (``context_slices`` 0: MONAI's ``SliceInferer`` along the axial,
    last, axis) or of a 2.5D one (``k > 0``: :class:`SliceContextInferer`), ``sw_batch_size`` slices at a time."""
    if isinstance(context_slices, bool) or not isinstance(context_slices, int) or context_slices < 0:
        raise ValueError(f"context_slices must be a non-negative integer, got {context_slices!r}")
    if context_slices:
        return SliceContextInferer(context_slices, sw_batch_size)
    return SliceInferer(roi_size=[-1, -1], spatial_dim=2, sw_batch_size=sw_batch_size, progress=False)
