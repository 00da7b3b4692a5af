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
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist

from pipeline.atomic_write import write_text_atomic

__all__ = [
    "DEFAULT_SUBJECT_PATTERN",
    "SPLITS",
    "Problem",
    "build_manifest",
    "find_volumes",
    "load_manifest",
    "manifest_data_root",
    "manifest_entries",
    "manifest_problems",
    "read_manifest",
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
    """Write ``manifest`` as JSON to ``path`` atomically (see :func:`pipeline.atomic_write.write_text_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class Problem:
    """One finding about a manifest.

    ``level`` is ``"error"`` or ``"warning"``; ``where`` names the entry (``training[3] label='x.nii.gz'``), subject
    or ``volumes``; ``kind`` is one of ``bad_entry``, ``missing``, ``outside_root``, ``duplicate``,
    ``subject_overlap``, ``unreadable``, ``inconsistent``.
    """

    level: str
    kind: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


# The keys whose values MONAI's load_decathlon_datalist joins to the data root.
_PATH_KEYS = ("image", "label")


def read_manifest(manifest_path: str | os.PathLike) -> dict:
    """The manifest's JSON. Raises FileNotFoundError (missing) or ValueError (not a JSON object), naming the file."""
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest_path}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"manifest {manifest_path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"manifest {manifest_path} is not a JSON object")
    return manifest


def manifest_data_root(
    manifest_path: str | os.PathLike, manifest: dict, data_root: str | os.PathLike | None = None
) -> tuple[Path, str]:
    """``(root, source)``: the ``data_root`` argument, else ``$PIPELINE_DATA_ROOT``, else the manifest's
    ``data_root`` field relative to the manifest's folder; ``source`` says which."""
    if data_root is not None:
        return Path(data_root), "data_root argument"
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV]), f"${DATA_ROOT_ENV}"
    return Path(manifest_path).parent / manifest.get("data_root", "."), "manifest data_root"


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def manifest_entries(manifest: dict, root: str | os.PathLike):
    """Yield ``(split, where, key, full_path)`` for every path value of every entry, joined to ``root`` as MONAI
    does; entries without a ``label`` path yield ``key=None``."""
    for split in SPLITS:
        entries = manifest.get(split) or []
        for i, entry in enumerate(entries if isinstance(entries, list) else [entries]):
            if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
                yield split, f"{split}[{i}]", None, None
                continue
            for key in _PATH_KEYS:
                if isinstance(entry.get(key), str):
                    full = os.path.normpath(os.path.join(root, entry[key]))
                    yield split, f"{split}[{i}] {key}={entry[key]!r}", key, full


def manifest_problems(
    manifest: dict, root: str | os.PathLike, splits=SPLITS, allow_outside_root: bool = False
) -> list[Problem]:
    """Problems found without opening any volume, all of them, as errors.

    For the entries of ``splits``: a path that does not exist, or (unless ``allow_outside_root``) one that leaves
    ``root`` (absolute, through ``..``, or through a symlink). Over the whole manifest: an entry without a
    ``label`` path, a file listed twice (also through another spelling or a symlink), and a ``subject`` listed in
    more than one split.
    """
    problems = []
    root_abs, root_real = os.path.abspath(root), os.path.realpath(root)
    first_seen: dict[str, str] = {}
    for split, where, key, full in manifest_entries(manifest, root):
        if key is None:
            problems.append(Problem("error", "bad_entry", where, "entry is not an object with a 'label' path"))
            continue
        real = os.path.realpath(full)
        if real in first_seen:
            problems.append(Problem("error", "duplicate", where, f"same file as {first_seen[real]} ({real})"))
        first_seen.setdefault(real, where)
        if split not in splits:
            continue
        if not allow_outside_root:
            if not _inside(root_abs, os.path.abspath(full)):
                problems.append(Problem("error", "outside_root", where, f"{full} is outside the data root {root_abs}"))
            elif not _inside(root_real, real):
                problems.append(
                    Problem("error", "outside_root", where, f"symlink resolves to {real}, outside the data root")
                )
        if not os.path.exists(full):
            problems.append(Problem("error", "missing", where, f"not found: {full}"))

    subject_splits: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        entries = manifest.get(split)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict) and "subject" in entry:
                subject_splits.setdefault(str(entry["subject"]), {}).setdefault(split, f"{split}[{i}]")
    for subject, found in subject_splits.items():
        if len(found) > 1:
            problems.append(
                Problem("error", "subject_overlap", f"subject {subject!r}", f"in {len(found)} splits: "
                        + ", ".join(found.values()))
            )
    return problems


def load_manifest(
    manifest_path: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None = None,
    *,
    allow_outside_root: bool = False,
) -> list[dict]:
    """Entries of one split with absolute ``label`` paths, ready for ``LoadImaged``.

    The data root is, in order: the ``data_root`` argument, the environment variable ``PIPELINE_DATA_ROOT``, or
    the manifest's ``data_root`` field taken relative to the manifest's folder.

    The manifest is refused when :func:`manifest_problems` finds anything: a missing volume or one outside the
    data root (in this split; ``allow_outside_root=True`` accepts the latter), a file listed twice or a subject in
    two splits (anywhere). Only paths are checked, no volume is opened; ``python -m pipeline data validate`` also
    reads the headers.

    Raises:
        FileNotFoundError: the manifest is missing, or the only problems are missing volumes (all are named).
        ValueError: ``split`` is not one of training/validation/test or is absent from the manifest, or any other
            problem (all are named, with the manifest file and the entry).
    """
    manifest_path = Path(manifest_path)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = read_manifest(manifest_path)
    if split not in manifest:
        raise ValueError(f"manifest {manifest_path} has no {split!r} split")
    root, source = manifest_data_root(manifest_path, manifest, data_root)

    problems = manifest_problems(manifest, root, splits=(split,), allow_outside_root=allow_outside_root)
    if problems:
        n_missing = sum(p.kind == "missing" for p in problems)
        lines = [f"manifest {manifest_path} ({split}; data root {root} from {source}): {len(problems)} problem(s)"]
        if n_missing:
            lines[0] += (
                f"; {n_missing} of {len(manifest[split])} volume(s) not found (set {DATA_ROOT_ENV} or pass "
                "data_root to point elsewhere)"
            )
        if any(p.kind == "outside_root" for p in problems):
            lines[0] += "; pass allow_outside_root=True to accept paths outside the data root"
        lines += [f"  {p.where}: {p.message}" for p in problems]
        error = FileNotFoundError if n_missing == len(problems) else ValueError
        raise error("\n".join(lines))

    if not manifest[split]:
        return []
    entries = load_decathlon_datalist(manifest_path, is_segmentation=True, data_list_key=split, base_dir=root)
    # MONAI also turns any other value that happens to name an existing path (a subject folder "IXI002") into a
    # path; only the volume keys are paths here, so keep the rest as written.
    for entry, raw in zip(entries, manifest[split]):
        entry.update({k: v for k, v in raw.items() if k not in ("image", "label")})
    return entries
