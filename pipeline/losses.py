"""Training losses.

Training one network over a wide range of noise levels (1-20 %) with a plain MSE lets the noisiest patches dominate:
their error is up to 400 times larger, and the network learns to over-smooth the clean ones. :class:`LogMSELoss`
averages the logarithm of each sample's MSE instead, i.e. it maximises the mean PSNR over the batch; its gradient
weights each sample by ``1 / MSE``, so every noise level counts in proportion to its own error.
"""

from __future__ import annotations

import torch
from torch import nn


class LogMSELoss(nn.Module):
    """``mean_b log10(mean((pred_b - target_b)^2) + eps)``, ``pred`` and ``target`` of shape ``(B, C, *spatial)``.

    Equal to ``-mean PSNR / 10`` for a peak of 1 (plus ``eps``, which keeps a perfect sample finite).
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"pred and target shapes differ: {list(pred.shape)} and {list(target.shape)}")
        error = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        return torch.log10(error + self.eps).mean()
