"""The MONAI bundle end to end: the real ``python -m monai.bundle`` commands (and ``torchrun``) in subprocesses on a
few real IXI volumes, then checks of what they produced (weights, checkpoints, CSVs, NIfTI outputs, MLflow runs).

One 1-epoch DiffNet training (module fixture ``trained``) feeds the evaluation, inference, resume and export tests;
each test still checks its own command. Every command gets small-data overrides and a temporary ``output_dir`` and
MLflow store, so nothing is written into the repository.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from monai.transforms import LoadImage

from conftest import IXI_MANIFEST, REPO, SHARED_DATA
from dicom_series import write_dicom_series
from pipeline.data import load_manifest
from pipeline.networks import DiffNet, residual_unet

BUNDLE = "bundles/diffnet_mri_denoising"
CONFIGS = f"{BUNDLE}/configs"
METADATA = REPO / CONFIGS / "metadata.json"
EXPERIMENT = "diffnet_mri_denoising"
DIFFNET_PARAMETERS = 199590  # DiffNet(2, guidance=True, noise_map=True, context_slices=1), the bundle's network_def
# what every training run gets: a couple of volumes, one epoch, validated (and model.pt saved) after every epoch
SMALL_TRAINING = ["--num_train_volumes", "2", "--num_val_volumes", "1", "--patches_per_volume", "4",
                  "--val_interval", "1", "--epochs", "1"]
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "SECRET123"


# --------------------------------------------------------------------------------------------------------------
# helpers


def config_files(*names: str) -> str:
    """Bundle config files, merged in order, as the Python-list string ``monai.bundle`` parses."""
    paths = [f"{CONFIGS}/{name}" for name in names]
    return paths[0] if len(paths) == 1 else str(paths)


def tail(proc: subprocess.CompletedProcess, chars: int = 6000) -> str:
    return f"\n--- last output of: {' '.join(proc.args)}\n{proc.stdout[-chars:]}"


def run_bundle(args: list[str], log: Path, torchrun: bool = False, timeout: int = 1500) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` (or under ``torchrun`` with 2 processes) from the repository root; stdout and
    stderr together in ``.stdout`` and in ``log``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun else [
        sys.executable]
    cmd = [*launcher, "-m", "monai.bundle", *args]
    # the tests choose the data folder and the MLflow store themselves, never the caller's
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_DATA_ROOT")}
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                          errors="replace", timeout=timeout)
    log.write_text(" ".join(cmd) + "\n" + proc.stdout, encoding="utf-8")
    return proc


def bundle_args(command: str, *configs: str, **overrides) -> list[str]:
    """``run <command> --config_file ... --meta_file ... --logging_file ... --bundle_root ...`` plus ``--key value``."""
    args = [*command.split(), "--config_file", config_files(*configs), "--meta_file", f"{CONFIGS}/metadata.json",
            "--logging_file", f"{CONFIGS}/logging.conf", "--bundle_root", BUNDLE]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit status {proc.returncode}{tail(proc)}"


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def runs_named(uri: str, name: str) -> list:
    """MLflow runs of the bundle's experiment with this run name, oldest first."""
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no MLflow experiment {EXPERIMENT!r} in {uri}"
    return client.search_runs([experiment.experiment_id], f"tags.`mlflow.runName` = '{name}'",
                              order_by=["attributes.start_time ASC"])


def all_runs(uri: str) -> list:
    client = mlflow_client(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def read_metrics_csv(path: Path) -> dict[str, float]:
    """MONAI ``MetricsSaver``'s ``metrics.csv``: ``name,value`` rows (comma or tab separated)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [line.replace("\t", ",").split(",") for line in lines if line.strip()]
    return {row[0]: float(row[1]) for row in rows}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_diffnet(path: Path) -> DiffNet:
    """The bundle's network (2.5D: the slice, its 2 neighbours and the noise map in) with the weights of ``path``."""
    net = DiffNet(2, guidance=True, noise_map=True, context_slices=1)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # strict: every key, no "module."
    return net.eval()


# --------------------------------------------------------------------------------------------------------------
# shared fixtures


@pytest.fixture(scope="module")
def ixi() -> Path:
    """The shared IXI T1 folder for the module fixtures (``ixi_dir`` is function-scoped); the same skip as it."""
    path = SHARED_DATA / "ixi_t1"
    if not path.is_dir():
        pytest.skip(f"shared IXI data not found at {path} (set PIPELINE_SHARED_DATA)")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def tracking_uri(work) -> str:
    return f"sqlite:///{work / 'mlruns.db'}"


@pytest.fixture(scope="module")
def trained(ixi, work, tracking_uri):
    """One 1-epoch DiffNet training with MLflow tracking: ``(process, output_dir)``."""
    out = work / "train"
    proc = run_bundle(bundle_args("run training", "train.yaml", dataset_dir=ixi, output_dir=out,
                                  tracking="mlflow", tracking_uri=tracking_uri) + SMALL_TRAINING, work / "train.log")
    return proc, out


@pytest.fixture(scope="module")
def model_pt(trained) -> Path:
    proc, out = trained
    assert_ok(proc)
    assert (out / "model.pt").is_file(), f"training wrote no model.pt{tail(proc)}"
    return out / "model.pt"


@pytest.fixture(scope="module")
def ixi_test_volume(ixi) -> Path:
    return Path(load_manifest(IXI_MANIFEST, "test", data_root=ixi)[0]["label"])


@pytest.fixture(scope="module")
def small_nifti(work, ixi_test_volume) -> Path:
    """A cropped IXI volume (80 x 60 x 40 voxels, affine of the crop) alone in a folder."""
    folder = work / "small_in"
    folder.mkdir()
    crop = nib.load(str(ixi_test_volume)).slicer[20:100, 30:90, 25:65]
    path = folder / "small.nii.gz"
    nib.save(crop, str(path))
    return path


@pytest.fixture(scope="module")
def pm_tuned(ixi, work):
    """Perona-Malik tuned at one noise level on one validation volume: ``(process, pm_file)``."""
    pm_file = work / "pm.json"
    proc = run_bundle(bundle_args("run tuning", "train.yaml", "methods/perona_malik.yaml", dataset_dir=ixi,
                                  output_dir=work / "pm_tune", tune_levels="[0.05]", num_val_volumes=1,
                                  pm_file=pm_file), work / "pm_tune.log")
    return proc, pm_file


# --------------------------------------------------------------------------------------------------------------
# 1. metadata and workflow properties


def test_metadata_and_workflow_properties(ixi, work):
    meta = json.loads(METADATA.read_text(encoding="utf-8"))
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                "required_packages_version", "task", "description", "authors", "copyright", "network_data_format"):
        assert meta.get(key) not in (None, "", {}), f"metadata.json lacks {key!r}"
    assert meta["version"] in meta["changelog"], "the changelog has no entry for the current version"
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert all(part.isdigit() for part in meta[key].split(".")), f"{key}={meta[key]!r} is not a version"
    # what the bundle's code imports at run time must be declared
    for package in ("nibabel", "itk", "pytorch-ignite", "mlflow"):
        assert package in meta["required_packages_version"], f"required_packages_version lacks {package}"
    formats = meta["network_data_format"]
    for section, name in (("inputs", "image"), ("outputs", "pred")):
        item = formats[section][name]
        for key in ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                    "is_patch_data", "channel_def"):
            assert key in item, f"network_data_format.{section}.{name} lacks {key!r}"
        # the input is the slice, the slices below and above it and the noise-level map, the output the denoised slice
        assert item["modality"] == "MR" and item["num_channels"] == {"inputs": 4, "outputs": 1}[section]
        assert item["dtype"] == "float32" and len(item["channel_def"]) == item["num_channels"]
        assert len(item["spatial_shape"]) == 2, "the network is 2D (spatial_dims 2)"

    train = yaml.safe_load((REPO / CONFIGS / "train.yaml").read_text(encoding="utf-8"))
    for key in ("bundle_root", "dataset_dir", "output_dir", "device", "epochs"):
        assert key in train, f"{key!r} is not a top-level key of train.yaml"

    # MONAI 1.6: after initialize(), check_properties() returns the required properties that are missing plus the
    # optional ones whose config ID is wrong (a required one whose ID is absent raises KeyError) -> must be empty
    from monai.bundle import ConfigWorkflow
    from monai.utils import set_determinism

    small = {"dataset_dir": str(ixi), "output_dir": str(work / "properties"), "num_train_volumes": 2,
             "num_val_volumes": 1, "num_test_volumes": 1}
    cases = ((["train.yaml"], "train"), (["inference.yaml"], "infer"), (["train.yaml", "evaluate.yaml"], "infer"))
    try:
        for names, workflow_type in cases:
            workflow = ConfigWorkflow(config_file=[str(REPO / CONFIGS / n) for n in names], meta_file=str(METADATA),
                                      logging_file=str(REPO / CONFIGS / "logging.conf"), workflow_type=workflow_type,
                                      bundle_root=str(REPO / BUNDLE), **small)
            workflow.initialize()
            missing = workflow.check_properties()
            assert missing == [], f"{names} as a {workflow_type!r} workflow: missing or wrong properties {missing}"
    finally:
        set_determinism(seed=None)  # the "initialize" expressions seeded this process


# --------------------------------------------------------------------------------------------------------------
# 2. training with MLflow


def test_training_writes_weights_checkpoint_and_mlflow_run(trained, tracking_uri, work):
    proc, out = trained
    assert_ok(proc)
    assert (out / "model.pt").is_file() and (out / "checkpoint_epoch=1.pt").is_file(), \
        f"outputs: {sorted(p.name for p in out.iterdir())}{tail(proc)}"
    load_diffnet(out / "model.pt")
    checkpoint = torch.load(out / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "lr_scheduler", "trainer"} <= set(checkpoint)
    assert checkpoint["trainer"]["iteration"] == checkpoint["trainer"]["epoch_length"]  # one whole epoch

    name = (out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    assert name.startswith("diffnet_guided-train-"), name
    runs = [r for r in runs_named(tracking_uri, name) if r.data.params.get("epochs") == "1"]
    assert len(runs) == 1, f"expected one MLflow run named {name}, found {len(runs)}{tail(proc)}"
    run = runs[0]
    metrics, params = run.data.metrics, run.data.params
    for key in ("val_psnr_head", "val_psnr_image"):
        assert 10 < metrics[key] < 60, (key, metrics)
    for key in ("val_ssim_head", "val_ssim_image"):
        assert 0 < metrics[key] <= 1, (key, metrics)
    assert -10 < metrics["train_loss"] < 0, metrics  # LogMSELoss: log10 of an MSE below 1
    assert params["method"] == "diffnet_guided" and "rician" in params["noise_model"], params
    network_parameters = sum(p.numel() for p in load_diffnet(out / "model.pt").parameters())
    assert int(params["parameters"]) == DIFFNET_PARAMETERS == network_parameters, params
    assert params["manifest"].endswith("ixi_t1.json"), params

    client = mlflow_client(tracking_uri)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert "figures/denoising_panel.png" in artifacts, artifacts
    local = client.download_artifacts(run.info.run_id, "figures/denoising_panel.png", str(work))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------
# 3. resuming


@pytest.fixture(scope="module")
def resumed(trained, work, ixi):
    """The 1-epoch training continued to 2 epochs with --resume true, on a copy of its output folder and MLflow
    store (the other tests keep the 1-epoch outputs): ``(process, output_dir, tracking_uri)``."""
    proc, out = trained
    assert_ok(proc)
    resumed_out = work / "resume"
    shutil.copytree(out, resumed_out)
    shutil.copy(work / "mlruns.db", work / "resume.db")
    uri = f"sqlite:///{work / 'resume.db'}"
    args = bundle_args("run training", "train.yaml", dataset_dir=ixi, output_dir=resumed_out, tracking="mlflow",
                       tracking_uri=uri, resume="true")
    args += [*SMALL_TRAINING[:-2], "--epochs", "2"]
    return run_bundle(args, work / "resume.log"), resumed_out, uri


def test_resume_restores_the_checkpoint_and_runs_only_the_remaining_epoch(resumed):
    proc, out, uri = resumed
    assert_ok(proc)
    assert "Restored all variables" in proc.stdout and "checkpoint_epoch=1.pt" in proc.stdout, \
        f"the checkpoint was not restored{tail(proc)}"
    assert "Epoch: 2/2" in proc.stdout and "Epoch: 1/2" not in proc.stdout, f"not only epoch 2 ran{tail(proc)}"
    assert (out / "checkpoint_epoch=2.pt").is_file(), f"no checkpoint_epoch=2.pt{tail(proc)}"
    state = torch.load(out / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)["trainer"]
    assert state["iteration"] == 2 * state["epoch_length"], state

    # the same run name continues; MLflow holds epoch 1 once and epoch 2 once, the resumed run only epoch 2
    name = (out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    runs = runs_named(uri, name)
    client = mlflow_client(uri)
    histories = [[m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] for r in runs]
    assert sorted(step for steps in histories for step in steps) == [1, 2], histories
    assert histories[-1] == [2], histories

    leftovers = sorted(p.name for p in out.glob("*checkpoint_epoch=*.pt"))
    assert leftovers == ["checkpoint_epoch=2.pt"], (
        f"BUG (pipeline/handlers/resume.py ResumeCheckpointSaver): n_saved=1 but the resumed training kept the "
        f"previous run's checkpoint: {leftovers}. The new saver does not know the files written before the restart, "
        f"so they are never rotated out.")


def test_resume_with_more_epochs_keeps_training(resumed, trained):
    """Continuing a finished 1-epoch training to 2 epochs must change the weights in epoch 2."""
    proc, out, _ = resumed
    assert_ok(proc)
    before = torch.load(trained[1] / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    after = torch.load(out / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    lrs = [g["lr"] for g in before["optimizer"]["param_groups"]]
    changed = [k for k in before["network"] if not torch.equal(before["network"][k], after["network"][k])]
    assert changed, (
        f"BUG (train.yaml lr_scheduler + ResumeCheckpointLoader): epoch 2 of the resumed training left every weight "
        f"unchanged. The restored CosineAnnealingLR keeps the checkpoint's T_max={before['lr_scheduler'].get('T_max')} "
        f"(not --epochs 2) and the optimizer resumes at lr={lrs}, the end of the old schedule; "
        f"restored lr_scheduler state: {before['lr_scheduler']}")


# --------------------------------------------------------------------------------------------------------------
# 4. evaluation


@pytest.fixture(scope="module")
def evaluated(model_pt, ixi, work, tracking_uri):
    out = work / "evaluate"
    proc = run_bundle(bundle_args("run evaluating", "train.yaml", "evaluate.yaml", dataset_dir=ixi, output_dir=out,
                                  ckpt_path=model_pt, num_test_volumes=1, tracking="mlflow",
                                  tracking_uri=tracking_uri), work / "evaluate.log")
    return proc, out


def test_evaluation_writes_metrics_and_mlflow_run(evaluated, tracking_uri, ixi_test_volume):
    proc, out = evaluated
    assert_ok(proc)
    assert "Restored all variables" in proc.stdout, f"the checkpoint was not loaded{tail(proc)}"
    assert (out / "metrics.csv").is_file(), f"outputs: {sorted(p.name for p in out.iterdir())}{tail(proc)}"
    metrics = read_metrics_csv(out / "metrics.csv")
    for key in ("test_psnr_head", "test_psnr_image"):
        assert 10 < metrics[key] < 60, metrics
    for key in ("test_ssim_head", "test_ssim_image"):
        assert 0 < metrics[key] <= 1, metrics

    lines = (out / "test_psnr_head_raw.csv").read_text(encoding="utf-8").splitlines()
    rows = list(csv.reader(lines[1:], delimiter="\t" if "\t" in lines[0] else ","))  # after the header
    assert len(rows) == 1, f"one row per test volume expected (1 volume): {rows}"
    assert Path(rows[0][0]).name == ixi_test_volume.name, rows
    assert abs(float(rows[0][1]) - metrics["test_psnr_head"]) < 1e-3, (rows, metrics)

    name = (out / "evaluate_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    assert name.startswith("diffnet_guided-evaluate-"), name
    runs = runs_named(tracking_uri, name)
    assert len(runs) == 1, f"expected one MLflow run named {name}{tail(proc)}"
    logged = runs[0].data.metrics
    assert {"test_psnr_head", "test_ssim_head"} <= set(logged), logged
    assert abs(logged["test_psnr_head"] - metrics["test_psnr_head"]) < 1e-4, (logged, metrics)
    assert runs[0].data.params["method"] == "diffnet_guided"


def test_evaluation_is_deterministic(evaluated, model_pt, ixi, work, tracking_uri):
    """Seeded test noise: a second evaluation of the same weights gives the same numbers."""
    first_proc, first_out = evaluated
    assert_ok(first_proc)
    out = work / "evaluate_again"
    proc = run_bundle(bundle_args("run evaluating", "train.yaml", "evaluate.yaml", dataset_dir=ixi, output_dir=out,
                                  ckpt_path=model_pt, num_test_volumes=1, tracking_uri=tracking_uri),
                      work / "evaluate_again.log")
    assert_ok(proc)
    first, second = read_metrics_csv(first_out / "metrics.csv"), read_metrics_csv(out / "metrics.csv")
    assert second["test_psnr_head"] == first["test_psnr_head"], (first, second)
    assert second["test_ssim_head"] == first["test_ssim_head"], (first, second)


# --------------------------------------------------------------------------------------------------------------
# 5. inference on NIfTI


def test_inference_on_nifti_keeps_geometry_and_scale(model_pt, work, ixi_test_volume):
    src = work / "infer_in"
    src.mkdir()
    scan = src / ixi_test_volume.name
    shutil.copyfile(ixi_test_volume, scan)
    os.chmod(scan, 0o644)  # writable, so that a write to an input would show
    digest = sha256(scan)
    out = work / "infer_out"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", dataset_dir=src, output_dir=out,
                                  ckpt_path=model_pt), work / "infer.log")
    assert_ok(proc)
    assert f"loaded weights from {model_pt}" in proc.stdout, f"the checkpoint was not loaded{tail(proc)}"
    # estimated from the scan: this 8-bit IXI volume's air is stored as zeros, so from its tissue (own noise ~3-4 %)
    assert "noise level" in proc.stdout and "(signal)" in proc.stdout, tail(proc)
    result = out / ixi_test_volume.name.replace(".nii.gz", "_denoised.nii.gz")
    assert result.is_file(), f"outputs: {sorted(p.name for p in out.iterdir()) if out.is_dir() else None}{tail(proc)}"

    original, denoised = nib.load(str(scan)), nib.load(str(result))
    assert denoised.shape == original.shape
    assert np.allclose(denoised.affine, original.affine, atol=1e-4), (denoised.affine, original.affine)
    assert denoised.get_data_dtype() == np.float32
    x, y = original.get_fdata(), denoised.get_fdata()
    assert np.isfinite(y).all()
    assert abs(y.mean() - x.mean()) < 0.2 * x.mean(), (x.mean(), y.mean())  # the input's intensity scale
    assert not np.allclose(x, y), "the output is the input unchanged"
    assert sha256(scan) == digest, "the input file was modified"
    assert sorted(p.name for p in src.iterdir()) == [scan.name], "files were written into the input folder"


def test_inference_refuses_to_overwrite_an_input(small_nifti, work):
    folder = work / "overwrite"
    folder.mkdir()
    shutil.copyfile(small_nifti, folder / "a.nii.gz")
    shutil.copyfile(small_nifti, folder / "a_denoised.nii.gz")  # what the output for a.nii.gz would be called
    digests = {p.name: sha256(p) for p in folder.iterdir()}
    proc = run_bundle(bundle_args("run inference", "inference.yaml", dataset_dir=folder, output_dir=folder,
                                  load_weights="false"), work / "overwrite.log")
    assert proc.returncode != 0, f"inference overwrote an input{tail(proc)}"
    assert "overwrite" in proc.stdout, f"the error does not say why{tail(proc)}"
    assert {p.name: sha256(p) for p in folder.iterdir()} == digests, "files in the input folder changed"


def test_inference_on_mha_keeps_geometry(model_pt, work, small_nifti):
    """MetaImage input (read by ITK) gives a NIfTI output with the geometry ITK reads."""
    import SimpleITK as sitk

    src = work / "mha_in"
    src.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(small_nifti)), str(src / "scan.mha"))
    out = work / "mha_out"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", dataset_dir=src, output_dir=out,
                                  ckpt_path=model_pt), work / "mha.log")
    assert_ok(proc)
    loaded = LoadImage(reader="ITKReader", image_only=True)(str(src / "scan.mha"))
    result = nib.load(str(out / "scan_denoised.nii.gz"))
    assert result.shape == tuple(loaded.shape)
    assert np.allclose(result.affine, np.asarray(loaded.affine), atol=1e-3), (result.affine, loaded.affine)


def test_3d_diffnet_trains_and_denoises_with_a_sliding_window(ixi, work, small_nifti):
    """The 3D method file: training on 3D patches, inference with MONAI's SlidingWindowInferer (a small network
    and patch size keep it fast on a CPU)."""
    out = work / "train_3d"
    small_net = {"network_def#num_layers": 2, "network_def#estimator_channels": 8,
                 "roi_size": "[32,32,32]", "volume_inferer#roi_size": "[48,48,48]"}
    proc = run_bundle(bundle_args("run training", "train.yaml", "methods/diffnet_3d.yaml", dataset_dir=ixi,
                                  output_dir=out, **small_net) + SMALL_TRAINING, work / "train_3d.log")
    assert_ok(proc)
    assert "val_psnr_head" in proc.stdout
    DiffNet(3, num_layers=2, estimator_channels=8, guidance=True, noise_map=True).load_state_dict(
        torch.load(out / "model.pt", weights_only=True))
    denoised = work / "infer_3d"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", "methods/diffnet_3d.yaml",
                                  dataset_dir=small_nifti.parent, output_dir=denoised, ckpt_path=out / "model.pt",
                                  **small_net), work / "infer_3d.log")
    assert_ok(proc)
    original, result = nib.load(str(small_nifti)), nib.load(str(denoised / "small_denoised.nii.gz"))
    assert result.shape == original.shape and np.allclose(result.affine, original.affine, atol=1e-4)
    assert np.isfinite(result.get_fdata()).all()


def test_2d_diffnet_method_file_trains_and_denoises_single_slices(ixi, work, small_nifti):
    """``methods/diffnet_2d.yaml`` (the 0.2.0 model's recipe): training on single-slice patches and inference with
    MONAI's SliceInferer, so the output keeps the input's grid; the checkpoint loads into a DiffNet that takes the
    slice and the noise map only."""
    out = work / "train_2d"
    small_net = {"network_def#num_layers": 2, "network_def#estimator_channels": 8}
    proc = run_bundle(bundle_args("run training", "train.yaml", "methods/diffnet_2d.yaml", dataset_dir=ixi,
                                  output_dir=out, **small_net) + SMALL_TRAINING, work / "train_2d.log")
    assert_ok(proc)
    assert "val_psnr_head" in proc.stdout
    net = DiffNet(num_layers=2, estimator_channels=8, guidance=True, noise_map=True)
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    denoised = work / "infer_2d"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", "methods/diffnet_2d.yaml",
                                  dataset_dir=small_nifti.parent, output_dir=denoised, ckpt_path=out / "model.pt",
                                  **small_net), work / "infer_2d.log")
    assert_ok(proc)
    original, result = nib.load(str(small_nifti)), nib.load(str(denoised / "small_denoised.nii.gz"))
    assert result.shape == original.shape and np.allclose(result.affine, original.affine, atol=1e-4)
    x, y = original.get_fdata(), result.get_fdata()
    assert np.isfinite(y).all() and abs(y.mean() - x.mean()) < 0.1 * x.mean()


def test_shipped_weights_denoise_a_test_volume_blind(work, ixi_test_volume):
    """``inference.yaml`` alone finds the shipped 2.5D ``models/model.pt``, and with ``methods/diffnet_2d.yaml`` the
    0.2.0 2D ``models/diffnet_2d.pt`` (each loads only into its own network: 4 or 2 input channels). At 5 % Rician
    noise, the level estimated from the scan, both remove well over a third of the error in the head, and the
    shipped model clearly more (measured: 0.58 and 0.66 of the input's MSE)."""
    from pipeline.transforms import MRINoised

    image = nib.load(str(ixi_test_volume))
    clean = image.get_fdata(dtype=np.float32)
    head = clean > 0.2 * np.percentile(clean, 99)
    noisy = MRINoised(source_key="label", target_key="image", noise="rician", level=0.05, seed=3)(
        {"label": clean[None] / np.percentile(clean[head], 99)})["image"][0] * np.percentile(clean[head], 99)
    folder = work / "noisy_in"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(noisy, dtype=np.float32), image.affine), str(folder / "noisy.nii.gz"))
    error_before, error = np.mean((np.asarray(noisy) - clean)[head] ** 2), {}
    for name, method_files in (("shipped", ()), ("2d", ("methods/diffnet_2d.yaml",))):
        out = work / f"{name}_out"
        proc = run_bundle(bundle_args("run inference", "inference.yaml", *method_files, dataset_dir=folder,
                                      output_dir=out), work / f"{name}.log")
        assert_ok(proc)
        denoised = nib.load(str(out / "noisy_denoised.nii.gz")).get_fdata(dtype=np.float32)
        error[name] = np.mean((denoised - clean)[head] ** 2) / error_before
    assert error["shipped"] < 0.62 and error["2d"] < 0.7, error
    assert error["shipped"] < 0.95 * error["2d"], error


# --------------------------------------------------------------------------------------------------------------
# 6. inference on a DICOM series


def test_inference_on_dicom_series_folder(model_pt, work, ixi_test_volume):

    data = np.asarray(nib.load(str(ixi_test_volume)).dataobj)[20:100, 20:100, 35:47].astype(np.int16)
    series = write_dicom_series(work / "dicom" / "t1_series", data, spacing=(2.0, 2.0, 2.5),
                                origin=(-80.0, -90.0, 10.0), tags={"0010|0010": PATIENT_NAME, "0010|0020": PATIENT_ID})
    out = work / "dicom_out"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", dataset_dir=series, output_dir=out,
                                  ckpt_path=model_pt), work / "dicom.log")
    assert_ok(proc)
    outputs = sorted(out.glob("*.nii.gz")) if out.is_dir() else []
    assert len(outputs) == 1, f"expected one output NIfTI, found {outputs}{tail(proc)}"

    reference = LoadImage(reader="ITKReader", image_only=True)(str(series))
    denoised = nib.load(str(outputs[0]))
    assert denoised.shape == tuple(reference.shape) == data.shape
    assert np.allclose(denoised.affine, np.asarray(reference.affine), atol=1e-3), (denoised.affine, reference.affine)
    y, x = denoised.get_fdata(), reference.numpy().astype(np.float64)
    assert np.isfinite(y).all()
    assert abs(y.mean() - x.mean()) < 0.2 * x.mean(), (x.mean(), y.mean())

    # no patient identity in the output or the log
    raw = gzip.decompress(outputs[0].read_bytes())
    header_and_extensions = raw[: int(denoised.header["vox_offset"])]
    for secret in (PATIENT_NAME.encode(), PATIENT_ID.encode()):
        assert secret not in raw, f"{secret!r} found in {outputs[0].name}"
    for fragment in (b"Doe", b"Jane", b"SECRET"):
        assert fragment not in header_and_extensions, f"{fragment!r} in the NIfTI header or extensions"
    for text in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID):
        assert text not in proc.stdout, f"{text!r} printed in the log{tail(proc)}"


# --------------------------------------------------------------------------------------------------------------
# 7. the U-Net baseline


def test_unet_baseline_trains_into_the_same_experiment(trained, ixi, work, tracking_uri):
    out = work / "unet"
    proc = run_bundle(bundle_args("run training", "train.yaml", "methods/unet.yaml", dataset_dir=ixi, output_dir=out,
                                  tracking="mlflow", tracking_uri=tracking_uri) + SMALL_TRAINING, work / "unet.log")
    assert_ok(proc)
    assert (out / "model.pt").is_file(), f"outputs: {sorted(p.name for p in out.iterdir())}{tail(proc)}"
    net = residual_unet(preset="small", spatial_dims=2, noise_map=True)
    net.load_state_dict(torch.load(out / "model.pt", map_location="cpu", weights_only=True))

    name = (out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    assert name.startswith("unet_residual-train-"), name
    runs = runs_named(tracking_uri, name)
    assert len(runs) == 1, f"expected one MLflow run named {name}{tail(proc)}"
    assert runs[0].data.params["method"] == "unet_residual"
    assert int(runs[0].data.params["parameters"]) == sum(p.numel() for p in net.parameters())
    assert 10 < runs[0].data.metrics["val_psnr_head"] < 60, runs[0].data.metrics

    diffnet_proc, diffnet_out = trained
    assert_ok(diffnet_proc)
    diffnet_name = (diffnet_out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    diffnet_runs = runs_named(tracking_uri, diffnet_name)
    assert diffnet_runs and diffnet_runs[0].info.experiment_id == runs[0].info.experiment_id, \
        "DiffNet and U-Net runs are in different experiments"


# --------------------------------------------------------------------------------------------------------------
# 8. Perona-Malik: tuning, evaluation, inference


def test_perona_malik_tuning_writes_parameters(pm_tuned):
    proc, pm_file = pm_tuned
    assert_ok(proc)
    assert pm_file.is_file(), f"no {pm_file}{tail(proc)}"
    best = json.loads(pm_file.read_text(encoding="utf-8"))["rician"]["0.05"]
    assert best["kappa"] > 0 and best["num_iter"] >= 1 and 0 < best["dt"] <= 0.25, best  # dt: 2D stability bound
    tuned = json.loads(pm_file.read_text(encoding="utf-8"))
    assert list(tuned["rician"]) == ["0.05"], "tuned levels other than --tune_levels"


def test_perona_malik_evaluation(pm_tuned, ixi, work, tracking_uri):
    proc, pm_file = pm_tuned
    assert_ok(proc)
    out = work / "pm_evaluate"
    proc = run_bundle(bundle_args("run evaluating", "train.yaml", "evaluate.yaml", "methods/perona_malik.yaml",
                                  dataset_dir=ixi, output_dir=out, pm_file=pm_file, num_test_volumes=1,
                                  tracking_uri=tracking_uri), work / "pm_evaluate.log")
    assert_ok(proc)
    assert "Restored all variables" not in proc.stdout, "Perona-Malik has no weights to load"
    assert (out / "metrics.csv").is_file(), f"no metrics.csv{tail(proc)}"
    metrics = read_metrics_csv(out / "metrics.csv")
    assert 10 < metrics["test_psnr_head"] < 60 and 0 < metrics["test_ssim_head"] <= 1, metrics


def test_perona_malik_inference(pm_tuned, small_nifti, work):
    proc, pm_file = pm_tuned
    assert_ok(proc)
    out = work / "pm_infer"
    proc = run_bundle(bundle_args("run inference", "inference.yaml", "methods/perona_malik.yaml",
                                  dataset_dir=small_nifti.parent, output_dir=out, pm_file=pm_file),
                      work / "pm_infer.log")
    assert_ok(proc)
    result = out / "small_denoised.nii.gz"
    assert result.is_file(), f"no {result.name}{tail(proc)}"
    original, denoised = nib.load(str(small_nifti)), nib.load(str(result))
    assert denoised.shape == original.shape and np.allclose(denoised.affine, original.affine, atol=1e-4)
    assert np.isfinite(denoised.get_fdata()).all()


# --------------------------------------------------------------------------------------------------------------
# 9. export and network check


def test_ckpt_export_to_torchscript_matches_eager(model_pt, work):
    target = work / "model.ts"
    proc = run_bundle(["ckpt_export", "network_def", "--filepath", str(target), "--ckpt_file", str(model_pt),
                       "--meta_file", f"{CONFIGS}/metadata.json", "--config_file", f"{CONFIGS}/inference.yaml",
                       "--bundle_root", BUNDLE], work / "export.log")
    assert_ok(proc)
    assert target.is_file(), f"no {target}{tail(proc)}"
    extra = {"metadata.json": ""}
    scripted = torch.jit.load(str(target), map_location="cpu", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(METADATA.read_text(encoding="utf-8"))["version"]
    eager = load_diffnet(model_pt)
    x = torch.rand(1, 4, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = eager(x), scripted(x)
    assert got.shape == (1, 1, 96, 96)
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


def test_verify_net_in_out(work):
    proc = run_bundle(["verify_net_in_out", "network_def", "--meta_file", f"{CONFIGS}/metadata.json",
                       "--config_file", f"{CONFIGS}/inference.yaml", "--bundle_root", BUNDLE, "--device", "cpu"],
                      work / "verify.log")
    assert_ok(proc)
    assert "verified with no error" in proc.stdout, tail(proc)


# --------------------------------------------------------------------------------------------------------------
# 10. data-parallel training (gloo on CPU)


def test_multi_process_training_with_torchrun(ixi, work, tracking_uri):
    out = work / "ddp"
    before = all_runs(tracking_uri) if (work / "mlruns.db").exists() else []
    args = bundle_args("run training", "train.yaml", "multi_gpu_train.yaml", dataset_dir=ixi, output_dir=out,
                       tracking="mlflow", tracking_uri=tracking_uri) + SMALL_TRAINING
    args[args.index("--num_val_volumes") + 1] = "2"  # one validation volume per process
    proc = run_bundle(args, work / "ddp.log", torchrun=True)
    assert_ok(proc)
    weights = sorted(p.name for p in out.glob("*.pt"))
    assert weights == ["checkpoint_epoch=1.pt", "model.pt"], f"{weights}{tail(proc)}"
    assert proc.stdout.count("Saved checkpoint at epoch: 1") == 1, f"not only rank 0 saved{tail(proc)}"
    load_diffnet(out / "model.pt")  # the bare network, not the DistributedDataParallel wrapper

    new = [r.info.run_name for r in all_runs(tracking_uri) if r.info.run_id not in {b.info.run_id for b in before}]
    assert len(new) == 1, f"MLflow runs {new} for one training: only rank 0 may log{tail(proc)}"
    name = (out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()
    named = runs_named(tracking_uri, name)
    assert len(named) == 1 and "val_psnr_head" in named[0].data.metrics, (
        f"BUG (pipeline/bundle.py run_name, under torchrun): {out / 'train_mlflow_run_name.txt'} holds {name!r} but "
        f"rank 0 logged the run {new}. Rank 1 also evaluates $pipeline.bundle.run_name (MONAI resolves the "
        f"references of its disabled MLFlowHandler) and writes its own name; whichever rank writes last wins, so a "
        f"later --resume true would not continue the logged run.")
