"""MRI denoising by learned anisotropic diffusion (DiffNet) as a MONAI pipeline.

Sub-modules load on first use, so ``import pipeline`` stays cheap and bundle configs can write
``$import pipeline`` and then ``$pipeline.data.load_manifest(...)``.
"""

import importlib
import importlib.util

from pipeline.quiet import silence_nvimgcodec_notices

__version__ = "0.2.0"

silence_nvimgcodec_notices()  # MONAI's nvImageCodec notices, printed by every loader, say nothing to our users


def __getattr__(name: str):
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
