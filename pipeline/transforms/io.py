"""Atomic saving: an output file appears under its final name only once it is completely written."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
from monai.transforms import SaveImage, SaveImaged
from monai.utils import MetaKeys

from pipeline.transforms.noise_estimation import DESCRIPTION_KEY

__all__ = ["AtomicSaveImage", "AtomicSaveImaged"]


def _write_description(path: Path, text: str | None) -> None:
    """Store ``text`` in the ``descrip`` field of a NIfTI file's header (MONAI's writer leaves it empty)."""
    if not text or not path.name.endswith((".nii", ".nii.gz")):
        return
    image = nib.load(str(path))
    image = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header)
    image.header["descrip"] = text.encode("ascii", "replace")[:79]
    nib.save(image, str(path))


class AtomicSaveImage(SaveImage):
    """``SaveImage`` that writes to a hidden temporary file in the output folder (``.<name>.<random>.partial<ext>``)
    and renames it to the final name (e.g. ``scan_denoised.nii.gz``) only when the write is complete. If the write
    fails or is interrupted, the temporary file is removed and no file of the final name is created or changed."""

    def __call__(self, img, meta_data: dict | None = None, filename=None):
        meta_data = img.meta if isinstance(img, MetaTensor) else meta_data
        if filename is not None:
            final = Path(f"{filename}{self.output_ext}")
        else:
            final = Path(self.folder_layout.filename(**self.fname_formatter(meta_data, self)))
        final.parent.mkdir(parents=True, exist_ok=True)
        stem = final.name[: len(final.name) - len(self.output_ext)] if self.output_ext else final.name
        partial = final.parent / f".{stem}.{uuid.uuid4().hex[:8]}.partial"
        temporary = Path(f"{partial}{self.output_ext}")
        verbose = self.write_kwargs.get("verbose", False)
        self.write_kwargs["verbose"] = False  # log the final name, not the temporary one
        try:
            super().__call__(img, meta_data, filename=partial)
            _write_description(temporary, (meta_data or {}).get(DESCRIPTION_KEY))
            os.replace(temporary, final)
        except Exception as e:
            temporary.unlink(missing_ok=True)
            # MONAI's error lists every writer's traceback; its last line is the actual cause
            cause = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise OSError(f"could not write {final}: {cause}") from None
        except BaseException:  # interrupted: remove the partial file, then stop
            temporary.unlink(missing_ok=True)
            raise
        finally:
            self.write_kwargs["verbose"] = verbose
        if verbose:
            logging.getLogger(__name__).info(f"wrote {final}")
        if self.savepath_in_metadict and meta_data is not None:
            meta_data[MetaKeys.SAVED_TO] = str(final)
        return img


class AtomicSaveImaged(SaveImaged):
    """``SaveImaged`` (same arguments and file names) writing through :class:`AtomicSaveImage`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.saver.__class__ = AtomicSaveImage  # the same saver state; only the write becomes atomic
