"""Training and validation data of the paper experiments, in the shape the bundle's training workflow takes.

``configs/train.yaml`` builds its training preprocessing as ``'%train_patches'(roi_size, samples_per_volume, noise,
level_range, noise_map)``; the builders here have that signature, so a bundle override such as
``train_patches="pipeline.data.degraded.perona_malik_patches_2d"`` (extra settings as ``train#preprocessing#<arg>``)
trains the bundle's networks on the experiments' data:

- :func:`slice_patches_2d`: :func:`pipeline.data.slice_transforms_2d` (noisy 2D axial patches) restricted to the
  axial slices a datalist entry lists under ``"slices"`` (data efficiency: train on exactly N slices);
- :func:`perona_malik_patches_2d`: 2D axial patches whose input is the paper's forward model, Perona-Malik
  diffusion of the whole axial slice, then additive Gaussian noise (inverting nonlinear diffusion);
- :func:`perona_malik_eval_transforms`: the same forward model on whole volumes with seeded noise, for the bundle's
  validation (``validate#preprocessing``) and the experiments' test slices.

A datalist entry ``{"label": path, "slices": [z, ...]}`` (or ``"slices": z``) keeps only those axial slices (the last
axis after ``Orientationd("RAS")``) of its volume; the head mask and the reference intensity are still computed on
the whole volume, so a slice is normalised the same whatever else is selected. One entry per volume keeps loading
cheap: a volume is read once whatever the number of its slices used.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, SqueezeDimd
from monai.utils import convert_to_dst_type, convert_to_tensor

from pipeline.data.loaders import MASK_KEY, _noise_map, _patch_pipeline, volume_transforms
from pipeline.transforms import MRINoised, PeronaMalikDegrade, RandMRINoised

__all__ = [
    "SLICES_KEY",
    "AxialPeronaMalikd",
    "SelectSlicesd",
    "perona_malik_degradation",
    "perona_malik_eval_transforms",
    "perona_malik_patches_2d",
    "slice_patches_2d",
]

SLICES_KEY = "slices"


class SelectSlicesd(MapTransform):
    """Keep the axial slices an item lists under ``slices_key``: ``(C, H, W, D)`` -> ``(C, H, W, k)`` for every key.

    The entry holds one slice index or a list of distinct indices in ``[0, D)``; it is removed from the item (a list
    per item would not batch). Items without it keep every slice, so the transform is a no-op on a plain datalist.
    """

    def __init__(self, keys: KeysCollection = ("label", MASK_KEY), slices_key: str = SLICES_KEY,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slices_key = slices_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        slices = d.pop(self.slices_key, None)
        if slices is None:
            return d
        index = [slices] if isinstance(slices, int) else list(slices)
        if not index or any(isinstance(z, bool) or not isinstance(z, int) for z in index) \
                or len(set(index)) != len(index):
            raise ValueError(f"{self.slices_key!r} must be a slice index or a non-empty list of distinct indices, "
                             f"got {slices!r}")
        for key in self.key_iterator(d):
            depth = d[key].shape[-1]
            if not all(0 <= z < depth for z in index):
                raise ValueError(f"{self.slices_key!r} {index} out of range for {key!r} with {depth} axial slices")
            d[key] = d[key][..., index]
        return d


class AxialPeronaMalikd(MapTransform):
    """``data[target_key]`` = 2D Perona-Malik diffusion of every axial slice of ``data[source_key]``.

    ``(C, H, W, D)`` -> same shape and type (a MetaTensor keeps its metadata): each ``(H, W)`` slice is diffused on
    its own with zero-Neumann borders (:class:`pipeline.transforms.PeronaMalikDegrade`), exactly what a 2D network
    run slice by slice sees. Deterministic, so :class:`monai.data.CacheDataset` caches it.

    Args:
        source_key, target_key: the clean volume and where the diffused one goes (the source is untouched).
        num_iter, kappa, dt, diffusivity: as in :class:`pipeline.networks.PeronaMalik` (normalised intensities, so
            ``kappa`` is a fraction of the reference intensity).
    """

    def __init__(self, source_key: str = "label", target_key: str = "image", num_iter: int = 4, kappa: float = 0.1,
                 dt: float | None = None, diffusivity: str = "rational", allow_missing_keys: bool = False) -> None:
        super().__init__(source_key, allow_missing_keys)
        self.source_key, self.target_key = source_key, target_key
        self.diffuse = PeronaMalikDegrade(2, num_iter=num_iter, kappa=kappa, dt=dt, diffusivity=diffusivity)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = d[key]
            if volume.ndim != 4:
                raise ValueError(f"expected a channel-first volume (C, H, W, D) under {key!r}, got shape "
                                 f"{tuple(volume.shape)}")
            u = convert_to_tensor(volume, track_meta=False)
            # (C, H, W, D) -> (C * D, H, W): the slices become channels, which PeronaMalik diffuses independently
            c, h, w, depth = u.shape
            slices = u.permute(0, 3, 1, 2).reshape(c * depth, h, w)
            out = self.diffuse(slices).reshape(c, depth, h, w).permute(0, 2, 3, 1)
            d[self.target_key] = convert_to_dst_type(out.contiguous(), volume)[0]
        return d


def perona_malik_degradation(num_iter: int = 4, kappa: float = 0.1, noise_sigma: float = 0.0, seed: int = 0,
                             dt: float | None = None, diffusivity: str = "rational") -> list:
    """The paper's forward model on loaded volumes ``{"label": (1, H, W, D)}``: ``"image"`` = Perona-Malik of every
    axial slice plus Gaussian noise of ``noise_sigma`` (fraction of the reference intensity), seeded by ``seed`` and
    the file name (:class:`pipeline.transforms.MRINoised`), so every network sees the identical degraded volume."""
    if isinstance(noise_sigma, bool) or not noise_sigma >= 0:
        raise ValueError(f"noise_sigma must be >= 0, got {noise_sigma!r}")
    noise = [MRINoised(source_key="image", target_key="image", noise="gaussian", level=noise_sigma, seed=seed)]
    return [AxialPeronaMalikd("label", "image", num_iter, kappa, dt, diffusivity), *(noise if noise_sigma else [])]


def perona_malik_eval_transforms(num_iter: int = 4, kappa: float = 0.1, noise_sigma: float = 0.0, seed: int = 0,
                                 dt: float | None = None, diffusivity: str = "rational", reader=None,
                                 noise_map: bool = False) -> Compose:
    """Whole volumes for validation: ``{"label": path}`` -> ``"label"``, ``"image"`` (degraded by
    :func:`perona_malik_degradation`), ``"mask"``, each ``(1, H, W, D)``, like :func:`pipeline.data.eval_transforms`.
    ``noise_map`` must be false: the forward model has no noise level to give a network."""
    _no_noise_map(noise_map)
    return Compose([*volume_transforms("label", reader=reader).transforms,
                    *perona_malik_degradation(num_iter, kappa, noise_sigma, seed, dt, diffusivity)])


def perona_malik_patches_2d(roi_size: Sequence[int] = (64, 64), samples_per_volume: int = 8, noise=None,
                            level_range=None, noise_map: bool = False, num_iter: int = 4, kappa: float = 0.1,
                            noise_sigma: float = 0.0, dt: float | None = None, diffusivity: str = "rational",
                            reader=None, context_slices: int = 0) -> Compose:
    """Training pipeline for inverting Perona-Malik diffusion: ``{"label": path[, "slices": ...]}`` -> a list of
    ``samples_per_volume`` items with ``"label"`` (clean), ``"image"`` (degraded) and ``"mask"`` of shape
    ``(1, roi_h, roi_w)``, centred on head voxels.

    The whole axial slice is diffused (cached with the loaded volume), then cropped, so a patch's input is exactly
    the test-time forward model's, borders included; the Gaussian noise (``noise_sigma``) is drawn afresh per patch.
    ``noise`` and ``level_range`` are accepted because the bundle passes them, and ignored: the degradation is the
    forward model. ``noise_map`` must be false, ``context_slices`` 0.
    """
    _no_noise_map(noise_map)
    _no_context(context_slices)
    roi_size = _roi_2d(roi_size)
    keys = ["label", "image", MASK_KEY]
    noise = [RandMRINoised(source_key="image", target_key="image", noise="gaussian",
                           level_range=(noise_sigma, noise_sigma))] if noise_sigma else []
    return Compose([
        *volume_transforms("label", reader=reader).transforms,
        SelectSlicesd(["label", MASK_KEY]),
        AxialPeronaMalikd("label", "image", num_iter, kappa, dt, diffusivity),
        *_patch_pipeline((*roi_size, 1), samples_per_volume, keys),  # on the degraded image too
        SqueezeDimd(keys=keys, dim=-1),
        *noise,
    ])


def slice_patches_2d(roi_size: Sequence[int] = (64, 64), samples_per_volume: int = 8,
                     noise: str | Sequence[str] = "rician", level_range: Sequence[float] = (0.03, 0.15),
                     noise_map: bool = False, reader=None, context_slices: int = 0) -> Compose:
    """:func:`pipeline.data.slice_transforms_2d` (noisy 2D axial patches centred on head voxels, items of shape
    ``(1, roi_h, roi_w)``, ``"image"`` ``(2, roi_h, roi_w)`` with ``noise_map``) drawn only from the axial slices an
    entry lists under ``"slices"`` (all of them without it); ``context_slices`` must be 0."""
    _no_context(context_slices)
    roi_size = _roi_2d(roi_size)
    return Compose([
        *volume_transforms("label", reader=reader).transforms,
        SelectSlicesd(["label", MASK_KEY]),
        *_patch_pipeline((*roi_size, 1), samples_per_volume),
        SqueezeDimd(keys=["label", MASK_KEY], dim=-1),
        RandMRINoised(source_key="label", target_key="image", noise=noise, level_range=tuple(level_range)),
        *_noise_map(noise_map),
    ])


def _roi_2d(roi_size: Sequence[int]) -> tuple[int, int]:
    roi_size = tuple(int(s) for s in roi_size)
    if len(roi_size) != 2:
        raise ValueError(f"roi_size must be (h, w) for 2D slices, got {roi_size}")
    return roi_size


def _no_noise_map(noise_map) -> None:
    if noise_map and str(noise_map).lower() not in ("false", "0"):
        raise ValueError("noise_map must be false for the Perona-Malik forward model (it has no noise level to map); "
                         "override noise_map=False")


def _no_context(context_slices) -> None:
    if int(context_slices):
        raise ValueError("the paper experiments train 2D networks on single slices: context_slices must be 0")
