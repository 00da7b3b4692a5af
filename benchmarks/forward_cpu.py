"""CPU time of one forward pass of every network preset on the same 8 axial slices of 120 x 120.

2D networks get a batch ``(8, 1, 120, 120)``; 3D networks the same slices as one slab ``(1, 1, 120, 120, 8)``.
All presets are timed side by side in one run (median of ``--repeats`` passes after one warm-up, no gradients).

    .venv/bin/python benchmarks/forward_cpu.py [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.networks import DiffNet, PeronaMalik, residual_unet


def presets():
    return {
        "DiffNet paper 2D": (DiffNet.paper(2), 2),
        "DiffNet paper 2D + guidance": (DiffNet.paper(2, guidance=True), 2),
        "DiffNet diffusion 2D + guidance": (DiffNet.paper(2, guidance=True, mode="diffusion"), 2),
        "DiffNet paper 3D": (DiffNet.paper(3), 3),
        "DiffNet paper 3D + guidance": (DiffNet.paper(3, guidance=True), 3),
        "Residual U-Net paper 2D": (residual_unet("paper", 2), 2),
        "Residual U-Net small 2D": (residual_unet("small", 2), 2),
        "Residual U-Net small 3D": (residual_unet("small", 3), 3),
        "Perona-Malik 2D (10 steps)": (PeronaMalik(2, num_iter=10), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    slices = torch.rand(8, 1, 120, 120)
    inputs = {2: slices, 3: slices[:, 0].permute(1, 2, 0)[None, None]}  # the 8 slices as one (1, 1, H, W, 8) slab
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} passes")
    print(f"{'network':34s} {'parameters':>12s} {'input':>20s} {'median ms':>10s}")
    for name, (net, dims) in presets().items():
        net.eval()
        x = inputs[dims]
        times = []
        with torch.inference_mode():
            net(x)
            for _ in range(args.repeats):
                start = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - start)
        params = sum(p.numel() for p in net.parameters())
        print(f"{name:34s} {params:12,d} {str(tuple(x.shape)):>20s} {1000 * statistics.median(times):10.1f}")


if __name__ == "__main__":
    main()
