"""Data manifests: MONAI Decathlon-format datalists of clean volumes, split by subject.

A manifest looks like::

    {"name": "ixi_t1", "description": "...", "data_root": "../../shared/data/ixi_t1", "seed": 0,
     "training": [{"label": "IXI002-HH-1_T1.nii.gz", "subject": "IXI002"}, ...],
     "validation": [...], "test": [...]}

Each entry names a clean volume as ``label`` (a NIfTI/MHA/MHD file or a DICOM series folder, relative to
``data_root``); the noisy ``image`` is synthesised later by :mod:`pipeline.transforms`. Splits are made by subject so
that no subject's anatomy leaks from training into validation or test.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

__all__ = [
    "DEFAULT_SUBJECT_PATTERN",
    "SPLITS",
    "build_manifest",
    "find_volumes",
    "load_manifest",
    "subject_id",
    "write_manifest",
]

DEFAULT_SUBJECT_PATTERN = r"^(IXI\d+)"
SPLITS = ("training", "validation", "test")
DATA_ROOT_ENV = "PIPELINE_DATA_ROOT"

# Longest first, so that "x.nii.gz" loses ".nii.gz" and not only ".gz".
_VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd")
_STRIP_EXTENSIONS = (*_VOLUME_EXTENSIONS, ".dcm")


def subject_id(path: str | os.PathLike, pattern: str = DEFAULT_SUBJECT_PATTERN) -> str:
    """Subject of a volume file or DICOM series folder.

    ``pattern`` is searched in the file (or folder) name, then in its parent folder names, nearest first (so
    ``IXI002/t1_series/`` belongs to ``IXI002``); its first group (or whole match) is the subject. Without a match
    the subject is the file name without its volume extension (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``, ``.dcm``),
    or the folder name for a series folder. Pass paths relative to the data root, so that folders above it play no
    part.
    """
    path = Path(path)
    regex = re.compile(pattern)
    for part in reversed(path.parts):
        match = regex.search(part)
        if match:
            return match.group(1) if regex.groups else match.group(0)
    return volume_stem(path, _STRIP_EXTENSIONS)


def volume_stem(path: str | os.PathLike, extensions=_VOLUME_EXTENSIONS) -> str:
    """The file name without its volume extension (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``); a folder's name."""
    name = Path(path).name
    for ext in extensions:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file with the DICOM Part 10 preamble ("DICM" at byte 128)."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _mhd_has_data(path: Path) -> bool:
    """True when a MetaImage header's pixel data exist (``ElementDataFile = LOCAL`` or an existing file)."""
    try:
        header = path.read_text(errors="replace")
    except OSError:
        return False
    match = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, flags=re.MULTILINE)
    if match is None:
        return False
    data_file = match.group(1)
    return data_file == "LOCAL" or (path.parent / data_file).is_file()


def find_volumes(data_root: str | os.PathLike) -> list[str]:
    """All volumes under ``data_root``, as sorted POSIX paths relative to it.

    A volume is a NIfTI file (``.nii``, ``.nii.gz``), a MetaImage file (``.mha``, or ``.mhd`` whose pixel data file
    exists), or a DICOM series folder (a folder holding ``.dcm`` files or files with the DICOM preamble). Hidden
    files and folders are ignored.

    Raises:
        FileNotFoundError: ``data_root`` is not a folder.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    volumes = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        folder = Path(folder)
        rel_folder = folder.relative_to(root)
        has_dicom = False
        for name in filenames:
            if name.startswith("."):
                continue
            lower = name.lower()
            path = folder / name
            if lower.endswith(_VOLUME_EXTENSIONS):
                if lower.endswith(".mhd") and not _mhd_has_data(path):
                    warnings.warn(f"skipping {path}: its pixel data file (ElementDataFile) is missing", stacklevel=2)
                    continue
                volumes.append((rel_folder / name).as_posix())
            elif not has_dicom and not lower.endswith((".raw", ".zraw", ".gz", ".json", ".txt")):
                has_dicom = _is_dicom_file(path)
        if has_dicom:
            if folder == root:
                # The root itself is a series: "." resolves to data_root when loaded.
                volumes.append(".")
            else:
                volumes.append(rel_folder.as_posix())
    return sorted(volumes)


def _check_fractions(fractions) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers (training, validation, test), got {fractions}")
    if any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be non-negative, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions):g})")
    return fractions


def build_manifest(
    data_root: str | os.PathLike,
    fractions=(0.7, 0.15, 0.15),
    seed: int = 0,
    pattern: str = DEFAULT_SUBJECT_PATTERN,
    name: str | None = None,
) -> dict:
    """Find the volumes under ``data_root`` and split them by subject into training/validation/test.

    The sorted subject ids are shuffled with ``numpy.random.default_rng(seed)``; the first
    ``round(fractions[0] * n)`` subjects go to training, the next ``round(fractions[1] * n)`` to validation and
    the rest to test. Every file of a subject lands in the same split.

    Returns:
        a Decathlon-format dict: ``name``, ``description``, ``data_root`` (as given), ``seed``, ``fractions``,
        ``subject_pattern`` and the three splits, each a list of ``{"label": <relative path>, "subject": <id>}``.

    Raises:
        FileNotFoundError: ``data_root`` is missing. ValueError: no volumes in it, or bad ``fractions``.
    """
    fractions = _check_fractions(fractions)
    volumes = find_volumes(data_root)
    if not volumes:
        raise ValueError(
            f"no volumes (.nii, .nii.gz, .mha, .mhd or DICOM series folders) found in {data_root}"
        )
    by_subject: dict[str, list[str]] = {}
    for rel in volumes:
        # A data root that is itself one DICOM series is listed as "."; its subject comes from the folder name.
        named = rel if rel != "." else Path(os.path.abspath(data_root)).name
        by_subject.setdefault(subject_id(named, pattern), []).append(rel)

    subjects = sorted(by_subject)
    order = np.random.default_rng(seed).permutation(len(subjects))
    shuffled = [subjects[i] for i in order]
    n_train = int(round(fractions[0] * len(subjects)))
    n_val = min(int(round(fractions[1] * len(subjects))), len(subjects) - n_train)
    groups = {
        "training": shuffled[:n_train],
        "validation": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }
    manifest = {
        "name": name or Path(os.path.abspath(data_root)).name,
        "description": (
            "Clean volumes ('label') split by subject; the noisy 'image' is synthesised by pipeline.transforms."
        ),
        "data_root": str(data_root),
        "seed": int(seed),
        "fractions": list(fractions),
        "subject_pattern": pattern,
    }
    for split in SPLITS:
        manifest[split] = [
            {"label": rel, "subject": subject} for subject in sorted(groups[split]) for rel in by_subject[subject]
        ]
    return manifest


def write_manifest(manifest: dict, path: str | os.PathLike) -> Path:
    """Write ``manifest`` as JSON to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_manifest(
    manifest_path: str | os.PathLike, split: str, data_root: str | os.PathLike | None = None
) -> list[dict]:
    """Entries of one split with absolute ``label`` paths, ready for ``LoadImaged``.

    The data root is, in order: the ``data_root`` argument, the environment variable ``PIPELINE_DATA_ROOT``, or
    the manifest's ``data_root`` field taken relative to the manifest's folder.

    Raises:
        FileNotFoundError: the manifest is missing, or any listed volume is missing (all of them are named).
        ValueError: ``split`` is not one of training/validation/test or is absent from the manifest.
    """
    manifest_path = Path(manifest_path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest_path}")
    with open(manifest_path) as f:
        manifest = json.load(f)
    if split not in manifest:
        raise ValueError(f"manifest {manifest_path} has no {split!r} split")

    if data_root is not None:
        root, source = Path(data_root), "data_root argument"
    elif os.environ.get(DATA_ROOT_ENV):
        root, source = Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    else:
        root, source = manifest_path.parent / manifest.get("data_root", "."), "manifest data_root"

    if not manifest[split]:
        return []
    entries = load_decathlon_datalist(manifest_path, is_segmentation=True, data_list_key=split, base_dir=root)
    # MONAI also turns any other value that happens to name an existing path (a subject folder "IXI002") into a
    # path; only the volume keys are paths here, so keep the rest as written.
    for entry, raw in zip(entries, manifest[split]):
        entry.update({k: v for k, v in raw.items() if k not in ("image", "label")})
    missing = [e["label"] for e in entries if not os.path.exists(e["label"])]
    if missing:
        shown = "\n  ".join(str(m) for m in missing)
        raise FileNotFoundError(
            f"manifest {manifest_path} ({split}): {len(missing)} of {len(entries)} volume(s) not found under data "
            f"root {root} (from {source}; set {DATA_ROOT_ENV} or pass data_root to point elsewhere):\n  {shown}"
        )
    return entries
