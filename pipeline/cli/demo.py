"""``python -m pipeline demo``: the quick end-to-end run on the embedded defaults."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = REPO / "data_manifests" / "ixi_t1.json"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train DiffNet briefly on IXI slices and compare it with tuned Perona-Malik (CPU, minutes)",
        description="Train DiffNet (paper preset + guidance) on axial slices of the manifest's training subjects, "
                    "tune Perona-Malik on validation subjects, and print PSNR/SSIM on test subjects.",
    )
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="Decathlon datalist (default: %(default)s)")
    p.add_argument("--data-root", default=None,
                   help="folder the manifest's paths are relative to (default: $PIPELINE_DATA_ROOT, else the "
                        "manifest's own data_root)")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--noise", choices=("rician", "gaussian"), default="rician")
    p.add_argument("--level", type=float, default=0.05, help="noise sigma / reference intensity (default: 0.05)")
    p.add_argument("--train-volumes", type=int, default=16)
    p.add_argument("--eval-volumes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.quickstart import run_demo  # heavy imports only when the command runs

    table = run_demo(args.manifest, args.out, data_root=args.data_root, steps=args.steps,
                     batch_size=args.batch_size, noise=args.noise, level=args.level,
                     train_volumes=args.train_volumes, eval_volumes=args.eval_volumes, seed=args.seed)
    a = table.attrs
    print(f"\n{a['noise'].capitalize()} noise, sigma = {a['level']:.0%} of the reference intensity, "
          f"{a['test_slices']} axial test slices; DiffNet trained for {a['train_seconds']:.0f} s on levels "
          f"{a['level_range'][0]:.0%}-{a['level_range'][1]:.0%}; Perona-Malik tuned on validation slices")
    print(table.to_string(float_format=lambda v: f"{v:.4f}" if v < 1.5 else f"{v:.2f}"))
    print(f"\nresults and model written to {Path(args.out).resolve()}")
    return 0
