"""Training 2D denoisers on axial slices held in memory, for the method comparison and the paper's experiments.

:class:`SliceBank` loads the clean volumes of a datalist once (MONAI loader: orient, head mask, scale so the
reference intensity is 1.0) and keeps their axial slices with enough head in them. :func:`train_network` then runs
a fixed number of Adam steps; each step crops random patches centred on the head and degrades them with a
``degrade(clean, rng) -> (input, weight)`` function (noise at a random level, or Perona-Malik diffusion), so every
learned method of one run sees the same data and the same budget.

Noise-blind training over a wide range of levels lets the largest levels dominate a plain MSE: the network learns to
over-smooth at low noise. :func:`noise_degradation` therefore weights each patch's error by ``1 / level**2``, which
gives every level the same weight relative to its own noise power.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.utils import set_determinism
from tqdm import tqdm

from pipeline.data.loaders import MASK_KEY, volume_transforms
from pipeline.networks import PeronaMalik
from pipeline.transforms import MRINoise

Degradation = Callable[[torch.Tensor, np.random.RandomState], tuple[torch.Tensor, torch.Tensor]]


class SliceBank:
    """Clean axial slices ``(N, 1, H, W)`` and head masks of the volumes of a datalist, on the normalised scale.

    Slices of one volume share its shape; volumes of different in-plane sizes are padded (zeros) to the largest.
    ``subject`` holds the subject (or file) each slice came from.
    """

    def __init__(self, clean: torch.Tensor, mask: torch.Tensor, subject: list[str]) -> None:
        if clean.ndim != 4 or clean.shape != mask.shape or len(subject) != len(clean):
            raise ValueError(f"expected clean and mask of one shape (N, 1, H, W), got {list(clean.shape)} and "
                             f"{list(mask.shape)} with {len(subject)} subjects")
        self.clean, self.mask, self.subject = clean, mask, subject

    @classmethod
    def from_datalist(cls, datalist: Sequence[dict], min_head: float = 0.25, every: int = 1) -> SliceBank:
        """Every ``every``-th axial slice whose head mask covers at least ``min_head`` of the slice."""
        load = volume_transforms("label")
        clean, mask, subject = [], [], []
        for entry in tqdm(datalist, desc="loading volumes", unit="volume", leave=False):
            item = load(entry)
            head = item[MASK_KEY].float().mean(dim=(0, 1, 2))
            for z in range(0, item["label"].shape[-1], every):
                if head[z] >= min_head:
                    clean.append(torch.as_tensor(item["label"][..., z]).float())
                    mask.append(torch.as_tensor(item[MASK_KEY][..., z]).float())
                    subject.append(entry.get("subject", entry["label"]))
        if not clean:
            raise ValueError(f"no axial slice with at least {min_head:.0%} head voxels in {len(datalist)} volumes")
        size = [max(t.shape[d] for t in clean) for d in (1, 2)]

        def stack(ts):
            return torch.stack([torch.nn.functional.pad(t, (0, size[1] - t.shape[2], 0, size[0] - t.shape[1]))
                                for t in ts])

        return cls(stack(clean), stack(mask), subject)

    def __len__(self) -> int:
        return len(self.clean)

    def subset(self, n: int, seed: int = 0) -> SliceBank:
        """``n`` slices drawn without replacement (the same ``n`` and ``seed`` give the same slices)."""
        if not 0 < n <= len(self):
            raise ValueError(f"cannot take {n} slices from a bank of {len(self)}")
        index = np.random.RandomState(seed).permutation(len(self))[:n]
        return SliceBank(self.clean[index], self.mask[index], [self.subject[i] for i in index])

    def patches(self, count: int, size: int, rng: np.random.RandomState) -> torch.Tensor:
        """``count`` clean ``size`` x ``size`` patches ``(count, 1, size, size)``, each centred on a head voxel."""
        h, w = self.clean.shape[-2:]
        if size > min(h, w):
            raise ValueError(f"patch size {size} is larger than the slices ({h} x {w})")
        out = torch.empty(count, 1, size, size)
        for i in range(count):
            k = rng.randint(len(self))
            ys, xs = torch.nonzero(self.mask[k, 0], as_tuple=True)
            j = rng.randint(len(ys))
            top = int(min(max(ys[j] - size // 2, 0), h - size))
            left = int(min(max(xs[j] - size // 2, 0), w - size))
            out[i] = self.clean[k, :, top:top + size, left:left + size]
        return out


def noise_degradation(noises: Sequence[str] = ("rician", "gaussian"),
                      level_range: Sequence[float] = (0.02, 0.16)) -> Degradation:
    """Noise of a model drawn from ``noises`` and a level drawn uniformly from ``level_range`` per patch;
    the weight is ``1 / level**2`` (see the module docstring)."""
    low, high = (float(v) for v in level_range)
    if not 0 < low <= high:
        raise ValueError(f"level_range must satisfy 0 < low <= high, got {tuple(level_range)}")
    noisers = [MRINoise(noise) for noise in noises]

    def degrade(clean: torch.Tensor, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
        noisy, weight = torch.empty_like(clean), torch.empty(len(clean))
        for i in range(len(clean)):
            noiser = noisers[rng.randint(len(noisers))]
            level = rng.uniform(low, high)
            noiser.set_random_state(int(rng.randint(2**31)))
            noisy[i] = noiser(clean[i], level=level)
            weight[i] = 1.0 / level**2
        return noisy, weight

    return degrade


def perona_malik_degradation(num_iter: int = 4, kappa: float = 0.1, noise_sigma: float = 0.0) -> Degradation:
    """The paper's forward model: ``num_iter`` Perona-Malik steps, then Gaussian noise of ``noise_sigma``."""
    diffuse = PeronaMalik(2, num_iter=num_iter, kappa=kappa)

    def degrade(clean: torch.Tensor, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            out = diffuse(clean)
        if noise_sigma > 0:
            out = out + noise_sigma * torch.as_tensor(rng.standard_normal(out.shape), dtype=out.dtype)
        return out, torch.ones(len(clean))

    return degrade


def train_network(net: torch.nn.Module, bank: SliceBank, degrade: Degradation, steps: int, batch_size: int = 16,
                  patch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str | torch.device = "cpu",
                  desc: str = "training", log_every: int = 10,
                  on_log: Callable[[int, float], None] | None = None) -> dict:
    """Adam with a cosine learning-rate schedule for ``steps`` steps of ``batch_size`` patches.

    Returns ``{"steps", "seconds", "final_loss"}``; ``on_log(step, loss)`` gets the mean weighted MSE of the last
    ``log_every`` steps (e.g. to log it to MLflow). Raises ``FloatingPointError`` if the loss stops being finite.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    set_determinism(seed)
    rng = np.random.RandomState(seed)
    net.to(device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    start, recent = time.perf_counter(), []
    progress = tqdm(range(1, steps + 1), desc=desc, unit="step", mininterval=5)
    for step in progress:
        clean = bank.patches(batch_size, patch_size, rng)
        noisy, weight = degrade(clean, rng)
        clean, noisy, weight = clean.to(device), noisy.to(device), weight.to(device)
        optimiser.zero_grad()
        error = (net(noisy) - clean).pow(2).flatten(1).mean(1)
        loss = (error * weight).sum() / weight.sum()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{desc}: the loss became {loss.item()} at step {step}")
        loss.backward()
        optimiser.step()
        schedule.step()
        recent.append(loss.item())
        if step % log_every == 0 or step == steps:
            mean = float(np.mean(recent))
            progress.set_postfix(loss=f"{mean:.3g}")
            if on_log:
                on_log(step, mean)
            recent = []
    set_determinism(None)
    return {"steps": steps, "seconds": time.perf_counter() - start, "final_loss": mean}
