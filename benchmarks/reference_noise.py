"""How noisy are the "clean" IXI references, and what does that leave a denoiser to gain at low added noise?

    .venv/bin/python benchmarks/reference_noise.py [--volumes 6] [--levels 0.01 0.03 0.05 0.09 0.15]

The IXI volumes carry their own acquisition noise. Scored against such a reference r = s + n0 (anatomy s, own noise
n0 of sigma0), a denoiser sees y = r + n (added noise of sigma) and cannot tell n0 from n. Even one that knew s
exactly does no better than the Wiener estimate of n0 from n0 + n, whose mean squared error is
sigma0^2 sigma^2 / (sigma0^2 + sigma^2); the PSNR gain over the input is then at most 10 log10(1 + sigma^2 / sigma0^2).

Prints, per validation volume, sigma0 as the project's in-object noise estimate of the clean volume
(:func:`pipeline.transforms.noise_estimation.signal_sigma`, in units of the reference intensity), and per added
level that ceiling on the gain over the noisy input, for the median sigma0. An estimate: anatomy left in the
estimator's flattest voxels raises sigma0 (and lowers the ceiling), spatially correlated noise lowers it.
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings

import torch

from pipeline.data import eval_transforms, load_manifest
from pipeline.transforms.noise_estimation import signal_sigma


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data_manifests/ixi_t1.json")
    parser.add_argument("--volumes", type=int, default=6, help="first validation volumes (default: 6)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.07, 0.09, 0.15])
    args = parser.parse_args()
    load = eval_transforms(level=0.0)
    sigmas = []
    for entry in load_manifest(args.manifest, "validation")[:args.volumes]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean = torch.as_tensor(load(dict(entry))["label"])[0].numpy()
        sigma0 = signal_sigma(clean).sigma
        print(f"{entry['subject']}: own noise sigma0 = {sigma0:.4f} of the reference intensity")
        sigmas.append(sigma0)
    sigma0 = statistics.median(sigmas)
    print(f"\nmedian sigma0 over {len(sigmas)} validation volumes: {sigma0:.4f}")
    print("added level | ceiling on the PSNR gain over the noisy input (dB)")
    for level in args.levels:
        print(f"{level:11.0%} | {10 * math.log10(1 + level**2 / sigma0**2):.2f}")


if __name__ == "__main__":
    main()
