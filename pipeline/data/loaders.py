"""MONAI datasets and loaders that turn manifest entries ``{"label": path}`` into training and evaluation pairs.

Shapes use MONAI's channel-first layout after ``Orientationd("RAS")``: a volume is ``(1, H, W, D)`` with the axial
axis last (IXI: ``(1, 120, 120, 90)`` at 2 mm). Intensities are scaled so that the reference intensity (99th
percentile of the head) is 1.0. Every dataset item holds:

- ``"label"``: the clean target, ``"image"``: the noisy input (same shape), ``"mask"``: the binary head mask;
- ``"reference_intensity"``: the intensity that was mapped to 1.0.

The deterministic part (load, orient, scale, mask) is cached by :class:`monai.data.CacheDataset`; cropping and
training noise are drawn afresh at every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    RandCropByPosNegLabeld,
    SpatialPadd,
    SqueezeDimd,
)

from pipeline.transforms import (HeadMaskd, MRINoised, NoiseMapd, RandMRINoised, ScaleToReferenced,
                                SlicesWithContextd)

__all__ = [
    "axial_slices",
    "eval_axial_slices",
    "eval_dataset",
    "eval_transforms",
    "make_loader",
    "patch_dataset_3d",
    "patch_transforms_3d",
    "slice_dataset_2d",
    "slice_transforms_2d",
    "volume_transforms",
]

REFERENCE_KEY = "reference_intensity"
MASK_KEY = "mask"


def volume_transforms(keys: Sequence[str] | str = ("label",), reader=None) -> Compose:
    """Load, orient and normalise whole volumes.

    ``LoadImaged`` picks ``NibabelReader`` for NIfTI and ``ITKReader`` for MHA/MHD files and DICOM series folders
    unless ``reader`` is given. The first key is the clean volume: it gives the head mask and the reference
    intensity (99th percentile inside the mask), by which every key is divided.

    Returns:
        a ``Compose`` mapping ``{"label": path}`` to ``{"label": (1, H, W, D) float32 (RAS), >= 0, head mostly in
        [0, 1.5] (bright vessels up to ~3), "mask": (1, H, W, D) float32 in {0, 1}, "reference_intensity": float}``.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    return Compose(
        [
            LoadImaged(keys=keys, reader=reader, image_only=True),
            EnsureChannelFirstd(keys=keys),
            # labels=None: orient by the space the reader recorded (RAS for NIfTI and, after conversion, ITK).
            Orientationd(keys=keys, axcodes="RAS", labels=None),
            # The mask is scale-invariant, so it is computed once, on the raw clean volume, and reused for the
            # reference intensity; every key is divided by the clean volume's reference (one scale for all).
            HeadMaskd(keys=keys[0], mask_key=MASK_KEY),
            ScaleToReferenced(keys=keys, percentile=99.0, reference_key=REFERENCE_KEY, mask_key=MASK_KEY),
        ]
    )


def _patch_pipeline(roi_size: Sequence[int], samples_per_volume: int, keys: Sequence[str] = ("label", MASK_KEY)) -> list:
    """Pad ``keys`` to at least ``roi_size`` (small volumes keep working), then crop the same patches of each, centred
    inside the head."""
    keys = list(keys)
    return [
        SpatialPadd(keys=keys, spatial_size=roi_size),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key=MASK_KEY,
            spatial_size=roi_size,
            pos=1,
            neg=0,
            num_samples=samples_per_volume,
        ),
    ]


def _dataset(datalist: Sequence[dict], transform: Compose, cache: bool):
    if cache:
        return CacheDataset(data=list(datalist), transform=transform, cache_rate=1.0, num_workers=None, progress=False)
    return Dataset(data=list(datalist), transform=transform)


def slice_transforms_2d(
    roi_size: Sequence[int] = (64, 64),
    samples_per_volume: int = 8,
    noise: str | Sequence[str] = "rician",
    level_range: Sequence[float] = (0.03, 0.15),
    reader=None,
    noise_map: bool = False,
    context_slices: int = 0,
) -> Compose:
    """Training pipeline of 2D axial patches with random noise: ``{"label": path}`` -> a list of
    ``samples_per_volume`` items with ``"label"``, ``"image"``, ``"mask"`` of shape ``(1, roi_h, roi_w)``.

    Patches come from axial slices (the last RAS axis), centred on head voxels; the noise level is drawn per patch
    from ``level_range`` (fraction of the reference intensity, i.e. of 1.0), the model per patch from ``noise``
    when it lists several. ``noise_map``: ``"image"`` gets the noise-level map as a second channel,
    ``(2, roi_h, roi_w)``, for noise-aware networks. ``context_slices`` ``k > 0`` (2.5D): the patch is ``2k + 1``
    slices thick, noised as a whole, and ``"image"`` holds the slice, its ``2k`` noisy neighbours and then the map
    (:class:`pipeline.transforms.SlicesWithContextd`); ``"label"`` and ``"mask"`` are the middle slice.
    """
    roi_size = tuple(int(s) for s in roi_size)
    if len(roi_size) != 2:
        raise ValueError(f"roi_size must be (h, w) for 2D slices, got {roi_size}")
    context_slices = int(context_slices)
    noised = [RandMRINoised(source_key="label", target_key="image", noise=noise, level_range=tuple(level_range)),
              *_noise_map(noise_map)]
    if context_slices:
        slices = [*noised, SlicesWithContextd("image", context_slices, centre_keys=["label", MASK_KEY])]
    else:
        slices = [SqueezeDimd(keys=["label", MASK_KEY], dim=-1), *noised]
    return Compose(
        [
            *volume_transforms("label", reader=reader).transforms,
            *_patch_pipeline((*roi_size, 2 * context_slices + 1), samples_per_volume),
            *slices,
        ]
    )


def patch_transforms_3d(
    roi_size: Sequence[int] = (48, 48, 48),
    samples_per_volume: int = 4,
    noise: str | Sequence[str] = "rician",
    level_range: Sequence[float] = (0.03, 0.15),
    reader=None,
    noise_map: bool = False,
    context_slices: int = 0,
) -> Compose:
    """Training pipeline of 3D patches with random noise: items of shape ``(1, *roi_size)``, centred on the head
    (``"image"`` ``(2, *roi_size)`` with ``noise_map``, as in :func:`slice_transforms_2d`). ``context_slices`` is
    for 2D networks and must be 0."""
    if int(context_slices):
        raise ValueError("context_slices is for 2D networks; a 3D network sees its context already (use 0)")
    roi_size = tuple(int(s) for s in roi_size)
    if len(roi_size) != 3:
        raise ValueError(f"roi_size must be (h, w, d) for 3D patches, got {roi_size}")
    return Compose(
        [
            *volume_transforms("label", reader=reader).transforms,
            *_patch_pipeline(roi_size, samples_per_volume),
            RandMRINoised(source_key="label", target_key="image", noise=noise, level_range=tuple(level_range)),
            *_noise_map(noise_map),
        ]
    )


def eval_transforms(noise: str = "rician", level: float = 0.05, seed: int = 0, reader=None,
                    noise_map: bool = False) -> Compose:
    """Deterministic evaluation pipeline on whole volumes: ``"label"``, ``"image"``, ``"mask"`` of shape
    ``(1, H, W, D)``. The noise comes from ``MRINoised`` with a fixed ``seed``, so every method (and every epoch)
    sees the identical noisy input. 2D models run on these volumes slice by slice (``monai.inferers.SliceInferer``).
    ``noise_map``: ``"image"`` gets the true level's map as a second channel, ``(2, H, W, D)``.
    """
    return Compose(
        [
            *volume_transforms("label", reader=reader).transforms,
            MRINoised(source_key="label", target_key="image", noise=noise, level=level, seed=seed),
            *_noise_map(noise_map),
        ]
    )


def _noise_map(enabled: bool) -> list:
    return [NoiseMapd(keys="image", level_key="noise_level")] if enabled else []


def slice_dataset_2d(datalist: Sequence[dict], *args, cache: bool = True, **kwargs):
    """A dataset over :func:`slice_transforms_2d`; batched by :func:`make_loader` to
    ``(B * samples_per_volume, 1, roi_h, roi_w)``."""
    return _dataset(datalist, slice_transforms_2d(*args, **kwargs), cache)


def patch_dataset_3d(datalist: Sequence[dict], *args, cache: bool = True, **kwargs):
    """A dataset over :func:`patch_transforms_3d`; batched to ``(B * samples_per_volume, 1, *roi_size)``."""
    return _dataset(datalist, patch_transforms_3d(*args, **kwargs), cache)


def eval_dataset(datalist: Sequence[dict], *args, cache: bool = True, **kwargs):
    """A dataset over :func:`eval_transforms`: whole volumes with seeded noise."""
    return _dataset(datalist, eval_transforms(*args, **kwargs), cache)


def make_loader(dataset, batch_size: int = 1, shuffle: bool = False, num_workers: int = 0, **kwargs) -> DataLoader:
    """A ``monai.data.DataLoader``; its ``list_data_collate`` flattens the per-volume lists of patches, so a batch
    of ``batch_size`` volumes holds ``batch_size * samples_per_volume`` patches."""
    kwargs.setdefault("pin_memory", torch.cuda.is_available())
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **kwargs)


def axial_slices(items, every: int = 6, min_head: float = 0.25):
    """Noisy, clean and mask batches ``(N, 1, H, W)`` of every ``every``-th axial slice whose head mask covers at
    least ``min_head`` of the slice, from evaluation items (``"image"``, ``"label"``, ``"mask"`` of ``(1, H, W, D)``).
    """
    noisy, clean, mask = [], [], []
    for item in items:
        head_fraction = item[MASK_KEY].float().mean(dim=(0, 1, 2))
        for z in range(0, item["label"].shape[-1], every):
            if head_fraction[z] >= min_head:
                noisy.append(item["image"][..., z])
                clean.append(item["label"][..., z])
                mask.append(item[MASK_KEY][..., z])
    if not clean:
        raise ValueError(f"no axial slice with at least {min_head:.0%} head voxels in the evaluation volumes")
    return tuple(torch.stack([torch.as_tensor(t).float() for t in ts]) for ts in (noisy, clean, mask))


def eval_axial_slices(datalist: Sequence[dict], noise: str = "rician", level: float = 0.05, seed: int = 0,
                      every: int = 6, min_head: float = 0.25):
    """:func:`axial_slices` of the volumes of ``datalist`` with seeded noise added to whole volumes, so every
    method sees the same noisy slices."""
    return axial_slices(eval_dataset(datalist, noise=noise, level=level, seed=seed, cache=False), every, min_head)
