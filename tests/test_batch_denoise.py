"""``python -m pipeline denoise`` over a folder: good volumes are denoised, bad ones reported and skipped, the summary
CSV says why, and an interrupted or failed write never leaves a ``*_denoised.nii.gz`` behind."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import image_writer

from conftest import REPO
from dicom_series import write_dicom_series
from pipeline.cli import main

PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Doe^Jane", "SECRET123", "19700101"


def small_ixi(ixi_dir: Path, folder: Path, count: int) -> list[Path]:
    """The first ``count`` IXI volumes cropped to 64 x 64 x 8 (fast to denoise), with the crop's affine."""
    paths = []
    for name in sorted(os.listdir(ixi_dir))[:count]:
        path = folder / name
        nib.save(nib.load(str(ixi_dir / name)).slicer[28:92, 28:92, 41:49], str(path))
        paths.append(path)
    return paths


def read_summary(out: Path) -> dict[str, dict]:
    with open(out / "denoise_summary.csv", newline="", encoding="utf-8") as f:
        return {Path(row["input"]).name: row for row in csv.DictReader(f)}


def test_folder_with_good_and_bad_volumes(tmp_path, ixi_dir):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    good = small_ixi(ixi_dir, scans, 2)
    raw = good[0].read_bytes()
    (scans / "broken.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    data = np.asarray(nib.load(str(good[0])).dataobj).astype(np.int16)[..., :4]
    tags = {"0010|0010": PATIENT_NAME, "0010|0020": PATIENT_ID, "0010|0030": BIRTH_DATE}
    mixed = write_dicom_series(scans / "mixed_series", data, tags=tags)
    for f in write_dicom_series(tmp_path / "b", data, tags={**tags, "0020|000e": "1.2.3.4.5.6"}).iterdir():
        f.rename(mixed / f"B{f.name}")

    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_DATA_ROOT"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pipeline", "denoise", str(scans), "--out", str(out),
                           "--device", "cpu", "--noise-level", "0.03"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=300)
    log = proc.stdout
    assert proc.returncode == 1, log

    for path in good:
        result = out / path.name.replace(".nii.gz", "_denoised.nii.gz")
        assert result.is_file(), log
        original, denoised = nib.load(str(path)), nib.load(str(result))
        assert denoised.shape == original.shape == (64, 64, 8)
        assert np.allclose(denoised.affine, original.affine, atol=1e-4)
        assert denoised.get_data_dtype() == np.float32 and np.isfinite(denoised.get_fdata()).all()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name.replace(".nii.gz", "_denoised.nii.gz") for p in good] + ["denoise_summary.csv"])

    summary = read_summary(out)
    assert [summary[p.name]["status"] for p in good] == ["ok", "ok"]
    assert [(summary[p.name]["noise_level"], summary[p.name]["noise_level_method"]) for p in good] == [
        ("0.03000", "given")] * 2  # --noise-level overrides the estimate
    assert "noise level 3.00% (given)" in log
    descrip = nib.load(str(out / good[0].name.replace(".nii.gz", "_denoised.nii.gz"))).header["descrip"]
    assert descrip.tobytes().rstrip(b"\0") == b"denoised; noise level 0.0300 (given)"
    assert summary["broken.nii.gz"]["status"] == "failed"
    assert summary["broken.nii.gz"]["problem"].startswith(f"{scans / 'broken.nii.gz'}: is a truncated or corrupt gzip")
    assert summary["mixed_series"]["status"] == "failed"
    assert summary["mixed_series"]["problem"].startswith(f"{mixed}: holds 2 DICOM series mixed together")

    for i in range(1, 5):  # one progress line per file, then the failures
        assert f"[{i}/4] " in log, log
    assert "2 of 4 volume(s) denoised, 2 failed" in log
    table = log[log.index("2 failed"):]
    assert "broken.nii.gz" in table and "mixed_series" in table
    everything = log + (out / "denoise_summary.csv").read_text(encoding="utf-8")
    for secret in (PATIENT_NAME, PATIENT_ID, "Doe", "Jane", BIRTH_DATE):
        assert secret not in everything, f"{secret!r} was printed or written"


def test_bundle_inference_skips_bad_files_and_estimates_the_noise_level(tmp_path, ixi_dir):
    """``monai.bundle run inference`` over a folder of good and bad files (the MONAI user with 500 scans and a few
    bad ones): every good file is denoised with the noise level estimated from it, printed and recorded (summary CSV
    and NIfTI descrip); every bad file is named with its problem; exit status 1 at the end, no traceback."""
    from pipeline.transforms import MRINoise

    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    image = nib.load(str(sorted(ixi_dir.glob("*.nii.gz"))[0]))
    data = np.asarray(image.dataobj, dtype=np.float32)[..., 40:52]  # a 12-slice slab keeps the air around the head
    reference = float(np.percentile(data[data > 0.1 * data.max()], 99))
    noisy = MRINoise("rician", 0.05, reference=reference).set_random_state(0)(data[None])[0].numpy()
    for name in ("a_scan.nii.gz", "c_scan.nii.gz"):
        nib.save(nib.Nifti1Image(noisy, image.affine), str(scans / name))
    raw = (scans / "a_scan.nii.gz").read_bytes()
    (scans / "b_truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    (scans / "d_empty.nii.gz").write_bytes(b"")
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), str(scans / "e_nan.nii.gz"))

    bundle = REPO / "bundles" / "diffnet_mri_denoising"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle), "--dataset_dir",
                           str(scans), "--output_dir", str(out), "--device", "$torch.device('cpu')"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=600)
    log = proc.stdout
    assert proc.returncode == 1, log[-3000:]
    assert "Traceback" not in log, log[-5000:]
    assert sorted(p.name for p in out.iterdir()) == ["a_scan_denoised.nii.gz", "c_scan_denoised.nii.gz",
                                                      "denoise_summary.csv"]
    summary = read_summary(out)
    assert sorted(summary) == sorted(p.name for p in scans.iterdir())  # a row per input
    for bad, problem in (("b_truncated.nii.gz", "truncated or corrupt"), ("d_empty.nii.gz", "is empty"),
                         ("e_nan.nii.gz", "NaN")):
        assert summary[bad]["status"] == "failed" and problem in summary[bad]["problem"]
        assert f"{scans / bad}: " in log and bad in log[log.index("3 failed"):]
    for good in ("a_scan.nii.gz", "c_scan.nii.gz"):
        row = summary[good]
        assert row["status"] == "ok" and row["noise_level_method"] == "background"
        # sigma relative to the noisy scan's own reference intensity: a little below 5 %
        assert float(row["noise_level"]) == pytest.approx(0.05, rel=0.15)
        assert f"noise level {float(row['noise_level']):.2%} (background)" in log
        result = nib.load(str(out / good.replace(".nii.gz", "_denoised.nii.gz")))
        assert result.shape == noisy.shape and np.allclose(result.affine, image.affine, atol=1e-4)
        assert result.header["descrip"].tobytes().startswith(b"denoised; noise level 0.0")

    # --noise_level overrides the estimate (one file given as dataset_dir)
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           str(bundle / "configs" / "inference.yaml"), "--bundle_root", str(bundle), "--dataset_dir",
                           str(scans / "a_scan.nii.gz"), "--output_dir", str(tmp_path / "given"), "--noise_level",
                           "0.08", "--device", "$torch.device('cpu')"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "noise level 8.00% (given)" in proc.stdout
    assert read_summary(tmp_path / "given")["a_scan.nii.gz"]["noise_level"] == "0.08000"


def _half_written(filename) -> None:
    Path(filename).write_bytes(b"\x1f\x8b" + b"\0" * 100)  # a few bytes of a gzip file, then the failure


def test_interrupted_write_leaves_no_output(tmp_path, ixi_dir, monkeypatch, capsys):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    small_ixi(ixi_dir, scans, 2)

    def interrupted(image, filename):
        _half_written(filename)
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", interrupted)  # what MONAI's NibabelWriter calls
    assert main(["denoise", str(scans), "--out", str(out), "--device", "cpu"]) == 130
    assert "interrupted after 0 of 2" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["denoise_summary.csv"], "a partial file was left behind"


def test_failed_write_is_reported_and_the_next_file_still_written(tmp_path, ixi_dir, monkeypatch, capsys):
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    first, second = small_ixi(ixi_dir, scans, 2)
    real_writers = {cls: cls.write for cls in (image_writer.NibabelWriter, image_writer.ITKWriter)}

    def disk_full_for_the_first(cls):
        def write(self, filename, verbose=False, **kwargs):
            if first.name.replace(".nii.gz", "") in str(filename):
                _half_written(filename)
                raise OSError(28, "No space left on device")
            return real_writers[cls](self, filename, verbose=verbose, **kwargs)
        return write

    for cls in real_writers:  # MONAI falls back from one writer to the next; both fail
        monkeypatch.setattr(cls, "write", disk_full_for_the_first(cls))
    assert main(["denoise", str(scans), "--out", str(out), "--device", "cpu"]) == 1
    capsys.readouterr()
    expected = first.name.replace(".nii.gz", "_denoised.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [second.name.replace(".nii.gz", "_denoised.nii.gz"), "denoise_summary.csv"])
    row = read_summary(out)[first.name]
    assert row["status"] == "failed"
    assert row["problem"] == (f"{first}: OSError: could not write {out / expected}: "
                              "OSError: [Errno 28] No space left on device")


def test_missing_arguments_print_the_usage(capsys):
    with pytest.raises(SystemExit):
        main(["denoise"])
    assert "the following arguments are required: INPUT, --out" in capsys.readouterr().err
