"""Blind noise estimation: within 10 % of the truth for 1-20 % Rician (and Gaussian) noise on IXI volumes (the
background estimator) and on the skull-stripped MNI template (the signal-region fallback); a warning when neither
can be trusted; a given level overrides the estimate."""


import numpy as np
import pytest
import torch

from pipeline.data.loaders import volume_transforms
from pipeline.data.proxies import mni_template_path
from pipeline.transforms import (EstimateNoiseLevel, EstimateNoiseLeveld, MRINoise, NoiseEstimateWarning,
                                 RecordNoiseLeveld)

LEVELS = [0.01, 0.03, 0.05, 0.09, 0.15, 0.20]


@pytest.fixture(scope="module")
def ixi_volumes(ixi_dir):
    files = sorted(ixi_dir.glob("*.nii.gz"))[:2]
    return [volume_transforms("label")({"label": str(f)})["label"] for f in files]


@pytest.fixture(scope="module")
def mni_template():
    pytest.importorskip("nilearn")
    return volume_transforms("label")({"label": str(mni_template_path())})["label"]


@pytest.mark.parametrize("noise", ["rician", "gaussian"])
def test_background_estimate_on_ixi_within_ten_percent(ixi_volumes, noise):
    for i, clean in enumerate(ixi_volumes):
        for level in LEVELS:
            noisy = MRINoise(noise, level).set_random_state(i)(clean)
            estimate = EstimateNoiseLevel()(noisy)
            assert estimate.method == "background", (noise, level)
            assert estimate.sigma == pytest.approx(level, rel=0.10), (noise, level)


def test_skull_stripped_volume_needs_the_fallback_and_stays_within_ten_percent(mni_template):
    brain = mni_template > 0
    for level in LEVELS:
        noisy = MRINoise("rician", level).set_random_state(3)(mni_template) * brain  # stripped after acquisition
        estimate = EstimateNoiseLevel()(noisy)
        assert estimate.method == "signal", level
        assert estimate.sigma == pytest.approx(level, rel=0.10), level


def test_nothing_to_measure_warns_and_the_dictionary_transform_falls_back_to_its_default():
    tiny = torch.zeros(1, 8, 8, 8)
    tiny[0, 2:6, 2:6, 2:6] = 1.0
    with pytest.warns(NoiseEstimateWarning, match="cannot be estimated"):
        assert EstimateNoiseLevel()(tiny).sigma is None
    with pytest.warns(NoiseEstimateWarning) as caught:
        data = EstimateNoiseLeveld(default_level=0.05)({"image": tiny})
    assert any("using the default noise level 0.05" in str(w.message) for w in caught)
    assert data["noise_level"] == 0.05 and data["noise_level_method"] == "default"


def test_given_level_overrides_the_estimate_and_is_recorded_for_the_header(ixi_volumes):
    from monai.data import MetaTensor

    noisy = MRINoise("rician", 0.08).set_random_state(0)(ixi_volumes[0])
    estimated = EstimateNoiseLeveld()({"image": noisy})
    assert estimated["noise_level"] == pytest.approx(0.08, rel=0.1)
    assert estimated["noise_level_method"] == "background"
    given = EstimateNoiseLeveld(level=0.02)({"image": noisy})
    assert given["noise_level"] == 0.02 and given["noise_level_method"] == "given"
    pred = MetaTensor(torch.zeros(1, 4, 4, 4))
    RecordNoiseLeveld()({"pred": pred, **given})
    assert pred.meta["description"] == "denoised; noise level 0.0200 (given)"
    with pytest.raises(ValueError, match="finite fraction"):
        EstimateNoiseLeveld(level=-1)


def test_wrong_shape_is_refused_by_name():
    with pytest.raises(ValueError, match="scan.nii: noise estimation expects a one-channel"):
        EstimateNoiseLevel()(np.zeros((2, 4, 4, 4)), name="scan.nii")
