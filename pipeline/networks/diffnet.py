"""DiffNet: a learned, unrolled anisotropic diffusion (Arridge & Hauptmann, "Networks for Nonlinear Diffusion
Problems in Imaging", J. Math. Imaging Vis. 2020, arXiv:1811.12084), with an optional context guidance encoder.

One layer is one explicit diffusion step on the image ``u``::

    u_{k+1} = u_k + dt_k * sum_j f_j(u_k) * S_j(u_k)

where ``S_j`` are the stencil neighbours (centre and 2 * spatial_dims neighbours, zero-Neumann boundaries), the
filters ``f_j`` are per-voxel maps estimated by a small CNN from the current state (and the guidance features), and
``dt_k`` is a learnable time step. Two modes:

- ``"free"``: the paper's generalised stencil; the estimator returns ``2 * spatial_dims + 1`` unconstrained maps.
- ``"diffusion"``: a genuine diffusion. The estimator returns one map per axis, squashed to a conductance in
  (0, 1); the conductance of a face is the mean of its two voxels, so both voxels see the same flux with opposite
  signs (the image sum is conserved), and ``dt_k = dt_max * sigmoid(theta_k)`` with ``dt_max = 1 / (2 *
  spatial_dims)`` keeps every update a convex combination of a voxel and its neighbours: a layer cannot leave the
  [min, max] range of its input (discrete maximum principle), so the network cannot invent intensities.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from pipeline.networks.guidance import GuidanceEncoder
from pipeline.networks.stencil import face_average, face_differences, flux_divergence, neighbours

MODES = ("free", "diffusion")


def filter_estimator(spatial_dims: int, in_channels: int, out_channels: int, depth: int, channels: int) -> nn.Sequential:
    """``depth`` 3x3 convolutions with ``channels`` features and ReLU between; the last has no activation.

    Its last convolution starts at zero, so an untrained free-mode DiffNet is the identity and training starts from
    "do nothing" rather than from a random stencil.
    """
    conv = Conv[Conv.CONV, spatial_dims]
    layers: List[nn.Module] = []
    cin = in_channels
    for _ in range(depth - 1):
        layers += [conv(cin, channels, kernel_size=3, padding=1, padding_mode="replicate"), nn.ReLU()]
        cin = channels
    last = conv(cin, out_channels, kernel_size=3, padding=1, padding_mode="replicate")
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class DiffNetLayer(nn.Module):
    """One explicit diffusion step: ``(B, 1, *spatial)`` -> ``(B, 1, *spatial)``, plus the filter maps it used.

    The filters are ``(B, 2 * spatial_dims + 1, *spatial)`` stencil weights ordered ``[centre, -x, +x, -y, +y,
    (-z, +z)]`` in free mode, ``(B, spatial_dims, *spatial)`` conductances in (0, 1) per axis in diffusion mode.
    """

    def __init__(self, spatial_dims: int, guidance_channels: int, depth: int, channels: int, mode: str,
                 condition_channels: int = 0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.diffusion = mode == "diffusion"
        self.dt_max = 1.0 / (2 * spatial_dims)
        n_filters = spatial_dims if self.diffusion else 2 * spatial_dims + 1
        self.estimator = filter_estimator(spatial_dims, 1 + condition_channels + guidance_channels, n_filters, depth,
                                          channels)
        # free: dt itself (paper); diffusion: logit of dt / dt_max, 0 -> half the stability bound
        self.dt = nn.Parameter(torch.tensor(0.0 if self.diffusion else 0.1))

    def time_step(self) -> torch.Tensor:
        return self.dt_max * torch.sigmoid(self.dt) if self.diffusion else self.dt

    def forward(self, u: torch.Tensor, guide: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``guide``: what the estimator sees beside ``u`` (the noise map and the guidance features), or None."""
        x = u if guide is None else torch.cat([u, guide], dim=1)
        filters = self.estimator(x)
        if self.diffusion:
            filters = torch.sigmoid(filters)
            update = torch.zeros_like(u)
            for axis in range(self.spatial_dims):
                dim = 2 + axis
                if u.size(dim) > 1:
                    c = face_average(filters.narrow(1, axis, 1), dim)
                    update = update + flux_divergence(c * face_differences(u, dim), dim)
        else:
            update = filters.narrow(1, 0, 1) * u
            for j, nb in enumerate(neighbours(u, self.spatial_dims)):
                update = update + filters.narrow(1, j + 1, 1) * nb
        return u + self.time_step().to(u.dtype) * update, filters


class DiffNet(nn.Module):
    """Learned unrolled anisotropic diffusion for denoising: ``(B, C, *spatial)`` -> ``(B, 1, *spatial)``.

    Args:
        spatial_dims: 2 (slices, 5-point stencil) or 3 (volumes, 7-point stencil).
        num_layers: diffusion steps (paper: 5).
        estimator_depth: convolutions per filter estimator (paper: 4).
        estimator_channels: features of each estimator (paper: 32).
        guidance: ``False`` (paper), ``True`` for a default :class:`GuidanceEncoder`, or a ``GuidanceEncoder``.
            Its features are computed once from the noisy input and fed to every estimator.
        mode: ``"free"`` (paper's generalised stencil) or ``"diffusion"`` (conservative, maximum principle).
        final_relu: clamp the output to be non-negative (paper), as magnitude MRI is.
        noise_map: ``False`` (paper): the input is the image alone, ``C = 1``. ``True``: ``C = 2``, channel 0 the
            image and channel 1 its noise-level map, sigma / reference intensity per voxel (constant for a volume
            or spatially varying; :class:`pipeline.transforms.NoiseMapd` adds it). The map is not diffused: every
            layer's estimator and the guidance encoder see it beside the current state, so the filters adapt to
            the noise (FFDNet's conditioning), and one model serves every level.
        context_slices: 2D only. ``k > 0``: the input also holds the ``2k`` neighbouring axial slices of the
            denoised one (2.5D), ``C = 1 + 2k (+ 1)``: channel 0 the slice, then slices ``z-k .. z-1, z+1 .. z+k``,
            then the noise map if any (:func:`pipeline.transforms.slices_with_context` builds this layout; the
            :class:`pipeline.inferers.SliceContextInferer` runs it over a volume). Only the slice is diffused; the
            neighbours, like the map, are seen by every estimator and the guidance encoder, so the filters can
            tell structure that continues across slices from noise that does not.

    Inputs are intensities normalised to the reference intensity (about 1.0 in tissue); any spatial size and batch
    size, float32 or bfloat16. The paper preset :meth:`paper` has 101,310 parameters in 2D.
    """

    def __init__(self, spatial_dims: int = 2, num_layers: int = 5, estimator_depth: int = 4,
                 estimator_channels: int = 32, guidance: bool | GuidanceEncoder = False, mode: str = "free",
                 final_relu: bool = True, noise_map: bool = False, context_slices: int = 0) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value in (("num_layers", num_layers), ("estimator_depth", estimator_depth),
                            ("estimator_channels", estimator_channels)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(context_slices, int) or context_slices < 0 or (context_slices and spatial_dims != 2):
            raise ValueError(f"context_slices must be a non-negative integer, and 0 in 3D, got {context_slices!r}")
        self.context_slices = context_slices
        self.in_channels = 1 + 2 * context_slices + (1 if noise_map else 0)
        if guidance is True:
            guidance = GuidanceEncoder(spatial_dims, in_channels=self.in_channels)
        if isinstance(guidance, GuidanceEncoder):
            if guidance.spatial_dims != spatial_dims:
                raise ValueError(f"guidance encoder has spatial_dims={guidance.spatial_dims}, DiffNet {spatial_dims}")
            if guidance.in_channels != self.in_channels:
                raise ValueError(f"guidance encoder takes {guidance.in_channels} input channel(s), DiffNet "
                                 f"{self.in_channels} (noise_map={noise_map})")
        self.spatial_dims = spatial_dims
        self.noise_map = bool(noise_map)
        self.mode = mode
        self.final_relu = final_relu
        self.use_guidance = isinstance(guidance, GuidanceEncoder)
        # a placeholder keeps the attribute a module of one type, which TorchScript needs
        self.guidance = guidance if self.use_guidance else nn.Identity()
        guidance_channels = guidance.out_channels if self.use_guidance else 0
        self.layers = nn.ModuleList(
            DiffNetLayer(spatial_dims, guidance_channels, estimator_depth, estimator_channels, mode,
                         condition_channels=self.in_channels - 1)
            for _ in range(num_layers)
        )

    @classmethod
    def paper(cls, spatial_dims: int = 2, **kwargs) -> "DiffNet":
        """Arridge & Hauptmann's configuration: 5 layers, 4x3x3 convs with 32 channels, free stencil, final ReLU.

        101,310 parameters in 2D (5 x 20,261 + 5 time steps), 311,560 in 3D. ``kwargs`` override (e.g. guidance).
        """
        return cls(spatial_dims=spatial_dims, **{"num_layers": 5, "estimator_depth": 4, "estimator_channels": 32,
                                                  "mode": "free", **kwargs})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_filters(x)[0]

    def forward_with_filters(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Denoised output and the filter maps of every layer (see :class:`DiffNetLayer`), for interpretation."""
        if x.dim() != self.spatial_dims + 2 or x.size(1) != self.in_channels:
            what = "image" + (f", {2 * self.context_slices} neighbouring slices" if self.context_slices else "") + (
                " and noise map" if self.noise_map else "")
            raise ValueError(
                f"DiffNet({self.spatial_dims}D) expects input of shape (B, {self.in_channels}, "
                f"*{self.spatial_dims} spatial dims) ({what}), got {list(x.shape)}"
            )
        context: List[torch.Tensor] = []
        if self.in_channels > 1:  # neighbouring slices and the noise map
            context.append(x.narrow(1, 1, self.in_channels - 1))
        if self.use_guidance:
            context.append(self.guidance(x))
        guide: Optional[torch.Tensor] = torch.cat(context, dim=1) if len(context) > 0 else None
        u = x.narrow(1, 0, 1)
        filters: List[torch.Tensor] = []
        for layer in self.layers:
            u, f = layer(u, guide)
            filters.append(f)
        if self.final_relu:
            u = torch.relu(u)
        return u, filters

    def time_steps(self) -> torch.Tensor:
        """The effective time step of every layer, shape ``(num_layers,)``."""
        return torch.stack([layer.time_step() for layer in self.layers])
