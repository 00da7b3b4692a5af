"""Outputs written whole or not at all: a hidden temporary file in the target's folder, renamed over the target
(``os.replace``) only once it is complete, so an interrupted run never leaves a half-written file that looks done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = ".tmp") -> Path:
    """``write(tmp)`` writes a hidden temporary file in ``path``'s folder (``.<name>.<random><suffix>``: give the
    suffix a writer picks its format from, e.g. ``.nii.gz`` or ``.png``), which is then renamed over ``path``; a
    failed write leaves no temporary file behind. Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of the output folder
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` as UTF-8 (line endings as given), atomically; returns ``path``."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(text)

    return write_atomic(path, write)
