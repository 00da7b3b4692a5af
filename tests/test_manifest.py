"""Manifests: volumes found in every supported format, split by subject with a fixed seed, written atomically,
loaded with their paths resolved (argument > $PIPELINE_DATA_ROOT > manifest), and the ``data manifest`` command."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.data import (
    DEFAULT_SUBJECT_PATTERN,
    SPLITS,
    build_manifest,
    find_volumes,
    load_manifest,
    subject_id,
    write_manifest,
)

from conftest import IXI_MANIFEST as COMMITTED_MANIFEST  # noqa: E402
from conftest import REPO, SHARED_DATA  # noqa: E402

# Subjects with more than one scan: all their files must share a split.
MULTI_SCAN = {"IXI002": 3, "IXI017": 2, "IXI030": 2}
N_SUBJECTS = 40


def write_nifti(path: Path, shape=(4, 4, 3)) -> None:
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))


@pytest.fixture
def ixi_like(tmp_path):
    """40 subjects named like IXI (IXI001..IXI040), three of them with several scans, plus a non-volume file."""
    root = tmp_path / "ixi"
    root.mkdir()
    for n in range(1, N_SUBJECTS + 1):
        subject = f"IXI{n:03d}"
        for scan in range(1, MULTI_SCAN.get(subject, 1) + 1):
            write_nifti(root / f"{subject}-HH-{scan}_T1.nii.gz")
    (root / "README.txt").write_text("not a volume", encoding="utf-8")
    return root


def split_subjects(manifest):
    return {split: {e["subject"] for e in manifest[split]} for split in SPLITS}


def all_labels(manifest):
    return [e["label"] for split in SPLITS for e in manifest[split]]


# --------------------------------------------------------------------------------------------------------------
# subject ids and volume discovery


@pytest.mark.parametrize(
    "path, pattern, expected",
    [
        ("IXI002-HH-1_T1.nii.gz", None, "IXI002"),
        ("sub/IXI123-Guys-0815_T1.nii", None, "IXI123"),
        ("IXI002/t1_series", None, "IXI002"),  # DICOM series folder inside a subject folder
        ("case07.nii.gz", None, "case07"),
        ("nested/case07.mha", None, "case07"),
        ("scan.v2.mhd", None, "scan.v2"),
        ("patient_a/series_3", None, "series_3"),  # DICOM folder: its own name
        ("sub-01_T1w.nii.gz", r"^(sub-\d+)", "sub-01"),
    ],
)
def test_subject_id(path, pattern, expected):
    assert subject_id(path, pattern or DEFAULT_SUBJECT_PATTERN) == expected


def test_find_volumes_all_formats(tmp_path):
    root = tmp_path / "mixed"
    (root / "nii").mkdir(parents=True)
    write_nifti(root / "nii" / "a.nii.gz")
    write_nifti(root / "nii" / "b.nii")
    (root / "meta").mkdir()
    (root / "meta" / "c.mha").write_bytes(b"ObjectType = Image\n")
    (root / "meta" / "d.mhd").write_text("ObjectType = Image\nElementDataFile = d.raw\n", encoding="utf-8")
    (root / "meta" / "d.raw").write_bytes(b"\0" * 8)
    (root / "meta" / "orphan.mhd").write_text("ObjectType = Image\nElementDataFile = missing.raw\n", encoding="utf-8")
    (root / "dicom" / "series1").mkdir(parents=True)
    for i in range(3):
        (root / "dicom" / "series1" / f"slice{i}.dcm").write_bytes(b"")
    (root / "dicom" / "series2").mkdir()  # no extension, recognised by the DICOM preamble
    (root / "dicom" / "series2" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    (root / "notes").mkdir()
    (root / "notes" / "x.txt").write_text("no volume", encoding="utf-8")

    with pytest.warns(UserWarning, match="orphan.mhd"):
        found = find_volumes(root)
    assert found == ["dicom/series1", "dicom/series2", "meta/c.mha", "meta/d.mhd", "nii/a.nii.gz", "nii/b.nii"]


# --------------------------------------------------------------------------------------------------------------
# splitting


def test_split_is_by_subject_and_complete(ixi_like):
    manifest = build_manifest(ixi_like)
    expected_files = sorted(p.name for p in ixi_like.glob("*.nii.gz"))
    labels = all_labels(manifest)
    assert sorted(labels) == expected_files  # every file exactly once
    assert len(labels) == len(set(labels)) == N_SUBJECTS + sum(n - 1 for n in MULTI_SCAN.values())

    subjects = split_subjects(manifest)
    assert not subjects["training"] & subjects["validation"]
    assert not subjects["training"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    for subject, n_scans in MULTI_SCAN.items():
        splits = [split for split in SPLITS for e in manifest[split] if e["subject"] == subject]
        assert len(splits) == n_scans and len(set(splits)) == 1, (subject, splits)
    for e in manifest["training"]:
        assert e["label"].startswith(e["subject"] + "-HH-")
    assert {"name", "description", "data_root", "seed"} <= set(manifest)
    assert manifest["data_root"] == str(ixi_like) and manifest["seed"] == 0


def test_split_fractions(ixi_like):
    counts = {split: len(s) for split, s in split_subjects(build_manifest(ixi_like)).items()}
    assert counts == {"training": 28, "validation": 6, "test": 6}  # 0.7/0.15/0.15 of 40 subjects
    counts = {split: len(s) for split, s in split_subjects(build_manifest(ixi_like, (0.5, 0.2, 0.3))).items()}
    assert counts == {"training": 20, "validation": 8, "test": 12}


def test_split_reproducible_by_seed(ixi_like):
    first, again = build_manifest(ixi_like, seed=3), build_manifest(ixi_like, seed=3)
    assert first == again
    other = build_manifest(ixi_like, seed=4)
    assert split_subjects(other)["training"] != split_subjects(first)["training"]
    assert sorted(all_labels(other)) == sorted(all_labels(first))


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_fractions(ixi_like, fractions):
    with pytest.raises(ValueError, match="fractions"):
        build_manifest(ixi_like, fractions)


def test_missing_or_empty_folder_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        build_manifest(tmp_path / "no_such_folder")
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "empty_folder" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="empty_folder"):
        build_manifest(tmp_path / "empty_folder")


# --------------------------------------------------------------------------------------------------------------
# writing and loading


def test_write_manifest_atomic_json(ixi_like, tmp_path):
    out = tmp_path / "out" / "m.json"
    out.parent.mkdir()
    out.write_text("old contents", encoding="utf-8")
    manifest = build_manifest(ixi_like)
    assert write_manifest(manifest, out) == out
    assert json.loads(out.read_text(encoding="utf-8")) == manifest
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.json"]  # no temporary file left behind


def test_load_manifest_resolves_relative_to_manifest(ixi_like, tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    manifest = build_manifest(ixi_like)
    manifest["data_root"] = "../ixi"
    path = write_manifest(manifest, tmp_path / "manifests" / "m.json")
    entries = load_manifest(path, "validation")
    assert [Path(e["label"]).name for e in entries] == [e["label"] for e in manifest["validation"]]
    assert all(Path(e["label"]).is_file() and Path(e["label"]).is_absolute() for e in entries)
    assert [e["subject"] for e in entries] == [e["subject"] for e in manifest["validation"]]


def test_load_manifest_keeps_subject_when_a_folder_has_its_name(ixi_like, tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    manifest = build_manifest(ixi_like)
    subject = manifest["training"][0]["subject"]
    (ixi_like / subject).mkdir()  # MONAI would turn the value "IXI..." into this folder's path
    manifest["data_root"] = "."
    path = write_manifest(manifest, ixi_like / "m.json")
    assert load_manifest(path, "training")[0]["subject"] == subject


def test_data_root_override_order(ixi_like, tmp_path, monkeypatch):
    manifest = build_manifest(ixi_like)
    manifest["data_root"] = "does/not/exist"
    path = write_manifest(manifest, tmp_path / "m.json")
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    with pytest.raises(FileNotFoundError):
        load_manifest(path, "test")

    monkeypatch.setenv("PIPELINE_DATA_ROOT", str(ixi_like))
    entries = load_manifest(path, "test")
    assert entries and all(Path(e["label"]).parent == ixi_like for e in entries)

    copy = tmp_path / "copy"
    copy.mkdir()
    for e in manifest["test"]:
        write_nifti(copy / e["label"])
    entries = load_manifest(path, "test", data_root=copy)  # the argument beats the environment
    assert all(Path(e["label"]).parent == copy for e in entries)


def test_missing_files_all_reported(ixi_like, tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    manifest = build_manifest(ixi_like)
    gone = [e["label"] for e in manifest["training"][:3]]
    for name in gone:
        (ixi_like / name).unlink()
    manifest["data_root"] = "."
    path = write_manifest(manifest, ixi_like / "m.json")
    with pytest.raises(FileNotFoundError) as err:
        load_manifest(path, "training")
    message = str(err.value)
    assert "m.json" in message and "3 of" in message
    assert all(name in message for name in gone)
    assert load_manifest(path, "validation")  # other splits are untouched


def test_load_manifest_bad_inputs(ixi_like, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_manifest(tmp_path / "nothing.json", "training")
    path = write_manifest(build_manifest(ixi_like), tmp_path / "m.json")
    with pytest.raises(ValueError, match="split"):
        load_manifest(path, "train")


# --------------------------------------------------------------------------------------------------------------
# the command line


def test_cli_manifest_subprocess(ixi_like, tmp_path, monkeypatch):
    out = tmp_path / "repo" / "data_manifests" / "x.json"
    cmd = [sys.executable, "-m", "pipeline", "data", "manifest", str(ixi_like), "--out", str(out)]
    result = subprocess.run(
        [*cmd, "--seed", "1", "--fractions", "0.5", "0.25", "0.25"], cwd=REPO, capture_output=True, text=True, encoding="utf-8"
    )
    assert result.returncode == 0, result.stderr
    assert "training" in result.stdout and "20 subjects" in result.stdout and str(out) in result.stdout
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["data_root"] == "../../ixi"  # relative to the manifest's folder
    assert written["seed"] == 1
    assert split_subjects(written) == split_subjects(build_manifest(ixi_like, (0.5, 0.25, 0.25), seed=1))
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    assert all(Path(e["label"]).is_file() for e in load_manifest(out, "training"))

    missing = subprocess.run(
        [sys.executable, "-m", "pipeline", "data", "manifest", str(tmp_path / "absent_dir"), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    assert missing.returncode != 0
    assert "absent_dir" in missing.stderr


def test_cli_manifest_in_process(ixi_like, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PIPELINE_DATA_ROOT", raising=False)
    out = tmp_path / "manifests" / "y.json"
    assert main(["data", "manifest", str(ixi_like), "--out", str(out), "--pattern", r"^(IXI\d+)"]) == 0
    printed = capsys.readouterr().out
    assert "28 subjects" in printed and "y.json" in printed
    assert len(load_manifest(out, "training")) == 28 + sum(
        n - 1 for s, n in MULTI_SCAN.items() if s in split_subjects(build_manifest(ixi_like))["training"]
    )

    assert main(["data", "manifest", str(tmp_path / "missing_root"), "--out", str(out)]) == 1
    assert "missing_root" in capsys.readouterr().err
    assert main(["data", "manifest", str(ixi_like), "--out", str(out), "--fractions", "0.5", "0.5", "0.5"]) == 1
    assert "sum to 1" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# the committed IXI manifest


def test_committed_ixi_manifest():
    assert COMMITTED_MANIFEST.is_file(), f"{COMMITTED_MANIFEST} missing: run `python -m pipeline data manifest`"
    manifest = json.loads(COMMITTED_MANIFEST.read_text(encoding="utf-8"))
    assert manifest["data_root"] == "../../shared/data/ixi_t1" and manifest["seed"] == 0
    labels = all_labels(manifest)
    assert len(labels) == len(set(labels)) == 144
    subjects = split_subjects(manifest)
    assert sum(len(s) for s in subjects.values()) == len(set().union(*subjects.values()))  # disjoint
    assert [len(subjects[s]) for s in SPLITS] == [101, 22, 21]


def test_committed_ixi_manifest_resolves():
    data = SHARED_DATA / "ixi_t1"
    if not data.is_dir():
        pytest.skip(f"shared IXI data not found at {data} (set PIPELINE_SHARED_DATA)")
    for split in SPLITS:
        entries = load_manifest(COMMITTED_MANIFEST, split, data_root=data)
        assert entries and all(Path(e["label"]).is_file() for e in entries)
    # The committed split is exactly what the command builds from the data today.
    rebuilt = build_manifest(data, seed=0)
    committed = json.loads(COMMITTED_MANIFEST.read_text(encoding="utf-8"))
    assert all(rebuilt[split] == committed[split] for split in SPLITS)
