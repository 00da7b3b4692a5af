"""The noise-level map: the second input channel of noise-aware networks (FFDNet / DRUNet conditioning).

A noise-aware :class:`pipeline.networks.DiffNet` (``noise_map=True``) reads ``(2, *spatial)`` inputs: channel 0 the
image, channel 1 the noise level per voxel, sigma divided by the reference intensity (the same unit as the image
after :class:`pipeline.transforms.ScaleToReferenced`). :class:`NoiseMapd` builds that channel from the data
dictionary's ``noise_level`` entry, which the training noise transform, the user, or
:class:`pipeline.transforms.EstimateNoiseLeveld` sets.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import TransformBackends, convert_to_tensor

__all__ = ["NoiseMapd"]


class NoiseMapd(MapTransform):
    """Append the noise-level map to ``data[keys]``: ``(1, *spatial)`` -> ``(2, *spatial)``.

    Args:
        keys: the image(s) to extend, channel-first with one channel.
        level_key: the entry holding the level: a number (a constant map), or an array of the image's spatial
            shape, ``(*spatial)`` or ``(1, *spatial)``, for a spatially varying level. Levels are fractions of the
            reference intensity, finite and ``>= 0``.

    The output keeps the image's metadata (a MetaTensor stays one, so ``Invertd`` and ``SaveImaged`` still work);
    it is float32.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", level_key: str = "noise_level",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.level_key = level_key

    def _level_map(self, image: torch.Tensor, level, key: Hashable) -> torch.Tensor:
        spatial = tuple(image.shape[1:])
        values = torch.as_tensor(np.asarray(level, dtype=np.float32))
        if values.numel() == 1:
            values = values.reshape(1).expand(1, *spatial).clone()
        elif tuple(values.shape) == spatial:
            values = values[None]
        elif tuple(values.shape) != (1, *spatial):
            raise ValueError(f"{self.level_key} for {key!r} must be a number or an array of the image's spatial shape "
                             f"{list(spatial)}, got shape {list(values.shape)}")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError(f"{self.level_key} for {key!r} must be finite and >= 0 (a fraction of the reference "
                             f"intensity)")
        return values.to(image.device)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.level_key not in d:
            raise KeyError(f"NoiseMapd needs the noise level in data[{self.level_key!r}]: set it with the noise "
                           f"transform, by hand, or with EstimateNoiseLeveld")
        for key in self.key_iterator(d):
            image = convert_to_tensor(d[key], dtype=torch.float32, track_meta=isinstance(d[key], torch.Tensor)
                                      and hasattr(d[key], "meta"))
            if image.shape[0] != 1:
                raise ValueError(f"NoiseMapd expects data[{key!r}] with one channel, got shape {list(image.shape)}")
            d[key] = torch.cat([image, self._level_map(image, d[self.level_key], key)], dim=0)
        return d
