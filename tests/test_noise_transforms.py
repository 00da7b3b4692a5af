"""Noise transforms: the statistics of the noise models, and the reproducibility contracts of training/evaluation."""

import numpy as np
import pytest
import torch
from scipy.special import i0e, i1e

from monai.data import DataLoader, Dataset, MetaTensor
from monai.utils import set_determinism
from pipeline.transforms import MRINoise, MRINoised, RandMRINoised

N = 1_000_000  # voxels per statistics test: standard error of the mean ~0.1% of sigma


def rice_mean(a: float, sigma: float) -> float:
    """Mean of the Rice distribution: sigma*sqrt(pi/2)*L_{1/2}(-a^2/(2 sigma^2)), L via exponentially scaled Bessels."""
    x = -(a**2) / (2 * sigma**2)
    # L_{1/2}(x) = exp(x/2)[(1-x) I0(-x/2) - x I1(-x/2)], and exp(x/2) I_k(-x/2) = i_ke(-x/2) for x <= 0
    laguerre = (1 - x) * i0e(-x / 2) - x * i1e(-x / 2)
    return sigma * np.sqrt(np.pi / 2) * laguerre


def constant_volume(a: float, name: str = "subject.nii.gz") -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.full((1, 100, 100, 100), a), affine=affine, meta={"filename_or_obj": name})


@pytest.mark.parametrize("a, sigma", [(1.0, 0.3), (1.0, 1.0), (0.5, 0.05), (2.0, 1.0), (0.3, 0.15)])
def test_rician_mean_matches_rice_distribution(a, sigma):
    # the reference (0.3 -> noise level 0.15 of reference 2) changes nothing but the units of the level
    noisy = MRINoise("rician", level=sigma / 2.0, reference=2.0).set_random_state(0)(constant_volume(a))
    assert noisy.numel() == N
    assert float(noisy.mean()) == pytest.approx(rice_mean(a, sigma), rel=0.02)
    # at low SNR the Rician bias is large, so the test separates Rician from Gaussian noise
    if a / sigma <= 2:
        assert abs(float(noisy.mean()) - a) > 0.1 * sigma


def test_rician_on_zero_signal_is_rayleigh():
    sigma = 0.2
    noisy = MRINoise("rician", level=sigma).set_random_state(1)(constant_volume(0.0))
    assert float(noisy.mean()) == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.02)
    assert float(noisy.min()) >= 0.0
    assert float(noisy.std()) == pytest.approx(sigma * np.sqrt(2 - np.pi / 2), rel=0.02)


@pytest.mark.parametrize("a, sigma", [(1.0, 0.3), (0.5, 0.05), (0.0, 0.1)])
def test_gaussian_mean_and_std(a, sigma):
    noisy = MRINoise("gaussian", level=sigma).set_random_state(2)(constant_volume(a))
    assert float(noisy.mean()) == pytest.approx(a, abs=0.02 * max(a, sigma))
    assert float(noisy.std()) == pytest.approx(sigma, rel=0.02)


@pytest.mark.parametrize("noise", ["rician", "gaussian"])
def test_output_is_float32_metatensor_and_input_untouched(noise):
    clean = constant_volume(0.5)
    clean_copy = clean.clone()
    noisy = MRINoise(noise, level=0.1).set_random_state(0)(clean)
    assert isinstance(noisy, MetaTensor) and noisy.dtype == torch.float32
    assert torch.equal(noisy.affine, clean.affine)
    assert noisy.meta["filename_or_obj"] == "subject.nii.gz"
    assert torch.equal(clean, clean_copy)
    assert not torch.equal(noisy, clean)


def test_uint8_input_is_noised_in_float():
    noisy = MRINoise("gaussian", level=0.1, reference=100.0).set_random_state(0)(np.full((1, 50, 50), 100, np.uint8))
    assert noisy.dtype == torch.float32
    assert float(noisy.std()) == pytest.approx(10.0, rel=0.05)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise": "poisson"},
        {"level": -0.01},
        {"level": float("nan")},
        {"reference": 0.0},
    ],
)
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        MRINoise(**kwargs)
    with pytest.raises(ValueError):
        MRINoised(**kwargs)


@pytest.mark.parametrize("level_range", [(0.15, 0.03), (-0.1, 0.1), (0.1,)])
def test_rand_invalid_level_range_raises(level_range):
    with pytest.raises(ValueError, match="level_range"):
        RandMRINoised(level_range=level_range)


def test_rand_invalid_noise_raises():
    with pytest.raises(ValueError, match="noise"):
        RandMRINoised(noise="speckle")


# --- evaluation: MRINoised ------------------------------------------------------------------------------------------


def small_volume(name: str = "IXI002-Guys-0828_T1.nii.gz", value: float = 0.5) -> MetaTensor:
    return MetaTensor(torch.full((1, 32, 32, 16), value), affine=torch.eye(4), meta={"filename_or_obj": name})


def test_mrinoised_is_bit_identical_across_calls_and_instances():
    item = {"label": small_volume()}
    first = MRINoised(level=0.1, seed=3)(item)["image"]
    again = MRINoised(level=0.1, seed=3)
    assert torch.equal(first, again(item)["image"])
    assert torch.equal(first, again(item)["image"])


def test_mrinoised_depends_on_seed_and_volume_name_but_not_directory():
    t = MRINoised(level=0.1, seed=0)
    a = t({"label": small_volume("/data/a/IXI002.nii.gz")})["image"]
    assert not torch.equal(a, MRINoised(level=0.1, seed=1)({"label": small_volume("/data/a/IXI002.nii.gz")})["image"])
    assert not torch.equal(a, t({"label": small_volume("/data/a/IXI012.nii.gz")})["image"])
    # the same file moved to another directory gets the same noise, so results do not depend on the data location
    assert torch.equal(a, t({"label": small_volume("/elsewhere/IXI002.nii.gz")})["image"])


def test_mrinoised_without_filename_uses_content():
    t = MRINoised(level=0.1, seed=0, noise="gaussian")
    a = t({"label": torch.full((1, 16, 16), 0.5)})["image"]
    assert torch.equal(a, t({"label": torch.full((1, 16, 16), 0.5)})["image"])
    b = t({"label": torch.full((1, 16, 16), 0.6)})["image"]
    assert not torch.equal(a - 0.5, b - 0.6)


def test_mrinoised_leaves_source_untouched_and_records_level():
    clean = small_volume()
    out = MRINoised(level=0.1)({"label": clean})
    assert out["label"] is clean and torch.all(clean == 0.5)
    assert out["noise_level"] == 0.1
    assert out["image"].dtype == torch.float32 and out["image"].shape == clean.shape
    assert torch.equal(out["image"].affine, clean.affine)


def test_level_is_relative_to_reference():
    vol = constant_volume(1.0)
    measured = {}
    for level, ref in [(0.05, 1.0), (0.1, 1.0), (0.05, 2.0), (0.05, 1000.0)]:
        noisy = MRINoised(noise="gaussian", level=level, reference=ref)({"label": vol * ref})["image"]
        measured[(level, ref)] = float(noisy.std())
    assert measured[(0.05, 1.0)] == pytest.approx(0.05, rel=0.02)
    assert measured[(0.1, 1.0)] == pytest.approx(2 * measured[(0.05, 1.0)], rel=0.02)
    assert measured[(0.05, 2.0)] == pytest.approx(2 * measured[(0.05, 1.0)], rel=0.02)
    assert measured[(0.05, 1000.0)] == pytest.approx(50.0, rel=0.02)


# --- training: RandMRINoised ----------------------------------------------------------------------------------------


def test_rand_levels_lie_in_range_and_vary():
    t = RandMRINoised(level_range=(0.03, 0.15)).set_random_state(0)
    levels = [t({"label": small_volume()})["noise_level"] for _ in range(50)]
    assert all(0.03 <= lv <= 0.15 for lv in levels)
    assert len(set(levels)) == 50
    assert min(levels) < 0.06 and max(levels) > 0.12  # spread over the range, not stuck at one end


def test_rand_noise_matches_recorded_level():
    t = RandMRINoised(noise="gaussian", level_range=(0.05, 0.2)).set_random_state(0)
    for _ in range(3):
        out = t({"label": constant_volume(1.0)})
        assert float(out["image"].std()) == pytest.approx(out["noise_level"], rel=0.02)
        assert torch.all(out["label"] == 1.0)


def test_rand_seeded_reproducibility():
    def run(seed):
        t = RandMRINoised().set_random_state(seed)
        return [t({"label": small_volume()}) for _ in range(3)]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert x["noise_level"] == y["noise_level"] and torch.equal(x["image"], y["image"])
    assert a[0]["noise_level"] != c[0]["noise_level"]
    assert not torch.equal(a[0]["image"], c[0]["image"])


def test_rand_prob_zero_gives_clean_copy():
    clean = small_volume()
    out = RandMRINoised(prob=0.0)({"label": clean})
    assert out["noise_level"] == 0.0
    assert torch.equal(out["image"], clean) and out["image"] is not clean


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rand_reproducible_through_monai_dataloader(num_workers):
    data = [{"label": small_volume(f"s{i}.nii.gz")} for i in range(4)]

    def epoch():
        set_determinism(seed=123)
        loader = DataLoader(Dataset(data, transform=RandMRINoised()), batch_size=2, num_workers=num_workers)
        return [(b["noise_level"].clone(), b["image"].as_tensor().clone()) for b in loader]

    try:
        first, second = epoch(), epoch()
    finally:
        set_determinism(seed=None)
    for (l1, i1), (l2, i2) in zip(first, second):
        assert torch.equal(l1, l2) and torch.equal(i1, i2)
    levels = torch.cat([lv for lv, _ in first])
    assert len(set(levels.tolist())) == 4  # items differ
