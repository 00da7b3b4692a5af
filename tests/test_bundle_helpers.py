"""The Python helpers behind the bundle configs: run names, checkpoints, inference inputs, Perona-Malik tuning."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.bundle import as_bool, inference_datalist, latest_checkpoint, resume_checkpoint, run_name
from pipeline.metrics import psnr
from pipeline.tuning import tune_on_slices, tuned_parameters


def test_run_names_are_unique_and_a_resume_reuses_the_recorded_one(tmp_path):
    first = run_name("diffnet_guided", "train", tmp_path)
    second = run_name("diffnet_guided", "train", tmp_path)
    assert first != second and first.startswith("diffnet_guided-train-")
    assert run_name("diffnet_guided", "train", tmp_path, resume=True) == second


def test_latest_checkpoint_is_the_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="resume=true"):
        resume_checkpoint(tmp_path, True)
    for epoch in (2, 10, 9):
        (tmp_path / f"checkpoint_epoch={epoch}.pt").write_bytes(b"")
    assert latest_checkpoint(tmp_path).endswith("checkpoint_epoch=10.pt")
    assert resume_checkpoint(tmp_path, False) is None


def write_volume(path):
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(path))
    return path


def test_inference_datalist_takes_a_file_or_a_folder_and_refuses_to_overwrite_inputs(tmp_path):
    a = write_volume(tmp_path / "a.nii.gz")
    write_volume(tmp_path / "b.nii")
    assert inference_datalist(a) == [{"image": str(a)}]
    assert len(inference_datalist(tmp_path)) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        inference_datalist(tmp_path / "missing")
    write_volume(tmp_path / "a_denoised.nii.gz")
    with pytest.raises(ValueError, match="overwrite"):
        inference_datalist(tmp_path, output_dir=tmp_path)


def test_tuned_parameters_explain_what_is_missing(tmp_path):
    path = tmp_path / "pm.json"
    with pytest.raises(FileNotFoundError, match="tuning"):
        tuned_parameters(path, "rician", 0.05)
    table = {"rician": {"0.05": {"kappa": 0.1, "num_iter": 4, "dt": 0.25, "val_psnr_head": 30}}}
    path.write_text(json.dumps(table), encoding="utf-8")
    assert tuned_parameters(path, "rician", 0.05) == {"kappa": 0.1, "num_iter": 4, "dt": 0.25}
    with pytest.raises(ValueError, match="tuned levels"):
        tuned_parameters(path, "rician", 0.07)


def test_tuning_finds_parameters_that_beat_the_noisy_input():
    gen = torch.Generator().manual_seed(0)
    clean = torch.zeros(4, 1, 48, 48)
    clean[:, :, 12:36, 12:36] = 1.0
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    mask = torch.ones_like(clean)
    best = tune_on_slices(noisy, clean, mask)
    assert best["val_psnr_head"] > psnr(noisy, clean, mask).mean().item() + 3
    assert best["num_iter"] > 1 and 0 < best["dt"] <= 0.25


@pytest.mark.parametrize("value,expected", [("true", True), ("False", False), ("0", False), (True, True), (0, False)])
def test_command_line_flags_become_bools(value, expected):
    assert as_bool(value) is expected


def test_an_unclear_flag_is_refused():
    with pytest.raises(ValueError, match="true or false"):
        as_bool("maybe")
