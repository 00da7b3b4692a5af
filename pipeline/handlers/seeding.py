"""Per-epoch seeding, so that a training resumed from an epoch checkpoint draws the same data as one never stopped."""

from __future__ import annotations

import ignite.distributed as idist
import numpy as np
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from monai.utils import set_determinism


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed that depends only on ``(seed, epoch, rank)``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeed:
    """At the start of every epoch, seeds Python, NumPy and PyTorch (MONAI's ``set_determinism``, which drives the
    data loader's shuffling) and the random transforms of the engine's dataset (MONAI's ``set_rnd``) from
    ``(seed, epoch, rank)``.

    Epoch ``k`` then sees the same patches, noise and order whether the run started at epoch 1 or was resumed from the
    checkpoint of epoch ``k - 1`` (the random states themselves are not in the checkpoint).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = epoch_seed(self.seed, engine.state.epoch, idist.get_rank())
        set_determinism(seed=seed)
        dataloader = engine.state.dataloader
        dataset = getattr(dataloader, "dataset", None)
        if dataset is not None:
            set_rnd(getattr(dataset, "transform", dataset), seed)
