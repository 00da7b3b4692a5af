"""``pipeline.atomic_write``: a file is replaced whole or not at all, and no temporary file is left either way."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from pipeline.atomic_write import write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "table.csv", "old\r\n")
    assert target.read_bytes() == b"old\r\n"  # line endings as given

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, fail)
    assert target.read_bytes() == b"old\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_the_suffix_lets_a_writer_pick_its_format(tmp_path):
    image = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    target = write_atomic(tmp_path / "volume.nii.gz", lambda tmp: nib.save(image, tmp), suffix=".nii.gz")
    assert gzip.open(target).read(4)  # nibabel gzipped it because the temporary name ended in .nii.gz
    assert np.array_equal(nib.load(target).get_fdata(), image.get_fdata())
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume.nii.gz"]
