"""The paper experiments end to end on tiny settings (the bundle's training workflow for 1 epoch on 2 training
volumes, 1 validation volume, 1 test subject, sparse slices): tables, figures, report, the bundle's training outputs
and MLflow runs; their training data (pipeline.data.degraded); and clear errors for bad configs."""

import contextlib
import io
import json
import os
import subprocess
import sys

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import IXI_MANIFEST, REPO, SHARED_DATA
from pipeline.cli import main
from pipeline.experiments import load_config
from pipeline.handlers.checkpoint import load_weights
from pipeline.networks import DiffNet, residual_unet

EXPERIMENT = "paper_experiments_test"
SECTIONS = {
    "invert_pm": "invert_pm: {num_iter: 4, kappa: 0.1, noise_sigmas: [0.0, 0.01]}\n",
    # one volume per step: the 1-slice set has one entry, yet trains as many steps as the 2-volume set
    "data_efficiency": "data_efficiency: {sizes: [1, all], noise: rician, level: 0.05, networks: [unet]}\n"
                       "training: {num_volumes: 2, epochs: 1, num_val_volumes: 1, overrides: {patches_per_volume: 2, "
                       "roi_size: [32, 32], volumes_per_batch: 1}}\n",
    "interpretation": "interpretation: {levels: [0.03, 0.09], figure_levels: [0.09]}\n",
}
TRAINING = ("training: {num_volumes: 2, epochs: 1, num_val_volumes: 1, overrides: {patches_per_volume: 2, "
            "roi_size: [32, 32]}}\n")


def tiny_config(folder, kind, uri, data_root, **extra):
    """A tiny config of ``kind`` in ``folder`` writing to ``folder/<kind>``; returns its path."""
    text = (f"name: tiny_{kind}\nkind: {kind}\nmanifest: {IXI_MANIFEST}\ndata_root: {data_root}\n"
            f"output_dir: {folder / kind}\ntracking_uri: {uri}\nexperiment: {EXPERIMENT}\ndevice: cpu\n"
            "evaluation: {num_subjects: 1, slice_every: 30}\n"
            + ("" if "training:" in SECTIONS[kind] else TRAINING)
            + SECTIONS[kind] + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    path = folder / f"tiny_{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """All three experiments once: invert_pm through a real ``python -m pipeline`` subprocess, the others in-process,
    then interpretation again on the weights the first interpretation run saved."""
    data_root = SHARED_DATA / "ixi_t1"
    if not data_root.is_dir():
        pytest.skip(f"shared IXI data not found at {data_root} (set PIPELINE_SHARED_DATA)")
    folder = tmp_path_factory.mktemp("experiments")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    printed = {}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "experiment", "--config",
                           str(tiny_config(folder, "invert_pm", uri, data_root))],
                          cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed["invert_pm"] = proc.stdout
    for kind in ("data_efficiency", "interpretation"):
        status, printed[kind], err = run_main(["experiment", "--config",
                                               str(tiny_config(folder, kind, uri, data_root))])
        assert status == 0, err[-3000:]
    weights = folder / "interpretation" / "models" / "diffnet_paper" / "model.pt"
    status, printed["loaded"], err = run_main(["experiment", "--config", str(tiny_config(folder, "interpretation", uri,
                                                                                         data_root)),
                                               "--checkpoint", str(weights), "--out", str(folder / "loaded")])
    assert status == 0, err[-3000:]
    return folder, uri, printed


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100


def assert_report(path, *expected):
    text = path.read_text(encoding="utf-8")
    for line in ("- date: ", "- hardware: ", "- budget: the bundle's training workflow", "- test: 1 test subjects"):
        assert line in text
    for item in expected:
        assert item in text, item
    assert "|" in text  # a Markdown table


def executed_config(folder):
    """The bundle config a training ran (MONAI saves it next to the checkpoint)."""
    (path,) = folder.glob("config_*.json")
    return json.loads(path.read_text(encoding="utf-8"))


def training_log(folder):
    """The bundle training's metrics record: {name: [values]} (the loss per iteration, validation per epoch)."""
    rows = pd.read_csv(folder / "train_metrics.csv")
    return {name: list(block["value"]) for name, block in rows.groupby("name")}


def test_invert_pm_outputs(runs):
    folder, _, printed = runs
    out = folder / "invert_pm"
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6  # (degraded input, DiffNet, U-Net) x (no noise, 1 %)
    assert set(summary["method"]) == {"degraded", "diffnet_paper", "unet"}
    assert sorted(set(summary["noise_sigma"])) == [0.0, 0.01]
    for metric in ("psnr_image", "psnr_head", "ssim_image", "ssim_head"):
        assert summary[f"{metric}_mean"].notna().all()
    degraded = summary[summary["method"] == "degraded"].set_index("noise_sigma")
    assert 20 < degraded.loc[0.0, "psnr_image_mean"] < 40  # a real blur, not a degenerate number
    assert degraded.loc[0.01, "psnr_image_mean"] < degraded.loc[0.0, "psnr_image_mean"]
    paper = summary.set_index(["method", "noise_sigma"])["paper_psnr_stl10"]
    assert paper["diffnet_paper", 0.0] == 65.34 and paper["unet", 0.01] == 35.27
    assert pd.isna(paper["degraded", 0.0])
    assert (summary.set_index("method").loc[["diffnet_paper", "unet"], "train_seconds"] > 0).all()
    assert len(pd.read_csv(out / "per_subject.csv")) == 6
    assert_png(out / "panel.png")
    assert_report(out / "report.md", "kappa = 0.1", "65.34", "degraded input", "residual U-Net (small)",
                  "1 epochs over 2 training subjects = 1 Adam steps")
    # the bundle's outputs: the checkpoint is the paper's 1-channel networks (the U-Net without its noise map)
    diffnet, unet = DiffNet.paper(2), residual_unet("small", 2, noise_map=False)
    load_weights(diffnet, str(out / "models" / "diffnet_paper_sigma0" / "model.pt"))
    load_weights(unet, str(out / "models" / "unet_sigma0.01" / "model.pt"))
    for model in ("diffnet_paper_sigma0", "diffnet_paper_sigma0.01", "unet_sigma0", "unet_sigma0.01"):
        log = training_log(out / "models" / model)
        assert len(log["train_loss"]) == 1 and 15 < log["val_psnr_head"][-1] < 50, (model, log)
    # trained and validated on the forward model (validation metrics in MLflow measure the inverse problem)
    config = executed_config(out / "models" / "unet_sigma0.01")
    assert config["train"]["preprocessing"]["_target_"] == "pipeline.data.degraded.perona_malik_patches_2d"
    assert config["validate"]["preprocessing"]["_target_"] == "pipeline.data.degraded.perona_malik_eval_transforms"
    assert config["train"]["preprocessing"]["noise_sigma"] == config["validate"]["preprocessing"]["noise_sigma"] == 0.01
    assert "DiffNet (paper)" in printed["invert_pm"] and str((out / "report.md").resolve()) in printed["invert_pm"]
    assert not list(out.glob("*.tmp*"))


def test_data_efficiency_outputs(runs):
    folder, _, printed = runs
    out = folder / "data_efficiency"
    summary = pd.read_csv(out / "summary.csv")
    learned = summary[summary["method"] != "noisy"]
    assert len(summary) == 3 and len(learned) == 2  # noisy input + the U-Net x 2 sizes
    sizes = sorted(set(learned["train_slices"]))
    assert sizes[0] == 1 and sizes[1] > 100  # "all": every slice with enough head of the 2 training volumes
    assert summary["psnr_head_mean"].notna().all() and summary["ssim_image_mean"].between(0, 1).all()
    noisy = summary[summary["method"] == "noisy"].iloc[0]
    assert 15 < noisy["psnr_head_mean"] < 40
    # the same steps for every size: 1 slice (one datalist entry) trains 2 steps, as the 2 whole volumes do
    steps = {n: len(training_log(out / "models" / f"unet_n{n}")["train_loss"]) for n in sizes}
    assert steps == {sizes[0]: 2, sizes[1]: 2}, steps
    for n in sizes:  # trained on exactly n slices
        datalist = executed_config(out / "models" / f"unet_n{n}")["train"]["datalist"]
        assert sum(len(entry["slices"]) for entry in datalist) == n and len(datalist) == min(n, 2)
    assert_png(out / "psnr_vs_size.png")
    assert_report(out / "report.md", "rician noise at 5%", "500-1,000", "the same 2 steps for every size")
    assert "training slices" in printed["data_efficiency"]


def test_interpretation_outputs(runs):
    folder, _, printed = runs
    out = folder / "interpretation"
    smoothing = pd.read_csv(out / "smoothing.csv")
    assert len(smoothing) == 2 * 5  # levels x layers
    assert sorted(set(smoothing["layer"])) == [1, 2, 3, 4, 5]
    for column in ("smoothing_image_mean", "smoothing_head_mean", "effective_smoothing_image_mean", "time_step",
                   "stencil_sum_image_mean", "diffusion_head_mean", "diffusion_image_mean"):
        assert smoothing[column].notna().all()
    assert (smoothing["smoothing_image_mean"] > 0).all()  # one Adam step moves the zero-initialised filters
    net = DiffNet.paper(2)
    load_weights(net, str(out / "models" / "diffnet_paper" / "model.pt"))
    steps = net.time_steps().detach()
    assert torch.allclose(torch.tensor(smoothing.groupby("layer")["time_step"].first().values, dtype=steps.dtype),
                          steps)
    denoising = pd.read_csv(out / "denoising.csv")
    assert len(denoising) == 4 and set(denoising["method"]) == {"noisy", "diffnet_paper"}
    assert_png(out / "smoothing_vs_level.png")
    assert_png(out / "filters_0.09.png")
    assert_report(out / "report.md", "mean over voxels x of sum_j |f_kj(x)|", "time step dt_k",
                  "trained here by the bundle's training workflow", "neighbour conductance sum d_k")
    assert "learned time steps" in printed["interpretation"]

    loaded = folder / "loaded"  # the second run interprets the saved weights without training
    assert "weights loaded from" in (loaded / "report.md").read_text(encoding="utf-8")
    assert not list((loaded / "models").rglob("*.pt"))
    again = pd.read_csv(loaded / "smoothing.csv")
    assert torch.allclose(torch.tensor(again["smoothing_image_mean"].values),
                          torch.tensor(smoothing["smoothing_image_mean"].values), rtol=1e-4)


def test_mlflow_parent_and_child_runs(runs):
    from mlflow.tracking import MlflowClient

    _, uri, _ = runs
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], max_results=500)
    parents = {r.info.run_name.split()[0]: r for r in found if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"tiny_invert_pm", "tiny_data_efficiency", "tiny_interpretation"}  # no stray bundle runs
    assert all(r.info.status == "FINISHED" for r in found)

    def children(parent):
        return [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]

    invert = children(parents["tiny_invert_pm"])
    trained = [r for r in invert if r.info.run_name.startswith("train ")]
    results = [r for r in invert if not r.info.run_name.startswith("train ")]
    assert len(trained) == 4 and len(results) == 6
    # the bundle's own handlers logged the training into the child runs: loss, validation, its parameters
    assert all({"train_loss", "val_psnr_head", "train_seconds"} <= set(r.data.metrics) for r in trained)
    assert all(r.data.params["noise_model"].startswith("perona_malik") and r.data.params["noise_map"] == "False"
               for r in trained)
    assert "kappa" in results[0].data.params
    parent = parents["tiny_invert_pm"]
    assert "budget" in parent.data.params and "hardware" in parent.data.params and "minutes" in parent.data.metrics

    efficiency = children(parents["tiny_data_efficiency"])
    assert len([r for r in efficiency if r.info.run_name.startswith("train ")]) == 2
    assert len([r for r in efficiency if not r.info.run_name.startswith("train ")]) == 3

    interpretation = [r for r in found if r.data.tags.get("mlflow.parentRunId") in
                      {p.info.run_id for p in found if p.info.run_name.startswith("tiny_interpretation")}]
    levels = [r for r in interpretation if not r.info.run_name.startswith("train ")]
    assert len(levels) == 4  # 2 levels x 2 runs (trained, then loaded)
    assert len([r for r in interpretation if r.info.run_name.startswith("train ")]) == 1
    assert all({"smoothing_image_layer5", "diffusion_head_layer1", "diffnet_paper_psnr_head_mean"}
               <= set(r.data.metrics) for r in levels)
    interpret_parents = [p for p in found if p.info.run_name.startswith("tiny_interpretation")
                         and "mlflow.parentRunId" not in p.data.tags]
    assert all("time_step_layer1" in p.data.metrics for p in interpret_parents)


def write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, message", [
    ("kind: invert_pm\nstepz: 3\n", "unknown keys ['stepz']"),
    ("kind: invert_pm\ntraining: {epochs: 3, learning_rate: 0.1}\n", "unknown keys ['learning_rate']"),
    ("kind: invert_pm\ntraining: {steps: 200}\n", "unknown keys ['steps']"),  # the old budget, in steps
    ("kind: invert_pm\ntraining: {overrides: {noise_map: true}}\n", "['noise_map'] are set by the experiment"),
    ("kind: invert_pm\ntraining: {overrides: {'train#datalist': []}}\n", "set by the experiment"),
    ("kind: invert_pm\ninvert_pm: {kapa: 0.1}\n", "unknown keys ['kapa']"),
    ("kind: invert_pm\ndata_efficiency: {sizes: [10]}\n", "do not belong to an experiment of kind 'invert_pm'"),
    ("kind: denoise\n", "kind must be one of"),
    ("name: x\n", "'kind' is missing"),
    ("kind: data_efficiency\ndata_efficiency: {sizes: [0, all]}\n", "sizes entries"),
    ("kind: invert_pm\ntraining: {epochs: ten}\n", "training.epochs must be a positive integer"),
    ("kind: interpretation\ninterpretation: {levels: [0.05], figure_levels: [0.15]}\n", "figure_levels"),
    ("kind: invert_pm\n- a list\n", "not valid YAML"),
])
def test_bad_config_is_refused_clearly(tmp_path, text, message):
    with pytest.raises(ValueError, match=None) as error:
        load_config(write(tmp_path, text))
    assert message in str(error.value)


def test_missing_checkpoint_given_explicitly_is_an_error(tmp_path):
    missing = tmp_path / "nowhere" / "diffnet.pt"
    path = write(tmp_path, f"kind: interpretation\ninterpretation: {{checkpoint: {missing}}}\n")
    with pytest.raises(FileNotFoundError, match="train_if_missing") as error:
        load_config(path)
    assert str(missing) in str(error.value)
    # with train_if_missing the config is accepted (a DiffNet is trained instead) ...
    write(tmp_path, f"kind: interpretation\ninterpretation: {{checkpoint: {missing}, train_if_missing: true}}\n")
    assert load_config(path).interpretation.train_if_missing
    # ... but not when the checkpoint is given on the command line, and the CLI says why in one line
    status, _, err = run_main(["experiment", "--config", str(path), "--checkpoint", str(missing)])
    assert status == 1 and err.startswith("error: ") and str(missing) in err
    status, _, err = run_main(["experiment", "--config", str(write(tmp_path, "kind: invert_pm\nstepz: 3\n"))])
    assert status == 1 and "unknown keys ['stepz']" in err
    status, _, err = run_main(["experiment", "--config", str(tmp_path / "absent.yaml")])
    assert status == 1 and "not found" in err
    with pytest.raises(ValueError, match="interpretation"):
        load_config(write(tmp_path, "kind: invert_pm\n"), checkpoint=str(missing))


def test_smoothing_level_is_the_mean_absolute_stencil_sum():
    from pipeline.experiments.interpretation import filter_statistics

    torch.manual_seed(0)
    net = DiffNet.paper(2, estimator_channels=4)
    for layer in net.layers:  # the last convolutions start at zero: give the stencils some values
        torch.nn.init.normal_(layer.estimator[-1].weight, std=0.1)
    noisy, mask = torch.rand(5, 1, 12, 10), (torch.rand(5, 1, 12, 10) > 0.5).float()
    out, stats, kept = filter_statistics(net, noisy, mask, torch.device("cpu"), chunk=2, keep=3)
    expected, filters = net.forward_with_filters(noisy)
    assert torch.allclose(out, expected)
    for k, f in enumerate(filters):
        assert f.shape == (5, 5, 12, 10)  # [centre, -x, +x, -y, +y] per voxel
        magnitude = f.abs().sum(1)
        assert stats["smoothing_image"][k] == pytest.approx(magnitude.mean().item(), rel=1e-5)
        assert stats["smoothing_head"][k] == pytest.approx(magnitude[mask[:, 0] > 0].mean().item(), rel=1e-5)
        assert stats["stencil_sum_image"][k] == pytest.approx(f.sum(1).mean().item(), rel=1e-4, abs=1e-7)
        neighbours = f[:, 1:].sum(1)
        assert stats["diffusion_image"][k] == pytest.approx(neighbours.mean().item(), rel=1e-4, abs=1e-7)
        assert stats["diffusion_head"][k] == pytest.approx(neighbours[mask[:, 0] > 0].mean().item(), rel=1e-4,
                                                           abs=1e-7)
        assert torch.allclose(kept[k], f[3])


# --------------------------------------------------------------------------------------------------------------
# the experiments' training data for the bundle (pipeline.data.degraded)


def test_select_slices_keeps_the_listed_axial_slices():
    from pipeline.data.degraded import SelectSlicesd

    volume = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    item = SelectSlicesd(["label", "mask"])({"label": volume, "mask": volume > 10, "slices": [4, 1], "subject": "a"})
    assert torch.equal(item["label"], volume[..., [4, 1]]) and item["mask"].shape == (1, 2, 3, 2)
    assert "slices" not in item and item["subject"] == "a"  # removed: a list per item would not batch
    assert torch.equal(SelectSlicesd("label")({"label": volume, "slices": 2})["label"], volume[..., 2:3])
    assert torch.equal(SelectSlicesd("label")({"label": volume})["label"], volume)  # no entry: every slice
    for bad in ([5], [], [1, 1], [0.5]):
        with pytest.raises(ValueError, match="slices"):
            SelectSlicesd("label")({"label": volume, "slices": bad})


def test_axial_perona_malik_diffuses_each_axial_slice_in_2d():
    from monai.data import MetaTensor

    from pipeline.data.degraded import AxialPeronaMalikd
    from pipeline.networks import PeronaMalik

    torch.manual_seed(0)
    clean = MetaTensor(torch.rand(1, 9, 7, 4), meta={"filename_or_obj": "/x/sub1.nii.gz"})
    item = AxialPeronaMalikd(num_iter=3, kappa=0.2)({"label": clean})
    expected = torch.stack([PeronaMalik(2, num_iter=3, kappa=0.2)(clean.as_tensor()[None, ..., z])[0]
                            for z in range(4)], dim=-1)
    assert torch.allclose(item["image"].as_tensor(), expected, atol=1e-6)
    assert item["image"].meta["filename_or_obj"] == "/x/sub1.nii.gz" and torch.equal(item["label"], clean)
    assert not torch.allclose(item["image"].as_tensor(), clean.as_tensor())


@pytest.fixture(scope="module")
def one_volume():
    data_root = SHARED_DATA / "ixi_t1"
    if not data_root.is_dir():
        pytest.skip(f"shared IXI data not found at {data_root} (set PIPELINE_SHARED_DATA)")
    from pipeline.data import load_manifest

    return load_manifest(IXI_MANIFEST, "training", data_root)[0]


def test_perona_malik_patches_are_the_forward_model_plus_gaussian_noise(one_volume):
    from pipeline.data.degraded import perona_malik_eval_transforms, perona_malik_patches_2d

    z = 60
    entry = {**one_volume, "slices": [z]}
    patches = {}
    for sigma in (0.0, 0.02):
        pipeline = perona_malik_patches_2d((32, 32), 3, noise_sigma=sigma)
        pipeline.set_random_state(seed=7)  # the same crops for both
        patches[sigma] = pipeline(entry)
    assert len(patches[0.0]) == 3 and patches[0.0][0]["image"].shape == (1, 32, 32)
    # noise-free patches are crops of the diffused slice, the very input the test slices get
    whole = perona_malik_eval_transforms()(one_volume)
    slice_pm, slice_clean = whole["image"][0, ..., z], whole["label"][0, ..., z]
    for item in patches[0.0]:
        assert find_window(slice_clean, item["label"][0]) == find_window(slice_pm, item["image"][0]) is not None
    noise = torch.cat([(b["image"] - a["image"]).flatten() for a, b in zip(patches[0.0], patches[0.02])])
    assert abs(float(noise.std()) - 0.02) < 0.003 and abs(float(noise.mean())) < 0.003
    with pytest.raises(ValueError, match="noise_map"):
        perona_malik_patches_2d(noise_map=True)


def test_slice_patches_come_only_from_the_listed_slices(one_volume):
    from pipeline.data import volume_transforms
    from pipeline.data.degraded import slice_patches_2d

    clean = volume_transforms("label")(one_volume)["label"][0]
    pipeline = slice_patches_2d((24, 24), 6, noise="rician", level_range=(0.05, 0.05))
    pipeline.set_random_state(seed=1)
    items = pipeline({**one_volume, "slices": [40, 70]})
    found = {next(z for z in (40, 70) if find_window(clean[..., z], item["label"][0]) is not None) for item in items}
    assert found <= {40, 70} and all(item["image"].shape == (1, 24, 24) for item in items)
    assert all(abs(item["noise_level"] - 0.05) < 1e-9 for item in items)


def find_window(image, window):
    """The (top, left) where ``window`` occurs exactly in ``image`` (2D), or None."""
    h, w = window.shape
    views = torch.as_tensor(image).unfold(0, h, 1).unfold(1, w, 1)
    hits = torch.nonzero((views == torch.as_tensor(window)).flatten(2).all(-1))
    return tuple(hits[0].tolist()) if len(hits) else None


def test_training_sets_are_nested_and_spread_evenly_over_subjects():
    from pipeline.experiments.data_efficiency import balanced_slice_order, slice_datalist

    slices = [list(range(10, 30)), list(range(5, 8)), list(range(40, 52))]
    order = balanced_slice_order(slices, seed=3)
    assert sorted(order) == sorted((v, z) for v, zs in enumerate(slices) for z in zs)  # each slice exactly once
    assert order == balanced_slice_order(slices, seed=3) and order != balanced_slice_order(slices, seed=4)
    for n in range(1, len(order) + 1):
        counts = np.bincount([v for v, _ in order[:n]], minlength=3)
        capacity = np.array([len(s) for s in slices])
        short = counts < capacity  # volumes that could still give a slice differ by at most one, and a volume
        if short.any():            # is used up only when it has no more slices than the others give
            assert counts[short].max() - counts[short].min() <= 1
            assert (counts[~short] <= counts[short].min() + 1).all()
    datalist = slice_datalist([{"label": f"v{i}.nii.gz"} for i in range(3)], order[:4])
    assert [e["label"] for e in datalist] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    assert sum(len(e["slices"]) for e in datalist) == 4 and all(e["slices"] == sorted(e["slices"]) for e in datalist)
