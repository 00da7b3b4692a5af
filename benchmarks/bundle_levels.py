"""PSNR / SSIM of the bundle's methods at several noise levels, through the real bundle ``evaluating`` workflow.

Prints a Markdown table (the one in the bundle's docs/README.md) and the seconds each evaluation took.

    .venv/bin/python benchmarks/bundle_levels.py [--split validation] [--levels 0.03 0.05 0.07] \
        [--methods 'noisy input' ...] [--volumes N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "diffnet_mri_denoising"
EVALUATE = ["train.yaml", "evaluate.yaml"]
METHODS = {  # config files merged, extra overrides
    "noisy input": (EVALUATE, ["--network_def#_target_", "torch.nn.Identity", "--load_weights", "false",
                               "--noise_map", "false", "--context_slices", "0"]),
    "Perona-Malik (tuned)": (EVALUATE + ["methods/perona_malik.yaml"], []),
    "DiffNet 2.5D + guidance + noise map (shipped)": (EVALUATE, []),
    # an earlier, noise-blind model (1 input channel), e.g. `git show v0.1:bundles/.../models/model.pt > old.pt`
    "DiffNet 2D + guidance + noise map (0.2.0)": (EVALUATE + ["methods/diffnet_2d.yaml"], []),
    "DiffNet 2D + guidance, noise-blind (--old-checkpoint)": (EVALUATE, ["--noise_map", "false", "--context_slices", "0"]),
}


def evaluate(method: str, level: float, split: str, volumes: int | None, out: Path,
             old_checkpoint: str | None = None) -> tuple[pd.Series, float]:
    configs, extra = METHODS[method]
    if "--old-checkpoint" in method:
        extra = [*extra, "--ckpt_path", str(old_checkpoint)]
    files = ",".join(f"'{BUNDLE / 'configs' / name}'" for name in configs)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", f"[{files}]",
           "--bundle_root", str(BUNDLE), "--eval_split", split, "--test_level", str(level), "--pm_level", str(level),
           "--output_dir", str(out), *extra]
    if volumes:
        cmd += ["--num_test_volumes", str(volumes)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{method} at {level} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics = pd.read_csv(out / "metrics.csv", header=None, index_col=0)[1]
    return metrics, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.03, 0.05, 0.07])
    parser.add_argument("--methods", nargs="+", default=list(METHODS)[:3], choices=list(METHODS))
    parser.add_argument("--volumes", type=int, default=None, help="first N volumes of the split (default: all)")
    parser.add_argument("--old-checkpoint", default=None, help="weights of an earlier noise-blind DiffNet to compare")
    args = parser.parse_args()
    if any("--old-checkpoint" in m for m in args.methods) and not args.old_checkpoint:
        parser.error("the noise-blind method needs --old-checkpoint")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.levels:
            for method in args.methods:
                metrics, seconds = evaluate(method, level, args.split, args.volumes, Path(tmp) / f"{len(rows)}",
                                            args.old_checkpoint)
                rows.append({"Rician level": f"{level:.0%}", "method": method, **{k: metrics[k] for k in (
                    "test_psnr_head", "test_ssim_head", "test_psnr_image", "test_ssim_image")}, "wall s": seconds})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows).rename(columns=lambda c: c.replace("test_", ""))
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
