"""Development proxies for scans unlike IXI (2 mm, full head, one Philips scanner), written as volumes and a manifest
that ``python -m pipeline compare`` reads like the IXI one.

- ``mni152_1mm``: nilearn's ICBM152 2009a T1 template (1 mm, skull-stripped, an average of many subjects, so smooth
  and nearly noise-free). There is one such volume: the manifest lists it twice, as the validation subject
  ``MNI152-tuning`` (the classical filters are tuned on it, under another noise seed) and as the test subject
  ``MNI152``. Perona–Malik is thus tuned on the very anatomy it is scored on: its best case.
- ``<name>_1mm``: the first validation and test subjects of a manifest (IXI) resampled to 1 mm (trilinear, with
  MONAI's ``Spacing``): the same anatomy, twice as many voxels across every structure.

``python -m pipeline data proxies --out outputs/proxies`` writes both; ``configs/proxy_*.yaml`` compare on them.
"""

from __future__ import annotations

import os
import shutil
from importlib import util as importlib_util
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import Compose, LoadImage, Spacing

from pipeline.atomic_write import write_atomic
from pipeline.data.manifest import load_manifest, write_manifest

MNI_TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def mni_template_path() -> Path:
    """The ICBM152 T1 template shipped inside the nilearn package (no download)."""
    spec = importlib_util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise ImportError("the MNI proxy needs nilearn, which ships the ICBM152 template: pip install nilearn")
    path = Path(spec.origin).parent / "datasets" / "data" / MNI_TEMPLATE
    if not path.is_file():
        raise FileNotFoundError(f"nilearn is installed but its template is missing: {path}")
    return path


def _manifest(name: str, description: str, validation: list[dict], test: list[dict]) -> dict:
    """A manifest whose volumes sit beside it; entries are ``{"label": file name, "subject": id}``."""
    return {"name": name, "description": description, "data_root": ".", "training": [],
            "validation": validation, "test": test}


def write_mni_proxy(out_dir: str | os.PathLike) -> Path:
    """Copy the MNI template into ``out_dir/mni152_1mm`` (as a tuning and a test subject); the manifest's path."""
    folder = Path(out_dir) / "mni152_1mm"
    folder.mkdir(parents=True, exist_ok=True)
    template = mni_template_path()
    for name in ("MNI152-tuning.nii.gz", "MNI152.nii.gz"):
        write_atomic(folder / name, lambda tmp: shutil.copyfile(template, tmp))
    manifest = _manifest("mni152_1mm", "nilearn's ICBM152 2009a T1 template, 1 mm, skull-stripped; the same volume "
                         "is the tuning (validation) and the test subject",
                         [{"label": "MNI152-tuning.nii.gz", "subject": "MNI152-tuning"}],
                         [{"label": "MNI152.nii.gz", "subject": "MNI152"}])
    return write_manifest(manifest, folder / "manifest.json")


def resample_volume(src: str | os.PathLike, dst: str | os.PathLike, spacing: float) -> tuple[int, ...]:
    """Resample ``src`` to isotropic ``spacing`` mm (trilinear) and save float32 NIfTI at ``dst`` (atomically);
    returns the new shape."""
    volume = Compose([LoadImage(image_only=True, ensure_channel_first=True),
                      Spacing(pixdim=(spacing,) * 3, mode="bilinear")])(str(src))
    image = nib.Nifti1Image(np.asarray(volume[0], dtype=np.float32), np.asarray(volume.affine, dtype=np.float64))
    write_atomic(dst, lambda tmp: nib.save(image, tmp), suffix=".nii.gz")
    return tuple(image.shape)


def write_resampled_proxy(manifest_path: str | os.PathLike, out_dir: str | os.PathLike, spacing: float = 1.0,
                          num_validation: int = 2, num_test: int = 2, data_root: str | None = None) -> Path:
    """Resample the first ``num_validation`` validation and ``num_test`` test volumes of a manifest to ``spacing`` mm
    into ``out_dir/<name>_<spacing>mm``; the new manifest's path."""
    source = Path(manifest_path)
    name = f"{source.stem}_{spacing:g}mm"
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, count in (("validation", num_validation), ("test", num_test)):
        splits[split] = []
        for entry in load_manifest(source, split, data_root)[:count]:
            file = Path(entry["label"]).name
            resample_volume(entry["label"], folder / file, spacing)
            splits[split].append({"label": file, "subject": entry["subject"]})
    manifest = _manifest(name, f"{source.name}'s first validation and test volumes resampled to {spacing:g} mm "
                         "(trilinear)", splits["validation"], splits["test"])
    return write_manifest(manifest, folder / "manifest.json")
