"""MRI denoising by learned anisotropic diffusion (DiffNet) as a MONAI pipeline.

Sub-packages load on first use, so ``import pipeline`` stays cheap and bundle configs can write
``$import pipeline`` and then ``$pipeline.data.load_manifest(...)``.
"""

import importlib

__version__ = "0.1.0"

SUBMODULES = ("bundle", "data", "figures", "handlers", "metrics", "networks", "transforms")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"pipeline.{name}")
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
