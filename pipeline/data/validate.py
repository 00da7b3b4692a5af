"""Check a manifest before training: every problem at once, and a shape/spacing summary of its volumes.

``python -m pipeline data validate MANIFEST`` prints :func:`validate_manifest`'s report. Errors (missing files,
paths outside the data root, files listed twice, subjects in two splits, unreadable headers) make the manifest
unusable; warnings (volumes that differ in shape or voxel spacing) do not. Only headers are read, never voxel data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom

from pipeline.data.manifest import (
    SPLITS,
    Problem,
    _inside,
    _is_dicom_file,
    _mhd_has_data,
    manifest_data_root,
    manifest_entries,
    manifest_problems,
    read_manifest,
)

__all__ = ["ValidationReport", "read_header", "validate_manifest"]


@dataclass
class ValidationReport:
    """What :func:`validate_manifest` found. ``summary`` has one row per distinct (shape, spacing): the number of
    volumes and a few example files."""

    manifest: Path
    data_root: Path
    counts: dict
    problems: list[Problem]
    summary: pd.DataFrame

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    def format(self) -> str:
        """The report as printed by ``python -m pipeline data validate``: errors, warnings, table, totals."""
        counts = ", ".join(f"{split} {n}" for split, n in self.counts.items())
        lines = [f"manifest {self.manifest} (data root {self.data_root}): {counts} entries"]
        lines += [str(p) for p in self.errors + self.warnings]
        if len(self.summary):
            lines += ["", "volumes per shape and spacing:", self.summary.to_string(index=False), ""]
        n_err, n_warn = len(self.errors), len(self.warnings)
        lines.append(f"{n_err} error{'s' * (n_err != 1)}, {n_warn} warning{'s' * (n_warn != 1)}")
        return "\n".join(lines)


def _dicom_header(folder: Path) -> tuple[tuple, tuple]:
    """(columns, rows, slices) and their spacing from a DICOM series folder, read with pydicom without pixels."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and _is_dicom_file(p)]
    if not files:
        raise ValueError("folder holds no DICOM files")
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    series = {getattr(ds, "SeriesInstanceUID", None) for ds in slices}
    if len(series) > 1:
        raise ValueError(f"folder mixes {len(series)} DICOM series")
    first = slices[0]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    n = sum(int(getattr(ds, "NumberOfFrames", 1) or 1) for ds in slices)
    z = float(getattr(first, "SpacingBetweenSlices", None) or getattr(first, "SliceThickness", None) or 0.0)
    if len(slices) > 1 and all("ImagePositionPatient" in ds for ds in slices):
        orientation = np.asarray(first.ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        z = float(np.median(np.diff(sorted(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))
                                           for ds in slices))))
    return (int(first.Columns), int(first.Rows), n), (col_spacing, row_spacing, z)


def read_header(path: str | os.PathLike) -> tuple[tuple, tuple]:
    """``(shape, spacing)`` of a volume from its header alone: nibabel for NIfTI, SimpleITK's
    ``ReadImageInformation`` for MetaImage, pydicom for a DICOM series folder. Raises on anything unreadable."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return _dicom_header(path)
    if name.endswith((".nii", ".nii.gz")):
        header = nib.load(path).header
        return tuple(int(n) for n in header.get_data_shape()), tuple(float(z) for z in header.get_zooms())
    if name.endswith((".mha", ".mhd")):
        import SimpleITK as sitk

        if name.endswith(".mhd") and not _mhd_has_data(path):
            raise ValueError("its pixel data file (ElementDataFile) is missing")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return tuple(reader.GetSize()), tuple(reader.GetSpacing())
    raise ValueError("not a volume (expected .nii, .nii.gz, .mha, .mhd or a DICOM series folder)")


def _fmt(values, digits=3) -> str:
    return "x".join(f"{round(v, digits):g}" for v in values)


def validate_manifest(
    manifest_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    check_images: bool = True,
) -> ValidationReport:
    """Every problem of a manifest, not just the first.

    Errors: those of :func:`~pipeline.data.manifest.manifest_problems` over all splits, plus (with
    ``check_images``) volumes whose header cannot be read. Warnings: volumes that differ in shape or in voxel
    spacing (rounded to 3 decimals). Files outside the data root are not opened unless ``allow_outside_root``.
    The data root is found as in :func:`~pipeline.data.manifest.load_manifest`.

    Raises:
        FileNotFoundError / ValueError: the manifest itself is missing or not a JSON object.
    """
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    root, _ = manifest_data_root(manifest_path, manifest, data_root)
    problems = manifest_problems(manifest, root, allow_outside_root=allow_outside_root)
    counts = {s: len(manifest[s]) for s in SPLITS if isinstance(manifest.get(s), list)}

    rows, read = [], set()
    if check_images:
        root_real = os.path.realpath(root)
        for _, where, key, full in manifest_entries(manifest, root):
            if key is None or not os.path.exists(full):
                continue
            real = os.path.realpath(full)  # each file once; none outside the root unless allowed
            if real in read or (not allow_outside_root and not _inside(root_real, real)):
                continue
            read.add(real)
            try:
                shape, spacing = read_header(full)
            except Exception as err:  # noqa: BLE001 - any reader failure means the file is unusable
                problems.append(Problem("error", "unreadable", where, f"cannot read header: {err}".strip()))
                continue
            rows.append({"file": os.path.relpath(full, root), "shape": _fmt(shape), "spacing": _fmt(spacing)})

    volumes = pd.DataFrame(rows, columns=["file", "shape", "spacing"])
    for column in ("shape", "spacing"):
        n = volumes[column].nunique()
        if n > 1:
            problems.append(
                Problem("warning", "inconsistent", "volumes", f"{n} different {column}s across volumes (see table)")
            )
    summary = (
        volumes.groupby(["shape", "spacing"], sort=False)["file"]
        .agg(volumes="size", examples=lambda f: ", ".join(f[:3]) + (", ..." if len(f) > 3 else ""))
        .reset_index()
        .sort_values("volumes", ascending=False, kind="stable")
    )
    return ValidationReport(manifest_path, Path(os.path.abspath(root)), counts, problems, summary)
