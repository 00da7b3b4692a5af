"""The classical 3D denoisers of the comparison (BM4D, ANTs, DIPY nlmeans) on small crops of real IXI volumes:
tuned on a crop of a validation subject, run on a crop of a test subject with seeded Rician noise."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import IXI_MANIFEST, SHARED_DATA
from pipeline.compare import classical
from pipeline.compare.methods import LABELS, Method
from pipeline.data import load_manifest, volume_transforms
from pipeline.metrics import psnr
from pipeline.transforms import MRINoise

TEST_CROP = (48, 48, 32)
VALIDATION_CROP = (40, 40, 20)


def head_crop(path, size):
    """``(clean, mask)``, each ``(1, *size)``, cropped around the centre of the head mask of a normalised volume."""
    item = volume_transforms("label")({"label": str(path)})
    clean, mask = torch.as_tensor(item["label"]).float(), torch.as_tensor(item["mask"]).float()
    centre = torch.nonzero(mask[0] > 0).float().mean(0).round().long().tolist()
    starts = [min(max(c - s // 2, 0), n - s) for c, s, n in zip(centre, size, clean.shape[1:])]
    region = (slice(None),) + tuple(slice(a, a + s) for a, s in zip(starts, size))
    return clean[region].contiguous(), mask[region].contiguous()


@pytest.fixture(scope="module")
def crops():
    """A test-subject crop and a validation-subject crop (tuning only ever sees the validation subject)."""
    root = SHARED_DATA / "ixi_t1"
    if not root.is_dir():
        pytest.skip(f"shared IXI data not found at {root} (set PIPELINE_SHARED_DATA)")
    test = load_manifest(IXI_MANIFEST, "test", data_root=root)[0]["label"]
    validation = load_manifest(IXI_MANIFEST, "validation", data_root=root)[0]["label"]
    return {"test": head_crop(test, TEST_CROP), "validation": head_crop(validation, VALIDATION_CROP)}


def validation_of(crops):
    clean, mask = crops["validation"]

    def validation(noise, level):
        return [(MRINoise(noise, level).set_random_state(1)(clean), clean, mask)]

    return validation


def head_psnr(volume, clean, mask) -> float:
    return psnr(volume[None], clean[None], mask[None]).item()


# method, its tiny grid, the level it is tested at (ANTs takes no level and over-smooths 2 mm volumes at 5 %: it
# is tested where it helps), the least PSNR gain over the noisy input
CASES = {
    "dipy_nlmeans": ({"block_radius": (2, 3)}, 0.05, 0.5),
    "ants": ({"r": (1, 2)}, 0.10, 0.5),
    "bm4d": ({"sigma_factor": (1.0, 1.2)}, 0.05, 0.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tuned_method_denoises_a_real_volume(name, crops):
    if name == "bm4d":
        pytest.importorskip("bm4d")  # optional (non-profit licence); ANTs and DIPY are required and never skip
    grid, level, gain = CASES[name]
    method = classical.METHODS[name](grid=grid)
    assert isinstance(method, Method) and method.name == name and method.label == LABELS[name]
    assert method.uses_level is (name != "ants")  # ANTs estimates the noise itself: no sigma input

    validation = validation_of(crops)
    for tuned_level in (level, 3 * level):
        method.tune("rician", tuned_level, validation)
    points = method.points()
    assert len(points) == 2
    for tuned_level in (level, 3 * level):
        chosen = method.settings["rician", tuned_level]
        assert chosen in points
        scores = method.scores["rician", tuned_level]
        assert scores[method.describe(chosen)] == max(scores.values())

    # the nearest tuned level's parameters, for levels that were not tuned (blind estimates)
    assert method.setting("rician", 1.2 * level) is method.settings["rician", level]
    assert method.setting("rician", 0.5 * level) is method.settings["rician", level]
    assert method.setting("rician", 2.5 * level) is method.settings["rician", 3 * level]
    with pytest.raises(RuntimeError, match="not tuned"):
        method.setting("gaussian", level)

    clean, mask = crops["test"]
    noisy = MRINoise("rician", level).set_random_state(0)(clean)
    before = noisy.clone()
    out = method.denoise(noisy, "rician", level)
    assert torch.equal(noisy, before), "the input was modified"
    assert out.shape == noisy.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    noisy_psnr, out_psnr = head_psnr(noisy, clean, mask), head_psnr(out, clean, mask)
    assert out_psnr > noisy_psnr + gain, f"{name}: {out_psnr:.2f} dB vs noisy {noisy_psnr:.2f} dB"


def test_required_packages_import():
    """ANTs and DIPY are required dependencies: available() must find them (the comparison would skip them)."""
    assert classical.available("ants") is None
    assert classical.available("dipy_nlmeans") is None
    assert set(classical.METHODS) == {"bm4d", "ants", "dipy_nlmeans"}
    with pytest.raises(ValueError, match="unknown classical method"):
        classical.available("bm3d")


def test_missing_package_gives_a_one_line_note(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bm4d" else real(name, *a))
    note = classical.available("bm4d")
    assert note and "\n" not in note
    assert "bm4d is not installed" in note and "non-profit" in note


def test_rician_vst_stabilises_and_inverts_without_bias():
    """Foi-style VST: stabilised noise std ~1 at every signal level, and the exact unbiased inverse of the
    stabilised mean gives back the signal (plain averaging of magnitudes is biased upwards: 1.25 sigma at no signal;
    near zero signal the inverse is steep, so sampling error alone moves it by a few % of sigma)."""
    rng = np.random.default_rng(0)
    sigma = 0.05
    for snr in (0.0, 0.5, 1.0, 2.0, 4.0, 10.0, 60.0):
        a = snr * sigma
        z = np.hypot(a + sigma * rng.standard_normal(200_000), sigma * rng.standard_normal(200_000))
        f = classical.rician_vst(z, sigma)
        assert 0.85 < f.std() < 1.1, (snr, f.std())
        assert abs(classical.rician_vst_inverse(f.mean(), sigma) - a) < 0.1 * sigma + 0.01 * a, snr
    assert classical.rician_vst_inverse(classical.rician_vst(np.array([3.0]), 0.01), 0.01) == pytest.approx(3.0,
                                                                                                         rel=1e-3)


@pytest.mark.parametrize("name", ["dipy_nlmeans", "ants", "bm4d"])
def test_bad_input_and_grid_are_refused(name):
    if name == "bm4d" and importlib.util.find_spec("bm4d") is None:
        pytest.skip("bm4d is not installed")
    cls = classical.METHODS[name]
    with pytest.raises(ValueError, match="unknown parameters"):
        cls(grid={"no_such_parameter": (1,)})
    method = cls()
    assert method.points()[0] == {**cls.FIXED, **{k: v[0] for k, v in cls.DEFAULT_GRID.items()}}
    with pytest.raises(ValueError, match=r"\(1, H, W, D\)"):
        method.run(torch.zeros(2, 8, 8, 8), "rician", 0.05, method.points()[0])


@pytest.mark.parametrize("name", ["dipy_nlmeans", "bm4d"])
def test_zero_level_returns_the_input(name):
    if name == "bm4d" and importlib.util.find_spec("bm4d") is None:
        pytest.skip("bm4d is not installed")
    method = classical.METHODS[name]()
    x = torch.rand(1, 12, 12, 12)
    out = method.run(x, "rician", 0.0, method.points()[0])
    assert out.dtype == torch.float32 and torch.equal(out, x)
