"""Bad manifests: load_manifest refuses them naming the file, entry and problem; ``validate_manifest`` and
``python -m pipeline data validate`` list every problem at once, with a shape/spacing table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.data import load_manifest, read_header, validate_manifest

from conftest import IXI_MANIFEST, REPO  # noqa: E402
from dicom_series import write_dicom_series  # noqa: E402


def write_nifti(path: Path, shape=(4, 4, 3), spacing=(2.0, 2.0, 2.0)) -> Path:
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture
def data(tmp_path, monkeypatch):
    """``tmp_path/data`` with four subjects (A1 has two scans) and a volume ``tmp_path/outside.nii.gz`` beside it."""
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    root = tmp_path / "data"
    root.mkdir()
    for name in ("A1-1", "A1-2", "B2-1", "C3-1", "D4-1"):
        write_nifti(root / f"{name}.nii.gz")
    write_nifti(tmp_path / "outside.nii.gz")
    return root


def entry(label, subject=None):
    return {"label": str(label), "subject": subject or Path(str(label)).name.split("-")[0]}


def write(root: Path, training, validation=(), test=(), name="m.json") -> Path:
    """A manifest beside ``root`` whose data_root points at it."""
    path = root.parent / name
    manifest = {"data_root": root.name, "training": list(training), "validation": list(validation), "test": list(test)}
    path.write_text(json.dumps(manifest), encoding="utf-8")
    return path


def good(root, **changes):
    splits = {
        "training": [entry("A1-1.nii.gz"), entry("A1-2.nii.gz"), entry("B2-1.nii.gz")],
        "validation": [entry("C3-1.nii.gz")],
        "test": [entry("D4-1.nii.gz")],
    }
    for split, extra in changes.items():
        splits[split] = splits[split] + extra
    return write(root, **splits)


def kinds(report):
    return sorted(p.kind for p in report.problems)


def test_good_manifest(data, capsys):
    path = good(data)
    assert len(load_manifest(path, "training")) == 3
    report = validate_manifest(path)
    assert report.problems == [] and list(report.summary["volumes"]) == [5]
    assert main(["data", "validate", str(path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("0 errors, 0 warnings")


def test_missing_path(data, capsys):
    path = good(data, validation=[entry("E5-1.nii.gz")])
    with pytest.raises(FileNotFoundError, match=r"(?s)m\.json.*1 of 2 volume.*validation\[1\] label='E5-1.nii.gz'"):
        load_manifest(path, "validation")
    assert load_manifest(path, "training")  # a missing file elsewhere does not block this split
    assert kinds(validate_manifest(path)) == ["missing"]
    assert main(["data", "validate", str(path)]) == 1
    assert "validation[1] label='E5-1.nii.gz': not found" in capsys.readouterr().out


def test_subject_in_two_splits(data):
    path = write(data, [entry("A1-1.nii.gz")], [entry("A1-2.nii.gz")], [entry("B2-1.nii.gz")])
    with pytest.raises(ValueError, match=r"(?s)m\.json.*subject 'A1'.*training\[0\], validation\[0\]"):
        load_manifest(path, "test")  # leakage refuses every split
    assert kinds(validate_manifest(path)) == ["subject_overlap"]


def test_duplicate_entries(data):
    # The same file twice: in one split, in two splits under another spelling, and through a symlink.
    os.symlink(data / "B2-1.nii.gz", data / "alias.nii.gz")
    path = good(data, training=[entry("A1-1.nii.gz"), entry("alias.nii.gz", "B2")], test=[entry("./D4-1.nii.gz")])
    with pytest.raises(ValueError, match=r"(?s)m\.json.*training\[3\] label='A1-1.nii.gz': same file as training\[0\]"):
        load_manifest(path, "training")
    report = validate_manifest(path)
    assert kinds(report) == ["duplicate"] * 3
    assert "test[1] label='./D4-1.nii.gz'" in {p.where for p in report.problems}
    assert list(report.summary["volumes"]) == [5]  # each file is read and counted once


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_escaping_path(data, how, capsys):
    outside = data.parent / "outside.nii.gz"
    label = {"dotdot": "../outside.nii.gz", "absolute": str(outside), "symlink": "link.nii.gz"}[how]
    if how == "symlink":
        os.symlink(outside, data / label)
    path = good(data, test=[entry(label, "E5")])
    with pytest.raises(ValueError, match=r"(?s)m\.json.*allow_outside_root=True.*test\[1\].*outside the data root"):
        load_manifest(path, "test")
    assert len(load_manifest(path, "test", allow_outside_root=True)) == 2
    assert kinds(validate_manifest(path)) == ["outside_root"]
    report = validate_manifest(path, allow_outside_root=True)
    assert report.problems == [] and list(report.summary["volumes"]) == [6]
    assert main(["data", "validate", str(path)]) == 1
    assert "outside the data root" in capsys.readouterr().out
    assert main(["data", "validate", str(path), "--allow-outside-root"]) == 0


def test_absolute_path_inside_root_accepted(data):
    path = write(data, [entry(data / "A1-1.nii.gz")])
    assert load_manifest(path, "training")[0]["label"] == str(data / "A1-1.nii.gz")


def test_inconsistent_shape_and_spacing_warned(data, capsys):
    write_nifti(data / "E5-1.nii.gz", shape=(5, 4, 3))
    write_nifti(data / "F6-1.nii.gz", spacing=(1.0, 1.0, 1.5))
    path = good(data, test=[entry("E5-1.nii.gz"), entry("F6-1.nii.gz")])
    report = validate_manifest(path)
    assert [(p.level, p.kind) for p in report.problems] == [("warning", "inconsistent")] * 2
    table = report.summary.set_index(["shape", "spacing"])["volumes"].to_dict()
    assert table == {("4x4x3", "2x2x2"): 5, ("5x4x3", "2x2x2"): 1, ("4x4x3", "1x1x1.5"): 1}
    assert main(["data", "validate", str(path)]) == 0  # warnings only
    out = capsys.readouterr().out
    assert "2 different shapes" in out and "2 different spacings" in out
    assert "5x4x3" in out and "E5-1.nii.gz" in out and "1x1x1.5" in out
    assert "A1-1.nii.gz, A1-2.nii.gz, B2-1.nii.gz, ..." in out  # a few examples per row
    assert out.rstrip().endswith("0 errors, 2 warnings")


def test_headers_of_every_format(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16))
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.mha"))
    sitk.WriteImage(image, str(tmp_path / "v.mhd"))
    assert read_header(tmp_path / "v.mha") == read_header(tmp_path / "v.mhd") == ((5, 4, 3), (1.0, 2.0, 3.0))
    series = write_dicom_series(tmp_path / "series", np.zeros((5, 4, 3), np.int16), spacing=(1.0, 2.0, 3.0))
    shape, spacing = read_header(series)
    assert shape == (5, 4, 3) and np.allclose(spacing, (1.0, 2.0, 3.0))
    (tmp_path / "v.raw").unlink()
    with pytest.raises(ValueError, match="ElementDataFile"):
        read_header(tmp_path / "v.mhd")


def test_several_problems_all_listed(data, capsys):
    (data / "broken.nii.gz").write_bytes(b"not a nifti file")
    write_nifti(data / "E5-1.nii.gz", shape=(6, 6, 6))
    path = write(
        data,
        [entry("A1-1.nii.gz"), entry("A1-1.nii.gz"), entry("../outside.nii.gz", "O")],
        [entry("A1-2.nii.gz"), entry("gone.nii.gz", "G"), entry("broken.nii.gz", "K")],
        [entry("E5-1.nii.gz"), {"subject": "no label"}],
    )
    # load_manifest reads no volume: the broken file alone would pass it, the rest do not.
    with pytest.raises(ValueError) as err:
        load_manifest(path, "training")
    assert all(s in str(err.value) for s in ("training[1]", "training[2]", "subject 'A1'", "test[1]"))

    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    for line in (
        "error: training[1] label='A1-1.nii.gz': same file as training[0]",
        "error: training[2] label='../outside.nii.gz':",
        "error: validation[1] label='gone.nii.gz': not found",
        "error: validation[2] label='broken.nii.gz': cannot read header",
        "error: test[1]: entry is not an object with a 'label' path",
        "error: subject 'A1': in 2 splits: training[0], validation[0]",
        "warning: volumes: 2 different shapes",
    ):
        assert line in out, (line, out)
    assert out.rstrip().endswith("6 errors, 1 warning")


def test_committed_manifest_validates(ixi_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPELINE_DATA_ROOT": str(ixi_dir)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "data", "validate", str(IXI_MANIFEST.relative_to(REPO))],
        cwd=REPO, capture_output=True, text=True, encoding="utf-8", env=env, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout and "144" in result.stdout
