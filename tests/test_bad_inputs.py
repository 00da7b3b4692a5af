"""Bad scans, fed for real: each is refused with a message that starts with the file's path and names the problem,
and no output is written for it (``pipeline.data.checks``, ``python -m pipeline denoise``, the bundle's inference).
Accepted-but-odd scans (negative intensities, int16/uint16 at their limits, a single 2D slice) are denoised."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dicom_series import write_dicom_series
from pipeline.bundle import inference_datalist
from pipeline.cli import main
from pipeline.data import MissingVolumeError, VolumeError, VolumeWarning, check_volume_file, load_checked_volume
from pipeline.data.checks import inference_bytes

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "SECRET123"


def phantom(shape=(32, 32, 6), peak=100.0) -> np.ndarray:
    """A bright ellipsoidal "head" with texture, in a zero background, peaking at ``peak``."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape[:2]], indexing="ij")
    inside = (grid[0] / 0.8) ** 2 + (grid[1] / 0.7) ** 2 < 1
    texture = 0.7 + 0.3 * np.cos(6 * grid[0]) * np.sin(5 * grid[1])
    rng = np.random.default_rng(0)
    slices = [np.where(inside, texture * (0.97 + 0.03 * rng.random(shape[:2])), 0.0) for _ in range(shape[2])]
    x = np.stack(slices, axis=-1)
    return peak * x / x.max()


def nifti(path: Path, data: np.ndarray, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def ixi_bytes(ixi_dir: Path) -> bytes:
    return (ixi_dir / sorted(os.listdir(ixi_dir))[0]).read_bytes()


# --------------------------------------------------------------------------------------------------------------
# builders of bad inputs: (tmp folder, ixi folder) -> path


def empty(tmp, ixi):
    path = tmp / "empty.nii.gz"
    path.touch()
    return path


def truncated_gz(tmp, ixi):
    raw = ixi_bytes(ixi)
    path = tmp / "truncated.nii.gz"
    path.write_bytes(raw[: len(raw) // 2])
    return path


def truncated_gz_header(tmp, ixi):
    path = tmp / "stub.nii.gz"
    path.write_bytes(ixi_bytes(ixi)[:100])
    return path


def corrupt_gz(tmp, ixi):
    raw = bytearray(ixi_bytes(ixi))
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(255 - b for b in raw[middle : middle + 64])
    path = tmp / "corrupt.nii.gz"
    path.write_bytes(bytes(raw))
    return path


def text_as_nifti(tmp, ixi):
    path = tmp / "notes.nii"
    path.write_text("this is a text file, not a NIfTI volume\n" * 20, encoding="utf-8")
    return path


def truncated_nii(tmp, ixi):
    full = nifti(tmp / "full.nii", phantom().astype(np.float32))
    path = tmp / "cut.nii"
    path.write_bytes(full.read_bytes()[:5000])
    full.unlink()
    return path


def text_as_mha(tmp, ixi):
    path = tmp / "notes.mha"
    path.write_text("not a MetaImage\n", encoding="utf-8")
    return path


def dicom_two_series(tmp, ixi):
    data = phantom((24, 24, 5), 1000).astype(np.int16)
    tags = {"0010|0010": PATIENT_NAME, "0010|0020": PATIENT_ID, "0010|0030": "19700101"}
    folder = write_dicom_series(tmp / "mixed", data, tags=tags)
    other = write_dicom_series(tmp / "other", data, origin=(0.0, 0.0, 0.0),
                               tags={**tags, "0020|000e": "1.2.826.0.1.3680043.2.1125.1.9"})
    for f in other.iterdir():
        f.rename(folder / f"B{f.name}")
    other.rmdir()
    return folder


def dicom_missing_slice(tmp, ixi):
    folder = write_dicom_series(tmp / "gap", phantom((24, 24, 8), 1000).astype(np.int16))
    (folder / "IM0004.dcm").unlink()
    return folder


def dicom_duplicate_slice(tmp, ixi):
    folder = write_dicom_series(tmp / "twice", phantom((24, 24, 5), 1000).astype(np.int16))
    shutil.copyfile(folder / "IM0002.dcm", folder / "IM0002_copy.dcm")
    return folder


def volume_4d(tmp, ixi):
    return nifti(tmp / "fmri.nii.gz", np.stack([phantom()] * 3, axis=-1).astype(np.float32))


def volume_1d(tmp, ixi):
    return nifti(tmp / "line.nii.gz", np.linspace(0, 1, 20, dtype=np.float32))


def nan_inf(tmp, ixi):
    data = phantom().astype(np.float32)
    data[5, 5, :3] = np.nan
    data[6, 6, :2] = np.inf
    return nifti(tmp / "nan.nii.gz", data)


def zeros(tmp, ixi):
    return nifti(tmp / "zeros.nii.gz", np.zeros((16, 16, 4), np.float32))


def constant(tmp, ixi):
    return nifti(tmp / "seven.nii.gz", np.full((16, 16, 4), 7, np.int16))


def huge_header(tmp, ixi):
    """A NIfTI header claiming 2000^3 uint8 voxels, with no voxel data behind it."""
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    path = tmp / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)
    return path


BAD = {
    "empty file": (empty, r"is empty \(0 bytes\)"),
    "truncated .nii.gz": (truncated_gz, r"is a truncated or corrupt gzip file \(EOFError"),
    "truncated .nii.gz header": (truncated_gz_header, r"is a truncated or corrupt gzip file"),
    "corrupt .nii.gz": (corrupt_gz, r"is a truncated or corrupt gzip file"),
    "text renamed .nii": (text_as_nifti, r"is not a valid NIfTI file"),
    "truncated .nii": (truncated_nii, r"is truncated: the header promises \d+ bytes, the file has 5000"),
    "text renamed .mha": (text_as_mha, r"is not a valid MetaImage file"),
    "DICOM, two series": (dicom_two_series, r"holds 2 DICOM series mixed together \(5, 5 files\): put each series"),
    "DICOM, missing slice": (dicom_missing_slice, r"slice positions are not evenly spaced: a gap of 6.00 mm .* "
                                                  r"where 3.00 mm is expected \(a missing slice\?\)"),
    "DICOM, duplicate slice": (dicom_duplicate_slice, r"holds two slices at the same position"),
    "4D": (volume_4d, r"is 4D \(shape \(32, 32, 6, 3\)\); 4D data .* are refused: split it into 3D volumes"),
    "1D": (volume_1d, r"has 1 spatial dimension\(s\) \(shape \(20,\)\): it is not an image"),
    "NaN and Inf": (nan_inf, r"has 3 NaN and 2 Inf voxels \(of 6144\): refused"),
    "all zero": (zeros, r"is all zero: there is no head to denoise \(reference intensity undefined\)"),
    "constant": (constant, r"is constant \(7\): there is no head to denoise"),
    "too large": (huge_header, r"too large: denoising 2000x2000x2000 voxels would need about \d+\.\d GB, more than "
                               r"the memory budget of 8 GB"),
}


def outputs(out: Path) -> list[str]:
    """Every file in ``out`` except the summary: denoised volumes and any (hidden) partial file."""
    return sorted(p.name for p in out.iterdir() if p.name != "denoise_summary.csv") if out.is_dir() else []


def denoise(capsys, source: Path, out: Path, *extra: str):
    """``python -m pipeline denoise`` in this process: (exit status, summary rows, printed text)."""
    status = main(["denoise", str(source), "--out", str(out), "--device", "cpu", *extra])
    printed = capsys.readouterr()
    summary = out / "denoise_summary.csv"
    rows = list(csv.DictReader(summary.open(encoding="utf-8"))) if summary.is_file() else []
    return status, rows, printed.out + printed.err


# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_naming_the_file_and_the_problem(case, tmp_path, ixi_dir, capsys):
    make, problem = BAD[case]
    source = tmp_path / "in"
    source.mkdir()
    path = make(source, ixi_dir)

    with pytest.raises(VolumeError) as caught:
        load_checked_volume(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert caught.match(problem), message
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "19700101"):
        assert secret not in message

    status, rows, printed = denoise(capsys, path, tmp_path / "out")
    assert status == 1, printed
    assert [r["status"] for r in rows] == ["failed"], rows
    assert rows[0]["problem"] == message
    assert f"FAILED: {message}" in printed
    assert outputs(tmp_path / "out") == [], "an output was written for a bad input"
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "19700101"):
        assert secret not in printed


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(MissingVolumeError, match="does not exist") as caught:
        load_checked_volume(path)
    assert str(caught.value).startswith(str(path))
    assert isinstance(caught.value, FileNotFoundError)
    status, rows, printed = denoise(capsys, path, tmp_path / "out")
    assert status == 1 and str(path) in printed and "does not exist" in printed
    assert outputs(tmp_path / "out") == []


def test_a_folder_without_dicom_files_and_an_empty_dimension(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "readme.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(VolumeError, match="is a folder without DICOM files"):
        check_volume_file(tmp_path / "folder")
    path = nifti(tmp_path / "flat.nii.gz", np.zeros((8, 0, 4), np.float32))
    with pytest.raises(VolumeError, match=r"has an empty dimension"):
        check_volume_file(path)


def test_2d_slice_refused_by_3d_model_denoised_by_2d_model(tmp_path, capsys):
    path = nifti(tmp_path / "slice.nii.gz", phantom((40, 40, 1))[..., 0].astype(np.float32))
    with pytest.raises(VolumeError, match=r"has 2 spatial dimension\(s\) \(shape \(40, 40\)\): the 3D model needs"):
        load_checked_volume(path, spatial_dims=3)
    assert tuple(load_checked_volume(path, spatial_dims=2).shape) == (40, 40, 1)
    status, rows, printed = denoise(capsys, path, tmp_path / "out")
    assert status == 0, printed
    result = nib.load(str(tmp_path / "out" / "slice_denoised.nii.gz"))
    assert result.shape == (40, 40) and np.allclose(result.affine, AFFINE)


def test_negative_intensities_are_clipped_with_a_warning(tmp_path, capsys):
    data = phantom().astype(np.float32)
    data[:3, :3, :] = -5.0  # 54 negative background voxels
    path = nifti(tmp_path / "negative.nii.gz", data)
    with pytest.warns(VolumeWarning, match=r"54 voxels have negative intensities \(minimum -5\).*clipped to 0"):
        loaded = load_checked_volume(path)
    assert float(loaded.min()) == 0.0
    status, rows, printed = denoise(capsys, path, tmp_path / "out")
    assert status == 0 and rows[0]["status"] == "ok", printed
    assert "warning: " in printed and "clipped to 0" in rows[0]["problem"]
    assert nib.load(str(tmp_path / "out" / "negative_denoised.nii.gz")).get_fdata().min() >= 0


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_integers_at_their_limit_do_not_wrap_around(dtype, tmp_path, capsys):
    top = np.iinfo(dtype).max
    data = np.clip(np.round(phantom(peak=top + 50.0)), 0, top).astype(dtype)  # the brightest voxels at the limit
    path = nifti(tmp_path / f"{np.dtype(dtype).name}.nii.gz", data)
    loaded = load_checked_volume(path)
    assert loaded.dtype.is_floating_point and float(loaded.max()) == top and float(loaded.min()) == 0
    status, rows, printed = denoise(capsys, path, tmp_path / "out")
    assert status == 0, printed
    y = nib.load(str(tmp_path / "out" / f"{np.dtype(dtype).name}_denoised.nii.gz")).get_fdata()
    x = data.astype(np.float64)
    assert y.min() >= 0 and 0.8 * top < y.max() < 1.2 * top, (y.min(), y.max())
    assert abs(y.mean() - x.mean()) < 0.05 * x.mean(), (x.mean(), y.mean())


def test_memory_budget(tmp_path, ixi_dir, capsys):
    assert inference_bytes((120, 120, 90)) < 2**30  # an IXI volume: well inside the default 8 GB
    path = tmp_path / "scan.nii.gz"
    shutil.copyfile(ixi_dir / sorted(os.listdir(ixi_dir))[0], path)
    status, rows, printed = denoise(capsys, path, tmp_path / "out", "--max-memory-gb", "0.05")
    assert status == 1
    assert rows[0]["problem"].startswith(f"{path}: too large: denoising 120x120x90 voxels would need about ")
    assert "more than the memory budget of 0.05 GB" in rows[0]["problem"]
    assert outputs(tmp_path / "out") == []


def test_inference_datalist_lists_every_bad_input_before_any_work(tmp_path, ixi_dir):
    nifti(tmp_path / "good.nii.gz", phantom().astype(np.float32))
    bad = [volume_4d(tmp_path, ixi_dir), empty(tmp_path, ixi_dir)]
    assert len(inference_datalist(tmp_path)) == 3  # without spatial_dims: no checks
    with pytest.raises(ValueError) as caught:
        inference_datalist(tmp_path, tmp_path / "out", spatial_dims=2, max_memory_gb=8)
    lines = str(caught.value).splitlines()
    assert sorted(lines[:2]) == sorted([f"{bad[0]}: is 4D (shape (32, 32, 6, 3)); 4D data (time series, echoes, "
                                        "vector images) are refused: split it into 3D volumes first (e.g. "
                                        "nibabel.funcs.four_to_three or fslsplit) and denoise each",
                                        f"{bad[1]}: is empty (0 bytes)"])
    assert "2 of 3 input(s) cannot be denoised" in lines[2]


def test_gzip_truncation_is_detected_even_when_the_header_survives(tmp_path, ixi_dir):
    path = truncated_gz(tmp_path, ixi_dir)
    with gzip.open(path) as f:  # the header alone is intact
        assert len(f.read(348)) == 348
    with pytest.raises(VolumeError, match="truncated or corrupt"):
        load_checked_volume(path)
