"""Errors of the blind noise estimator (``pipeline.transforms.EstimateNoiseLevel``) against the true level.

Known Rician (and Gaussian) noise is added to IXI volumes, whose own background is nearly noise-free, and to
nilearn's skull-stripped MNI template with its background zeroed again after the noise (as skull stripping would),
which needs the signal-region fallback. Prints, per noise model and level, the median and worst relative error and
the estimator used, and the seconds per volume.

    .venv/bin/python benchmarks/noise_estimation.py [--volumes 5] [--split test]
"""

from __future__ import annotations

import argparse
import os
import time

import pandas as pd

from pipeline.data import load_manifest
from pipeline.data.loaders import volume_transforms
from pipeline.transforms import EstimateNoiseLevel, MRINoise

LEVELS = (0.01, 0.03, 0.05, 0.09, 0.15, 0.20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data_manifests/ixi_t1.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--volumes", type=int, default=5)
    args = parser.parse_args()
    load = volume_transforms("label")
    volumes = {f"IXI {e['subject']}": (load(e)["label"], False)
               for e in load_manifest(args.manifest, args.split)[:args.volumes]}
    try:
        import nilearn

        mni = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                           "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        volumes["MNI template, skull-stripped"] = (load({"label": mni})["label"], True)
    except ImportError:
        print("nilearn is not installed: the skull-stripped case is skipped")
    rows, estimator = [], EstimateNoiseLevel()
    for name, (clean, stripped) in volumes.items():
        for noise in ("rician", "gaussian"):
            for i, level in enumerate(LEVELS):
                noisy = MRINoise(noise, level).set_random_state(i)(clean)
                if stripped:
                    noisy = noisy * (clean > 0)
                start = time.perf_counter()
                estimate = estimator(noisy)
                rows.append({"data": "MNI (fallback)" if stripped else "IXI", "noise": noise, "level": level,
                             "method": estimate.method, "seconds": time.perf_counter() - start,
                             "error": (estimate.sigma - level) / level if estimate.sigma else float("nan")})
    table = pd.DataFrame(rows)
    summary = table.groupby(["data", "noise", "level"]).agg(
        volumes=("error", "size"), median_error=("error", "median"),
        worst_error=("error", lambda e: e.abs().max()), method=("method", "first"), seconds=("seconds", "median"))
    print(summary.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
