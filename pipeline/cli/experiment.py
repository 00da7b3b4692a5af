"""``python -m pipeline experiment --config configs/paper_<name>.yaml``: one of the paper's experiments (see
``pipeline.experiments``)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment", help="reproduce an experiment of the DiffNet paper (invert Perona-Malik, data efficiency, "
                           "interpretation) on IXI slices",
        description="Run one of Arridge & Hauptmann's experiments as set by a config under configs/ (its 'kind'): "
                    "train on training-subject slices, evaluate on test-subject slices, write CSV/Markdown tables, "
                    "figures and MLflow runs (one parent run with child runs).",
    )
    p.add_argument("--config", required=True, help="experiment config, plain YAML (e.g. configs/paper_invert_pm.yaml)")
    p.add_argument("--out", dest="output_dir", default=None, help="output folder (default: the config's)")
    p.add_argument("--data-root", default=None, help="folder the manifest's paths are relative to")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///outputs/mlflow.db)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the config's, auto)")
    p.add_argument("--checkpoint", default=None,
                   help="interpretation only: DiffNet weights to interpret (must exist; overrides the config's)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pipeline.compare.tracking import ui_hint
    from pipeline.experiments import load_config, run_experiment  # heavy imports only when the command runs

    config = load_config(args.config, checkpoint=args.checkpoint, output_dir=args.output_dir,
                         data_root=args.data_root, tracking_uri=args.tracking_uri, device=args.device)
    result = run_experiment(config)
    print(f"\n{config.name} ({config.kind}):\n")
    print(result["table"])
    if "time_steps" in result:
        print("learned time steps dt_k: " + ", ".join(f"{v:.4g}" for v in result["time_steps"]))
    print(f"\nfinished in {result['minutes']:.1f} min")
    for name, path in result["files"].items():
        print(f"{name + ':':13s}{path.resolve()}")
    print(ui_hint(result["tracking_uri"], config.experiment))
    return 0
