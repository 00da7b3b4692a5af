"""``python -m pipeline compare`` end to end on tiny settings: the real command in a subprocess on real IXI
volumes, then its tables, figures and MLflow runs read back from the SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from conftest import REPO
from pipeline.compare import load_config, run_comparison

METHODS = ["noisy", "perona_malik", "nl_means", "diffnet_paper", "diffnet_guided", "unet"]
LEVEL_METHODS = ["perona_malik", "nl_means", "diffnet_guided", "unet"]  # run with the true and the estimated level
LEVELS = [0.05, 0.15]
NOISES = ["rician"]
SUBJECTS = 1
BUNDLE = REPO / "bundles" / "diffnet_mri_denoising"


def tiny_config(tmp_path, ixi_dir, **changes) -> dict:
    config = {
        "name": "tiny",
        "manifest": str(REPO / "data_manifests" / "ixi_t1.json"),
        "data_root": str(ixi_dir),
        "output_dir": str(tmp_path / "out"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "methods": METHODS,
        "evaluation": {"noises": NOISES, "levels": LEVELS, "num_subjects": SUBJECTS},
        "training": {"epochs": 1, "num_volumes": 2, "num_val_volumes": 1},
        "tuning": {"num_volumes": 1, "nl_means_h": [0.8, 1.0]},  # Perona-Malik tuned here (no file)
    }
    config.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory, ixi_dir):
    tmp_path = tmp_path_factory.mktemp("compare")
    config = tiny_config(tmp_path, ixi_dir)
    # under an ASCII-only locale (as on some CI machines and servers): the files must still be written as UTF-8
    ascii_locale = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compare", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=1200,
                          env=ascii_locale)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp_path, proc


def test_compare_tables(compared):
    tmp_path, proc = compared
    out = tmp_path / "out"
    per_subject = pd.read_csv(out / "per_subject.csv")
    assert len(per_subject) == len(METHODS) * len(NOISES) * len(LEVELS) * SUBJECTS * 2  # oracle and blind rows
    assert per_subject.groupby(["method", "noise", "level", "sigma"]).size().eq(SUBJECTS).all()
    # blind rows give the estimated level, within 10 % of the truth; level-free methods have one run for both
    blind = per_subject[(per_subject.sigma == "blind") & per_subject.method.isin(LEVEL_METHODS)]
    assert ((blind.level_used - blind.level).abs() <= 0.1 * blind.level).all()
    assert per_subject[per_subject.method == "diffnet_paper"].level_used.isna().all()
    summary = pd.read_csv(out / "summary.csv").set_index(["method", "noise", "level", "sigma"])
    for column in ("psnr_head_mean", "ssim_head_mean", "psnr_image_mean", "ssim_image_mean",
                   "seconds_per_volume", "parameters"):
        assert summary[column].notna().all(), column
    noisy = summary.loc["noisy"]
    # the same seeded noise for every method: more noise, lower PSNR; tuned Perona-Malik beats the noisy input
    assert noisy.loc[("rician", 0.05, "blind"), "psnr_head_mean"] > noisy.loc[("rician", 0.15, "blind"),
                                                                              "psnr_head_mean"] + 6
    for sigma in ("oracle", "blind"):
        assert (summary.loc[("perona_malik", "rician", 0.15, sigma), "psnr_head_mean"]
                > noisy.loc[("rician", 0.15, sigma), "psnr_head_mean"])
    assert summary.loc[("diffnet_paper", "rician", 0.05, "blind"), "parameters"] == 101310
    assert summary.loc[("noisy", "rician", 0.05, "oracle"), "parameters"] == 0
    # whole volumes: each method's time is measured on the volume it denoised
    assert summary.loc[("diffnet_guided", "rician", 0.05, "blind"), "seconds_per_volume"] > 0.1
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "DiffNet 2.5D (shipped)" in report and "± " in report and "hardware:" in report and "1 epochs" in report
    assert "(blind)" in report and "(oracle)" in report and "whole volumes" in report
    # the printed tables end with the paths of the report and the figures
    assert "PSNR inside the head" in proc.stdout and str(out / "metrics_vs_level.png") in proc.stdout
    for name in ("diffnet_paper", "diffnet_guided", "unet"):  # trained by the bundle's workflow
        assert (out / "models" / name / "model.pt").stat().st_size > 0
        assert (out / "models" / name / "train_metrics.csv").is_file()
    assert not list(out.rglob("*.tmp*"))


def test_compare_and_bundle_evaluation_give_the_same_psnr(compared, ixi_dir):
    """The comparison's DiffNet row is the bundle's model: ``monai.bundle run evaluating`` of the checkpoint the
    comparison trained gives the same PSNR in the head on the same test volume and noise."""
    tmp_path, _ = compared
    out = tmp_path / "bundle_eval"
    configs = f"['{BUNDLE}/configs/train.yaml','{BUNDLE}/configs/evaluate.yaml']"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", configs,
                           "--bundle_root", str(BUNDLE), "--dataset_dir", str(ixi_dir), "--output_dir", str(out),
                           "--ckpt_path", str(tmp_path / "out" / "models" / "diffnet_guided" / "model.pt"),
                           "--num_test_volumes", str(SUBJECTS), "--test_level", "0.05",
                           "--device", "$torch.device('cpu')"],
                          cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bundle_psnr = pd.read_csv(out / "test_psnr_head_raw.csv")  # filename, value per test volume
    summary = pd.read_csv(tmp_path / "out" / "summary.csv").set_index(["method", "noise", "level", "sigma"])
    compared_psnr = summary.loc[("diffnet_guided", "rician", 0.05, "oracle"), "psnr_head_mean"]
    assert bundle_psnr.iloc[:, 1].astype(float).mean() == pytest.approx(compared_psnr, abs=1e-3)


def test_compare_figures(compared):
    out = compared[0] / "out"
    for name in ("metrics_vs_level.png", "panel.png"):
        image = imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 300 and image.std() > 0.01, name


def test_compare_mlflow_runs(compared):
    tmp_path, proc = compared
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("diffnet_mri_compare")
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("mlflow.runName", "")
               .startswith("tiny ")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    results = [r for r in children if "sigma" in r.data.params]
    assert len(results) == len(METHODS) * len(NOISES) * len(LEVELS) * 2  # oracle and blind
    # the learned methods were trained by the bundle's workflow, which logged into child runs of the comparison
    trainings = {r.data.params.get("method"): r for r in children if r.info.run_name.startswith("train ")}
    assert set(trainings) == {"diffnet_paper", "diffnet_guided", "unet_residual"}
    assert {"train_loss", "val_psnr_head", "train_seconds"} <= set(trainings["diffnet_guided"].data.metrics)
    run = next(r for r in results if r.data.params["method"] == "perona_malik"
               and r.data.params["sigma"] == "blind" and r.data.params["noise"] == "rician" and float(r.data.params["level"]) == 0.05)
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    row = summary[(summary.method == "perona_malik") & (summary.noise == "rician") & (summary.level == 0.05)
                  & (summary.sigma == "blind")]
    assert run.data.metrics["psnr_head_mean"] == pytest.approx(row["psnr_head_mean"].item())
    assert "kappa" in run.data.params and run.data.params["sigma"] == "blind"
    assert not client.list_artifacts(run.info.run_id)  # figures are logged once, on the parent
    assert {"report.md", "summary.csv", "metrics_vs_level.png", "panel.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    # the printed hint serves the store with this Python and opens the runs table on this comparison's view
    assert f"-m mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}" in proc.stdout
    assert f"viewStateShareKey=results-{parent.info.run_id}" in proc.stdout
    assert f"mlflow.sharedViewState.results-{parent.info.run_id}" in experiment.tags


def test_unreachable_mlflow_server_warns_and_keeps_results(tmp_path, ixi_dir):
    config = load_config(tiny_config(tmp_path, ixi_dir, methods=["noisy", "perona_malik"],
                                     tracking_uri="http://127.0.0.1:9",
                                     evaluation={"noises": ["rician"], "levels": [0.05], "num_subjects": 1}))
    with pytest.warns(UserWarning, match="MLflow tracking at http://127.0.0.1:9 failed"):
        result = run_comparison(config)
    assert len(pd.read_csv(result["files"]["per_subject"])) == 4  # two methods, oracle and blind


@pytest.mark.parametrize("change, message", [
    ({"methods": ["noisy", "bm5d"]}, "unknown \\['bm5d'\\]"),
    ({"evaluation": {"levelz": [0.05]}}, "unknown keys \\['levelz'\\]"),
    ({"evaluation": {"levels": [5]}}, "fractions in \\(0, 1\\)"),
    ({"checkpoints": {"perona_malik": "x.pt"}}, "learned methods"),
])
def test_bad_config_is_refused(tmp_path, ixi_dir, change, message):
    with pytest.raises(ValueError, match=message):
        load_config(tiny_config(tmp_path, ixi_dir, **change))


def test_unwritable_output_is_refused_before_work(tmp_path, ixi_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder", encoding="utf-8")
    config = load_config(tiny_config(tmp_path, ixi_dir, output_dir=str(blocker / "out")))
    with pytest.raises(ValueError, match="not writable"):
        run_comparison(config)


def test_interrupted_comparison_marks_its_mlflow_run_failed(tmp_path, ixi_dir, monkeypatch):
    """Ctrl-C during the evaluation: the parent run is closed as FAILED, not left RUNNING in the MLflow UI."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pipeline.compare.run.evaluate", interrupted)
    config = load_config(tiny_config(tmp_path, ixi_dir, methods=["noisy"],
                                     evaluation={"noises": ["rician"], "levels": [0.05], "num_subjects": 1}))
    with pytest.raises(KeyboardInterrupt):
        run_comparison(config)
    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_classical_3d_methods_on_subsets_with_quality_time_figure(tmp_path, ixi_dir):
    """ANTs and DIPY in the comparison, each limited to the first test subject, oracle runs to the first subject,
    given single-point grids (no validation runs): rows, the common-subjects table, the quality-time figure and
    their MLflow child runs."""
    config = load_config(tiny_config(
        tmp_path, ixi_dir, methods=["noisy", "perona_malik", "ants", "dipy_nlmeans"],
        evaluation={"noises": ["rician"], "levels": [0.15], "num_subjects": 2, "panel_level": 0.15,
                    "subjects": {"ants": 1, "dipy_nlmeans": 1}, "oracle_subjects": 1},
        tuning={"num_volumes": 1, "perona_malik_file": str(BUNDLE / "models" / "perona_malik.json"),
                "grids": {"ants": {"r": [2], "shrink_factor": [1]}, "dipy_nlmeans": {"block_radius": [3], "sigma_factor": [1.0]}}}))
    result = run_comparison(config)
    rows = pd.read_csv(result["files"]["per_subject"])
    counts = rows.groupby(["method", "sigma"]).size().to_dict()
    assert counts == {("noisy", "blind"): 2, ("noisy", "oracle"): 1, ("perona_malik", "blind"): 2,
                      ("perona_malik", "oracle"): 1, ("ants", "blind"): 1, ("ants", "oracle"): 1,
                      ("dipy_nlmeans", "blind"): 1, ("dipy_nlmeans", "oracle"): 1}
    first = rows[rows.subject == rows.subject.iloc[0]].set_index(["method", "sigma"])["psnr_head"]
    for method in ("ants", "dipy_nlmeans"):  # at 15 % both improve on the noisy input
        assert first[method, "blind"] > first["noisy", "blind"] + 0.5, method
    report = result["files"]["report"].read_text(encoding="utf-8")
    assert "ANTs DenoiseImage (tuned) on the first 1; DIPY nlmeans (tuned) on the first 1" in report
    assert "on the 1 test subject(s) every method ran on" in report
    image = imread(result["files"]["quality_time"])
    assert image.ndim == 3 and image.shape[0] > 300 and image.std() > 0.01
    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.experiment).experiment_id], max_results=100)
    ants = [r for r in runs if r.data.params.get("method") == "ants"]
    assert len(ants) == 2 and {r.data.params["test_subjects"] for r in ants} == {"1"}
    assert {r.data.params["r"] for r in ants} == {"2"} and all("seconds_per_volume" in r.data.metrics for r in ants)
    dipy = [r for r in runs if r.data.params.get("method") == "dipy_nlmeans"]  # its own "method" is tuned_method
    assert len(dipy) == 2 and {r.data.params["tuned_method"] for r in dipy} == {"classic"}


def test_subsets_of_unknown_methods_are_refused(tmp_path, ixi_dir):
    with pytest.raises(ValueError, match="evaluation.subjects maps method names"):
        load_config(tiny_config(tmp_path, ixi_dir, evaluation={"subjects": {"bm5d": 2}}))
    with pytest.raises(ValueError, match="positive integer"):
        load_config(tiny_config(tmp_path, ixi_dir, tuning={"volumes": {"bm4d": 0}}))


def test_ablation_on_validation_subjects_past_the_checkpoint_pickers(tmp_path, ixi_dir):
    """``evaluation.split: validation`` from ``first_subject`` on: the subjects evaluated are validation subjects
    that neither picked a checkpoint nor are in the test split, and the report says so."""
    from pipeline.data import load_manifest

    config = load_config(tiny_config(tmp_path, ixi_dir, methods=["noisy", "perona_malik"],
                                     evaluation={"split": "validation", "first_subject": 6, "num_subjects": 1,
                                                 "noises": ["rician"], "levels": [0.05]},
                                     tuning={"perona_malik_file": str(BUNDLE / "models" / "perona_malik.json")}))
    result = run_comparison(config)
    validation = load_manifest(config.manifest, "validation", config.data_root)
    subjects = set(pd.read_csv(result["files"]["per_subject"])["subject"])
    assert subjects == {validation[6]["subject"]}
    assert "1 validation subjects of" in result["files"]["report"].read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="evaluation.split"):
        load_config(tiny_config(tmp_path, ixi_dir, evaluation={"split": "train"}))


def test_training_overrides_also_shape_the_loaded_network(tmp_path, ixi_dir):
    """``training.overrides`` that change the network (``context_slices: 0``) apply when weights are loaded: the
    0.2.0 2D weights load as ``diffnet_guided`` and score exactly as ``diffnet_2d`` (its method file)."""
    weights = str(BUNDLE / "models" / "diffnet_2d.pt")
    config = load_config(tiny_config(tmp_path, ixi_dir, methods=["noisy", "diffnet_2d", "diffnet_guided"],
                                     checkpoints={"diffnet_2d": weights, "diffnet_guided": weights},
                                     training={"overrides": {"context_slices": 0}},
                                     evaluation={"num_subjects": 1, "oracle_subjects": 1, "noises": ["rician"],
                                                 "levels": [0.05]}))
    rows = pd.read_csv(run_comparison(config)["files"]["per_subject"]).set_index(["method", "sigma"])["psnr_head"]
    assert rows[("diffnet_guided", "blind")] == pytest.approx(rows[("diffnet_2d", "blind")], abs=1e-6)
    assert rows[("diffnet_guided", "blind")] > rows[("noisy", "blind")] + 1
