"""Security of the bundle and the project's commands, fed for real:

* checkpoints load with ``torch.load(weights_only=True)`` only: a crafted checkpoint whose unpickling would run code is
  refused by the bundle's evaluation and inference (and the resume loader), and its code never runs;
* no project command evaluates a config (bundle configs run code by design; see the bundle docs' Security section);
* no patient identity (DICOM PatientName, PatientID, PatientBirthDate) reaches the logs, MLflow or the outputs.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import json
import os
import pickle
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import IXI_MANIFEST, REPO, SHARED_DATA
from dicom_series import write_dicom_series
from pipeline.data import load_manifest
from test_bundle import BUNDLE, CONFIGS, PATIENT_ID, PATIENT_NAME, assert_ok, bundle_args, tail
from test_faults import run_together, tiny_dataset

BIRTH_DATE = "19450607"


class RunsCode:
    """Unpickling it runs ``touch <marker>``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": RunsCode(marker)}, path)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def tiny(work) -> dict:
    ixi = SHARED_DATA / "ixi_t1"
    if not ixi.is_dir():
        pytest.skip(f"shared IXI data not found at {ixi} (set PIPELINE_SHARED_DATA)")
    return tiny_dataset(work / "tiny", ixi)


# --------------------------------------------------------------------------------------------------------------
# 1. checkpoints: weights only


def test_the_crafted_checkpoint_really_runs_code_when_unpickled(tmp_path):
    """The payload is live: an unsafe load (``weights_only=False``) creates the marker."""
    marker = tmp_path / "unsafe_load_ran_code"
    torch.load(crafted_checkpoint(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def refused(tiny, work) -> dict:
    """The bundle's evaluation and inference given a crafted checkpoint, side by side:
    ``{"evaluate": process, "inference": process, "checkpoint": path, "marker": path}``."""
    marker = work / "code_ran"
    evil = crafted_checkpoint(work / "evil" / "model.pt", marker)
    procs = run_together({
        "evaluate": (bundle_args("run evaluating", "train.yaml", "evaluate.yaml", output_dir=work / "evaluate",
                                 ckpt_path=evil, num_test_volumes=1, **tiny), work / "evaluate.log"),
        "inference": (bundle_args("run inference", "inference.yaml", dataset_dir=tiny["dataset_dir"],
                                  output_dir=work / "inference", ckpt_path=evil), work / "inference.log"),
    })
    return {**procs, "checkpoint": evil, "marker": marker}


def test_evaluation_refuses_a_checkpoint_that_would_run_code(refused):
    proc = refused["evaluate"]
    assert proc.returncode != 0, f"the crafted checkpoint was accepted{tail(proc)}"
    assert f"refused to load checkpoint {refused['checkpoint']}" in proc.stdout, tail(proc)
    assert "posix.system" in proc.stdout, f"the error does not say what was refused{tail(proc)}"
    assert not refused["marker"].exists(), "the checkpoint's code ran"


def test_inference_refuses_a_checkpoint_that_would_run_code(refused):
    """inference.yaml uses MONAI's ``CheckpointLoader`` (``weights_only=True``): refused, though torch's message
    does not name the file (``pipeline.handlers.SafeCheckpointLoader`` would)."""
    proc = refused["inference"]
    assert proc.returncode != 0, f"the crafted checkpoint was accepted{tail(proc)}"
    assert "Weights only load failed" in proc.stdout or "refused to load checkpoint" in proc.stdout, tail(proc)
    assert not refused["marker"].exists(), "the checkpoint's code ran"


def test_resume_loader_refuses_a_checkpoint_that_would_run_code(tmp_path):
    from ignite.engine import Engine

    from pipeline.bundle import resume_checkpoint
    from pipeline.handlers import ResumeCheckpointLoader

    marker = tmp_path / "code_ran"
    crafted_checkpoint(tmp_path / "out" / "checkpoint_epoch=1.pt", marker)
    path = resume_checkpoint(tmp_path / "out", True)
    engine = Engine(lambda e, b: None)
    ResumeCheckpointLoader(load_path=path, load_dict={"network": torch.nn.Linear(2, 2)}).attach(engine)
    with pytest.raises(pickle.UnpicklingError, match=f"refused to load checkpoint {path}"):
        engine.run([0], max_epochs=1)
    assert not marker.exists(), "the checkpoint's code ran"


def test_load_checkpoint_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """``pipeline.handlers.load_checkpoint``: for project code that loads weights outside an engine."""
    from pipeline.handlers import load_checkpoint

    marker = tmp_path / "code_ran"
    path = crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match=f"refused to load checkpoint {path}"):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"
    weights = torch.nn.Linear(2, 2).state_dict()
    torch.save(weights, tmp_path / "good.pt")
    assert torch.equal(load_checkpoint(tmp_path / "good.pt")["weight"], weights["weight"])


def test_a_damaged_checkpoint_is_named(tmp_path):
    from ignite.engine import Engine

    from pipeline.handlers import SafeCheckpointLoader

    path = tmp_path / "model.pt"
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, path)
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    engine = Engine(lambda e, b: None)
    SafeCheckpointLoader(load_path=str(path), load_dict={"model": torch.nn.Linear(2, 2)}).attach(engine)
    with pytest.raises(RuntimeError, match=f"checkpoint {path} is damaged"):
        engine.run([0], max_epochs=1)


def test_every_checkpoint_load_is_weights_only():
    """MONAI's loaders and every ``torch.load`` in the project's code and bundle configs use ``weights_only=True``;
    every checkpoint loader in the bundle configs is one of those."""
    from monai.handlers import CheckpointLoader

    assert "weights_only=True" in inspect.getsource(CheckpointLoader.__call__)
    loaders = set()
    for config in sorted((REPO / CONFIGS).rglob("*.yaml")):
        text = config.read_text(encoding="utf-8")
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0], f"{config.name}: torch.load without weights_only=True"
        loaders |= {line.split("_target_:")[1].split("#")[0].strip().strip("'\"") for line in text.splitlines()
                    if "_target_:" in line and "Loader" in line and "DataLoader" not in line}
    assert loaders <= {"CheckpointLoader", "pipeline.handlers.SafeCheckpointLoader",
                       "pipeline.handlers.ResumeCheckpointLoader"}, loaders
    assert not unsafe_calls(torch_load_only=True), unsafe_calls(torch_load_only=True)


# --------------------------------------------------------------------------------------------------------------
# 2. configs: bundle configs run code; the project's commands evaluate none


CONFIG_EVALUATORS = {"ConfigParser", "ConfigWorkflow", "create_workflow", "load_bundle_config"}
CONFIG_READER = "pipeline/bundle.py"  # read_bundle_config: the one place that parses bundle configs, and says so
UNSAFE_LOADS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("pickle", "load"),
                ("pickle", "loads"), ("jit", "load")}


def unsafe_calls(torch_load_only: bool = False) -> list[str]:
    """``file:line what`` for every place in the project's Python code (``pipeline/``, ``benchmarks/``, ``scripts/``)
    that evaluates a bundle config other than through ``pipeline.bundle.read_bundle_config`` (MONAI's config parser
    or workflows), evaluates code (``eval``/``exec``) or unpickles (``torch.load`` without ``weights_only=True``,
    ``pickle``, unsafe YAML, TorchScript)."""
    found = []
    for folder in ("pipeline", "benchmarks", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            where = path.relative_to(REPO)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                owner = getattr(func.value, "attr", getattr(func.value, "id", "")) if isinstance(func, ast.Attribute) \
                    else ""
                if owner == "torch" and name == "load":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    if not safe:
                        found.append(f"{where}:{node.lineno} torch.load without weights_only=True")
                elif torch_load_only:
                    continue
                elif name in CONFIG_EVALUATORS and str(where) != CONFIG_READER:
                    found.append(f"{where}:{node.lineno} {name}(...) evaluates a bundle config silently: use "
                                 f"pipeline.bundle.read_bundle_config, which prints which config it evaluates")
                elif isinstance(func, ast.Name) and name in ("eval", "exec"):
                    found.append(f"{where}:{node.lineno} {name}(...) evaluates code")
                elif (owner, name) in UNSAFE_LOADS:
                    found.append(f"{where}:{node.lineno} {owner}.{name}(...) can run code")
    return found


def test_project_commands_evaluate_no_config_silently_and_unpickle_nothing():
    """``python -m pipeline ...`` reads its own configs as plain data (``yaml.safe_load``, JSON); a bundle config,
    whose ``$`` expressions run code by design, only through ``read_bundle_config``, which names it."""
    assert unsafe_calls() == []


def test_read_bundle_config_says_which_config_it_evaluates(capsys):
    from pipeline.bundle import read_bundle_config

    config = REPO / CONFIGS / "inference.yaml"
    parser = read_bundle_config(config, output_dir="/tmp/denoised")
    assert parser["output_dir"] == "/tmp/denoised" and parser["method"] == "diffnet_guided"
    err = capsys.readouterr().err
    assert f"evaluating bundle config {config.resolve()}" in err and "run code" in err, err


def test_bundle_docs_say_that_configs_run_code():
    docs = (REPO / BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    section = docs[docs.index("## Faults and security"):]
    for phrase in ("run code", "weights_only=True", "trust"):
        assert phrase in section, f"the Security section of the bundle docs does not mention {phrase!r}"
    for name in ("train.yaml", "evaluate.yaml", "inference.yaml"):
        text = (REPO / CONFIGS / name).read_text(encoding="utf-8")
        assert "run code" in text, f"{name} lacks the 'configs run code' note"


# --------------------------------------------------------------------------------------------------------------
# 3. no patient identity in logs, MLflow or outputs


SECRETS = (PATIENT_NAME, PATIENT_ID, BIRTH_DATE)
FRAGMENTS = ("Doe", "Jane", "SECRET", BIRTH_DATE)


@pytest.fixture(scope="module")
def phi_runs(work) -> dict:
    """Evaluation (test split = one DICOM series) and inference on a DICOM series whose tags name the patient, both
    with MLflow tracking into their own SQLite stores, side by side."""
    ixi = SHARED_DATA / "ixi_t1"
    if not ixi.is_dir():
        pytest.skip(f"shared IXI data not found at {ixi} (set PIPELINE_SHARED_DATA)")
    volume = load_manifest(IXI_MANIFEST, "test", data_root=ixi)[0]["label"]
    data = np.asarray(nib.load(volume).dataobj)[20:100, 20:100, 35:47].astype(np.int16)
    root = work / "phi"
    series = write_dicom_series(root / "dicom" / "t1_series", data, spacing=(2.0, 2.0, 2.5),
                                tags={"0010|0010": PATIENT_NAME, "0010|0020": PATIENT_ID, "0010|0030": BIRTH_DATE})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"name": "phi", "data_root": str(series.parent),
                                    "test": [{"label": series.name, "subject": "S1"}]}), encoding="utf-8")
    procs = run_together({
        "evaluate": (bundle_args("run evaluating", "train.yaml", "evaluate.yaml", manifest=manifest,
                                 dataset_dir=series.parent, output_dir=root / "evaluate", tracking="mlflow",
                                 tracking_uri=f"sqlite:///{root / 'mlflow' / 'evaluate.db'}"), root / "evaluate.log"),
        "inference": (bundle_args("run inference", "inference.yaml", dataset_dir=series, output_dir=root / "inference",
                                  tracking="mlflow", tracking_uri=f"sqlite:///{root / 'mlflow' / 'inference.db'}"),
                      root / "inference.log"),
    })
    return {**procs, "root": root}


def file_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def test_no_patient_identity_in_logs_mlflow_or_outputs(phi_runs):
    from mlflow.tracking import MlflowClient

    root = phi_runs["root"]
    for key in ("evaluate", "inference"):
        proc = phi_runs[key]
        assert_ok(proc)
        for text in FRAGMENTS:
            assert text not in proc.stdout, f"{text!r} printed by the {key} command{tail(proc)}"

    # MLflow: the runs exist and hold content (so the scan means something), and no value names the patient
    params, tags, metrics = {}, {}, set()
    for db in ("evaluate.db",):  # inference's file loop logs nothing to MLflow: its summary CSV is checked below
        client = MlflowClient(f"sqlite:///{root / 'mlflow' / db}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs, f"no MLflow run in {db}"
        for run in runs:
            params.update(run.data.params)
            tags.update(run.data.tags)
            metrics |= set(run.data.metrics)
    assert params.get("method") == "diffnet_guided" and "test_psnr_head" in metrics, (params, metrics)
    for item in (*params.items(), *tags.items(), *metrics):
        for secret in SECRETS:
            assert secret not in str(item), f"{secret!r} logged to MLflow: {item}"

    # every byte written: MLflow stores and artifacts, evaluation CSVs, denoised NIfTI (decompressed)
    written = [p for p in root.rglob("*") if p.is_file() and "dicom" not in p.relative_to(root).parts]
    assert any(p.name.endswith("_denoised.nii.gz") for p in written), written
    assert any(p.suffix == ".png" for p in written), f"no MLflow figure artifact: {written}"
    for path in written:
        data = file_bytes(path)
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret!r} in {path.relative_to(root)}"
    for path in (p for p in written if p.name.endswith(".nii.gz")):
        header = file_bytes(path)[: int(nib.load(str(path)).header["vox_offset"])]
        for fragment in FRAGMENTS:
            assert fragment.encode() not in header, f"{fragment!r} in the header or extensions of {path.name}"
