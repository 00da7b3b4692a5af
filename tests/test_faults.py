"""Faults fed for real to the bundle's commands (``python -m monai.bundle run ...`` in subprocesses, as in
``test_bundle.py``): a training killed mid-epoch and resumed, a kill while a checkpoint is being written, an
unreachable MLflow server, an unwritable output folder and a full disk.

The trainings run on a tiny copy of a few IXI volumes (96 x 96 x 12 voxels, written by the ``tiny`` fixture) so that
each command takes seconds on a CPU.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import torch

from conftest import IXI_MANIFEST, REPO, SHARED_DATA
from pipeline.bundle import check_output_dir, resume_checkpoint, training_space_mb
from pipeline.data import load_manifest
from pipeline.networks import DiffNet
from test_bundle import assert_ok, bundle_args, mlflow_client, run_bundle, runs_named, tail

# two training volumes, one batch each: two iterations per epoch; one validation volume
TINY = ["--num_train_volumes", "2", "--num_val_volumes", "1", "--patches_per_volume", "4", "--volumes_per_batch", "1"]


def tiny_dataset(folder: Path, ixi: Path) -> dict:
    """Crops (96 x 96 x 12, affine kept) of 2 training, 1 validation and 1 test IXI volume with their own manifest:
    the ``manifest`` and ``dataset_dir`` overrides of the bundle commands."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "tiny", "data_root": "."}
    for split, count in (("training", 2), ("validation", 1), ("test", 1)):
        manifest[split] = []
        for item in load_manifest(IXI_MANIFEST, split, data_root=ixi)[:count]:
            name = Path(item["label"]).name
            nib.save(nib.load(item["label"]).slicer[12:108, 12:108, 38:50], str(folder / name))
            manifest[split].append({"label": name, "subject": item.get("subject", name)})
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return {"manifest": folder / "manifest.json", "dataset_dir": folder}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    ixi = SHARED_DATA / "ixi_t1"
    if not ixi.is_dir():
        pytest.skip(f"shared IXI data not found at {ixi} (set PIPELINE_SHARED_DATA)")
    return tiny_dataset(tmp_path_factory.mktemp("tiny"), ixi)


def start_bundle(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m monai.bundle <args>`` started in the background, stdout and stderr into ``log``."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_DATA_ROOT")}
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    with log.open("w", encoding="utf-8") as out:
        return subprocess.Popen([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


def run_together(jobs: dict[str, tuple[list[str], Path]], timeout: int = 900) -> dict:
    """Several ``python -m monai.bundle`` commands at once (they spend most of their time importing):
    ``{key: (args, log)}`` -> ``{key: CompletedProcess}`` with stdout and stderr together in ``.stdout``."""
    procs = {key: (start_bundle(args, log), args, log) for key, (args, log) in jobs.items()}
    return {key: subprocess.CompletedProcess([sys.executable, "-m", "monai.bundle", *args], proc.wait(timeout),
                                             log.read_text(encoding="utf-8", errors="replace"))
            for key, (proc, args, log) in procs.items()}


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------------------
# 1. a training killed mid-epoch resumes to the result of an uninterrupted one, in the same MLflow run
# 2. an unreachable MLflow server: one warning, the training goes on, metrics land in a local CSV
#
# The uninterrupted 2-epoch reference training is also the one whose MLflow server is unreachable: it runs in the
# background while the other training is killed and resumed, and both tests read it.

TWO_EPOCHS = {"epochs": 2, "val_interval": 2}


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory) -> dict:
    """The reference training, started in the background; ``finish(reference)`` waits for it."""
    work = tmp_path_factory.mktemp("reference")
    out, uri = work / "out", f"http://127.0.0.1:{free_port()}"  # nothing listens there
    args = bundle_args("run training", "train.yaml", output_dir=out, tracking="mlflow", tracking_uri=uri,
                       **tiny, **TWO_EPOCHS) + TINY
    return {"popen": start_bundle(args, work / "train.log"), "args": args, "log": work / "train.log", "out": out,
            "uri": uri, "started": time.monotonic()}


def finish(reference: dict) -> subprocess.CompletedProcess:
    if "proc" not in reference:
        returncode = reference["popen"].wait(timeout=900)
        reference["seconds"] = time.monotonic() - reference["started"]
        reference["proc"] = subprocess.CompletedProcess(reference["args"], returncode,
                                                        reference["log"].read_text(encoding="utf-8", errors="replace"))
    return reference["proc"]


def test_killed_training_resumes_like_an_uninterrupted_run(tiny, reference, tmp_path):
    out, uri, log = tmp_path / "run", f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path / "killed.log"
    args = bundle_args("run training", "train.yaml", output_dir=out, tracking="mlflow", tracking_uri=uri,
                       **tiny, **TWO_EPOCHS) + TINY
    victim = start_bundle(args, log)
    deadline = time.monotonic() + 600

    def epoch_2_started() -> bool:  # epoch 1 is saved and epoch 2's first iteration logged
        logged = log.read_text(encoding="utf-8", errors="replace")
        return (out / "checkpoint_epoch=1.pt").is_file() and "Epoch: 2/2, Iter: 1/" in logged

    while not epoch_2_started():
        assert victim.poll() is None, \
            f"the training ended before it was killed:\n{log.read_text(encoding='utf-8')[-4000:]}"
        assert time.monotonic() < deadline, "epoch 2 never started"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (out / "checkpoint_epoch=2.pt").exists(), "killed too late: epoch 2 was already saved"
    name = (out / "train_mlflow_run_name.txt").read_text(encoding="utf-8").strip()

    resumed = run_bundle(args + ["--resume", "true"], tmp_path / "resumed.log")
    assert_ok(resumed)
    assert "checkpoint_epoch=1.pt" in resumed.stdout and "Epoch: 1/2" not in resumed.stdout, tail(resumed)
    assert_ok(finish(reference))

    # the same weights as the uninterrupted run (EpochSeed: epoch 2 draws the same patches, noise and order)
    expected = torch.load(reference["out"] / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    got = torch.load(out / "checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert got["trainer"]["iteration"] == expected["trainer"]["iteration"] == 2 * got["trainer"]["epoch_length"]
    for key, value in expected["network"].items():
        assert torch.allclose(got["network"][key], value, rtol=1e-5, atol=1e-7), key
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint_epoch=2.pt", "model.pt"]

    # the local metrics record reads like the uninterrupted one (the killed epoch's partial rows are dropped),
    # with the same final validation metrics
    rows, expected_rows = read_rows(out / "train_metrics.csv"), read_rows(reference["out"] / "train_metrics.csv")
    assert [(r["epoch"], r["iteration"], r["name"]) for r in rows] == \
           [(r["epoch"], r["iteration"], r["name"]) for r in expected_rows]
    for row, expected_row in zip(rows, expected_rows):
        assert float(row["value"]) == pytest.approx(float(expected_row["value"]), rel=1e-5), row
    assert any(r["name"] == "val_psnr_head" and r["epoch"] == "2" for r in rows), rows

    # one MLflow run continued: its loss history has the iterations before the kill and after the resume
    runs = runs_named(uri, name)
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}: the resumed training did not continue the run"
    client = mlflow_client(uri)
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert {1, 2} <= set(steps) and {3, 4} <= set(steps), steps  # epoch 1 (before the kill) and epoch 2 (after)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_psnr_head")] == [2]
    assert client.get_run(runs[0].info.run_id).info.status == "FINISHED"


def test_unreachable_mlflow_server_only_warns(reference):
    proc, out, uri = finish(reference), reference["out"], reference["uri"]
    assert_ok(proc)
    warnings = [line for line in proc.stdout.splitlines() if "MLflow tracking disabled" in line]
    assert len(warnings) == 1 and uri in warnings[0], f"expected one warning line{tail(proc)}"
    assert "Retrying (Retry(" not in proc.stdout and reference["seconds"] < 300, \
        f"MLflow's HTTP retries held the training up ({reference['seconds']:.0f} s){tail(proc)}"
    assert (out / "model.pt").is_file() and (out / "checkpoint_epoch=2.pt").is_file(), tail(proc)
    rows = read_rows(out / "train_metrics.csv")
    assert [(r["epoch"], r["iteration"]) for r in rows if r["name"] == "train_loss"] == \
           [("1", "1"), ("1", "2"), ("2", "3"), ("2", "4")], rows
    assert [r["epoch"] for r in rows if r["name"] == "lr"] == ["1", "2"], rows
    validation = {r["name"]: float(r["value"]) for r in rows if r["epoch"] == "2" and r["name"].startswith("val_")}
    assert set(validation) == {"val_psnr_head", "val_ssim_head", "val_psnr_image", "val_ssim_image"}, rows
    assert 10 < validation["val_psnr_head"] < 60 and 0 < validation["val_ssim_head"] <= 1, validation


# --------------------------------------------------------------------------------------------------------------
# 1b. a kill while a checkpoint is being written leaves the previous checkpoint intact

class _Hang:
    """Pickling it announces itself on ``fd`` and hangs: the process is killed while the checkpoint is written."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self):
        os.write(self.fd, b"writing epoch 2\n")
        time.sleep(120)
        return (int, (0,))


class _SlowOnEpoch2:
    def __init__(self, engine, fd: int) -> None:
        self.engine, self.fd = engine, fd

    def state_dict(self) -> dict:
        return {"payload": _Hang(self.fd) if self.engine.state.epoch == 2 else 0}

    def load_state_dict(self, state) -> None:
        pass


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    """MONAI's ``CheckpointSaver`` writes in place and ignite deletes the old checkpoint before writing the new one;
    the bundle's savers write a temporary file, rename it, and delete the old one afterwards. A forked child trains
    two epochs and is SIGKILLed while it writes the checkpoint of epoch 2."""
    from ignite.engine import Engine

    from pipeline.handlers import ResumeCheckpointSaver

    out = tmp_path / "out"
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            engine = Engine(lambda e, b: None)
            ResumeCheckpointSaver(save_dir=str(out), save_dict={"network": torch.nn.Linear(2, 2),
                                                                "slow": _SlowOnEpoch2(engine, write_fd)},
                                  save_interval=1, n_saved=1, epoch_level=True).attach(engine)
            engine.run([0], max_epochs=2)
        finally:
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd) as messages:
        announced = messages.readline()
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert announced == "writing epoch 2\n" and os.WTERMSIG(status) == signal.SIGKILL, (announced, status)

    assert not (out / "checkpoint_epoch=2.pt").exists(), "a partial checkpoint_epoch=2.pt was left behind"
    assert resume_checkpoint(out, True) == str(out / "checkpoint_epoch=1.pt")
    state = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 1 and "network" in state  # one iteration per epoch


# --------------------------------------------------------------------------------------------------------------
# 3. an unwritable output folder and a full disk: a clear error before any data is loaded


def unwritable(tmp_path: Path) -> Path:
    """An output folder that cannot be written: a read-only folder, or (as root, whom permissions do not stop) a
    folder below a regular file, which nobody can create."""
    if os.geteuid() == 0:
        blocker = tmp_path / "a_file"
        blocker.write_text("not a folder\n", encoding="utf-8")
        return blocker / "out"
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.fixture(scope="module")
def startup_faults(tiny, tmp_path_factory) -> dict:
    """A training into an unwritable folder and an evaluation on a "full" disk (more free space required than there
    is), run side by side: ``{"unwritable": (process, output_dir), "full": (process, output_dir)}``."""
    work = tmp_path_factory.mktemp("startup_faults")
    unwritable_dir, eval_dir = unwritable(work), work / "eval"
    try:
        procs = run_together({
            "unwritable": (bundle_args("run training", "train.yaml", output_dir=unwritable_dir, epochs=1, **tiny)
                           + TINY, work / "train.log"),
            "full": (bundle_args("run evaluating", "train.yaml", "evaluate.yaml", output_dir=eval_dir,
                                 num_test_volumes=1, min_free_mb=10**12, **tiny), work / "evaluate.log"),
        })
    finally:
        if unwritable_dir.is_dir():
            unwritable_dir.chmod(0o700)  # let pytest clean up
    return {"unwritable": (procs["unwritable"], unwritable_dir), "full": (procs["full"], eval_dir)}


def test_unwritable_output_dir_fails_before_the_work(startup_faults):
    proc, out = startup_faults["unwritable"]
    assert proc.returncode != 0
    assert f"output_dir {out} is not writable" in proc.stdout, tail(proc)
    assert "Loading dataset" not in proc.stdout, f"data was loaded before the check{tail(proc)}"


def test_full_disk_fails_before_the_work(startup_faults):
    proc, out = startup_faults["full"]
    assert proc.returncode != 0
    assert f"not enough free disk space for output_dir {out}" in proc.stdout and "MB needed" in proc.stdout, tail(proc)
    assert "Restored all variables" not in proc.stdout, f"the evaluation started{tail(proc)}"


def test_check_output_dir_and_space_estimate(tmp_path):
    assert check_output_dir(tmp_path / "new" / "out", min_free_mb=1) == str(tmp_path / "new" / "out")
    with pytest.raises(OSError, match="is not writable"):
        check_output_dir(unwritable(tmp_path))
    with pytest.raises(OSError, match="not enough free disk space"):
        check_output_dir(tmp_path, min_free_mb=10**12)
    # DiffNet's epoch checkpoint is ~2.4 MB (weights + Adam moments): margin + 2 checkpoints + model.pt
    assert 55 < training_space_mb(DiffNet(2, guidance=True)) < 60
