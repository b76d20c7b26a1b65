"""The learned mean transform (``ResidualTransformKernel``, the paper's section 4.2): an
invertible residual network f, y = f(x) + sigma e on data and model alike."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vae.learned_spread import ResidualTransformKernel
from lightning_vae.nets import DeterministicDecoder, GaussianDecoder
from lightning_vae.objectives import SpreadELBO

from conftest import fit, gen

pytestmark = pytest.mark.usefixtures("one_thread")


def built(dim: int = 3, **kwargs) -> ResidualTransformKernel:
    torch.manual_seed(0)
    kernel = ResidualTransformKernel(**kwargs)
    kernel.build(dim)
    return kernel


def test_f_starts_near_the_identity():
    kernel = built(blocks=2, hidden=16)
    x = torch.randn(100, 3, generator=gen(1))
    assert (kernel.transform(x) - x).abs().max() < 0.02


@pytest.mark.parametrize("coefficient", [0.5, 0.9])
def test_the_blocks_stay_contractive_and_f_injective_whatever_the_weights(coefficient):
    """Weights blown up 100x: after a few training forward passes (the power iterations)
    every block's exact bound is <= c (to 1e-3), and f separates points by at least
    (1 - c)^blocks times their distance (a contractive residual is injective)."""
    kernel = built(dim=4, blocks=2, hidden=16, coefficient=coefficient)
    with torch.no_grad():
        for p in kernel.parameters():
            p.mul_(100.0).add_(torch.randn(p.shape, generator=gen(2)))
    x = torch.randn(64, 4, generator=gen(3))
    for _ in range(30):
        kernel.transform(x)
    bound = kernel.scalars(0.1, 4)["spread/lipschitz"]
    assert bound <= coefficient * (1 + 1e-3)
    a, b = torch.randn(500, 4, generator=gen(4)), torch.randn(500, 4, generator=gen(5))
    kernel.eval()
    ratio = (kernel.transform(a) - kernel.transform(b)).norm(dim=1) / (a - b).norm(dim=1)
    assert ratio.min() >= (1 - coefficient) ** 2 * (1 - 1e-3)
    assert ratio.max() <= (1 + coefficient) ** 2 * (1 + 1e-3)


def test_densities_are_the_isotropic_gaussian_around_f():
    kernel = built(dim=3).double()
    sigma = 0.2
    u = torch.randn(7, 3, dtype=torch.float64, generator=gen(6))
    scale = torch.tensor(sigma, dtype=torch.float64)
    dense = torch.distributions.Normal(0.0, scale).log_prob(u).sum(-1)
    torch.testing.assert_close(kernel.log_prob(u, sigma), dense, rtol=1e-12, atol=1e-12)
    y, x = torch.randn(5, 3, dtype=torch.float64), torch.randn(9, 3, dtype=torch.float64)
    kernel.eval()  # in training each pass moves the power iteration on
    fx = kernel.transform(x)
    mixture = torch.logsumexp(torch.distributions.Normal(fx[None], scale).log_prob(y[:, None]).sum(-1), 1) - math.log(9)
    torch.testing.assert_close(kernel.spread_log_density(y, x, sigma), mixture, rtol=1e-12, atol=1e-12)


def test_samples_are_the_noise_only_and_reproducible():
    kernel = built(dim=3)
    a = kernel.sample((50000, 3), 0.3, generator=gen(7))
    assert torch.equal(a, kernel.sample((50000, 3), 0.3, generator=gen(7)))
    assert abs(float(a.std()) - 0.3) < 0.005 and abs(float(a.mean())) < 0.005


def test_bad_arguments_and_a_gaussian_decoder_are_one_line_errors():
    for kwargs, needle in (({"blocks": 0}, "blocks must be an integer >= 1"),
                           ({"hidden": 2.5}, "hidden must be an integer >= 1"),
                           ({"coefficient": 1.0}, "coefficient must be a number in (0, 1)"),
                           ({"coefficient": 0}, "coefficient must be a number in (0, 1)"),
                           ({"ascent": "up"}, "ascent must be one of divergence, loss")):
        with pytest.raises(ValueError, match=".*") as err:
            ResidualTransformKernel(**kwargs)
        assert needle in str(err.value) and "\n" not in str(err.value)
    from lightning_vae.model import VAE

    objective = SpreadELBO(noise_std=0.3, kernel=ResidualTransformKernel())
    with pytest.raises(ValueError) as err:
        VAE(data_dim=2, objective=objective, decoder=GaussianDecoder())
    assert "needs a deterministic decoder" in str(err.value) and "\n" not in str(err.value)
    VAE(data_dim=2, objective=SpreadELBO(noise_std=0.3, kernel=ResidualTransformKernel()),
        decoder=DeterministicDecoder())  # the supported pair builds


def test_the_models_means_go_through_f_in_the_objective_only():
    """The spread likelihood scores y against f(g(z)); samples and decoder_params are g's."""
    from lightning_vae.model import VAE

    torch.manual_seed(0)
    kernel = ResidualTransformKernel(hidden=8)
    model = VAE(data_dim=2, objective=SpreadELBO(noise_std=0.3, kernel=kernel), decoder=DeterministicDecoder())
    with torch.no_grad():
        for p in kernel.parameters():
            p.add_(0.5)
    assert model.net.loc_transform == kernel.transform
    loc, _ = model.decoder_params()
    kernel.eval()
    y = torch.randn(6, 2, generator=gen(8))
    seen = {}

    def log_lik(u, scale):
        seen["u"] = u
        return kernel.log_prob(u, 0.3)

    model.net.expectation(y, log_lik)
    torch.testing.assert_close(seen["u"], y[:, None, :] - kernel.transform(loc))
    assert not torch.allclose(kernel.transform(loc), loc)


def test_a_fit_trains_and_logs_the_bound(tmp_path):
    from lightning_vae.runs import read_scalars

    run = fit("delta_transform_spread.yaml", tmp_path, "--data.n_train=1024")  # 8 epochs of 8 steps
    s = read_scalars(run)
    assert all(math.isfinite(v) for _, v in s["train/loss"])
    assert all(v <= 0.9 * 1.01 for _, v in s["spread/lipschitz"])
    assert {"spread/displacement", "spread/divergence", "spread/data_log_density"} <= set(s)
