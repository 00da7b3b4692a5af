"""MRI denoising by learned anisotropic diffusion (DiffNet) as a MONAI pipeline."""

__version__ = "0.1.0"
