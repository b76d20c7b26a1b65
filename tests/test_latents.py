"""Probability sanity of ``BernoulliLatent`` and the public maths of ``nets.DiscreteVAE``."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from lightning_vae.latents import BernoulliLatent
from lightning_vae.nets import DiscreteVAE

D = 2


def make_vae(seed: int = 0, prior_prob: float = 0.5) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(D, BernoulliLatent(prior_prob), hidden=16, depth=2)


# --- BernoulliLatent -------------------------------------------------------------------------


def test_log_posterior_is_normalised_and_matches_sigmoid():
    logits = torch.tensor([[-40.0], [-3.0], [-0.5], [0.0], [0.7], [5.0], [40.0]])  # (B, 1)
    log_q = BernoulliLatent().log_posterior(logits)
    assert log_q.shape == (7, 2)
    assert torch.isfinite(log_q).all()  # no cancellation to log 0, even at |logit| = 40
    q = log_q.exp()
    torch.testing.assert_close(q.sum(-1), torch.ones(7))
    s = torch.sigmoid(logits[:, 0])
    torch.testing.assert_close(q, torch.stack([1 - s, s], dim=-1))
    # In log space, far into the tail: log(1 - sigmoid(40)) = -40 - log1p(e^-40).
    assert float(log_q[-1, 0]) == pytest.approx(-40.0, abs=1e-5)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.999999])
def test_log_prior_is_normalised(p):
    latent = BernoulliLatent(p)
    like = torch.zeros(1, dtype=torch.float64)
    log_prior = latent.log_prior(like)
    assert log_prior.shape == (latent.n_states,)
    assert log_prior.dtype == torch.float64
    assert float(log_prior.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(log_prior[1].exp()) == pytest.approx(p, abs=1e-12)
    assert torch.equal(latent.states(like), torch.tensor([[0.0], [1.0]], dtype=torch.float64))


def test_posterior_is_bernoulli_with_sigmoid_probs():
    logits = torch.tensor([[-2.0], [0.0], [1.5]])
    q = BernoulliLatent().posterior(logits)
    assert isinstance(q, Bernoulli)
    assert q.batch_shape == (3,)
    torch.testing.assert_close(q.probs, torch.sigmoid(logits[:, 0]))
    # Same numbers as log_posterior.
    torch.testing.assert_close(q.log_prob(torch.ones(3)),
                               BernoulliLatent().log_posterior(logits)[:, 1])


def test_prior_distribution():
    prior = BernoulliLatent(0.2).prior()
    assert isinstance(prior, Bernoulli)
    assert float(prior.probs) == pytest.approx(0.2)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_prior_prob_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match=rf"prior_prob must be in \(0, 1\), got {bad}"):
        BernoulliLatent(bad)


def test_index_of_latent_values():
    idx = BernoulliLatent().index(torch.tensor([[1.0], [0.0], [1.0]]))
    assert torch.equal(idx, torch.tensor([1, 0, 1]))


# --- DiscreteVAE ---------------------------------------------------------------------------


def test_log_px_finite_and_normalised_in_1d():
    vae = make_vae()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, D, generator=g) * 3
    log_px = vae.log_px(x)
    assert log_px.shape == (100,)
    assert torch.isfinite(log_px).all()

    # log p(x) is a density: in 1-D it integrates to 1 (trapezoid on a wide grid).
    torch.manual_seed(1)
    vae1 = DiscreteVAE(1, BernoulliLatent(0.3), hidden=8, depth=1)
    with torch.no_grad():
        loc, scale = vae1.decoder_params()
    lo = float((loc - 12 * scale).min())
    hi = float((loc + 12 * scale).max())
    grid = torch.linspace(lo, hi, 200_001)[:, None]
    with torch.no_grad():
        dens = vae1.log_px(grid).double().exp()
    assert float(torch.trapezoid(dens, grid[:, 0].double())) == pytest.approx(1.0, abs=1e-4)


def test_sample_shape_and_reproducible():
    vae = make_vae()
    a = vae.sample(500, generator=torch.Generator().manual_seed(7))
    b = vae.sample(500, generator=torch.Generator().manual_seed(7))
    c = vae.sample(500, generator=torch.Generator().manual_seed(8))
    assert a.shape == (500, D)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_encode_returns_bernoulli_of_encoder_logits():
    vae = make_vae()
    x = torch.randn(9, D, generator=torch.Generator().manual_seed(0))
    q = vae.encode(x)
    assert isinstance(q, Bernoulli)
    assert q.batch_shape == (9,)
    with torch.no_grad():
        torch.testing.assert_close(q.probs, vae.log_q(x)[:, 1].exp())


def test_decode_matches_decoder_params():
    vae = make_vae()
    p_x = vae.decode(torch.tensor([[0.0], [1.0]]))
    assert isinstance(p_x, Independent)
    assert isinstance(p_x.base_dist, Normal)
    assert p_x.batch_shape == (2,) and p_x.event_shape == (D,)
    loc, scale = vae.decoder_params()
    assert torch.equal(p_x.mean, loc)
    assert torch.equal(p_x.stddev, scale)
    assert (scale > 0).all()
    # The two states decode to different distributions (else the test above is vacuous).
    assert not torch.allclose(loc[0], loc[1])


@pytest.mark.parametrize("prior_prob,state", [(0.999999, 1), (1e-6, 0)])
def test_samples_match_forced_state(prior_prob, state):
    vae = make_vae(prior_prob=prior_prob)
    n = 20_000
    x = vae.sample(n, generator=torch.Generator().manual_seed(0))
    loc, scale = (t.detach() for t in vae.decoder_params())
    se = scale[state] / math.sqrt(n)
    assert ((x.mean(0) - loc[state]).abs() < 4 * se).all(), (x.mean(0), loc[state], se)
    # Sample std of a Gaussian: standard error ~ std / sqrt(2n).
    se_std = scale[state] / math.sqrt(2 * n)
    assert ((x.std(0) - scale[state]).abs() < 4 * se_std).all(), (x.std(0), scale[state])


def test_samples_mix_states_by_prior():
    vae = make_vae(prior_prob=0.25)
    n = 40_000
    x = vae.sample(n, generator=torch.Generator().manual_seed(1)).double()
    loc, scale = (t.detach().double() for t in vae.decoder_params())
    w = torch.tensor([0.75, 0.25], dtype=torch.float64)[:, None]
    mean = (w * loc).sum(0)
    var = (w * (scale**2 + loc**2)).sum(0) - mean**2
    assert ((x.mean(0) - mean).abs() < 4 * (var / n).sqrt()).all()
