"""The experiments of Arridge & Hauptmann, "Networks for Nonlinear Diffusion Problems in Imaging" (JMIV 2020),
reproduced on IXI axial slices: inverting Perona-Malik diffusion (:mod:`.invert_pm`), data efficiency
(:mod:`.data_efficiency`) and interpreting DiffNet's filters (:mod:`.interpretation`).

Run one with ``python -m pipeline experiment --config configs/paper_<name>.yaml``; the config's ``kind`` picks it.
"""

from pipeline.experiments.config import KINDS, ExperimentConfig, load_config


def run_experiment(config: ExperimentConfig) -> dict:
    """Run the experiment named by ``config.kind``; returns its ``{"summary", "table", "files", ...}``."""
    if config.kind == "invert_pm":
        from pipeline.experiments.invert_pm import run_invert_pm as run
    elif config.kind == "data_efficiency":
        from pipeline.experiments.data_efficiency import run_data_efficiency as run
    else:
        from pipeline.experiments.interpretation import run_interpretation as run
    return run(config)


__all__ = ["KINDS", "ExperimentConfig", "load_config", "run_experiment"]
