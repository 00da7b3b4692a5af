"""Test helper: write a real DICOM series (one 2D file per axial slice) with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def sitk_image(data: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(10.0, 20.0, 30.0)) -> sitk.Image:
    """(x, y, z) array -> SimpleITK image of size (x, y, z), identity (LPS) direction."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write_dicom_series(folder: Path, data: np.ndarray, spacing=(2.0, 2.0, 3.0), origin=(10.0, 20.0, 30.0),
                       tags: dict | None = None) -> Path:
    """One 2D DICOM file per axial slice of an ``(x, y, z)`` array, with the tags a series needs plus ``tags``
    (e.g. patient name and ID). Files are named in reverse slice order, so a reader that sorted by file name
    instead of Image Position (Patient) would flip the volume."""
    folder.mkdir(parents=True)
    image = sitk_image(data, spacing, origin)
    study, series = "1.2.826.0.1.3680043.2.1125.1.1", "1.2.826.0.1.3680043.2.1125.1.2"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    for k in range(n):
        slice_k = image[:, :, k]
        slice_tags = {
            "0008|0060": "MR",
            "0020|000d": study,  # Study Instance UID
            "0020|000e": series,  # Series Instance UID
            "0008|0018": f"{series}.{k + 1}",  # SOP Instance UID
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",  # Image Orientation (Patient)
            "0018|0050": str(spacing[2]),  # Slice Thickness
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",  # Pixel Spacing (row, column)
            "0020|0013": str(k + 1),  # Instance Number
            **(tags or {}),
        }
        for tag, value in slice_tags.items():
            slice_k.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{n - k:04d}.dcm"))
        writer.Execute(slice_k)
    return folder
