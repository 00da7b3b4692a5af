"""``benchmarks/paired_comparisons.py``: one table from comparison runs whose seeded noisy inputs pair, and a refusal
when they do not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "paired_comparisons.py"
COLUMNS = ["method", "noise", "level", "level_used", "subject", "psnr_head", "ssim_head", "psnr_image", "ssim_image",
           "seconds_per_volume", "sigma"]


def write_run(folder: Path, psnr: dict[tuple[str, str], float]) -> Path:
    """A ``per_subject.csv`` with blind rows at 5 % Rician: ``{(method, subject): psnr_head}``."""
    folder.mkdir(parents=True)
    rows = [[method, "rician", 0.05, 0.05, subject, value, 0.9, value, 0.9, 1.0, "blind"]
            for (method, subject), value in psnr.items()]
    pd.DataFrame(rows, columns=COLUMNS).to_csv(folder / "per_subject.csv", index=False)
    return folder


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=REPO, capture_output=True, text=True)


def test_runs_that_pair_give_one_table_per_subject_set(tmp_path):
    full = write_run(tmp_path / "compare_full", {("noisy", "A"): 26.0, ("noisy", "B"): 26.2, ("diffnet_guided", "A"): 27.0,
                                                 ("diffnet_guided", "B"): 27.4, ("bm4d", "A"): 28.0})
    shipped = write_run(tmp_path / "shipped", {("noisy", "A"): 26.0, ("noisy", "B"): 26.2,
                                               ("diffnet_guided", "A"): 28.5, ("diffnet_guided", "B"): 28.9})
    proc = run(full, shipped, "--rename", "compare_full:diffnet_guided=diffnet_2d")
    assert proc.returncode == 0, proc.stderr
    every, common = proc.stdout.split("every method ran on")
    assert "| noisy input | 2 | 26.10 |" in every
    assert "| DiffNet 2D (0.2.0) | 2 | 27.20 |" in every  # the renamed old model
    assert "| DiffNet 2.5D (shipped) | 2 | 28.70 |" in every
    assert "| BM4D (tuned) | 1 | 28.00 |" in every
    assert "(A)" in common and "| DiffNet 2.5D (shipped) | 1 | 28.50 |" in common


def test_runs_with_different_noise_are_refused(tmp_path):
    first = write_run(tmp_path / "first", {("noisy", "A"): 26.0})
    second = write_run(tmp_path / "second", {("noisy", "A"): 25.0})
    proc = run(first, second)
    assert proc.returncode != 0 and "do not pair" in proc.stderr
    proc = run(first, "--rename", "nonsense")
    assert proc.returncode != 0 and "RUN:OLD=NEW" in proc.stderr
