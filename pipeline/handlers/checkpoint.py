"""Checkpoint handlers that are safe against a killed process and against untrusted files.

* :class:`SafeCheckpointSaver` is MONAI's ``CheckpointSaver`` with atomic writes: each file is written to a temporary
  file in the same folder and renamed over the target (``os.replace``), and a checkpoint that is rotated out is
  deleted only after its successor is complete. MONAI's own saver writes in place (``atomic=False``) and ignite deletes
  the old file before writing the new one, so a kill at the wrong moment could leave no complete checkpoint.
* :class:`SafeCheckpointLoader` is MONAI's ``CheckpointLoader`` (which loads with ``torch.load(weights_only=True)``)
  with a clear error naming the file when a checkpoint holds anything but tensors and plain containers (a pickle
  that could run code) or is damaged; :func:`load_checkpoint` is the same for code that loads weights directly.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` with ``atomic=True`` (temporary file + rename), an optional fixed file name (as MONAI's
    saver has for ``model.pt``), and removals deferred until the next save has succeeded."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._stale: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        for old in self._stale:
            if old != filename and (self.dirname / old).exists():
                super().remove(old)
        self._stale = []

    def remove(self, filename: str) -> None:
        self._stale.append(self.filename or filename)  # deleted after the next successful save


class SafeCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are written atomically; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:  # keep the fixed file name (model.pt) of MONAI's saver
                fixed_name = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed_name)


def refusal_message(path, err: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` refused a file, in one line that names the file."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if "unsupported" in line.lower()), lines[0] if lines else type(err).__name__)
    return (f"refused to load checkpoint {path}: it contains Python objects other than tensors and plain containers, "
            f"which could run code when unpickled; only weights-only checkpoints are loaded ({reason})")


def _clear_error(path, err: BaseException) -> Exception | None:
    """The error to raise instead of ``err`` from loading ``path``, or None to keep ``err``."""
    if isinstance(err, pickle.UnpicklingError):
        return pickle.UnpicklingError(refusal_message(path, err))
    if isinstance(err, EOFError) or "PytorchStreamReader" in str(err):
        return RuntimeError(f"checkpoint {path} is damaged or not a PyTorch file: {err}")
    return None


def load_checkpoint(path, map_location=None):
    """``torch.load(path, weights_only=True)`` with the errors of :class:`SafeCheckpointLoader`: for the project's
    Python code that loads a checkpoint outside an engine."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
        clear = _clear_error(path, err)
        if clear is None:
            raise
        raise clear from None


class SafeCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (same arguments, ``weights_only=True``) with an error that names the file when
    the checkpoint is refused as unsafe or cannot be read."""

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except (pickle.UnpicklingError, EOFError, RuntimeError) as err:
            clear = _clear_error(self.load_path, err)
            if clear is None:
                raise
            raise clear from None


def load_weights(network: torch.nn.Module, path: str) -> None:
    """Load a state dict (or a checkpoint holding one under ``"model"``) with ``weights_only=True`` into
    ``network``; clear errors for a missing file or weights of another network."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    state = load_checkpoint(path, map_location="cpu")
    try:
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except (RuntimeError, AttributeError, TypeError) as err:
        raise ValueError(f"checkpoint {path} does not hold weights of this network: {err}") from None
