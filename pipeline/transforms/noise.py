"""Synthetic MRI noise: Rician (magnitude images) and Gaussian, with the level a fraction of a reference intensity.

Noise model (Gudbjartsson & Patz 1995): a magnitude image of true intensity ``A`` measured with complex Gaussian
noise of standard deviation ``sigma`` per channel is ``sqrt((A + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma^2)``; its
mean is the Rice mean ``sigma*sqrt(pi/2)*L_{1/2}(-A^2 / (2 sigma^2))`` (Rayleigh ``sigma*sqrt(pi/2)`` where A = 0).
The Gaussian model is ``A + n1``. Here ``sigma = level * reference``: data are normalised so the reference intensity
(robust head maximum, see :mod:`pipeline.transforms.intensity`) is 1.0, so ``level`` is a fraction of it — never of
the dtype range. The sampling itself is MONAI's ``RandRicianNoise`` / ``RandGaussianNoise`` driven with an exact
sigma (``prob=1, sample_std=False, relative=False``).

Three transforms:

- :class:`MRINoise` — array transform ``(C, *spatial) -> (C, *spatial)`` with a fixed level.
- :class:`RandMRINoised` — training: a level drawn uniformly per call, ``{"label"} -> {"image", "label"}``.
- :class:`MRINoised` — evaluation: a fixed level, noise seeded from ``seed`` and the volume's file name, so every
  method sees bit-identical noisy volumes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import PurePath

import numpy as np
import torch

from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    MapTransform,
    RandGaussianNoise,
    Randomizable,
    RandomizableTransform,
    RandRicianNoise,
    Transform,
)
from monai.utils import TransformBackends, convert_to_numpy, convert_to_tensor

__all__ = ["NOISE_MODELS", "MRINoise", "MRINoised", "RandMRINoised"]

NOISE_MODELS = ("rician", "gaussian")


def _check_noise(noise: str) -> str:
    if noise not in NOISE_MODELS:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}.")
    return noise


def _check_level(level: float, name: str = "level") -> float:
    level = float(level)
    if not (np.isfinite(level) and level >= 0):
        raise ValueError(f"{name} must be a finite fraction of the reference intensity >= 0, got {level}.")
    return level


def _check_reference(reference: float) -> float:
    reference = float(reference)
    if not (np.isfinite(reference) and reference > 0):
        raise ValueError(f"reference must be a finite intensity > 0, got {reference}.")
    return reference


class MRINoise(Randomizable, Transform):
    """Add Rician or Gaussian noise of standard deviation ``sigma = level * reference``.

    Args:
        noise: ``"rician"`` (magnitude MRI) or ``"gaussian"``.
        level: noise standard deviation as a fraction of ``reference`` (>= 0; 0 gives |x| for Rician, x for
            Gaussian).
        reference: the reference intensity of the data; 1.0 for data scaled by ``ScaleToReference``.

    ``__call__(img, level=None)``: ``img`` channel-first ``(C, *spatial)``; ``level`` overrides the constructor's
    for this call. Returns a new float32 tensor of the same shape (MetaTensor metadata, e.g. the affine, kept);
    the input is not modified. Randomness comes from ``self.R``: seed it with ``set_random_state``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, noise: str = "rician", level: float = 0.05, reference: float = 1.0) -> None:
        self.noise = _check_noise(noise)
        self.level = _check_level(level)
        self.reference = _check_reference(reference)
        if self.noise == "rician":
            self._noiser: RandomizableTransform = RandRicianNoise(
                prob=1.0, mean=0.0, std=self.sigma, channel_wise=False, relative=False, sample_std=False
            )
        else:
            self._noiser = RandGaussianNoise(prob=1.0, mean=0.0, std=self.sigma, sample_std=False)
        self._noiser.set_random_state(state=self.R)

    @property
    def sigma(self) -> float:
        """Absolute noise standard deviation, in the image's intensity units."""
        return self.level * self.reference

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MRINoise:
        super().set_random_state(seed, state)
        self._noiser.set_random_state(state=self.R)  # one generator for the whole transform
        return self

    def randomize(self, data=None) -> None:
        """The noise field is drawn in ``__call__`` (by the MONAI transform sharing ``self.R``)."""

    def __call__(self, img: NdarrayOrTensor, level: float | None = None) -> torch.Tensor:
        sigma = self.sigma if level is None else _check_level(level) * self.reference
        self._noiser.std = float(sigma)
        img = convert_to_tensor(img, dtype=torch.float32, track_meta=get_track_meta())
        return self._noiser(img).to(torch.float32)


class RandMRINoised(RandomizableTransform, MapTransform):
    """Training noise: ``data[target_key] = noisy copy of data[source_key]`` at a level drawn per call.

    Args:
        source_key: clean image key (``"label"``), channel-first ``(C, *spatial)``, normalised to ``reference``.
        target_key: where the noisy image goes (``"image"``); the source is left untouched.
        noise: ``"rician"``, ``"gaussian"``, or a list of them: the model is then drawn per call.
        level_range: ``(low, high)``, 0 <= low <= high; the level (fraction of ``reference``) is drawn uniformly.
        prob: probability of adding noise; otherwise the target is a clean copy and the level recorded is 0.
        reference: reference intensity of the data (1.0 after ``ScaleToReferenced``).
        level_key: where the level used is stored (a float), e.g. for logging or noise-aware models.

    Seed with ``set_random_state(seed)``; MONAI's ``DataLoader`` does so per worker, which makes training
    noise reproducible under ``monai.utils.set_determinism``.
    """

    backend = MRINoise.backend

    def __init__(
        self,
        source_key: str = "label",
        target_key: str = "image",
        noise: str | Sequence[str] = "rician",
        level_range: Sequence[float] = (0.03, 0.15),
        prob: float = 1.0,
        reference: float = 1.0,
        level_key: str = "noise_level",
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, source_key, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if len(level_range) != 2:
            raise ValueError(f"level_range must be (low, high), got {level_range}.")
        low, high = (_check_level(v, "level_range values") for v in level_range)
        if low > high:
            raise ValueError(f"level_range must be ordered (low <= high), got {tuple(level_range)}.")
        self.level_range = (low, high)
        self.source_key, self.target_key, self.level_key = source_key, target_key, level_key
        noises = [noise] if isinstance(noise, str) else list(noise)
        if not noises:
            raise ValueError("noise must name at least one noise model.")
        self.noisers = [MRINoise(n, level=low, reference=reference) for n in noises]
        self.noiser = self.noisers[0]
        for noiser in self.noisers:
            noiser.set_random_state(state=self.R)
        self._level = 0.0

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandMRINoised:
        super().set_random_state(seed, state)
        for noiser in self.noisers:
            noiser.set_random_state(state=self.R)
        return self

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._level = float(self.R.uniform(*self.level_range)) if self._do_transform else 0.0
        if len(self.noisers) > 1:  # a single model draws nothing more, so its noise stays as it was
            self.noiser = self.noisers[self.R.randint(len(self.noisers))]

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize()
            if self._do_transform:
                d[self.target_key] = self.noiser(d[key], level=self._level)
            else:
                d[self.target_key] = convert_to_tensor(d[key], dtype=torch.float32, track_meta=get_track_meta()).clone()
            d[self.level_key] = self._level
        return d


class MRINoised(MapTransform):
    """Evaluation noise: a fixed level, and noise that depends only on ``seed`` and the volume.

    Every call re-seeds from ``seed`` combined (SHA-256, not Python's randomised ``hash``) with the volume's
    identity: the file name (not the directory, so results do not depend on where the data lives) of
    ``data[source_key].meta["filename_or_obj"]``, or, without one, a hash of the image content. Hence two calls on
    one volume are bit-identical, every method is evaluated on identical noisy inputs, and different volumes get
    different noise. Add the noise to whole volumes *before* slicing or patching: slices of one file share its
    name and would get the same noise field. Not a ``Randomizable``: MONAI's ``CacheDataset`` may cache its output,
    and it holds no mutable random state (safe with threaded caching).

    Args:
        source_key, target_key, noise, reference: as in :class:`RandMRINoised`.
        level: fixed level, fraction of ``reference`` (>= 0).
        seed: base seed of the evaluation.
        level_key: where the level is stored (a float).
    """

    backend = MRINoise.backend

    def __init__(
        self,
        source_key: str = "label",
        target_key: str = "image",
        noise: str = "rician",
        level: float = 0.05,
        seed: int = 0,
        reference: float = 1.0,
        level_key: str = "noise_level",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(source_key, allow_missing_keys)
        self.noise = _check_noise(noise)
        self.level = _check_level(level)
        self.reference = _check_reference(reference)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}.")
        self.seed = int(seed)
        self.source_key, self.target_key, self.level_key = source_key, target_key, level_key

    def volume_seed(self, img: NdarrayOrTensor) -> int:
        """The seed used for ``img``: SHA-256 of the base seed and the volume's file name (or content)."""
        name = getattr(img, "meta", {}).get("filename_or_obj") if isinstance(img, torch.Tensor) else None
        if isinstance(name, (str, PurePath)) and str(name):
            identity = "name:" + PurePath(str(name)).name
        else:
            arr = np.ascontiguousarray(convert_to_numpy(img, dtype=np.float32))
            identity = f"content:{arr.shape}:" + hashlib.sha256(arr.tobytes()).hexdigest()
        digest = hashlib.sha256(f"{self.seed}|{identity}".encode()).digest()
        return int.from_bytes(digest[:4], "little")  # numpy RandomState seeds are < 2**32

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            noiser = MRINoise(self.noise, self.level, self.reference).set_random_state(self.volume_seed(d[key]))
            d[self.target_key] = noiser(d[key])
            d[self.level_key] = self.level
        return d
