"""Figures (matplotlib, PNG): saving a figure atomically, axial slices in the radiological convention, and the noisy /
clean / denoised / residual panel of one slice."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.atomic_write import write_atomic  # noqa: E402


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG under a temporary name, rename it to ``path`` when complete, and close it."""
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi), suffix=".png")
    plt.close(fig)
    return Path(path)


def middle_slice(volume) -> np.ndarray:
    """A 2D array from a channel-first ``(1, H, W[, D])`` tensor or array: the middle axial slice of a volume."""
    arr = np.asarray(volume.detach().cpu().float() if hasattr(volume, "detach") else volume, dtype=np.float32)[0]
    return arr[..., arr.shape[-1] // 2] if arr.ndim == 3 else arr


def radiological(axial) -> np.ndarray:
    """An axial slice indexed ``[x, y]`` of a RAS-oriented volume (MONAI's ``Orientationd("RAS")``: x to the patient's
    right, y to the front) as an image in the radiological convention: seen from the feet, anterior at the top and
    the patient's right on the image's left. Show it with ``imshow``'s default ``origin="upper"``."""
    return np.asarray(axial).T[::-1, ::-1]


def denoising_panel(noisy, clean, denoised, path: str | os.PathLike, title: str = "") -> Path:
    """Write a 1x4 panel (noisy, clean, denoised, residual = denoised - clean) of the middle axial slice.

    Inputs are channel-first ``(1, H, W[, D])``, RAS-oriented, on the normalised scale (reference intensity 1.0); the
    slice is shown in the radiological convention (:func:`radiological`), intensities in [0, 1.2], the residual in
    [-0.2, 0.2]. The PNG is written under a temporary name, then renamed.
    """
    images = [middle_slice(v) for v in (noisy, clean, denoised)]
    images.append(images[2] - images[1])
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, img, name in zip(axes, images, ("noisy", "clean", "denoised", "residual (denoised - clean)")):
        residual = name.startswith("residual")
        shown = ax.imshow(radiological(img), cmap="RdBu_r" if residual else "gray",
                          vmin=-0.2 if residual else 0.0, vmax=0.2 if residual else 1.2)
        ax.set_title(name)
        ax.axis("off")
        if residual:
            fig.colorbar(shown, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
