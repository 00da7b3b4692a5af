"""Loading NIfTI, MHA and DICOM series through ``volume_transforms`` (shape, RAS orientation, slice order), and the
2D slice / 3D patch training datasets and the deterministic evaluation dataset."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from pipeline.data import (
    eval_dataset,
    load_manifest,
    make_loader,
    patch_dataset_3d,
    slice_dataset_2d,
    volume_transforms,
)

from conftest import IXI_MANIFEST, SHARED_DATA  # noqa: E402
from dicom_series import sitk_image, write_dicom_series  # noqa: E402


def head_volume(shape=(24, 20, 12)) -> np.ndarray:
    """An ellipsoidal "head" in (x, y, z) array order, zero outside; axial slice k inside the head is 100 * (k + 1),
    and one corner voxel of each slice is marked (+7) so that flips are visible."""
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = grid[0] ** 2 + grid[1] ** 2 + 0.5 * grid[2] ** 2 < 0.8  # every axial slice crosses the head
    data = np.where(inside, 100.0 * (np.arange(shape[2]) + 1), 0.0)
    data[0, 0, :] += 7
    return data.astype(np.int16)


def write_nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def restored(item) -> np.ndarray:
    """The loaded clean volume back in its original intensities."""
    return (item["label"][0] * float(item["reference_intensity"])).numpy()


# --------------------------------------------------------------------------------------------------------------
# whole volumes in every format


def test_nifti_volume(tmp_path):
    data = head_volume()
    item = volume_transforms()({"label": str(write_nifti(tmp_path / "v.nii.gz", data))})
    assert item["label"].shape == item["mask"].shape == (1, *data.shape)
    assert np.allclose(restored(item), data, rtol=1e-4, atol=1e-3)
    assert set(np.unique(item["mask"].numpy())) <= {0.0, 1.0}
    assert item["mask"][0, 12, 10, 6] == 1 and item["mask"][0, 0, 0, 0] == 0  # head centre in, corner out
    head = item["label"][item["mask"] > 0]
    assert 0.9 < float(torch.quantile(head, 0.99)) < 1.1  # reference intensity (99th pct of the head) -> 1


def test_mha_volume_reoriented_to_ras(tmp_path):
    data = head_volume()
    path = tmp_path / "v.mha"
    sitk.WriteImage(sitk_image(data), str(path))
    item = volume_transforms()({"label": str(path)})
    assert item["label"].shape == (1, *data.shape)
    # ITK's identity direction is LPS: x and y run the other way in RAS, z (inferior -> superior) stays.
    assert np.allclose(restored(item), data[::-1, ::-1, :], rtol=1e-4, atol=1e-3)


def test_dicom_series_folder_slice_order(tmp_path):
    data = head_volume()
    folder = write_dicom_series(tmp_path / "subject" / "t1_series", data)
    item = volume_transforms()({"label": str(folder)})
    assert item["label"].shape == (1, *data.shape)
    volume = restored(item)
    centre = volume[data.shape[0] // 2, data.shape[1] // 2, :]
    assert np.allclose(centre, 100.0 * (np.arange(data.shape[2]) + 1), rtol=1e-4)  # per-slice values in order
    assert np.allclose(volume, data[::-1, ::-1, :], rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------------------------------------------------
# training and evaluation datasets


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """Two real IXI training volumes when the shared data is there, otherwise two synthetic heads."""
    data = SHARED_DATA / "ixi_t1"
    if data.is_dir():
        return load_manifest(IXI_MANIFEST, "training", data_root=data)[:2]
    folder = tmp_path_factory.mktemp("heads")
    return [{"label": str(write_nifti(folder / f"h{i}.nii.gz", head_volume((80, 80, 40))))} for i in range(2)]


def test_slice_dataset_2d_batches(volumes):
    dataset = slice_dataset_2d(volumes, roi_size=(64, 64), samples_per_volume=4, cache=False)
    batch = next(iter(make_loader(dataset, batch_size=2, shuffle=True)))
    for key in ("image", "label", "mask"):
        assert batch[key].shape == (8, 1, 64, 64), key
    assert not torch.equal(batch["image"], batch["label"])
    # Normalised, not raw scanner units: head maximum ~1 (99th percentile); only a few bright voxels (vessels, fat)
    # exceed 1.5 (IXI maxima reach ~2.7).
    label = batch["label"]
    assert float(label.min()) >= 0.0 and float(label.max()) < 4.0
    assert float((label > 1.5).float().mean()) < 0.01
    assert (batch["mask"].flatten(1).sum(1) > 0).all()  # every patch sits on the head
    noise = (batch["image"] - batch["label"]).flatten(1).std(1)
    assert (noise > 0.01).all() and (noise < 0.3).all()  # levels 3-15 % of the reference intensity


def test_patch_dataset_3d_batches(volumes):
    dataset = patch_dataset_3d(volumes[:1], roi_size=(32, 32, 24), samples_per_volume=3, cache=True)
    batch = next(iter(make_loader(dataset, batch_size=1)))
    assert batch["image"].shape == batch["label"].shape == (3, 1, 32, 32, 24)
    assert not torch.equal(batch["image"], batch["label"])
    again = next(iter(make_loader(dataset, batch_size=1)))
    assert not torch.equal(again["label"], batch["label"])  # crops are redrawn from the cached volume


def test_volume_smaller_than_roi_is_padded(tmp_path):
    small = [{"label": str(write_nifti(tmp_path / "small.nii.gz", head_volume((30, 20, 6))))}]
    batch = next(iter(make_loader(slice_dataset_2d(small, roi_size=(48, 40), samples_per_volume=2, cache=False))))
    assert batch["image"].shape == (2, 1, 48, 40)


def test_eval_dataset_is_deterministic(volumes):
    first = eval_dataset(volumes[:1], noise="gaussian", level=0.1, seed=0, cache=False)[0]
    again = eval_dataset(volumes[:1], noise="gaussian", level=0.1, seed=0, cache=False)[0]
    other = eval_dataset(volumes[:1], noise="gaussian", level=0.1, seed=1, cache=False)[0]
    assert first["image"].shape == first["label"].shape == first["mask"].shape
    assert first["image"].shape[0] == 1 and first["image"].ndim == 4
    assert torch.equal(first["image"], again["image"])
    assert not torch.equal(first["image"], other["image"])
    assert abs(float((first["image"] - first["label"]).std()) - 0.1) < 0.01  # sigma = 10 % of the reference
