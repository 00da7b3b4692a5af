"""Silence MONAI's nvImageCodec notices, and only those.

MONAI's ``LoadImage`` builds every reader it knows, so each loading pipeline constructs ``NvImgCodecPydicomReader``,
which, on any machine without CUDA, CuPy and nvImageCodec, logs "nvImageCodec is not available; skipping pydicom
decoder plugin registration." and warns "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register
successfully. Falling back to default pydicom decoders." The project never asks for that reader (DICOM is read with
ITK or pydicom), so the two lines tell its users nothing. They stay visible for a user who asks for the reader with
``MONAI_DICOM_READER=nvimgcodec``. Standard library only: cheap to call before MONAI is imported.
"""

from __future__ import annotations

import logging
import os
import warnings

LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
LOGGED = "nvImageCodec is not available; skipping pydicom decoder plugin registration."
WARNED = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"


class _DropNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != LOGGED


def silence_nvimgcodec_notices() -> None:
    """Drop the two notices (idempotent), unless ``MONAI_DICOM_READER`` asks for the nvImageCodec reader."""
    if os.environ.get("MONAI_DICOM_READER", "").strip().lower().startswith("nvimgcodec"):
        return
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, _DropNotice) for f in logger.filters):
        logger.addFilter(_DropNotice())
    warnings.filterwarnings("ignore", message=WARNED, category=UserWarning)
