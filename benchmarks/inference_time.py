"""Seconds per volume of the bundle's inference (``configs/inference.yaml``, the same file loop as
``monai.bundle run inference``), measured on real volumes, for the shipped 2.5D model, the 0.2.0 2D model
(``models/diffnet_2d.pt``) and, optionally, an earlier noise-blind checkpoint, side by side in one run.

    .venv/bin/python benchmarks/inference_time.py VOLUME [VOLUME ...] [--old-checkpoint old.pt] [--repeat 3]

Prints, per model, the median seconds per volume over ``repeat`` passes (loading, noise estimation, slice-by-slice
network, intensity restore and the NIfTI write included; process start-up and weight loading excluded).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
from pathlib import Path

import torch

from pipeline.bundle import inference_network, read_bundle_config
from pipeline.inference import SUMMARY, denoise_volumes

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "diffnet_mri_denoising"


def seconds_per_volume(volumes: list[str], repeat: int, **overrides) -> float:
    times = []
    with tempfile.TemporaryDirectory() as out:
        parser = read_bundle_config(BUNDLE / "configs" / "inference.yaml", bundle_root=str(BUNDLE), output_dir=out,
                                    **overrides)
        device = parser.get_parsed_content("device")
        network = inference_network(parser.get_parsed_content("network_def"), parser.get_parsed_content("ckpt_path"),
                                    True, device)
        steps = [parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing")]
        for _ in range(repeat):
            denoise_volumes([{"image": v} for v in volumes], steps[0], steps[1], network, steps[2], out, device)
            with open(Path(out) / SUMMARY, newline="", encoding="utf-8") as f:
                times += [float(row["seconds"]) for row in csv.DictReader(f)]
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volumes", nargs="+")
    parser.add_argument("--old-checkpoint", default=None, help="an earlier noise-blind (1-channel) DiffNet + guidance")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = {"shipped 2.5D (noise map, level estimated per volume)": seconds_per_volume(args.volumes, args.repeat),
            "0.2.0 2D (models/diffnet_2d.pt)": seconds_per_volume(
                args.volumes, args.repeat, context_slices=0, ckpt_path=str(BUNDLE / "models" / "diffnet_2d.pt"))}
    if args.old_checkpoint:
        rows["earlier noise-blind 2D checkpoint"] = seconds_per_volume(
            args.volumes, args.repeat, noise_map=False, context_slices=0,
            ckpt_path=str(Path(args.old_checkpoint).resolve()))
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; median over {args.repeat} passes of "
          f"{len(args.volumes)} volume(s)")
    for name, seconds in rows.items():
        print(f"{name}: {seconds:.2f} s per volume")


if __name__ == "__main__":
    main()
