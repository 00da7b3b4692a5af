"""Finite-difference stencils with zero-Neumann boundaries, shared by DiffNet and Perona-Malik.

All functions take channel-first batches ``(B, C, *spatial)`` and an axis ``dim`` counted on the full tensor
(so spatial axis ``i`` is ``dim = 2 + i``). They are TorchScript-compatible and work for any size, including 1.

Zero-Neumann (no-flux) boundaries are realised in two equivalent ways:

- ``neighbours`` replicates the edge voxel (the ghost voxel equals its neighbour, so the normal derivative is 0);
- ``face_differences`` / ``flux_divergence`` work on the ``n - 1`` interior faces of an axis and treat the flux
  through the two boundary faces as 0. This form conserves the image sum exactly, because every face flux is added
  to one voxel and subtracted from the other.
"""

from __future__ import annotations

from typing import List

import torch


def shift(u: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """``u`` shifted by one voxel along ``dim``: ``out[x] = u[x + step]`` with the edge voxel replicated.

    ``step`` is ``+1`` (the neighbour after) or ``-1`` (the neighbour before).
    """
    n = u.size(dim)
    if n == 1:
        return u
    if step > 0:
        return torch.cat([u.narrow(dim, 1, n - 1), u.narrow(dim, n - 1, 1)], dim)
    return torch.cat([u.narrow(dim, 0, 1), u.narrow(dim, 0, n - 1)], dim)


def neighbours(u: torch.Tensor, spatial_dims: int) -> List[torch.Tensor]:
    """The ``2 * spatial_dims`` stencil neighbours of every voxel, ordered ``[-x, +x, -y, +y, (-z, +z)]``."""
    out: List[torch.Tensor] = []
    for axis in range(spatial_dims):
        out.append(shift(u, 2 + axis, -1))
        out.append(shift(u, 2 + axis, 1))
    return out


def face_differences(u: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward differences ``u[x + 1] - u[x]`` on the ``n - 1`` interior faces along ``dim``."""
    n = u.size(dim)
    return u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)


def face_average(c: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of the two voxels sharing each interior face along ``dim``: ``(c[x] + c[x + 1]) / 2``."""
    n = c.size(dim)
    return 0.5 * (c.narrow(dim, 1, n - 1) + c.narrow(dim, 0, n - 1))


def flux_divergence(flux: torch.Tensor, dim: int) -> torch.Tensor:
    """Discrete divergence of face fluxes along ``dim`` with zero flux through the boundary faces.

    ``flux`` has ``n - 1`` entries along ``dim`` (flux from voxel ``x`` to ``x + 1``, positive when
    ``u[x + 1] > u[x]``); the result has ``n`` entries: ``flux[x] - flux[x - 1]``.
    """
    zero = torch.zeros_like(flux.narrow(dim, 0, 1))
    padded = torch.cat([zero, flux, zero], dim)
    m = padded.size(dim)
    return padded.narrow(dim, 1, m - 1) - padded.narrow(dim, 0, m - 1)
