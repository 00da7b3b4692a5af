"""Checks that refuse a bad scan with one clear message, ``"<path>: <problem>"``, before the pipeline works on it.

Policies (see the bundle's docs, "Bad inputs"):

- missing, empty, truncated or corrupt files, files that are not what their extension says, DICOM folders holding
  several series, duplicate or missing slices: refused;
- 4D data (time series, several echoes, vector images): refused; split it into 3D volumes first;
- fewer than 3 spatial dimensions: refused for a 3D (sliding-window) model; a single 2D slice given to the 2D
  (slice-by-slice) model is denoised as a one-slice volume;
- NaN or Inf voxels: refused, with their count; an all-zero or constant volume: refused (no head, reference
  intensity undefined);
- negative intensities: accepted, clipped to 0 with a :class:`VolumeWarning` (magnitude MRI is non-negative);
- integer voxels (int16, uint16, ...) are converted to float32 on reading, before any arithmetic, so values at the
  type's limits cannot wrap around;
- a volume whose inference would need more than ``max_memory_gb`` (estimated from the header, before the voxels
  are read) is refused with the size it would need.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform

__all__ = [
    "DEFAULT_MAX_MEMORY_GB",
    "LoadVolumed",
    "MissingVolumeError",
    "VolumeError",
    "VolumeWarning",
    "check_array",
    "check_dicom_series",
    "check_volume_file",
    "describe_error",
    "inference_bytes",
    "load_checked_volume",
]

DEFAULT_MAX_MEMORY_GB = 8.0
# Whole-volume float32 copies alive at once during inference: the read volume, the oriented one, the head mask,
# the scaled input, the prediction, the restored and re-oriented prediction, the array being written.
VOLUME_COPIES = 8
# Peak memory of DiffNet (+ guidance) per voxel of the slices / windows processed together, measured on a CPU
# (960-1440 bytes in 2D and 3D, no gradients).
ACTIVATION_BYTES_PER_VOXEL = 1200
SLICE_BATCH = 30  # inference.yaml: axial_slice_inferer(..., sw_batch_size=30)
WINDOW, WINDOW_BATCH = (64, 64, 64), 2  # methods/diffnet_3d.yaml: SlidingWindowInferer roi_size, sw_batch_size


class VolumeError(ValueError):
    """A scan the pipeline cannot denoise. ``str(error)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")


class MissingVolumeError(VolumeError, FileNotFoundError):
    """The scan does not exist."""


class VolumeWarning(UserWarning):
    """A scan that is denoised, but not exactly as given (e.g. negative intensities clipped to 0)."""


def _effective_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape without trailing singleton dimensions beyond the third ((x, y, z, 1) is a 3D volume)."""
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def inference_bytes(shape: Sequence[int], spatial_dims: int = 2) -> int:
    """Estimated peak memory (bytes) to denoise a volume of ``shape``: whole-volume float32 copies plus the
    network's activations on the slices (2D model, ``SLICE_BATCH`` of the largest slice) or windows (3D model,
    ``WINDOW_BATCH`` windows of ``WINDOW``) processed together."""
    shape = [int(s) for s in shape]
    voxels = math.prod(shape)
    if spatial_dims == 2:
        window = max(min(SLICE_BATCH, s) * voxels // max(s, 1) for s in shape)
    else:
        window = WINDOW_BATCH * math.prod(min(w, s) for w, s in zip(WINDOW, shape + [1] * 3))
    return 4 * VOLUME_COPIES * voxels + ACTIVATION_BYTES_PER_VOXEL * window


def check_dicom_series(folder: str | os.PathLike) -> tuple[int, ...]:
    """Check a DICOM series folder from its headers (pydicom, pixel data not read): one series, one size and
    orientation, evenly spaced slice positions with none missing or duplicated. Returns the volume shape
    ``(columns, rows, slices)``. Only geometry is read; patient tags are never put in a message."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    headers = []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR"]
    for path in sorted(files):
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except InvalidDicomError:
            if path.suffix.lower() == ".dcm":
                raise VolumeError(path, "is not a valid DICOM file (no DICOM header)") from None
        except Exception as e:  # noqa: BLE001 - any parse failure is a damaged file
            raise VolumeError(path, f"is a damaged DICOM file ({type(e).__name__})") from None
    if not headers:
        raise VolumeError(folder, "is a folder without DICOM files")
    series: dict[str, int] = {}
    for _, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", ""))
        series[uid] = series.get(uid, 0) + 1
    if len(series) > 1:
        counts = ", ".join(str(n) for n in series.values())
        raise VolumeError(folder, f"holds {len(series)} DICOM series mixed together ({counts} files): "
                                  "put each series in its own folder")
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in headers}
    if len(sizes) > 1:
        raise VolumeError(folder, f"holds slices of different sizes {sorted(sizes)} (rows, columns)")
    rows, cols = sizes.pop()
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in headers)
    geometry = [(ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")) for _, ds in headers]
    if len(headers) > 1 and all(o is not None and p is not None for o, p in geometry):
        orientations = {tuple(round(float(v), 4) for v in o) for o, _ in geometry}
        if len(orientations) > 1:
            raise VolumeError(folder, "holds slices with different orientations (Image Orientation (Patient))")
        o = np.array(orientations.pop(), dtype=float)
        normal = np.cross(o[:3], o[3:])
        positions = np.sort([float(np.dot(normal, np.array(p, dtype=float))) for _, p in geometry])
        gaps = np.diff(positions)
        if gaps.min() < 1e-3:
            raise VolumeError(folder, "holds two slices at the same position (several echoes, time points or a "
                                      "duplicated file?): one 3D series per folder")
        step = float(np.median(gaps))
        worst = int(np.argmax(np.abs(gaps - step)))
        if abs(gaps[worst] - step) > 0.01 * step + 1e-3:
            raise VolumeError(folder, f"slice positions are not evenly spaced: a gap of {gaps[worst]:.2f} mm after "
                                      f"slice {worst + 1} of {len(positions)} where {step:.2f} mm is expected "
                                      "(a missing slice?)")
    return (cols, rows, frames)


def _check_gzip(path: Path) -> None:
    """Decompress the whole file (streaming, nothing kept): gzip checks its length and CRC at the end, which
    nibabel skips, so a truncated or corrupted file would otherwise load silently or fail deep inside a reader."""
    try:
        with gzip.open(path) as f:
            while f.read(1 << 24):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise VolumeError(path, f"is a truncated or corrupt gzip file ({type(e).__name__}: {e})") from None


def _check_complete(path: Path) -> None:
    """A NIfTI file holds all the voxels its header promises (after the memory check: no 2000^3 read)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        _check_gzip(path)
    elif name.endswith(".nii"):
        import nibabel as nib

        image = nib.load(str(path))
        need = int(image.header.get_data_offset()) + math.prod(image.shape) * image.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < need:
            raise VolumeError(path, f"is truncated: the header promises {need} bytes, the file has {have}")


def _header_shape(path: Path) -> tuple[int, ...] | None:
    """The voxel shape from the file's header without reading the voxels; None for formats not checked here."""
    name = path.name.lower()
    if path.is_dir():
        return check_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            image = nib.load(str(path))
        except Exception:  # noqa: BLE001 - nibabel raises several types for the same problem
            if name.endswith(".gz"):
                _check_gzip(path)
            raise VolumeError(path, "is not a valid NIfTI file (no readable NIfTI header)") from None
        return image.shape
    if name.endswith((".mha", ".mhd")):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise VolumeError(path, "is not a valid MetaImage file (no readable header)") from None
        components = reader.GetNumberOfComponents()
        return (*reader.GetSize(), *((components,) if components > 1 else ()))
    return None


def check_volume_file(
    path: str | os.PathLike, spatial_dims: int = 2, max_memory_gb: float | None = DEFAULT_MAX_MEMORY_GB
) -> tuple[int, ...] | None:
    """Check a scan from its file and header (voxel data are not loaded): it exists and is not empty, its header
    is readable, it is a 3D volume (see the module's policies for 4D and 2D), denoising it fits in
    ``max_memory_gb`` (None: no limit), and a gzip file is complete (its CRC is checked by streaming through it).
    Returns the header shape (None for formats without a header check).

    Raises:
        MissingVolumeError: no such file or folder. VolumeError: any other problem.
    """
    path = Path(path)
    if not path.exists():
        raise MissingVolumeError(path, "does not exist")
    if path.is_file() and path.stat().st_size == 0:
        raise VolumeError(path, "is empty (0 bytes)")
    shape = _header_shape(path)
    if shape is None:
        return None
    dims = _effective_shape(shape)
    if len(dims) > 3:
        raise VolumeError(path, f"is {len(dims)}D (shape {dims}); 4D data (time series, echoes, vector images) "
                                "are refused: split it into 3D volumes first (e.g. nibabel.funcs.four_to_three "
                                "or fslsplit) and denoise each")
    if len(dims) < 3 and not (len(dims) == 2 and spatial_dims == 2):
        model = "the 3D model needs a 3D volume" if spatial_dims == 3 else "it is not an image"
        raise VolumeError(path, f"has {len(dims)} spatial dimension(s) (shape {dims}): {model}")
    if min(dims) < 1:
        raise VolumeError(path, f"has an empty dimension (shape {dims})")
    if max_memory_gb is not None:
        need, budget = inference_bytes(dims, spatial_dims) / 2**30, float(max_memory_gb)
        if need > budget:
            raise VolumeError(path, f"too large: denoising {'x'.join(map(str, dims))} voxels would need about "
                                    f"{need:.1f} GB, more than the memory budget of {budget:g} GB "
                                    "(max_memory_gb / --max-memory-gb)")
    _check_complete(path)
    return shape


def check_array(img: torch.Tensor, path: str | os.PathLike, spatial_dims: int = 2) -> torch.Tensor:
    """Check and fix a loaded, channel-last/no-channel (``LoadImage``) volume: float32; a 2D slice for the 2D
    model gets a trailing one-slice axis; refuses NaN/Inf and constant volumes; clips negative intensities to 0
    with a :class:`VolumeWarning`. Returns the (Meta)Tensor to use."""
    x = img if img.dtype == torch.float32 else img.to(torch.float32)  # before any arithmetic: no int wraparound
    meta = getattr(x, "meta", {})
    channel_dim = meta.get("original_channel_dim", "no_channel")
    has_channel = isinstance(channel_dim, int) or (isinstance(channel_dim, float) and not math.isnan(channel_dim))
    if has_channel and x.shape[channel_dim] != 1:
        raise VolumeError(path, f"has {x.shape[channel_dim]} components per voxel (shape {tuple(x.shape)}): "
                                "give one 3D magnitude volume")
    spatial = x.ndim - int(has_channel)
    if spatial == 2 and spatial_dims == 2:
        x = x.unsqueeze(-1)  # one slice, denoised by the slice-wise model
        if "spatial_shape" in meta:
            x.meta["spatial_shape"] = np.asarray([*x.shape])
    elif spatial != 3:
        raise VolumeError(path, f"has {spatial} spatial dimension(s) (shape {tuple(x.shape)}): "
                                f"the {spatial_dims}D model needs a 3D volume")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan, n_bad = int(torch.isnan(x).sum()), int((~finite).sum())
        raise VolumeError(path, f"has {n_nan} NaN and {n_bad - n_nan} Inf voxels (of {x.numel()}): refused, "
                                "the intensities are undefined there")
    negative = x < 0
    n_negative = int(negative.sum())
    if n_negative:
        warnings.warn(f"{path}: {n_negative} voxels have negative intensities (minimum {float(x.min()):g}); "
                      "magnitude MRI is non-negative, so they were clipped to 0", VolumeWarning, stacklevel=2)
        x = x.clamp(min=0)
    lo, hi = float(x.min()), float(x.max())
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant ({hi:g})"
        raise VolumeError(path, f"is {what}: there is no head to denoise (reference intensity undefined)")
    return x


def _load_reason(e: BaseException) -> str:
    if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"its compressed data are truncated or corrupt ({type(e).__name__}: {e})"
    if isinstance(e, MemoryError):
        return "ran out of memory while reading it"
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checked_volume(
    path: str | os.PathLike,
    spatial_dims: int = 2,
    max_memory_gb: float | None = DEFAULT_MAX_MEMORY_GB,
    loader: LoadImage | None = None,
) -> torch.Tensor:
    """:func:`check_volume_file`, then MONAI's ``LoadImage`` (``loader``, default ``LoadImage(image_only=True)``,
    float32), then :func:`check_array`.

    Returns the volume as a float32 ``MetaTensor`` (no channel axis, as ``LoadImage`` gives it).

    Raises:
        MissingVolumeError, VolumeError: ``"<path>: <problem>"``; reader errors are re-raised as VolumeError.
    """
    check_volume_file(path, spatial_dims, max_memory_gb)
    loader = loader or LoadImage(image_only=True, dtype=np.float32)
    try:
        img = loader(str(path))
    except Exception as e:  # noqa: BLE001 - every reader error becomes one clear message
        raise VolumeError(path, f"cannot be read: {_load_reason(e)}") from e
    return check_array(img, path, spatial_dims)


def describe_error(exc: BaseException, path: str | os.PathLike) -> str:
    """A one-line message for any failure while processing ``path``: the :class:`VolumeError` in the exception's
    chain (MONAI wraps transform errors in ``RuntimeError``), else ``"<path>: <type>: <first line>"`` of the
    innermost cause."""
    chain, e = [], exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    for e in chain:
        if isinstance(e, VolumeError):
            return str(e)
    root = chain[-1]
    if isinstance(root, MemoryError) or "out of memory" in str(root) or "can't allocate memory" in str(root):
        return f"{path}: ran out of memory while denoising it (lower the memory budget --max-memory-gb to refuse " \
               "such volumes early, or use a machine with more memory)"
    return f"{path}: {_load_reason(root)}"


class LoadVolumed(MapTransform):
    """``LoadImaged`` with the checks of :func:`load_checked_volume`: ``{key: path}`` -> ``{key: float32
    MetaTensor}``, or a :class:`VolumeError` naming the file and the problem.

    Args:
        keys: keys of the paths to load.
        spatial_dims: 2 for slice-by-slice models (a 2D slice is accepted), 3 for 3D models.
        max_memory_gb: memory budget for denoising one volume; None: no limit.
        reader: MONAI reader (name or instance); None picks it from the file (NibabelReader, ITKReader).
    """

    def __init__(self, keys: KeysCollection = "image", spatial_dims: int = 2,
                 max_memory_gb: float | None = DEFAULT_MAX_MEMORY_GB, reader=None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims, self.max_memory_gb = int(spatial_dims), max_memory_gb
        self.loader = LoadImage(reader=reader, image_only=True, dtype=np.float32)

    def __call__(self, data: Mapping[Hashable, str]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = load_checked_volume(d[key], self.spatial_dims, self.max_memory_gb, self.loader)
        return d
