"""Checkpoint handlers for resuming a training: they include the engine they are attached to under ``"trainer"``.

Resuming needs the trainer's own state (epoch, iteration) saved and restored with the network, optimizer and
scheduler. A bundle config cannot reference ``train#trainer`` from inside ``train#handlers`` (a circular
reference), so these subclasses of MONAI's handlers add the engine when they are attached.
"""

from __future__ import annotations

import re
from pathlib import Path

from ignite.engine import Engine
from ignite.handlers import Checkpoint
from torch.optim.lr_scheduler import CosineAnnealingLR

from pipeline.handlers.checkpoint import SafeCheckpointLoader, SafeCheckpointSaver

EPOCH_FILE = re.compile(r"checkpoint_epoch=(\d+)\.pt$")


def epoch_checkpoints(folder) -> list[tuple[int, Path]]:
    """The ``*checkpoint_epoch=N.pt`` files of ``folder`` as ``(N, path)``, oldest epoch first."""
    return sorted((int(m.group(1)), p) for p in Path(folder).glob("*checkpoint_epoch=*.pt")
                  if (m := EPOCH_FILE.search(p.name)))


class ResumeCheckpointLoader(SafeCheckpointLoader):
    """MONAI's ``CheckpointLoader`` (weights only, see :class:`SafeCheckpointLoader`) that also restores the engine's
    state (epoch, iteration) from ``"trainer"``.

    A training resumed with more epochs than it was started with stretches a cosine schedule (``"lr_scheduler"``)
    to the new end, instead of continuing at the old schedule's final (zero) learning rate.
    """

    def attach(self, engine: Engine) -> None:
        self.load_dict["trainer"] = engine
        super().attach(engine)

    def __call__(self, engine: Engine) -> None:
        super().__call__(engine)
        scheduler = self.load_dict.get("lr_scheduler")
        if isinstance(scheduler, CosineAnnealingLR) and scheduler.T_max != engine.state.max_epochs:
            scheduler.T_max = engine.state.max_epochs
            for group, lr in zip(scheduler.optimizer.param_groups, scheduler._get_closed_form_lr()):
                group["lr"] = lr
            self.logger.info(f"cosine learning-rate schedule stretched to {scheduler.T_max} epochs")


class ResumeCheckpointSaver(SafeCheckpointSaver):
    """MONAI's ``CheckpointSaver`` (atomic writes, see :class:`SafeCheckpointSaver`) that also saves the engine's
    state under ``"trainer"``, and counts the epoch checkpoints already in ``save_dir`` (from before a resume) when it
    keeps only the newest ``n_saved``."""

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine  # the ignite Checkpoint objects hold this same dict
        if self._interval_checkpoint is not None:
            self._interval_checkpoint._saved = [Checkpoint.Item(epoch, path.name)
                                                for epoch, path in epoch_checkpoints(self.save_dir)]
        super().attach(engine)
