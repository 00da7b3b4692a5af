"""The method comparison: which denoiser to use on these scans, measured on held-out subjects."""

from pipeline.compare.config import CompareConfig, load_config
from pipeline.compare.run import run_comparison

__all__ = ["CompareConfig", "load_config", "run_comparison"]
