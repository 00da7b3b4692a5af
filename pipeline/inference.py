"""Denoise a list of volumes with a bundle's inference pipeline, skipping the bad ones.

One implementation for both entry points: ``python -m monai.bundle run inference`` (its ``inference`` section calls
:func:`denoise_volumes`) and ``python -m pipeline denoise``. Per volume: the bundle's ``preprocessing`` (checked
loading, orientation, head mask, scaling, the noise level given or estimated, the noise map), the ``inferer`` with
the ``network``, and the ``postprocessing`` (intensity restored, back to the input's orientation, atomic NIfTI
write). A file that fails is reported as ``<path>: <problem>`` and skipped; the others are still denoised. One line
per file (with its noise level), a table of the failures at the end, and ``denoise_summary.csv`` in the output
folder with one row per input, written atomically.
"""

from __future__ import annotations

import csv
import io
import time
import warnings
from pathlib import Path

import torch
from monai.data import decollate_batch, list_data_collate

from pipeline.atomic_write import write_text_atomic
from pipeline.data.checks import VolumeWarning, describe_error
from pipeline.data.manifest import volume_stem
from pipeline.transforms import NoiseEstimateWarning

SUMMARY = "denoise_summary.csv"
FIELDS = ["input", "status", "output", "noise_level", "noise_level_method", "seconds", "problem"]


class DenoiseFailed(SystemExit):
    """Raised at the end when some volumes could not be denoised: exit status 1, no traceback (the problems have
    been printed and written to the summary)."""

    def __init__(self, failed: int, total: int) -> None:
        super().__init__(1)
        self.failed, self.total = failed, total


def write_summary(rows: list[dict], path: Path) -> None:
    """``denoise_summary.csv``, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def print_failures(rows: list[dict]) -> None:
    failed = [r for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} volume(s) denoised, {len(failed)} failed", flush=True)
    if failed:
        width = max(len(Path(r["input"]).name) for r in failed)
        print(f"{'input':<{width}}  problem")
        for r in failed:
            name = Path(r["input"]).name
            problem = r["problem"][len(r["input"]) + 2:] if r["problem"].startswith(r["input"]) else r["problem"]
            print(f"{name:<{width}}  {problem}", flush=True)


def _denoise_one(item: dict, preprocessing, inferer, network, postprocessing, device) -> tuple[dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = preprocessing(dict(item))
        batch = list_data_collate([data])
        with torch.no_grad():
            batch["pred"] = inferer(batch["image"].to(device), network)
        for decollated in decollate_batch(batch, detach=True):
            postprocessing(decollated)
    notes = [str(w.message) for w in caught if issubclass(w.category, (VolumeWarning, NoiseEstimateWarning))]
    return data, notes


def denoise_volumes(items: list[dict], preprocessing, inferer, network: torch.nn.Module, postprocessing,
                    output_dir: str | Path, device: str | torch.device = "cpu", exit_on_failure: bool = True) -> list[dict]:
    """Denoise every ``{"image": path}`` of ``items``; returns the summary rows (see the module docstring).

    With ``exit_on_failure``, raises :class:`DenoiseFailed` (a ``SystemExit(1)``) after the summary when any file
    failed, so a bundle command exits non-zero without a traceback. Ctrl-C writes the summary of the files done so
    far and stops (no partial output is left: outputs are written under a temporary name).
    """
    out, device = Path(output_dir), torch.device(device)
    out.mkdir(parents=True, exist_ok=True)
    network = network.to(device).eval()
    rows: list[dict] = []
    try:
        for i, item in enumerate(items, 1):
            path = item["image"]
            start = time.perf_counter()
            output = out / f"{volume_stem(path)}_denoised.nii.gz"
            row = {"input": path, "status": "ok", "output": str(output), "noise_level": "", "noise_level_method": "",
                   "problem": ""}
            try:
                data, notes = _denoise_one(item, preprocessing, inferer, network, postprocessing, device)
                if data.get("noise_level") is not None:
                    row["noise_level"] = f"{float(data['noise_level']):.5f}"
                    row["noise_level_method"] = str(data.get("noise_level_method", ""))
                row["problem"] = "; ".join(notes)
                level = (f", noise level {float(row['noise_level']):.2%} ({row['noise_level_method']})"
                         if row["noise_level"] else "")
                line = f"denoised -> {output}{level}" + "".join(f"\n    warning: {n}" for n in notes)
            except Exception as err:  # noqa: BLE001 - a bad file is reported and skipped, whatever failed
                row.update(status="failed", output="", problem=describe_error(err, path))
                line = f"FAILED: {row['problem']}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            seconds = time.perf_counter() - start
            rows.append({**row, "seconds": f"{seconds:.1f}"})
            print(f"[{i}/{len(items)}] {path}: {line} ({seconds:.1f} s)", flush=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {len(rows)} of {len(items)} volume(s); no partial output was left", flush=True)
        write_summary(rows, out / SUMMARY)
        raise
    write_summary(rows, out / SUMMARY)
    print_failures(rows)
    print(f"summary written to {out / SUMMARY}", flush=True)
    failed = sum(r["status"] != "ok" for r in rows)
    if failed and exit_on_failure:
        raise DenoiseFailed(failed, len(rows))
    return rows
