"""Perona-Malik nonlinear diffusion (Perona & Malik, "Scale-space and edge detection using anisotropic diffusion",
IEEE TPAMI 12(7), 1990), explicit scheme with zero-Neumann boundaries.

It is both the classical denoising baseline (K, step count and time step tuned on validation data) and the forward
model of the "invert nonlinear diffusion" experiment of Arridge & Hauptmann, "Networks for Nonlinear Diffusion
Problems in Imaging" (J. Math. Imaging Vis. 2020, arXiv:1811.12084, Figs. 6-10), where DiffNet learns to undo it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from pipeline.networks.stencil import face_differences, flux_divergence

DIFFUSIVITIES = ("rational", "exp")


class PeronaMalik(nn.Module):
    """``num_iter`` explicit steps of ``du/dt = div(g(|grad u|) grad u)``, the classic Perona-Malik discretisation.

    Per spatial axis, the flux through each interior face between voxels ``x`` and ``x + 1`` is
    ``g(|D u|) * D u`` with ``D u = u[x + 1] - u[x]``; the flux through the border is zero (zero-Neumann), so the image
    sum is conserved. One step is ``u <- u + dt * sum_axes div(flux)`` with the edge-stopping function

    - ``"rational"``: ``g(s) = 1 / (1 + (s / K)^2)``
    - ``"exp"``:      ``g(s) = exp(-(s / K)^2)``

    Both satisfy ``0 < g <= 1``, so with unit spacing the scheme is stable and obeys the discrete maximum principle
    (output within ``[min, max]`` of the input) for ``0 < dt <= 1 / (2 * spatial_dims)``, which is the default.

    Args:
        spatial_dims: 2 or 3.
        num_iter: number of explicit steps, ``>= 0`` (0 is the identity).
        kappa: edge threshold ``K > 0`` in intensity units; gradients well below ``K`` are smoothed, well above are
            kept. On data normalised to a reference intensity of 1.0, useful values are around 0.02-0.2.
        dt: time step in ``(0, 1 / (2 * spatial_dims)]``; ``None`` takes the bound (1/4 in 2D, 1/6 in 3D).
        diffusivity: ``"rational"`` or ``"exp"``.
        trainable: if ``True``, ``kappa`` and ``dt`` become parameters, stored as ``log_kappa`` (so ``K > 0``) and
            ``dt_logit`` with ``dt = bound * sigmoid(dt_logit)`` (so ``dt`` stays in ``(0, bound]``); a ``dt`` at the
            bound starts at ``0.999 * bound``, since ``sigmoid`` reaches 1 only at infinity. Otherwise they are the
            buffers ``kappa`` and ``dt`` and the module has no parameters.

    Shapes: ``(B, C, *spatial)`` with ``len(spatial) == spatial_dims`` -> same shape and dtype; channels are diffused
    independently; any spatial size (axes of size 1 are skipped) and any real values (float32 or bfloat16 typical).
    """

    def __init__(
        self,
        spatial_dims: int,
        num_iter: int = 10,
        kappa: float = 0.1,
        dt: Optional[float] = None,
        diffusivity: str = "rational",
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        if isinstance(num_iter, bool) or not isinstance(num_iter, int) or num_iter < 0:
            raise ValueError(f"num_iter must be an integer >= 0, got {num_iter!r}.")
        if not (math.isfinite(kappa) and kappa > 0):
            raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}.")
        bound = 1.0 / (2 * spatial_dims)
        if dt is None:
            dt = bound
        if not (0 < dt <= bound):
            raise ValueError(
                f"dt must be in (0, 1/(2*spatial_dims)] = (0, {bound:.6g}] for a stable explicit scheme "
                f"in {spatial_dims}D, got {dt!r}."
            )
        if diffusivity not in DIFFUSIVITIES:
            raise ValueError(f"diffusivity must be one of {DIFFUSIVITIES}, got {diffusivity!r}.")

        self.spatial_dims = spatial_dims
        self.num_iter = num_iter
        self.diffusivity = diffusivity
        self.dt_max = bound
        self.trainable = trainable
        if trainable:
            ratio = min(dt / bound, 0.999)  # logit(1) is infinite: start just inside the bound
            self.log_kappa = nn.Parameter(torch.tensor(math.log(kappa)))
            self.dt_logit = nn.Parameter(torch.tensor(math.log(ratio / (1.0 - ratio))))
        else:
            self.register_buffer("kappa", torch.tensor(float(kappa)))
            self.register_buffer("dt", torch.tensor(float(dt)))

    # hasattr is resolved statically by TorchScript, so each mode compiles only the branch for its own attributes
    def edge_threshold(self) -> torch.Tensor:
        """``K`` as a 0-dim tensor (> 0)."""
        if hasattr(self, "log_kappa"):
            return self.log_kappa.exp()
        return self.kappa

    def time_step(self) -> torch.Tensor:
        """``dt`` as a 0-dim tensor in ``(0, 1 / (2 * spatial_dims)]``."""
        if hasattr(self, "dt_logit"):
            return self.dt_max * torch.sigmoid(self.dt_logit)
        return self.dt

    def conductance(self, d: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """``g(|d|)`` in ``(0, 1]`` for face differences ``d`` (only ``d^2`` is needed, so no ``abs``)."""
        r = (d / kappa) ** 2
        if self.diffusivity == "exp":
            return torch.exp(-r)
        return 1.0 / (1.0 + r)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != self.spatial_dims + 2:
            raise ValueError(
                "PeronaMalik expects (B, C, *spatial) with " + str(self.spatial_dims) + " spatial dims, got shape "
                + str(list(u.shape)) + "."
            )
        # cast the coefficients to the image dtype so bfloat16 stays bfloat16 end to end
        kappa = self.edge_threshold().to(u.dtype)
        dt = self.time_step().to(u.dtype)
        for _ in range(self.num_iter):
            update = torch.zeros_like(u)
            for axis in range(self.spatial_dims):
                dim = 2 + axis
                if u.size(dim) < 2:  # no interior faces, nothing flows along this axis
                    continue
                d = face_differences(u, dim)
                update = update + flux_divergence(self.conductance(d, kappa) * d, dim)
            u = u + dt * update
        return u

    def extra_repr(self) -> str:
        return (
            f"spatial_dims={self.spatial_dims}, num_iter={self.num_iter}, diffusivity={self.diffusivity!r}, "
            f"trainable={self.trainable}"
        )
