"""2.5D input: an axial slice with its neighbouring slices as extra channels, for 2D networks that see 3D context
(``DiffNet(context_slices=k)``). One layout is used for training patches (:class:`SlicesWithContextd`) and for
whole volumes (:class:`pipeline.inferers.SliceContextInferer`): channel 0 the slice, then slices ``z-k .. z-1,
z+1 .. z+k`` of channel 0, then the other input channels (the noise map) at ``z``. Beyond the volume's first and
last slice the nearest slice is repeated.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


def slices_with_context(volume: torch.Tensor, context_slices: int, slices: Sequence[int]) -> torch.Tensor:
    """``(C, H, W, D)`` -> ``(len(slices), 1 + 2k + C - 1, H, W)``: each axial slice ``z`` of ``slices`` with its
    ``k = context_slices`` neighbours on either side (of channel 0) and the other channels at ``z``."""
    if volume.dim() != 4:
        raise ValueError(f"expected a (C, H, W, D) volume, got shape {list(volume.shape)}")
    depth = volume.shape[-1]
    z = torch.as_tensor(list(slices), dtype=torch.long, device=volume.device)
    offsets = [o for o in range(-context_slices, context_slices + 1) if o != 0]
    parts = [volume[:1, ..., z]] + [volume[:1, ..., (z + o).clamp(0, depth - 1)] for o in offsets]
    parts.append(volume[1:, ..., z])
    return torch.cat(parts, dim=0).permute(3, 0, 1, 2)


class SlicesWithContextd(MapTransform):
    """Training patches of ``2k + 1`` axial slices ``(C, h, w, 2k + 1)`` -> 2D items: ``keys`` (the noisy input,
    with its noise map if any) become ``(1 + 2k + C - 1, h, w)`` in the :func:`slices_with_context` layout, and
    ``centre_keys`` (the clean target, the head mask) their middle slice ``(C, h, w)``."""

    def __init__(self, keys: KeysCollection, context_slices: int, centre_keys: KeysCollection = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not isinstance(context_slices, int) or context_slices < 1:
            raise ValueError(f"context_slices must be a positive integer, got {context_slices!r}")
        self.context_slices = context_slices
        self.centre_keys = [centre_keys] if isinstance(centre_keys, str) else list(centre_keys)

    def _depth(self, x, key) -> None:
        if x.dim() != 4 or x.shape[-1] != 2 * self.context_slices + 1:
            raise ValueError(f"SlicesWithContextd expects data[{key!r}] of shape (C, h, w, "
                             f"{2 * self.context_slices + 1}), got {list(x.shape)}")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        k = self.context_slices
        for key in self.key_iterator(d):
            self._depth(d[key], key)
            d[key] = slices_with_context(torch.as_tensor(d[key]), k, [k])[0]
        for key in self.centre_keys:
            self._depth(d[key], key)
            d[key] = torch.as_tensor(d[key])[..., k]
        return d
