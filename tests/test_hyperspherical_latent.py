"""The hyperspherical latent inside the VAE: its pieces against the wrapped normal's
density, the IWAE bound against the exact log p(x) (numerical integration over the circle
latent), every objective and the deterministic decoder, and the public API."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vae import spherical
from lightning_vae.latents import HypersphericalLatent
from lightning_vae.model import VAE
from lightning_vae.nets import DeterministicDecoder, GaussianDecoder, GaussianVAE, importance_weights
from lightning_vae.objectives import ELBO, DenoisingELBO, SpreadELBO
from lightning_vae.densities import normal_log_prob

D = 3


def _x(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_bad_arguments():
    for bad, words in [(dict(dim=1), "dim must be an integer >= 2, got 1"),
                       (dict(n_samples=0), "n_samples must be an integer >= 1, got 0")]:
        with pytest.raises(ValueError, match=words):
            HypersphericalLatent(**bad)


@pytest.mark.parametrize("dim", [2, 3])
def test_the_pieces_are_the_wrapped_normal(dim):
    """split gives unit directions and sigma in (0, pi); rsample lands on the sphere;
    log_ratio is log p(z) - log q(z|x) with the exact densities; the KL is the draws' mean
    of -log_ratio; the probe states lie on the sphere."""
    torch.manual_seed(0)
    latent = HypersphericalLatent(dim, n_samples=5)
    out = torch.randn(7, latent.encoder_dim) * 3
    mu, sigma = latent.split(out)
    assert mu.shape == (7, dim) and sigma.shape == (7, 1)
    torch.testing.assert_close(mu.norm(dim=-1), torch.ones(7))
    assert (sigma > 0).all() and (sigma < math.pi).all()
    eps = latent.draw(7, True, torch.Generator().manual_seed(1), out)
    assert eps.shape == (5, 7, dim - 1)
    z = latent.rsample((mu, sigma), eps)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(5, 7))
    ratio = latent.log_ratio(z, eps, (mu, sigma))
    expected = -spherical.sphere_log_area(dim - 1) - spherical.wrapped_normal_log_prob(z, mu, sigma[:, 0])
    torch.testing.assert_close(ratio, expected)
    torch.testing.assert_close(latent.kl((mu, sigma), ratio), -ratio.mean(0))
    torch.testing.assert_close(latent.states(out).norm(dim=-1), torch.ones(latent.n_probe))
    t = torch.linspace(0, 1, 5)[:, None]
    path = latent.interpolate(mu[:1], mu[1:2], t)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(path[0], mu[0])
    torch.testing.assert_close(path[-1], mu[1])


def test_the_kl_estimate_is_unbiased():
    """The draws' KL estimate averages to the exact KL(q || uniform) = log area - H(q)
    (the entropy by quadrature)."""
    latent = HypersphericalLatent(3, n_samples=20_000)
    mu = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0),
                                                   dtype=torch.float64), dim=-1)
    sigma = torch.tensor([[0.1], [0.5], [1.0], [2.0]], dtype=torch.float64)
    eps = latent.draw(4, True, torch.Generator().manual_seed(2), mu)
    z = latent.rsample((mu, sigma), eps)
    kl = latent.kl((mu, sigma), latent.log_ratio(z, eps, (mu, sigma)))
    exact = spherical.sphere_log_area(2) - spherical.WrappedNormal(mu, sigma[:, 0]).entropy()
    torch.testing.assert_close(kl, exact, atol=0.02, rtol=0)


def test_iwae_bound_reaches_the_exact_log_px_on_the_circle_latent():
    """log p(x) = log of the integral over z on S^1 of p(x|z) dz / (2 pi), by quadrature on
    4096 angles (exact to ~1e-10 for this smooth decoder); the IWAE bound with more draws
    is within 0.02 of it with 4096 draws. The encoder is set to a wide proposal (sigma near pi,
    nearly uniform), so 4096 draws get within 0.02: a wrong density in the weights (the
    wrapped normal's, or the prior's area) would show as a gap of that size or more."""
    torch.manual_seed(0)
    vae = GaussianVAE(D, HypersphericalLatent(2, iwae_samples=4096),
                      decoder=GaussianDecoder("fixed", fixed_std=0.5)).double()
    last = [m for m in vae.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight[-1].zero_()
        last.bias[-1] = 6.0  # sigma = pi sigmoid(4) = 3.09
    x = _x(8).double()
    phi = torch.linspace(0, 2 * math.pi, 4097, dtype=torch.float64)[:-1]
    z = torch.stack([phi.cos(), phi.sin()], -1)  # (A, 2)
    loc, scale = vae.decoder(z)  # (A, D)
    log_lik = normal_log_prob(x[:, None, :] - loc, scale)  # (B, A)
    exact = torch.logsumexp(log_lik, -1) - math.log(len(phi))
    bound = vae.log_px(x, generator=torch.Generator().manual_seed(5))
    # A lower bound on average (one estimate may exceed it by its Monte Carlo noise).
    assert (bound - exact).abs().max() < 0.02
    assert (bound - exact).mean() < 0.005


@pytest.mark.parametrize("objective,decoder", [
    (ELBO(), GaussianDecoder()),
    (SpreadELBO(0.1), GaussianDecoder()),
    pytest.param(DenoisingELBO(0.1), GaussianDecoder(), marks=pytest.mark.slow),
    (SpreadELBO(0.1), DeterministicDecoder()),
])
def test_every_objective_trains_it(objective, decoder):
    """A few Adam steps lower the loss and every gradient is finite (the ELBO's KL
    estimate included)."""
    torch.manual_seed(0)
    model = VAE(data_dim=D, latent=HypersphericalLatent(2, n_samples=4), decoder=decoder, objective=objective)
    x = torch.nn.functional.normalize(_x(256), dim=-1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        loss = objective(x, model.net, gen, step).loss
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def test_public_api():
    torch.manual_seed(0)
    model = VAE(data_dim=D, latent=HypersphericalLatent(3), decoder=GaussianDecoder("fixed", fixed_std=1e-4))
    prior = model.prior()
    assert isinstance(prior, spherical.HypersphericalUniform) and prior.event_shape == (3,)
    x, z = model.sample(100, generator=torch.Generator().manual_seed(0), return_latent=True)
    assert x.shape == (100, D) and z.shape == (100, 3)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(100))
    torch.testing.assert_close(x, model.decode(z).mean, atol=1e-3, rtol=0)
    q = model.encode(_x(5))
    assert isinstance(q, spherical.WrappedNormal)
    assert q.entropy().shape == (5,) and q.mean.shape == (5, 3)
    ll, log_ratio, kl, _ = importance_weights(model.net, _x(5), model.net.draws(5, True, None, _x(5)),
                                              normal_log_prob)
    assert ll.shape == log_ratio.shape == (1, 5) and kl.shape == (5,)


def test_principal_directions_give_a_degree_one_start():
    """The linear path maps a circle in R^5 (rotated, off-centre) to an ellipse around the
    origin with rms norm 3: the initial direction map winds once; a fresh encoder's alone
    winds zero times (why a fit without it can stay folded)."""
    from lightning_vae.data import Circle
    from lightning_vae.nets import principal_directions

    circle = Circle(ambient_dim=5, rotation_seed=7)
    theta = torch.linspace(0, 2 * math.pi, 2001)
    x = circle.embed(torch.stack([theta.cos(), theta.sin()], -1)).float() + 0.5  # off-centre
    weight, bias = principal_directions(x, 2)
    y = x @ weight.T + bias
    assert y.square().sum(-1).mean().sqrt().item() == pytest.approx(3.0, rel=1e-4)

    def winding(v):
        step = torch.diff(torch.atan2(v[:, 1], v[:, 0]))
        return round(float(((step + math.pi) % (2 * math.pi) - math.pi).sum() / (2 * math.pi)))

    assert abs(winding(y)) == 1
    torch.manual_seed(0)
    vae = GaussianVAE(5, HypersphericalLatent(2), decoder=GaussianDecoder())
    with torch.no_grad():
        before = vae.encode_params(x)[0]
        vae.init_from_data(x)
        after = vae.encode_params(x)[0]
    assert winding(before) == 0 and abs(winding(after)) == 1
    assert not hasattr(GaussianVAE(5, HypersphericalLatent(2, pca_init=False)), "direction_path")


def test_a_fresh_fit_initialises_the_directions_and_a_resume_keeps_its_own(tmp_path):
    from lightning_vae.cli import build_cli
    from conftest import CONFIGS, TINY

    args = ["--config", str(CONFIGS / "circle_hyper_spread.yaml"), *TINY, "--trainer.max_epochs=1",
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    cli = build_cli(args, run=False)
    assert torch.equal(cli.model.net.direction_path.weight, torch.zeros(2, 3))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    trained = cli.model.net.direction_path.weight.detach().clone()
    assert trained.abs().max() > 1.0  # set from the data (gain 3 over a unit circle), then trained
    ckpt = next((tmp_path / "circle_hyper_spread").rglob("last.ckpt"))
    again = build_cli([*args, "--trainer.max_epochs=2"], run=False)
    seen = {}

    import pytorch_lightning as pl

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["weight"] = pl_module.net.direction_path.weight.detach().clone()

    again.trainer.callbacks.append(Spy())
    again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path=ckpt)
    torch.testing.assert_close(seen["weight"], trained, atol=0, rtol=0)
