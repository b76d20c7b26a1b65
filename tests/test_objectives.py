"""Identities of the maths in ``lightning_vae.objectives`` (docs/science.md §1-2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from lightning_vae.latents import BernoulliLatent
from lightning_vae.nets import DiscreteVAE
from lightning_vae.objectives import (
    ELBO,
    SpreadELBO,
    elbo_terms,
    gaussian_log_lik,
    kl_weight,
    log_marginal,
)

D = 2


def make_vae(seed: int = 0, prior_prob: float = 0.5) -> DiscreteVAE:
    """A random VAE that is far from degenerate.

    At PyTorch's default init both states decode to nearly the same Gaussian and q(z|x) is
    nearly 1/2 everywhere, so the encoder barely moves any number (KL ~ 0.003) and a test
    could not tell which input the encoder saw. Sharpen the encoder and spread the decoder
    means: KL ~ 0.2 and the two states ~1 apart.
    """
    torch.manual_seed(seed)
    vae = DiscreteVAE(D, BernoulliLatent(prior_prob), hidden=16, depth=2)
    with torch.no_grad():
        vae.encoder[-1].weight.mul_(10)
        vae.encoder[-1].bias.mul_(10)
        vae.decoder.net[-1].weight[:D].mul_(15)  # rows 0..D-1 are the means
    return vae


def make_x(n: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g)  # (B, D)


def exact_posterior(vae: DiscreteVAE, x: torch.Tensor) -> torch.Tensor:
    """log p(z|x) = log p(z) + log p(x|z) - log p(x), ``(B, K)``."""
    loc, scale = vae.decoder_params(x)
    joint = vae.log_prior(x) + gaussian_log_lik(x, loc, scale)  # (B, K)
    return joint - torch.logsumexp(joint, dim=-1, keepdim=True)


# --- SpreadELBO(0) is the ELBO ------------------------------------------------------------


@pytest.mark.parametrize("step", [None, 0, 7])
def test_spread_elbo_with_zero_noise_is_exactly_elbo(step):
    vae, x = make_vae(), make_x()
    kw = dict(kl_warmup_steps=10)
    plain = ELBO(**kw)(x, vae, step=step)
    spread = SpreadELBO(noise_std=0.0, **kw)(x, vae, generator=torch.Generator().manual_seed(3),
                                            step=step)
    assert torch.equal(plain.loss, spread.loss)
    renamed = {"elbo": "spread_elbo", "log_px": "spread_log_px"}
    # ... plus the noise level it logs in training.
    logged_sigma = {"noise_std"} if step is not None else set()
    assert set(spread.values) == {renamed.get(k, k) for k in plain.values} | logged_sigma
    if step is not None:
        assert float(spread.values["noise_std"]) == 0.0
    for key, value in plain.values.items():
        assert torch.equal(value, spread.values[renamed.get(key, key)]), key
    # The terms are not trivially equal: they are real, distinct numbers.
    assert plain.values["kl"] > 0
    assert plain.values["elbo"] < plain.values["log_px"]


# --- log p(x) >= ELBO, with equality at the exact posterior ---------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_px_bounds_elbo_pointwise(seed):
    vae, x = make_vae(seed), make_x(seed=seed + 10)
    loc, scale = vae.decoder_params(x)
    log_lik, log_prior = gaussian_log_lik(x, loc, scale), vae.log_prior(x)
    elbo = elbo_terms(vae.log_q(x), log_prior, log_lik)["elbo"]
    log_px = vae.log_px(x)
    assert elbo.shape == log_px.shape == (len(x),)
    assert torch.isfinite(log_px).all()
    assert (log_px - elbo >= -1e-6).all()
    # The random encoder is not the posterior: the gap is strictly positive somewhere.
    assert (log_px - elbo).max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_elbo_equals_log_px_at_exact_posterior(seed):
    vae, x = make_vae(seed), make_x(seed=seed + 10)
    loc, scale = vae.decoder_params(x)
    log_lik, log_prior = gaussian_log_lik(x, loc, scale), vae.log_prior(x)
    t = elbo_terms(exact_posterior(vae, x), log_prior, log_lik)
    torch.testing.assert_close(t["elbo"], vae.log_px(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(t["elbo"], log_marginal(log_prior, log_lik), atol=1e-5, rtol=0)


# --- exact enumeration equals brute force ---------------------------------------------------


def test_gaussian_log_lik_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    B, K, Dd = 5, 3, 4
    x = torch.randn(B, Dd, generator=g, dtype=torch.float64)
    loc = torch.randn(K, Dd, generator=g, dtype=torch.float64)
    scale = torch.rand(K, Dd, generator=g, dtype=torch.float64) * 2 + 0.05
    got = gaussian_log_lik(x, loc, scale)
    assert got.shape == (B, K)
    expected = torch.empty(B, K, dtype=torch.float64)
    for k in range(K):
        expected[:, k] = Independent(Normal(loc[k], scale[k]), 1).log_prob(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_log_marginal_matches_float64_loop():
    g = torch.Generator().manual_seed(1)
    B, K = 6, 3
    log_prior = torch.log_softmax(torch.randn(K, generator=g), 0)
    log_lik = torch.randn(B, K, generator=g) * 3 - 2
    got = log_marginal(log_prior, log_lik)
    assert got.shape == (B,)
    for b in range(B):
        total = sum(math.exp(float(log_prior[k])) * math.exp(float(log_lik[b, k]))
                    for k in range(K))
        assert float(got[b]) == pytest.approx(math.log(total), abs=1e-5)


def test_elbo_terms_match_python_loop():
    g = torch.Generator().manual_seed(2)
    B, K = 5, 3
    log_q = torch.log_softmax(torch.randn(B, K, generator=g, dtype=torch.float64), -1)
    log_prior = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    log_lik = torch.randn(B, K, generator=g, dtype=torch.float64) * 2
    t = elbo_terms(log_q, log_prior, log_lik)
    for b in range(B):
        rec = kl = elbo = 0.0
        for k in range(K):
            q = math.exp(float(log_q[b, k]))
            rec += q * float(log_lik[b, k])
            kl += q * (float(log_q[b, k]) - float(log_prior[k]))
            elbo += q * (float(log_lik[b, k]) + float(log_prior[k]) - float(log_q[b, k]))
        assert float(t["rec"][b]) == pytest.approx(rec, abs=1e-12)
        assert float(t["kl"][b]) == pytest.approx(kl, abs=1e-12)
        assert float(t["elbo"][b]) == pytest.approx(elbo, abs=1e-12)


# --- KL >= 0, and 0 iff q equals the prior --------------------------------------------------


def test_kl_nonnegative_and_zero_at_prior():
    g = torch.Generator().manual_seed(3)
    B, K = 50, 4
    log_prior = torch.log_softmax(torch.randn(K, generator=g), 0)
    log_lik = torch.randn(B, K, generator=g)
    log_q = torch.log_softmax(torch.randn(B, K, generator=g) * 3, -1)
    kl = elbo_terms(log_q, log_prior, log_lik)["kl"]
    assert (kl >= -1e-6).all()
    assert (kl > 1e-4).all()  # q differs from the prior at every point
    kl0 = elbo_terms(log_prior.expand(B, K), log_prior, log_lik)["kl"]
    assert torch.equal(kl0, torch.zeros(B))


def test_kl_treats_zero_q_as_zero_contribution():
    # q = [0, 1] against a uniform prior: KL = log 2, not NaN (0 log 0 = 0).
    log_q = torch.tensor([[-math.inf, 0.0]])
    log_prior = torch.log(torch.tensor([0.5, 0.5]))
    t = elbo_terms(log_q, log_prior, torch.tensor([[1.0, -2.0]]))
    assert float(t["kl"][0]) == pytest.approx(math.log(2), abs=1e-6)
    assert float(t["rec"][0]) == pytest.approx(-2.0, abs=1e-6)


# --- SpreadELBO with noise ------------------------------------------------------------------


def test_spread_elbo_reproduced_by_hand():
    vae, x = make_vae(), make_x()
    noise_std = 0.3
    got = SpreadELBO(noise_std=noise_std)(x, vae, generator=torch.Generator().manual_seed(42))

    y = x + noise_std * torch.randn(x.shape, generator=torch.Generator().manual_seed(42))
    loc, scale = vae.decoder_params(y)
    scale_s = torch.sqrt(scale**2 + noise_std**2)
    log_lik = torch.stack(
        [Independent(Normal(loc[k], scale_s[k]), 1).log_prob(y) for k in range(2)], dim=-1)
    log_q = vae.log_q(y)  # the encoder sees the noisy y
    log_prior = vae.log_prior(y)
    q = log_q.exp()
    rec = (q * log_lik).sum(-1)
    kl = (q * (log_q - log_prior)).sum(-1)
    log_py = torch.logsumexp(log_prior + log_lik, -1)

    kw = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.loss, -(rec - kl).mean().detach(), **kw)
    torch.testing.assert_close(got.values["rec"], rec.mean().detach(), **kw)
    torch.testing.assert_close(got.values["kl"], kl.mean().detach(), **kw)
    torch.testing.assert_close(got.values["spread_elbo"], (rec - kl).mean().detach(), **kw)
    torch.testing.assert_close(got.values["spread_log_px"], log_py.mean().detach(), **kw)
    # ...and it is not the clean ELBO.
    assert abs(float(got.loss.detach() - ELBO()(x, vae).loss.detach())) > 1e-3


def test_spread_elbo_noise_is_fresh_but_seeded():
    vae, x = make_vae(), make_x()
    obj = SpreadELBO(noise_std=0.3)
    a = obj(x, vae, generator=torch.Generator().manual_seed(5))
    b = obj(x, vae, generator=torch.Generator().manual_seed(5))
    c = obj(x, vae, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.loss, b.loss)
    assert not torch.equal(a.loss, c.loss)


def _collapsed_vae(log_std_y: float) -> DiscreteVAE:
    """Decoder: loc = 0, std_x = 1, std_y = exp(log_std_y) for both states."""
    vae = make_vae()
    last = vae.decoder.net[-1]  # outputs (loc_1..loc_D, log_std_1..log_std_D)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[D + 1] = log_std_y  # log-std of the y axis
    return vae


def test_spread_loss_bounded_while_elbo_blows_up():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(256, D)  # (B, D); the y axis is exactly 0
    x[:, 0] = torch.randn(256, generator=g) * 0.1 + torch.sign(torch.randn(256, generator=g))
    noise_std = 0.3
    bound = D * (-0.5 * math.log(2 * math.pi * noise_std**2))
    plain_rec = {}
    for log_std_y in (-10.0, -30.0):
        vae = _collapsed_vae(log_std_y)
        _, scale = vae.decoder_params(x)
        assert float(scale[0, 1].detach()) == pytest.approx(math.exp(log_std_y), rel=1e-4)

        spread = SpreadELBO(noise_std=noise_std)(x, vae,
                                                 generator=torch.Generator().manual_seed(1))
        assert float(spread.values["rec"]) <= bound
        assert float(-spread.loss.detach()) <= bound  # KL >= 0, so the spread ELBO is below rec

        plain = ELBO()(x, vae)
        # Closed form: x axis N(0, 1), y axis N(0, std_y^2) evaluated at y = 0.
        expected = float(-0.5 * x[:, 0].square().mean()) - math.log(2 * math.pi) - log_std_y
        assert float(plain.values["rec"]) == pytest.approx(expected, abs=1e-3)
        plain_rec[log_std_y] = float(plain.values["rec"])
    assert plain_rec[-30.0] > 20
    # Unbounded: every nat of log-std removed from the y axis is a nat of "likelihood".
    assert plain_rec[-30.0] - plain_rec[-10.0] == pytest.approx(20.0, abs=1e-3)


# --- KL warm-up ----------------------------------------------------------------------------


def test_kl_weight_schedule():
    assert kl_weight(None, 100) is None
    assert kl_weight(0, 100) == 0.0
    assert kl_weight(50, 100) == 0.5
    assert kl_weight(100, 100) == 1.0
    assert kl_weight(1000, 100) == 1.0
    assert kl_weight(0, 0) == 1.0


@pytest.mark.parametrize("objective", [ELBO(kl_warmup_steps=100),
                                       SpreadELBO(noise_std=0.0, kl_warmup_steps=100)])
def test_warmup_weights_kl_in_training_only(objective):
    vae, x = make_vae(), make_x()
    prefix = "spread_" if isinstance(objective, SpreadELBO) else ""

    t0 = objective(x, vae, step=0)
    rec, kl = t0.values["rec"], t0.values["kl"]
    assert float(kl) > 1e-3  # otherwise the weights below could not be told apart
    assert torch.equal(t0.loss.detach(), -rec)
    assert float(t0.values["kl_weight"]) == 0.0

    t50 = objective(x, vae, step=50)
    torch.testing.assert_close(t50.loss.detach(), -(rec - 0.5 * kl), atol=1e-6, rtol=1e-6)
    assert float(t50.values["kl_weight"]) == 0.5

    t200 = objective(x, vae, step=200)
    torch.testing.assert_close(t200.loss.detach(), -t200.values[f"{prefix}elbo"])
    assert float(t200.values["kl_weight"]) == 1.0

    te = objective(x, vae, step=None)
    assert torch.equal(te.loss.detach(), -te.values[f"{prefix}elbo"])
    assert "kl_weight" not in te.values
    torch.testing.assert_close(te.values[f"{prefix}elbo"], rec - kl, atol=1e-6, rtol=1e-6)


def test_loss_carries_gradient_values_do_not():
    vae, x = make_vae(), make_x()
    t = ELBO()(x, vae, step=3)
    assert t.loss.requires_grad
    assert not any(v.requires_grad for v in t.values.values())


@pytest.mark.parametrize("objective", [ELBO(kl_warmup_steps=100), SpreadELBO(0.3, kl_warmup_steps=100)])
def test_values_off_changes_nothing_but_the_values(objective):
    """values=False (an unlogged training step) skips the logged terms only."""
    vae, x = make_vae(), make_x()
    y = objective.perturb(x, torch.Generator().manual_seed(0))
    full, bare = objective.terms(y, vae, step=50), objective.terms(y, vae, step=50, values=False)
    assert full.values and bare.values == {}
    assert torch.equal(full.loss, bare.loss) and torch.equal(full.scale, bare.scale)
    # The scale is the likelihood's: the decoder's, convolved with the noise for spread.
    torch.testing.assert_close(full.scale, objective.likelihood_scale(vae.decoder_params(y)[1]))


@pytest.mark.parametrize("make", [lambda: ELBO(kl_warmup_steps=-1),
                                  lambda: SpreadELBO(kl_warmup_steps=-1)])
def test_negative_warmup_raises(make):
    with pytest.raises(ValueError, match=r"kl_warmup_steps must be >= 0, got -1"):
        make()


def test_negative_noise_std_raises():
    with pytest.raises(ValueError, match=r"noise_std must be >= 0, got -0.5"):
        SpreadELBO(noise_std=-0.5)


# --- likelihood_scale ----------------------------------------------------------------------


def test_likelihood_scale():
    scale = torch.tensor([[0.0, 0.4], [1.0, 1e-8]])
    assert torch.equal(ELBO().likelihood_scale(scale), scale)
    assert torch.equal(SpreadELBO(noise_std=0.0).likelihood_scale(scale), scale)
    got = SpreadELBO(noise_std=0.3).likelihood_scale(scale)
    expected = torch.tensor([[0.3, 0.5], [math.hypot(1.0, 0.3), 0.3]])
    torch.testing.assert_close(got, expected)
