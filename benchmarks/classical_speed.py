"""Seconds per whole IXI volume (120 x 120 x 90 at 2 mm) and PSNR in the head of the classical 3D denoisers
(BM4D, ANTs DenoiseImage, DIPY nlmeans) at one Rician noise level, with their default (first grid point) and their
tuned parameters, next to the noisy input, all in one run.

Each method is tuned on the first ``--validation`` subjects of the manifest's validation split (noise seeded like the
comparison's validation, seed 0) and measured on the first ``--test`` subjects of the test split (seed 1, as the
comparison's test volumes). ``--extras`` also times the packages' own defaults that the wrappers do not use: BM4D's
default profile (the wrapper uses a faster one) and DIPY's default ``method="blockwise"`` (the wrapper uses
``"classic"``). Seconds are wall-clock on whatever else the machine is running: the load average is printed.

    nice -n 10 .venv/bin/python benchmarks/classical_speed.py [--level 0.05] [--test 2] [--validation 2]
        [--methods bm4d ants dipy_nlmeans] [--no-extras]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.compare import classical
from pipeline.compare.evaluation import NoisyVolumes, load_volumes
from pipeline.compare.methods import LABELS
from pipeline.data import load_manifest
from pipeline.metrics import psnr

REPO = Path(__file__).resolve().parents[1]


def head_psnr(out: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> float:
    return psnr(out[None].float(), clean[None], mask[None]).item()


def measure(run, volumes) -> tuple[float, list[float]]:
    """Mean seconds per volume and the PSNR in the head of each volume of ``run(noisy)``."""
    seconds, scores = [], []
    for noisy, clean, mask in volumes:
        start = time.perf_counter()
        out = run(noisy)
        seconds.append(time.perf_counter() - start)
        scores.append(head_psnr(out, clean, mask))
    return statistics.mean(seconds), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=str(REPO / "data_manifests" / "ixi_t1.json"))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--noise", default="rician", choices=["rician", "gaussian"])
    parser.add_argument("--level", type=float, default=0.05)
    parser.add_argument("--test", type=int, default=2, help="test subjects measured")
    parser.add_argument("--validation", type=int, default=2, help="validation subjects tuned on")
    parser.add_argument("--methods", nargs="+", default=list(classical.METHODS), choices=list(classical.METHODS))
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="skip the packages' own defaults (BM4D default profile, DIPY blockwise)")
    args = parser.parse_args()
    noise, level = args.noise, args.level

    validation = NoisyVolumes(load_volumes(load_manifest(args.manifest, "validation", args.data_root)[:args.validation],
                                           "validation"), seed=0)
    test_entries = load_manifest(args.manifest, "test", args.data_root)[:args.test]
    test = NoisyVolumes(load_volumes(test_entries, "test"), seed=1)(noise, level)
    subjects = [Path(e["label"]).name.split("-")[0] for e in test_entries]
    shape = "x".join(str(s) for s in test[0][0].shape[1:])

    print(f"{noise} noise at level {level}; tuned on {args.validation} validation subject(s), measured on test "
          f"subjects {', '.join(subjects)} ({shape} voxels); torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}", flush=True)

    def report(method: str, parameters: str, seconds: float, scores: list[float]) -> None:
        per = " ".join(f"{s:6.2f}" for s in scores)
        print(f"  {method:34s} {seconds:8.1f} s/volume  PSNR head {statistics.mean(scores):6.2f} dB ({per})  "
              f"{parameters}", flush=True)

    report("noisy input", "-", *measure(lambda x: x, test))
    for name in args.methods:
        note = classical.available(name)
        if note:
            print(f"  {LABELS[name]}: skipped, {note}", flush=True)
            continue
        method = classical.METHODS[name]()
        default = method.points()[0]
        start = time.perf_counter()
        method.tune(noise, level, validation)
        tuning = time.perf_counter() - start
        chosen = method.settings[noise, level]
        scores = "; ".join(f"{k}: {v:.2f}" for k, v in method.scores[noise, level].items())
        print(f"  {LABELS[name]}: tuned in {tuning:.0f} s over {len(method.points())} points (validation PSNR "
              f"{scores})", flush=True)
        def_seconds, def_scores = measure(lambda x: method.run(x, noise, level, default), test)
        report(f"{name} default", method.describe(default), def_seconds, def_scores)
        if chosen == default:
            report(f"{name} tuned (= default)", method.describe(chosen), def_seconds, def_scores)
        else:
            report(f"{name} tuned", method.describe(chosen), *measure(lambda x: method.denoise(x, noise, level), test))
        if args.extras and name == "bm4d":
            full = classical.BM4D(fast=False)
            report("bm4d package profile", f"fast=False, {method.describe(chosen)}",
                   *measure(lambda x: full.run(x, noise, level, chosen), test))
        if args.extras and name == "dipy_nlmeans":
            blockwise = {**chosen, "method": "blockwise", "patch_radius": 1, "block_radius": 2, "sigma_factor": 1.0}
            report("dipy package default (blockwise)", method.describe(blockwise),
                   *measure(lambda x: method.run(x, noise, level, blockwise), test))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
