"""DiffNet: paper parameter count, shapes, the diffusion-mode guarantees, TorchScript, bfloat16, training."""

import pytest
import torch

from pipeline.networks import DiffNet, GuidanceEncoder
from pipeline.networks.diffnet import DiffNetLayer


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def randomise(module, scale=1.0, seed=0):
    """Random weights everywhere (the estimators' last convs start at zero, which would hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return module


def test_paper_preset_has_the_papers_parameter_count():
    assert n_params(DiffNet.paper(2)) == 101_310
    assert n_params(DiffNet.paper(3)) == 311_560
    assert n_params(DiffNet.paper(2, guidance=True)) == 194_838
    assert n_params(DiffNet.paper(2).layers[0].estimator) == 20_261


def test_guidance_encoder_parameter_count_and_receptive_field_match_its_docstring():
    assert n_params(GuidanceEncoder(2)) == 82_008
    assert n_params(GuidanceEncoder(3)) == 243_576
    enc = randomise(GuidanceEncoder(2), scale=0.1)
    x = torch.zeros(1, 1, 201, 201, requires_grad=True)
    enc(x)[0, :, 100, 100].sum().backward()
    rows, cols = torch.nonzero(x.grad[0, 0]).unbind(1)
    assert rows.max() - rows.min() + 1 == 99
    assert cols.max() - cols.min() + 1 == 99
    assert "99 voxels" in GuidanceEncoder.__doc__


@pytest.mark.parametrize("spatial_dims,shape", [(2, (3, 1, 37, 41)), (2, (1, 1, 5, 120)), (3, (2, 1, 9, 10, 11)),
                                                (3, (1, 1, 1, 7, 6))])
@pytest.mark.parametrize("mode", ["free", "diffusion"])
@pytest.mark.parametrize("guidance", [False, True])
def test_any_size_and_batch_keeps_shape(spatial_dims, shape, mode, guidance):
    net = randomise(DiffNet(spatial_dims, num_layers=2, estimator_channels=8, mode=mode, guidance=guidance), 0.1)
    out, filters = net.forward_with_filters(torch.rand(shape))
    assert out.shape == shape
    assert len(filters) == 2
    expected_maps = spatial_dims if mode == "diffusion" else 2 * spatial_dims + 1
    assert filters[0].shape == (shape[0], expected_maps, *shape[2:])
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_untrained_free_diffnet_is_the_identity_and_randomised_one_is_not():
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(DiffNet.paper(2)(x), x)
    assert not torch.allclose(randomise(DiffNet.paper(2), 0.1)(x), x)


def diffusion_layer(spatial_dims, seed):
    layer = randomise(DiffNetLayer(spatial_dims, 0, depth=3, channels=8, mode="diffusion"), scale=0.3, seed=seed)
    with torch.no_grad():
        layer.dt.fill_(20.0)  # time step at the stability bound: the hardest case for the maximum principle
    return layer.double()


DIFFUSION_SHAPES = [(2, (2, 1, 13, 17)), (2, (1, 1, 1, 9)), (2, (3, 1, 32, 5)), (3, (2, 1, 6, 7, 8)),
                    (3, (1, 1, 11, 1, 4))]


@pytest.mark.parametrize("spatial_dims,shape", DIFFUSION_SHAPES)
def test_diffusion_layer_keeps_constant_images(spatial_dims, shape):
    layer = diffusion_layer(spatial_dims, seed=1)
    u = torch.full(shape, 0.7, dtype=torch.float64)
    out, conductances = layer(u, None)
    assert torch.allclose(out, u, atol=1e-12)
    assert conductances.min() >= 0 and conductances.max() <= 1


@pytest.mark.parametrize("spatial_dims,shape", DIFFUSION_SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diffusion_layer_conserves_sum_and_obeys_maximum_principle(spatial_dims, shape, seed):
    layer = diffusion_layer(spatial_dims, seed)
    u = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3.0
    out, _ = layer(u, None)
    assert not torch.allclose(out, u)  # it does diffuse
    reduce = tuple(range(1, u.dim()))
    assert torch.allclose(out.sum(reduce), u.sum(reduce), rtol=0, atol=1e-9)
    for b in range(shape[0]):
        assert out[b].min() >= u[b].min() - 1e-12
        assert out[b].max() <= u[b].max() + 1e-12


def test_diffusion_time_steps_stay_inside_the_stability_bound():
    net = DiffNet(3, num_layers=3, mode="diffusion")
    with torch.no_grad():
        for layer, value in zip(net.layers, (-50.0, 0.0, 50.0)):
            layer.dt.fill_(value)
    dts = net.time_steps()
    assert (dts > 0).all() and (dts <= 1 / 6).all()


def test_whole_diffusion_network_never_leaves_the_input_range():
    net = randomise(DiffNet(2, num_layers=5, estimator_channels=8, mode="diffusion", guidance=True), 0.5).double()
    x = torch.rand(2, 1, 30, 25, dtype=torch.float64)
    out = net(x)
    assert out.min() >= x.min() - 1e-12 and out.max() <= x.max() + 1e-12


@pytest.mark.parametrize("mode", ["free", "diffusion"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_gives_the_same_output(mode, spatial_dims):
    net = randomise(DiffNet(spatial_dims, num_layers=2, estimator_channels=8, mode=mode, guidance=True), 0.1).eval()
    x = torch.rand((2, 1) + (12,) * spatial_dims)
    scripted = torch.jit.script(net)
    assert torch.allclose(scripted(x), net(x), atol=1e-6)


def test_bfloat16_runs_and_stays_close_to_float32():
    net = randomise(DiffNet.paper(2, guidance=True), 0.05).eval()
    x = torch.rand(2, 1, 24, 20)
    ref = net(x)
    low = net.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1


@pytest.mark.parametrize("kwargs,word", [({"spatial_dims": 1}, "spatial_dims"), ({"mode": "heat"}, "mode"),
                                         ({"num_layers": 0}, "num_layers"), ({"estimator_channels": 2.5}, "channels")])
def test_bad_arguments_are_refused_at_construction(kwargs, word):
    with pytest.raises(ValueError, match=word):
        DiffNet(**kwargs)


def test_wrong_input_shape_gets_a_clear_error():
    with pytest.raises(ValueError, match="expects input of shape"):
        DiffNet(3)(torch.rand(1, 1, 8, 8))


def test_a_few_training_steps_reduce_the_denoising_loss():
    torch.manual_seed(0)
    clean = torch.zeros(8, 1, 32, 32)
    clean[:, :, 8:24, 8:24] = 1.0
    noisy = clean + 0.1 * torch.randn_like(clean)
    net = DiffNet.paper(2, guidance=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(noisy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert net.layers[0].dt.grad is not None
    assert losses[-1] < 0.7 * losses[0]  # 30 Adam steps remove over 30 % of the noise energy
