"""The forward degradation of the "invert nonlinear diffusion" experiment (Arridge & Hauptmann, "Networks for
Nonlinear Diffusion Problems in Imaging", J. Math. Imaging Vis. 2020, Figs. 6-10): a few explicit Perona-Malik steps,
then optional additive Gaussian noise. The network is trained to recover the clean image from the result.

Physics only: the diffusion itself is :class:`pipeline.networks.PeronaMalik`, so the degradation and the baseline
share one implementation.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Optional

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from pipeline.networks.perona_malik import PeronaMalik

__all__ = ["PeronaMalikDegrade", "PeronaMalikDegraded"]


class PeronaMalikDegrade(Transform):
    """Perona-Malik diffusion of one channel-first image ``(C, *spatial)`` -> same shape (deterministic).

    Values are intensities (normalised so the reference intensity is 1.0, which is the scale ``kappa`` refers to).
    The output keeps the input's type (numpy array, tensor or MetaTensor with its metadata) and its floating dtype;
    integer inputs come back as float32. Computed in float64 for float64 inputs, float32 otherwise.

    Args:
        spatial_dims: 2 or 3; ``None`` infers it from the input as ``ndim - 1``.
        num_iter, kappa, dt, diffusivity: as in :class:`~pipeline.networks.PeronaMalik` (4 steps as in the paper).
    """

    backend = [torch.Tensor, np.ndarray]

    def __init__(
        self,
        spatial_dims: Optional[int] = None,
        num_iter: int = 4,
        kappa: float = 0.1,
        dt: Optional[float] = None,
        diffusivity: str = "rational",
    ) -> None:
        if spatial_dims is not None and spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2, 3 or None (inferred), got {spatial_dims!r}.")
        self.spatial_dims = spatial_dims
        # one module per possible dimensionality, built now so bad arguments fail here and not at the first image
        self.diffusion = {
            d: PeronaMalik(d, num_iter=num_iter, kappa=kappa, dt=dt, diffusivity=diffusivity)
            for d in ((spatial_dims,) if spatial_dims else (2, 3))
        }

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        spatial_dims = self.spatial_dims or img.ndim - 1
        if img.ndim != spatial_dims + 1 or spatial_dims not in self.diffusion:
            raise ValueError(
                f"expected a channel-first image (C, *spatial) with 2 or 3 spatial dims "
                f"(spatial_dims={self.spatial_dims}), got shape {tuple(img.shape)}."
            )
        u = convert_to_tensor(img, track_meta=False)
        floating = torch.is_floating_point(u)
        # at least float32: half precision would lose the small face differences that PM works on
        work = torch.float64 if u.dtype == torch.float64 else torch.float32
        with torch.no_grad():
            out = self.diffusion[spatial_dims](u.to(work).unsqueeze(0))[0]
        out_dtype = u.dtype if floating else torch.float32
        return convert_to_dst_type(out, img, dtype=out_dtype)[0]


class PeronaMalikDegraded(MapTransform, Randomizable):
    """``{source_key: clean}`` -> ``{target_key: degraded, source_key: clean}``: Perona-Malik, then Gaussian noise.

    ``degraded = PM^num_iter(clean) + noise_sigma * N(0, 1)`` per voxel, with intensities normalised so the reference
    intensity is 1.0 (``noise_sigma`` is a fraction of it; 0 gives the noise-free forward model of the paper). The
    clean image is left untouched; the degraded one keeps its type, dtype and metadata (affine, spacing).

    The noise comes from this transform's own random state: the same ``seed`` gives bit-identical outputs for the same
    sequence of inputs. (MONAI's ``DataLoader`` reseeds ``Randomizable`` transforms in each worker; use
    ``num_workers=0`` or a cached dataset where identical noise across runs matters.)

    Args:
        source_key: key of the clean image ``(C, *spatial)``.
        target_key: key the degraded image is written to.
        spatial_dims, num_iter, kappa, dt, diffusivity: as in :class:`PeronaMalikDegrade`.
        noise_sigma: standard deviation of the additive Gaussian noise, ``>= 0``.
        seed: seed of the noise generator (``None``: unseeded).
        allow_missing_keys: skip items without ``source_key`` instead of raising.
    """

    def __init__(
        self,
        source_key: Hashable = "label",
        target_key: Hashable = "image",
        spatial_dims: Optional[int] = None,
        num_iter: int = 4,
        kappa: float = 0.1,
        dt: Optional[float] = None,
        diffusivity: str = "rational",
        noise_sigma: float = 0.0,
        seed: Optional[int] = None,
        allow_missing_keys: bool = False,
    ) -> None:
        keys: KeysCollection = source_key
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not noise_sigma >= 0:
            raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}.")
        self.source_key = source_key
        self.target_key = target_key
        self.noise_sigma = float(noise_sigma)
        self.degrade = PeronaMalikDegrade(spatial_dims, num_iter, kappa, dt, diffusivity)
        self.set_random_state(seed=seed)
        self._noise: Optional[np.ndarray] = None

    def randomize(self, shape: tuple) -> None:
        # always draw float64 and cast afterwards, so the noise for a seed does not depend on the image dtype
        self._noise = self.R.standard_normal(shape)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            out = self.degrade(d[key])
            if self.noise_sigma > 0:
                self.randomize(tuple(out.shape))
                noise = convert_to_dst_type(self.noise_sigma * self._noise, out)[0]
                out = out + noise
            d[self.target_key] = out
        return d
