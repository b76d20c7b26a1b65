"""The mixture weights' M-step (CategoricalLatent(prior_update="em")), the latent usage
scalars, and the public latent API: model.prior(), sample(return_latent=True), decode
with state indices."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Categorical, Independent

from lightning_vae.callbacks import DecoderVarianceMonitor
from lightning_vae.latents import CategoricalLatent, GaussianLatent
from lightning_vae.model import VAE
from lightning_vae.nets import PRIOR_FLOOR, DeterministicDecoder, DiscreteVAE, GaussianDecoder, m_step_logits
from lightning_vae.objectives import ELBO, SpreadELBO

from conftest import CONFIGS, TINY

D = 3


def _x(n: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_the_aggregate_posterior_maximises_the_elbo_over_the_prior():
    """The M-step's target is exact: with pi = mean_x q(.|x) the ELBO's gradient in the
    prior's logits vanishes (and it does not elsewhere), so no other weights do better."""
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(6, learn_prior=True, prior_update="gradient"))
    x = _x()
    q_mean = vae.aggregate_posterior(x).detach()
    torch.testing.assert_close(q_mean, vae.log_q(x).exp().mean(0).detach())
    grad_at = {}
    for name, pi in [("aggregate", q_mean), ("uniform", torch.full((6,), 1 / 6))]:
        with torch.no_grad():
            vae.prior_logits.copy_(pi.log())
        (grad,) = torch.autograd.grad(ELBO().terms(x, vae, step=0).loss, vae.prior_logits)
        grad_at[name] = grad.abs().max().item()
    assert grad_at["aggregate"] < 1e-7
    assert grad_at["uniform"] > 1e-3  # the test can fail: the encoder's usage is not uniform


def test_the_m_step_update():
    """pi <- (1 - r) pi + r q: rate 1 is the exact M-step, the aggregate posterior is a
    fixed point at any rate, rows (ensemble members) are independent, a non-finite row is
    left alone, and the floor keeps log pi finite."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, generator=gen)
    q = torch.softmax(torch.randn(3, 5, generator=gen), -1)
    torch.testing.assert_close(torch.softmax(m_step_logits(logits, q, 1.0), -1), q)
    for rate in (0.01, 0.3, 1.0):
        pi = torch.softmax(logits, -1)
        torch.testing.assert_close(torch.softmax(m_step_logits(logits, pi, rate), -1), pi, atol=1e-7, rtol=0)
        moved = torch.softmax(m_step_logits(logits, q, rate), -1)
        torch.testing.assert_close(moved, (1 - rate) * pi + rate * q, atol=1e-7, rtol=0)
    bad = q.clone()
    bad[1] = float("nan")
    out = m_step_logits(logits, bad, 0.5)
    assert torch.equal(out[1], logits[1]) and torch.isfinite(out).all()
    dead = torch.tensor([[1.0, 0.0, 0.0]])
    floored = torch.softmax(m_step_logits(torch.zeros(1, 3), dead, 1.0), -1)
    assert torch.isfinite(floored.log()).all() and floored[0, 1] < 2 * PRIOR_FLOOR


def test_the_em_prior_takes_no_gradient_and_dead_states_fade():
    """Under "em" the optimizer never moves the weights (no gradient); repeated M-steps
    send a state the encoder never uses to the floor geometrically, (1 - r)^t."""
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(4, learn_prior=True))
    assert vae.latent.em_prior and not vae.prior_logits.requires_grad
    loss = ELBO().terms(_x(), vae, step=0).loss
    loss.backward()
    assert vae.prior_logits.grad is None
    q = torch.tensor([0.5, 0.3, 0.2, 0.0])
    for _ in range(100):
        vae.m_step(q, 0.05)
    pi = vae.prior().probs
    assert pi[3] == pytest.approx(0.25 * 0.95**100, rel=1e-4)
    torch.testing.assert_close(pi[:3] / pi[:3].sum(), q[:3], atol=1e-3, rtol=0)


def test_fit_applies_the_m_step_after_every_optimizer_step(tmp_path):
    """Through the real CLI: one full-batch optimizer step of the ELBO (y = x) with rate 1
    leaves the weights equal to the aggregate posterior of the training data at the
    weights before the step; the encoder and decoder moved, the weights did not get a
    gradient step of their own."""
    from lightning_vae.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "circle_elbo.yaml"), *TINY, "--data.n_train=512",
                     "--data.batch_size=512", "--trainer.max_steps=1", "--model.latent.init_args.prior_rate=1",
                     "--model.objective.init_args.kl_warmup_steps=0",
                     f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"],
                    run=False)
    before = copy.deepcopy(cli.model)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    x = cli.datamodule.train_x
    expected = before.aggregate_posterior(x)
    assert not torch.allclose(expected, torch.full_like(expected, 1 / len(expected)), atol=1e-3)
    torch.testing.assert_close(cli.model.prior().probs, expected, atol=1e-6, rtol=1e-5)
    moved = [not torch.equal(a, b) for a, b in zip(before.net.encoder.parameters(), cli.model.net.encoder.parameters())]
    assert all(moved)


def test_usage_scalars_count_the_states_the_encoder_uses():
    torch.manual_seed(0)
    model = VAE(data_dim=D, latent=CategoricalLatent(8, learn_prior=True))
    last = [m for m in model.net.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([10.0, 10.0, 10.0] + [-10.0] * 5))  # states 0-2 share the data
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_x=_x()))
    out = DecoderVarianceMonitor()._usage(trainer, model, model.prior_logits())
    assert out["latent/used_states"].item() == 3
    assert out["latent/unused_prior_mass"].item() == pytest.approx(5 / 8, abs=1e-6)  # uniform weights so far
    gauss = VAE(data_dim=D, latent=GaussianLatent(2))
    assert DecoderVarianceMonitor()._usage(trainer, gauss, None) == {}


def test_prior_sample_with_latent_and_decode_by_index():
    torch.manual_seed(0)
    model = VAE(data_dim=D, latent=CategoricalLatent(5, learn_prior=True),
                decoder=GaussianDecoder("fixed", fixed_std=1e-3))
    with torch.no_grad():
        model.net.prior_logits.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0, -30.0]))
    prior = model.prior()
    assert isinstance(prior, Categorical)
    torch.testing.assert_close(prior.probs, torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0, -30.0]), 0))
    x, k = model.sample(3000, generator=torch.Generator().manual_seed(0), return_latent=True)
    assert x.shape == (3000, D) and k.shape == (3000,) and k.dtype == torch.long
    assert (k == 4).sum() == 0
    counts = torch.bincount(k, minlength=5).float() / 3000
    torch.testing.assert_close(counts, prior.probs, atol=0.03, rtol=0)
    loc, _ = model.decoder_params()
    assert (x - loc[k]).abs().max() < 1e-2  # each sample sits at its own state's mean
    by_index = model.decode(torch.tensor([2, 0]))
    by_onehot = model.decode(torch.eye(5)[[2, 0]])
    torch.testing.assert_close(by_index.mean, by_onehot.mean)
    for bad, words in [(torch.tensor([5]), "values in 0..4"), (torch.tensor([[1]]), "1-D integer tensor"),
                       (torch.zeros(2, 3), "latent values (N, 5)")]:
        with pytest.raises(ValueError) as err:
            model.decode(bad)
        assert words in str(err.value) and "\n" not in str(err.value)
    # The same draws give the same samples with or without the latent.
    torch.testing.assert_close(model.sample(50, generator=torch.Generator().manual_seed(3)),
                               model.sample(50, generator=torch.Generator().manual_seed(3), return_latent=True)[0])


def test_deterministic_and_gaussian_latent_api():
    torch.manual_seed(0)
    delta = VAE(data_dim=D, latent=CategoricalLatent(4), decoder=DeterministicDecoder(),
                objective=SpreadELBO(0.1))
    x, k = delta.sample(100, generator=torch.Generator().manual_seed(0), return_latent=True)
    assert torch.equal(x, delta.decoder_params()[0][k])
    torch.testing.assert_close(delta.prior().probs, torch.full((4,), 0.25))
    gauss = VAE(data_dim=D, latent=GaussianLatent(2), decoder=GaussianDecoder("fixed", fixed_std=1e-4))
    prior = gauss.prior()
    assert isinstance(prior, Independent) and prior.event_shape == (2,)
    x, z = gauss.sample(64, generator=torch.Generator().manual_seed(0), return_latent=True)
    assert z.shape == (64, 2)
    torch.testing.assert_close(x, gauss.decode(z).mean, atol=1e-3, rtol=0)


def test_data_init_places_the_states_on_spread_training_points():
    """CategoricalLatent(data_init=True): farthest point sampling picks spread rows (on a
    circle, 8 states at least 0.7 apart), and init_from_data moves the decoder's means
    exactly onto them; with data_init false there is no path (the state dict of before)."""
    from lightning_vae.data import Circle
    from lightning_vae.nets import farthest_points

    x = Circle(ambient_dim=3).sample(2000, torch.Generator().manual_seed(0))
    idx = farthest_points(x, 8)
    assert len(set(idx.tolist())) == 8
    chosen = x[idx]
    gaps = torch.cdist(chosen, chosen) + torch.eye(8) * 10
    assert gaps.min() > 0.7  # 2 sin(pi / 8) = 0.765 for evenly spread points
    torch.manual_seed(0)
    vae = DiscreteVAE(3, CategoricalLatent(8, learn_prior=True, data_init=True))
    before = vae.decoder_params(x)[0].clone()
    vae.init_from_data(x)
    torch.testing.assert_close(vae.decoder_params(x)[0], chosen, atol=1e-6, rtol=0)
    assert not torch.allclose(before, chosen, atol=1e-2)
    assert not hasattr(DiscreteVAE(3, CategoricalLatent(8, data_init=False)).decoder, "loc_path")
