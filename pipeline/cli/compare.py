"""``python -m pipeline compare --config configs/<name>.yaml``: the method comparison (see ``pipeline.compare``)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="compare DiffNet, U-Net, Perona-Malik, non-local means and the noisy input on test subjects",
        description="Load (or train with the bundle's training workflow) the learned methods, tune the classical "
                    "ones on validation subjects, evaluate all on the same seeded noisy whole test volumes, with the "
                    "true and with the estimated noise level; write CSV/Markdown tables, figures and MLflow runs "
                    "(one parent run, a child run per method, noise, level and oracle/blind).",
    )
    p.add_argument("--config", default="configs/compare_quick.yaml",
                   help="comparison config, plain YAML (default: %(default)s)")
    p.add_argument("--out", dest="output_dir", default=None, help="output folder (default: the config's)")
    p.add_argument("--data-root", default=None, help="folder the manifest's paths are relative to")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's, auto)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.compare import load_config, run_comparison  # heavy imports only when the command runs
    from pipeline.compare.methods import LABELS
    from pipeline.compare.tracking import ui_hint

    config = load_config(args.config, output_dir=args.output_dir, data_root=args.data_root,
                         tracking_uri=args.tracking_uri, device=args.device)
    result = run_comparison(config)
    summary = result["summary"]
    given = {"blind": "noise level estimated from each volume (blind)", "oracle": "true noise level given (oracle)"}
    for (noise, sigma), block in summary.groupby(["noise", "sigma"], sort=False):
        table = block.pivot(index="method", columns="level", values="psnr_head_mean")
        methods = list(dict.fromkeys(block["method"]))
        table = table.reindex(methods)
        table.columns = [f"{level:.0%}" for level in table.columns]
        counts = block.groupby("method")["subjects"].max()
        table.insert(0, "subjects", [int(counts[m]) for m in methods])
        table.index = [LABELS[m] for m in methods]
        print(f"\nPSNR inside the head (dB), mean over whole {config.evaluation.split} volumes (subjects: how many), "
              f"{noise} noise, {given[sigma]}:")
        print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    files = result["files"]
    print(f"\nfinished in {result['minutes']:.1f} min")
    print(f"report:  {files['report'].resolve()}")
    figures = [files[k].resolve() for k in ("figure", "quality_time", "panel") if k in files]
    print("figures: " + "\n         ".join(map(str, figures)))
    print(ui_hint(result["tracking_uri"], config.experiment))
    return 0
