"""Proxies for scans unlike IXI: ``python -m pipeline data proxies`` writes the MNI template and resampled IXI
volumes with manifests, and ``python -m pipeline compare`` scores the shipped DiffNet on them. The tests resample to
1.5 mm (the configs use 1 mm) to keep the volumes, and the test, small."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from monai.transforms import LoadImage

from conftest import IXI_MANIFEST, REPO
from pipeline.compare import load_config, run_comparison
from pipeline.data import load_manifest

BUNDLE = REPO / "bundles" / "diffnet_mri_denoising"


@pytest.fixture(scope="module")
def proxies(tmp_path_factory, ixi_dir):
    pytest.importorskip("nilearn")
    out = tmp_path_factory.mktemp("proxies")
    command = [sys.executable, "-m", "pipeline", "data", "proxies", "--out", str(out), "--manifest", str(IXI_MANIFEST),
               "--validation", "1", "--test", "1", "--spacing", "1.5"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PIPELINE_DATA_ROOT": str(ixi_dir)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_mni_proxy_is_a_tuning_and_a_test_subject_at_1mm(proxies):
    out, stdout = proxies
    manifest = out / "mni152_1mm" / "manifest.json"
    assert f"wrote {manifest}" in stdout
    validation, test = (load_manifest(manifest, split) for split in ("validation", "test"))
    assert [e["subject"] for e in validation + test] == ["MNI152-tuning", "MNI152"]
    volume = LoadImage(image_only=True)(test[0]["label"])
    assert tuple(volume.shape) == (197, 233, 189)
    assert volume.pixdim.tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_resampled_proxy_keeps_subjects_and_refines_the_grid(proxies, ixi_dir):
    out, _ = proxies
    manifest = out / "ixi_t1_1.5mm" / "manifest.json"
    for split in ("validation", "test"):
        source = load_manifest(IXI_MANIFEST, split, ixi_dir)[0]
        [entry] = load_manifest(manifest, split)
        assert entry["subject"] == source["subject"]
        before, after = LoadImage(image_only=True)(source["label"]), LoadImage(image_only=True)(entry["label"])
        assert before.pixdim.tolist() == pytest.approx([2.0, 2.0, 2.0])
        assert after.pixdim.tolist() == pytest.approx([1.5, 1.5, 1.5])
        assert all(abs(a - b * 2 / 1.5) <= 2 for a, b in zip(after.shape, before.shape))
        assert float(after.max()) <= float(before.max()) * (1 + 1e-5)  # trilinear: no overshoot
        assert float(after.quantile(0.99)) == pytest.approx(float(before.quantile(0.99)), rel=0.05)


def test_shipped_diffnet_and_tuned_perona_malik_on_the_resampled_proxy(proxies, tmp_path):
    out, _ = proxies
    config = {"name": "proxy", "manifest": str(out / "ixi_t1_1.5mm" / "manifest.json"),
              "output_dir": str(tmp_path / "out"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
              "methods": ["noisy", "perona_malik", "diffnet_guided"],
              "checkpoints": {"diffnet_guided": str(BUNDLE / "models" / "model.pt")},
              "evaluation": {"noises": ["rician"], "levels": [0.09], "oracle_subjects": 1},
              "tuning": {"num_volumes": 1}}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_comparison(load_config(path))
    rows = pd.read_csv(result["files"]["per_subject"])
    blind = rows[rows["sigma"] == "blind"].groupby("method")["psnr_head"].mean()
    noisy = rows[rows["method"] == "noisy"]["psnr_head"].mean()
    assert set(rows["method"]) == {"noisy", "perona_malik", "diffnet_guided"}
    assert blind["perona_malik"] > noisy + 1 and blind["diffnet_guided"] > noisy + 1  # both denoise the 1 mm volume
    assert "ixi_t1_1.5mm" in result["files"]["report"].read_text(encoding="utf-8")
