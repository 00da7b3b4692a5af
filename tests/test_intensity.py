"""Reference intensity, scaling to it and back, and head masks (synthetic phantoms and one real IXI volume)."""


import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from monai.data import MetaTensor
from monai.transforms import LoadImage
from pipeline.transforms import (
    HeadMask,
    HeadMaskd,
    RestoreIntensityd,
    ScaleToReference,
    ScaleToReferenced,
    reference_intensity,
)

from conftest import SHARED_DATA  # noqa: E402

IXI_T1 = SHARED_DATA / "ixi_t1"


def head_phantom(shape=(64, 72, 56), scale=1500.0, background_sigma=0.02, seed=0):
    """Channel-first ellipsoid 'head' of graded intensities with a dark interior region, Rayleigh background.

    Returns (image (1,*shape) float32 MetaTensor, true ellipsoid mask (1,*shape) bool). Works for 2D shapes too.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum((g / 0.75) ** 2 for g in grids)
    head = r2 <= 1.0
    # intensity falls from 1.0 at the centre to 0.4 at the edge ("scalp" darker than "brain"), so percentiles differ
    img = np.where(head, 1.0 - 0.6 * np.sqrt(np.clip(r2, 0, 1)), 0.0)
    img[r2 <= 0.04] = 0.0  # a dark cavity (ventricle-like) that hole filling must recover
    noise = rng.normal(0, background_sigma, (2, *shape))
    img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # Rician everywhere, Rayleigh in the background
    affine = np.diag([2.0] * len(shape) + [1.0]) if len(shape) == 3 else np.eye(4)
    image = MetaTensor(torch.as_tensor(scale * img[None], dtype=torch.float32), affine=torch.as_tensor(affine))
    return image, head[None]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# --- reference intensity --------------------------------------------------------------------------------------------


def test_reference_is_99th_percentile_inside_head():
    img, head = head_phantom()
    expected = np.percentile(img.numpy()[head], 99)
    assert reference_intensity(img, mask=head) == pytest.approx(expected, rel=1e-6)
    # with the computed head mask, close to the true one
    assert reference_intensity(img) == pytest.approx(expected, rel=0.01)
    # and not the maximum, nor a percentile over the whole image (dominated by background)
    assert reference_intensity(img, mask=head) < 0.99 * float(img.max())
    assert np.percentile(img.numpy(), 99) != pytest.approx(expected, rel=0.01)
    assert reference_intensity(img, percentile=50, mask=head) == pytest.approx(np.median(img.numpy()[head]), rel=1e-6)


def test_all_zero_image_raises_with_reason():
    with pytest.raises(ValueError, match="all zero"):
        reference_intensity(torch.zeros(1, 16, 16, 8))
    with pytest.raises(ValueError, match="all zero"):
        ScaleToReferenced()({"label": torch.zeros(1, 16, 16)})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_raises(bad):
    img, _ = head_phantom(shape=(32, 32))
    img[0, 5, 5] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        reference_intensity(img)


def test_empty_mask_raises():
    img, head = head_phantom(shape=(32, 32))
    with pytest.raises(ValueError, match="mask is empty"):
        reference_intensity(img, mask=np.zeros_like(head))


def test_invalid_percentile_raises():
    with pytest.raises(ValueError, match="percentile"):
        ScaleToReference(percentile=0)


# --- scaling and restoring ------------------------------------------------------------------------------------------


def test_scale_to_reference_makes_reference_one_and_keeps_metadata():
    img, head = head_phantom()
    scaled = ScaleToReference()(img, mask=head)
    assert isinstance(scaled, MetaTensor) and scaled.dtype == torch.float32
    assert torch.equal(scaled.affine, img.affine)
    assert np.percentile(scaled.numpy()[head], 99) == pytest.approx(1.0, rel=1e-5)


def test_scale_then_restore_round_trips():
    img, _ = head_phantom()
    item = ScaleToReferenced(keys=["label", "image"])({"label": img, "image": img * 1.1})
    ref = item["reference_intensity"]
    assert isinstance(ref, float) and ref == pytest.approx(reference_intensity(img), rel=1e-6)
    assert float(item["label"].max()) < 2.0  # normalised, no longer in the thousands
    # both keys share the label's reference
    torch.testing.assert_close(item["image"], item["label"] * 1.1, rtol=1e-5, atol=1e-6)
    restored = RestoreIntensityd(keys=["label", "image"])(item)
    torch.testing.assert_close(restored["label"].as_tensor(), img.as_tensor(), rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(restored["image"].as_tensor(), (img * 1.1).as_tensor(), rtol=1e-6, atol=1e-3)
    assert torch.equal(restored["label"].affine, img.affine)


def test_scale_uses_given_mask_key():
    img, head = head_phantom(shape=(40, 40))
    inner = head & (np.abs(np.linspace(-1, 1, 40))[None, :, None] < 0.2)
    item = ScaleToReferenced(mask_key="mask")({"label": img, "mask": inner})
    assert item["reference_intensity"] == pytest.approx(np.percentile(img.numpy()[inner], 99), rel=1e-6)


def test_restore_without_reference_raises():
    with pytest.raises(KeyError, match="reference_intensity"):
        RestoreIntensityd(keys="pred")({"pred": torch.ones(1, 4, 4)})


# --- head mask ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(96, 112), (64, 72, 56)], ids=["2d", "3d"])
def test_head_mask_matches_phantom(shape):
    img, head = head_phantom(shape=shape, background_sigma=0.04)
    # a bright detached blob outside the head (e.g. a marker) must be dropped as a smaller component
    img[(0,) + tuple(slice(1, 5) for _ in shape)] = 1500.0
    mask = HeadMask()(img)
    assert mask.shape == img.shape and mask.dtype == torch.float32
    assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
    assert isinstance(mask, MetaTensor) and torch.equal(mask.affine, img.affine)
    assert dice(mask.numpy(), head) > 0.95
    assert mask.numpy()[(0,) + (len(shape) * (slice(1, 5),))].sum() == 0  # blob removed
    centre = tuple(n // 2 for n in shape)
    assert mask.numpy()[(0, *centre)] == 1.0  # the dark cavity is filled
    assert ndi.label(mask.numpy()[0])[1] == 1


def test_head_mask_dict_and_all_zero():
    img, head = head_phantom(shape=(48, 48))
    out = HeadMaskd()({"label": img})
    assert dice(out["mask"].numpy(), head) > 0.95
    assert float(HeadMask()(torch.zeros(1, 8, 8, 8)).sum()) == 0.0
    with pytest.raises(ValueError, match="channel-first"):
        HeadMask()(torch.zeros(8, 8))


@pytest.mark.skipif(not IXI_T1.is_dir(), reason=f"shared IXI data not found at {IXI_T1} (set PIPELINE_SHARED_DATA)")
def test_head_mask_on_real_ixi_volume():
    path = sorted(IXI_T1.glob("*.nii.gz"))[0]
    img = LoadImage(ensure_channel_first=True)(path)
    mask = HeadMask()(img)
    fraction = float(mask.mean())
    print(f"head-mask fraction of {path.name}: {fraction:.3f}")
    assert 0.15 < fraction < 0.70
    assert ndi.label(mask.numpy()[0])[1] == 1
    ref = reference_intensity(img, mask=mask)
    assert 0.1 * float(img.max()) < ref <= float(img.max())
