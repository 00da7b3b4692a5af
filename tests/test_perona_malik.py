"""Perona-Malik diffusion (``pipeline.networks.PeronaMalik``) and its use as the paper's forward degradation
(``pipeline.transforms.PeronaMalikDegraded``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from pipeline.networks.perona_malik import PeronaMalik
from pipeline.transforms.degradation import PeronaMalikDegrade, PeronaMalikDegraded

SHAPES = {2: (7, 9), 3: (5, 6, 4)}


def reference_perona_malik(u: np.ndarray, num_iter: int, kappa: float, dt: float, diffusivity: str) -> np.ndarray:
    """Textbook Perona-Malik, one voxel at a time: ``u += dt * sum_neighbours g(|u_n - u|) * (u_n - u)``.

    Neighbours outside the image are skipped (no flux through the border: zero-Neumann). Written independently of
    ``stencil.py``, in float64 with plain loops.
    """

    def g(s: float) -> float:
        return 1.0 / (1.0 + (s / kappa) ** 2) if diffusivity == "rational" else math.exp(-((s / kappa) ** 2))

    u = np.array(u, dtype=np.float64)
    for _ in range(num_iter):
        new = u.copy()
        for idx in np.ndindex(*u.shape):
            total = 0.0
            for axis in range(u.ndim):
                for step in (-1, 1):
                    nb = list(idx)
                    nb[axis] += step
                    if 0 <= nb[axis] < u.shape[axis]:
                        diff = u[tuple(nb)] - u[idx]
                        total += g(abs(diff)) * diff
            new[idx] = u[idx] + dt * total
        u = new
    return u


def random_image(shape, seed=0, batch=2, dtype=torch.float32) -> torch.Tensor:
    return torch.rand((batch, 1, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def total_variation(u: torch.Tensor) -> float:
    return sum(u.diff(dim=d).abs().sum().item() for d in range(1, u.dim()))


# --- (a) agreement with the loop reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("diffusivity", ["rational", "exp"])
@pytest.mark.parametrize("dt", [None, 0.1])
def test_matches_loop_reference(spatial_dims, diffusivity, dt):
    kappa, num_iter = 0.3, 5  # K inside the range of the differences, so g really varies from face to face
    x = random_image(SHAPES[spatial_dims], seed=spatial_dims)
    out = PeronaMalik(spatial_dims, num_iter=num_iter, kappa=kappa, dt=dt, diffusivity=diffusivity)(x)
    step = 1.0 / (2 * spatial_dims) if dt is None else dt
    for b in range(x.shape[0]):
        expected = reference_perona_malik(x[b, 0].numpy(), num_iter, kappa, step, diffusivity)
        assert np.abs(out[b, 0].numpy() - expected).max() < 1e-5
    assert not torch.allclose(out, x, atol=1e-3)  # it did diffuse, so the comparison was not trivial


@pytest.mark.parametrize("shape", [(1, 9), (6, 1), (4, 1, 5)])
def test_axes_of_size_one_match_reference(shape):
    x = random_image(shape, batch=1)
    out = PeronaMalik(len(shape), num_iter=3, kappa=0.3)(x)
    expected = reference_perona_malik(x[0, 0].numpy(), 3, 0.3, 1.0 / (2 * len(shape)), "rational")
    assert np.abs(out[0, 0].numpy() - expected).max() < 1e-5


def test_channels_are_independent():
    x = random_image(SHAPES[2], batch=1).repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1)
    pm = PeronaMalik(2, num_iter=4)
    out = pm(x)
    for c in range(3):
        assert torch.equal(out[:, c : c + 1], pm(x[:, c : c + 1]))


# --- (b)-(d) properties of a diffusion --------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_constant_image_unchanged(spatial_dims):
    x = torch.full((2, 1, *SHAPES[spatial_dims]), 0.7)
    assert torch.equal(PeronaMalik(spatial_dims, num_iter=20)(x), x)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("diffusivity", ["rational", "exp"])
def test_sum_conserved(spatial_dims, diffusivity):
    x = random_image(SHAPES[spatial_dims], seed=3)
    out = PeronaMalik(spatial_dims, num_iter=30, kappa=0.5, diffusivity=diffusivity)(x)
    sums_in, sums_out = x.sum(dim=tuple(range(1, x.dim()))), out.sum(dim=tuple(range(1, x.dim())))
    assert torch.allclose(sums_out, sums_in, rtol=1e-5, atol=0)
    assert (out - x).abs().max() > 1e-2  # mass moved around, it was not conserved by doing nothing


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("diffusivity", ["rational", "exp"])
@pytest.mark.parametrize("kappa", [0.05, 10.0])
def test_maximum_principle_at_stable_dt(spatial_dims, diffusivity, kappa):
    x = random_image(SHAPES[spatial_dims], seed=4)
    # large K: g ~ 1 on every face, the worst case for the bound dt <= 1/(2 * spatial_dims)
    out = PeronaMalik(spatial_dims, num_iter=25, kappa=kappa, diffusivity=diffusivity)(x)
    for b in range(x.shape[0]):
        assert out[b].min() >= x[b].min() - 1e-6
        assert out[b].max() <= x[b].max() + 1e-6


# --- (e) validation --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"spatial_dims": 2, "num_iter": -1}, "num_iter"),
        ({"spatial_dims": 2, "num_iter": 2.5}, "num_iter"),
        ({"spatial_dims": 2, "kappa": 0.0}, "kappa"),
        ({"spatial_dims": 2, "kappa": -0.1}, "kappa"),
        ({"spatial_dims": 2, "kappa": float("nan")}, "kappa"),
        ({"spatial_dims": 2, "dt": 0.0}, "dt"),
        ({"spatial_dims": 2, "dt": 0.26}, "0.25"),
        ({"spatial_dims": 3, "dt": 0.2}, "0.166667"),
        ({"spatial_dims": 2, "diffusivity": "linear"}, "diffusivity"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        PeronaMalik(**kwargs)


def test_wrong_input_rank_rejected():
    with pytest.raises(ValueError, match="spatial"):
        PeronaMalik(3)(torch.rand(1, 1, 8, 8))


def test_dt_at_the_bound_is_accepted():
    assert PeronaMalik(3, dt=1 / 6).time_step().item() == pytest.approx(1 / 6)
    assert PeronaMalik(2).time_step().item() == 0.25


# --- (f)-(h) TorchScript, bfloat16, training -------------------------------------------------------------------------


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("diffusivity", ["rational", "exp"])
def test_torchscript_same_output(trainable, diffusivity):
    pm = PeronaMalik(2, num_iter=5, diffusivity=diffusivity, trainable=trainable)
    scripted = torch.jit.script(pm)
    x = random_image((16, 12), seed=5)
    assert torch.allclose(scripted(x), pm(x), atol=1e-7, rtol=0)
    pm3 = PeronaMalik(3, num_iter=2, trainable=trainable)
    x3 = random_image((6, 5, 4))
    assert torch.allclose(torch.jit.script(pm3)(x3), pm3(x3), atol=1e-7, rtol=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bfloat16_close_to_float32(spatial_dims):
    pm = PeronaMalik(spatial_dims, num_iter=5, kappa=0.3)
    x = random_image(SHAPES[spatial_dims], seed=6)
    ref = pm(x)
    out = pm(x.bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert (out.float() - ref).abs().max() < 3e-2  # bfloat16 has ~3 significant digits
    out_module = pm.to(torch.bfloat16)(x.bfloat16())  # module cast as a whole, as in autocast-free bf16 inference
    assert (out_module.float() - ref).abs().max() < 3e-2


def test_fixed_module_has_no_parameters():
    pm = PeronaMalik(2, kappa=0.2, dt=0.2)
    assert list(pm.parameters()) == []
    assert set(pm.state_dict()) == {"kappa", "dt"}
    assert pm.state_dict()["kappa"].item() == pytest.approx(0.2)


def test_trainable_gradients_reach_kappa_and_dt():
    pm = PeronaMalik(2, num_iter=3, kappa=0.3, dt=0.2, trainable=True)
    assert {n for n, _ in pm.named_parameters()} == {"log_kappa", "dt_logit"}
    assert pm.edge_threshold().item() == pytest.approx(0.3) and pm.time_step().item() == pytest.approx(0.2)
    x, target = random_image((10, 10), seed=7), random_image((10, 10), seed=8)
    torch.nn.functional.mse_loss(pm(x), target).backward()
    for p in (pm.log_kappa, pm.dt_logit):
        assert p.grad is not None and torch.isfinite(p.grad) and p.grad.abs() > 0


def test_trainable_dt_stays_inside_the_bound():
    pm = PeronaMalik(2, trainable=True)  # dt at the bound starts just inside it
    assert 0.99 * 0.25 < pm.time_step().item() < 0.25
    with torch.no_grad():
        pm.dt_logit.fill_(50.0)
    assert 0 < pm.time_step().item() <= 0.25
    with torch.no_grad():
        pm.dt_logit.fill_(-50.0)
    assert 0 <= pm.time_step().item() < 1e-6


# --- (i) the forward degradation transform -------------------------------------------------------------------------


def phantom(shape=(32, 32), seed=0) -> torch.Tensor:
    """A bright square on a ramp with faint texture (std 0.02 << K), channel-first ``(1, *shape)``, values ~[0, 1]."""
    grid = torch.meshgrid(*[torch.linspace(0, 1, n) for n in shape], indexing="ij")
    img = 0.3 * grid[0]
    inside = torch.ones(shape, dtype=torch.bool)
    for g in grid:
        inside &= (g > 0.3) & (g < 0.7)
    img = img + 0.6 * inside
    img = img + 0.02 * torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return img[None]


def test_degraded_written_to_image_and_label_untouched():
    clean = phantom()
    keep = clean.clone()
    out = PeronaMalikDegraded(noise_sigma=0.05, seed=0)({"label": clean})
    assert set(out) == {"image", "label"}
    assert out["label"] is clean and torch.equal(clean, keep)
    assert out["image"].shape == clean.shape and not torch.equal(out["image"], clean)


def test_four_steps_blur():
    clean = phantom()
    out = PeronaMalikDegraded()({"label": clean})  # defaults: 4 steps, no noise
    assert total_variation(out["image"]) < 0.8 * total_variation(clean)
    expected = PeronaMalik(2, num_iter=4)(clean[None])[0]
    assert torch.allclose(out["image"], expected, atol=1e-6)


def test_same_seed_bit_identical_different_seed_differs():
    clean = phantom((12, 10, 8))
    make = lambda seed: PeronaMalikDegraded(noise_sigma=0.05, seed=seed)({"label": clean})["image"]  # noqa: E731
    a, b, c = make(1), make(1), make(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    noiseless = PeronaMalikDegraded(noise_sigma=0.0)({"label": clean})["image"]
    assert (a - noiseless).std().item() == pytest.approx(0.05, rel=0.1)  # noise_sigma is the noise std


def test_metatensor_shape_and_affine_preserved():
    affine = torch.tensor([[0.0, 0, 1.2, -10], [0, 0.9, 0, 5], [2.0, 0, 0, 3], [0, 0, 0, 1]], dtype=torch.float64)
    clean = MetaTensor(phantom((10, 9, 8)), affine=affine)
    out = PeronaMalikDegraded(noise_sigma=0.02, seed=0)({"label": clean})["image"]
    assert isinstance(out, MetaTensor)
    assert out.shape == clean.shape and out.dtype == clean.dtype
    assert torch.equal(out.affine, affine)


def test_array_transform_keeps_numpy_and_dtype():
    img = phantom().numpy()
    out = PeronaMalikDegrade(spatial_dims=2)(img)
    assert isinstance(out, np.ndarray) and out.dtype == img.dtype and out.shape == img.shape
    expected = PeronaMalik(2, num_iter=4)(torch.from_numpy(img)[None])[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="channel-first"):
        PeronaMalikDegrade(spatial_dims=3)(img)


def test_degradation_validates_arguments():
    with pytest.raises(ValueError, match="noise_sigma"):
        PeronaMalikDegraded(noise_sigma=-0.1)
    with pytest.raises(ValueError, match="kappa"):
        PeronaMalikDegraded(kappa=0)
