"""Model families: latents, decoders, kernels inside the objectives, schedules, the
denoising ablation, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vae.kernels import GaussianKernel, LaplaceKernel
from lightning_vae.latents import BernoulliLatent, CategoricalLatent
from lightning_vae.model import VAE
from lightning_vae.nets import DeterministicDecoder, DiscreteVAE, GaussianDecoder
from lightning_vae.objectives import ELBO, DenoisingELBO, SpreadELBO, elbo_terms, log_marginal
from lightning_vae.schedules import LinearAnneal

D = 3


def _x(n: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_categorical_with_two_states_is_the_bernoulli():
    """Two-state enumeration agrees: logits (0, l) are the Bernoulli logit l; same prior;
    hence the same ELBO terms and log p(x) for the same decoder likelihoods."""
    logits = torch.randn(50, 1, generator=torch.Generator().manual_seed(0)) * 3
    bern, cat = BernoulliLatent(), CategoricalLatent(n_states=2)
    log_q_b = bern.log_posterior(logits)
    log_q_c = cat.log_posterior(torch.cat([torch.zeros_like(logits), logits], dim=-1))
    torch.testing.assert_close(log_q_b, log_q_c, atol=1e-6, rtol=0)
    like = torch.zeros(())
    torch.testing.assert_close(bern.log_prior(like), cat.log_prior(like))
    log_lik = torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    tb = elbo_terms(log_q_b, bern.log_prior(like), log_lik)
    tc = elbo_terms(log_q_c, cat.log_prior(like), log_lik)
    for key in tb:
        torch.testing.assert_close(tb[key], tc[key], atol=1e-5, rtol=0)
    torch.testing.assert_close(log_marginal(bern.log_prior(like), log_lik),
                               log_marginal(cat.log_prior(like), log_lik))


def test_categorical_vae_enumerates_k_states_exactly():
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(n_states=5, prior=[0.1, 0.2, 0.3, 0.2, 0.2]))
    x = _x()
    assert vae.log_q(x).shape == (64, 5)
    torch.testing.assert_close(vae.log_q(x).exp().sum(-1), torch.ones(64))
    loc, scale = vae.decoder_params(x)
    assert loc.shape == scale.shape == (5, D)
    # log p(x) by the definition, one state at a time.
    joint = torch.stack([torch.distributions.Independent(torch.distributions.Normal(loc[k], scale[k]), 1)
                         .log_prob(x) + math.log([0.1, 0.2, 0.3, 0.2, 0.2][k]) for k in range(5)], -1)
    torch.testing.assert_close(vae.log_px(x), joint.logsumexp(-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad,match", [
    (dict(n_states=1), "n_states must be an integer >= 2, got 1"),
    (dict(n_states=3, prior=[0.5, 0.5]), "prior must have n_states = 3 entries"),
    (dict(n_states=2, prior=[0.7, 0.7]), "prior must be positive and sum to 1"),
    (dict(n_states=2, learn_prior="yes"), "learn_prior must be true or false, got 'yes'"),
    (dict(n_states=2, prior_update="adam"), "prior_update must be one of em, gradient, got 'adam'"),
    (dict(n_states=2, prior_rate=0), r"prior_rate must be a number in \(0, 1\], got 0"),
    (dict(n_states=2, prior_rate=1.5), r"prior_rate must be a number in \(0, 1\], got 1.5"),
])
def test_categorical_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        CategoricalLatent(**bad)


def test_learned_prior_gradient_is_posterior_minus_prior():
    """With learned weights pi = softmax(l), the ELBO's prior term is sum_k q_k log pi_k, so
    d loss / d l = -(mean_x q(.|x) - pi): the weights move towards the encoder's usage
    (prior_update "gradient"; the M-step's fixed point is where this vanishes)."""
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(5, prior=[0.1, 0.2, 0.3, 0.2, 0.2], learn_prior=True,
                                           prior_update="gradient"))
    torch.testing.assert_close(vae.log_prior(_x()).exp(), torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]))
    x = _x()
    loss = ELBO().terms(x, vae, step=0).loss
    (grad,) = torch.autograd.grad(loss, vae.prior_logits)
    q_mean = vae.log_q(x).exp().mean(0).detach()
    torch.testing.assert_close(grad, -(q_mean - vae.log_prior(x).exp().detach()), atol=1e-6, rtol=0)


def test_learned_prior_is_the_mixture_weight_everywhere():
    """log p(x) and the samples use the learned weights; a fixed prior has no parameter."""
    torch.manual_seed(0)
    assert not hasattr(DiscreteVAE(D, CategoricalLatent(3)), "prior_logits")
    vae = DiscreteVAE(D, CategoricalLatent(3, learn_prior=True),
                      decoder=GaussianDecoder("fixed", fixed_std=1e-6))  # a sample's state is its nearest mean
    with torch.no_grad():
        vae.prior_logits.copy_(torch.tensor([0.0, 2.0, -30.0]))  # state 2: weight ~1e-14
    x = _x()
    loc, scale = vae.decoder_params(x)
    weights = torch.softmax(torch.tensor([0.0, 2.0, -30.0]), 0)
    joint = torch.stack([torch.distributions.Independent(torch.distributions.Normal(loc[k], scale[k]), 1)
                         .log_prob(x) + weights[k].log() for k in range(3)], -1)
    torch.testing.assert_close(vae.log_px(x), joint.logsumexp(-1), atol=0, rtol=1e-6)  # values ~ -1e12
    samples = vae.sample(2000, generator=torch.Generator().manual_seed(0))
    nearest = torch.cdist(samples, loc).argmin(1)
    assert (nearest == 2).sum() == 0 and (nearest == 1).sum() > (nearest == 0).sum()


def test_decoder_variants():
    torch.manual_seed(0)
    x = _x()
    shared = DiscreteVAE(D, CategoricalLatent(4), decoder=GaussianDecoder("shared"))
    _, s = shared.decoder_params(x)
    assert torch.equal(s, s[:, :1].expand_as(s)) and not torch.equal(s[0], s[1])  # one std a state
    fixed = DiscreteVAE(D, CategoricalLatent(4), decoder=GaussianDecoder("fixed", fixed_std=0.25))
    assert torch.equal(fixed.decoder_params(x)[1], torch.full((4, D), 0.25))
    assert sum(p.numel() for p in fixed.decoder.parameters()) < sum(p.numel() for p in shared.decoder.parameters())
    floor = DiscreteVAE(D, CategoricalLatent(4), decoder=GaussianDecoder(min_std=0.05))
    with torch.no_grad():
        floor.decoder.net[-1].bias[D:] = -30.0  # raw std ~1e-13: the floor is what is left
    assert torch.all(floor.decoder_params(x)[1] >= 0.05)
    per_axis = DiscreteVAE(D, CategoricalLatent(4))
    assert per_axis.decoder.net[-1].out_features == 2 * D  # the seed's layout: checkpoints load


def test_deterministic_decoder_has_no_density_and_samples_its_means():
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(3), decoder=DeterministicDecoder())
    loc, scale = vae.decoder_params(_x())
    assert torch.equal(scale, torch.zeros_like(loc))
    samples = vae.sample(200, generator=torch.Generator().manual_seed(0))
    # Every sample IS one of the means, bit for bit (compared elementwise: cdist's matrix-product
    # form would leave ~1e-5 of rounding).
    assert (samples[:, None, :] == loc[None]).all(-1).any(-1).all()
    with pytest.raises(ValueError, match="deterministic decoder has no density"):
        vae.log_px(_x())


@pytest.mark.parametrize("kernel", [GaussianKernel(), LaplaceKernel()])
def test_spread_trains_a_deterministic_decoder_with_the_kernel_likelihood(kernel):
    torch.manual_seed(0)
    vae = DiscreteVAE(D, CategoricalLatent(3), decoder=DeterministicDecoder())
    objective = SpreadELBO(noise_std=0.3, kernel=kernel)
    y = objective.perturb(_x(), torch.Generator().manual_seed(0), step=5)
    terms = objective.terms(y, vae, step=5)
    terms.loss.backward()
    assert math.isfinite(float(terms.loss))
    assert all(p.grad is not None and p.grad.isfinite().all() for p in vae.parameters())
    # Its likelihood is the kernel's density at y - loc, per state.
    loc, _ = vae.decoder_params(y)
    log_lik = kernel.log_prob(y[:, None, :] - loc[None], 0.3)  # (B, K)
    expected = log_marginal(vae.log_prior(y), log_lik).mean()
    torch.testing.assert_close(terms.values["spread_log_px"], expected.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(terms.scale, torch.full_like(loc, 0.3))  # likelihood std = sigma


@pytest.mark.parametrize("objective", [ELBO(), DenoisingELBO(0.3)])
def test_a_deterministic_decoder_is_refused_without_spread(objective):
    with pytest.raises(ValueError, match="deterministic decoder has no likelihood of its own"):
        VAE(data_dim=D, objective=objective, decoder=DeterministicDecoder())
    vae = DiscreteVAE(D, BernoulliLatent(), decoder=DeterministicDecoder())
    with pytest.raises(ValueError, match="deterministic decoder"):
        objective(_x(), vae, generator=torch.Generator().manual_seed(0), step=0)


def test_laplace_spread_scores_the_gaussian_decoder_convolved_with_laplace():
    from lightning_vae.kernels import convolved_log_lik

    torch.manual_seed(0)
    vae = DiscreteVAE(D, BernoulliLatent())
    objective = SpreadELBO(noise_std=0.4, kernel=LaplaceKernel())
    y = _x()
    terms = objective.terms(y, vae, step=None)
    loc, scale = vae.decoder_params(y)
    expected = log_marginal(vae.log_prior(y), convolved_log_lik(LaplaceKernel(), y, loc, scale, 0.4))
    torch.testing.assert_close(terms.values["spread_log_px"], expected.mean().detach())
    # ... which is not the Gaussian spread of the same std.
    gauss = SpreadELBO(noise_std=0.4).terms(y, vae, step=None)
    assert abs(float(gauss.values["spread_log_px"] - terms.values["spread_log_px"])) > 1e-3


def test_denoising_elbo_is_the_plain_elbo_of_the_noisy_data():
    """Noise on the data only: its terms on y are the ELBO's terms on y (the bias)."""
    torch.manual_seed(0)
    vae = DiscreteVAE(D, BernoulliLatent())
    denoise = DenoisingELBO(noise_std=0.3, kl_warmup_steps=10)
    y = denoise.perturb(_x(), torch.Generator().manual_seed(0), step=4)
    t, ref = denoise.terms(y, vae, step=4), ELBO(kl_warmup_steps=10).terms(y, vae, step=4)
    assert torch.equal(t.loss, ref.loss)
    assert torch.equal(t.values["denoise_elbo"], ref.values["elbo"])
    assert float(t.values["noise_std"]) == pytest.approx(0.3)
    assert torch.equal(t.scale, ref.scale)  # not convolved
    assert not torch.equal(y, _x())


@pytest.mark.parametrize("kernel", [GaussianKernel(), LaplaceKernel()])
def test_noise_schedule_sets_the_level_per_step(kernel):
    objective = SpreadELBO(noise_std=LinearAnneal(start=1.0, end=0.1, steps=100), kernel=kernel)
    x = torch.zeros(20000, 2)
    g = torch.Generator().manual_seed(0)
    for step, level in [(0, 1.0), (50, 0.55), (100, 0.1), (10**6, 0.1), (None, 0.1)]:
        noise = objective.perturb(x, g, step)
        assert float(noise.std()) == pytest.approx(level, rel=0.03), step
    assert objective.noise_std == 0.1  # evaluation level
    vae = DiscreteVAE(2, BernoulliLatent())
    assert float(objective.terms(x[:8], vae, step=50).values["noise_std"]) == pytest.approx(0.55)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_bad_noise_is_refused(bad):
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        SpreadELBO(noise_std=bad)
    with pytest.raises(ValueError, match="noise_std must be >= 0"):
        DenoisingELBO(noise_std=bad)


def _gauss_vae(seed: int = 0, decoder=None) -> "GaussianVAE":
    from lightning_vae.latents import GaussianLatent
    from lightning_vae.nets import GaussianVAE

    torch.manual_seed(seed)
    return GaussianVAE(D, GaussianLatent(dim=2, n_samples=1, iwae_samples=8), decoder=decoder)


def test_iwae_with_one_draw_is_the_single_sample_elbo():
    """K = 1: log w = log p(y|z) + log p(z) - log q(z|y), the single-draw ELBO estimate;
    its mean over draws is the ELBO with the exact KL (up to Monte Carlo error)."""
    from lightning_vae.nets import importance_weights, log_mean_exp
    from lightning_vae.objectives import normal_log_prob

    vae, y = _gauss_vae(), _x(16)
    eps = torch.randn(1, 16, 2, generator=torch.Generator().manual_seed(0))
    ll, ratio, kl, _ = importance_weights(vae, y, eps, normal_log_prob)
    torch.testing.assert_close(log_mean_exp(ll + ratio), (ll + ratio)[0])
    many = torch.randn(20000, 16, 2, generator=torch.Generator().manual_seed(1))
    ll, ratio, kl, _ = importance_weights(vae, y, many, normal_log_prob)
    single = (ll + ratio)  # (S, B): single-draw ELBO estimates
    se = single.std(0) / math.sqrt(len(single))
    assert torch.all((single.mean(0) - (ll.mean(0) - kl)).abs() < 5 * se + 1e-4)


def test_iwae_grows_with_k_on_average_and_stays_below_log_px():
    """E[IWAE_K] is non-decreasing in K; for a decoder that ignores z the bound is exact."""
    from lightning_vae.nets import importance_weights, log_mean_exp
    from lightning_vae.objectives import normal_log_prob

    vae, y = _gauss_vae(), _x(32)
    g = torch.Generator().manual_seed(0)
    means = []
    for k in (1, 2, 8, 32):
        reps = torch.stack([log_mean_exp(sum(importance_weights(vae, y, torch.randn(k, 32, 2, generator=g),
                                                                 normal_log_prob)[:2]))
                            for _ in range(200)])  # (200, B)
        means.append(float(reps.mean()))
    assert means == sorted(means), means
    assert means[-1] - means[0] > 1e-3  # the test can fail: the bound does move


def test_gaussian_latent_trains_with_every_objective_and_decoder():
    from lightning_vae.objectives import DenoisingELBO

    y = _x(32)
    for objective, decoder in [(ELBO(), None), (SpreadELBO(0.2), None), (DenoisingELBO(0.2), None),
                               (SpreadELBO(0.2, kernel=LaplaceKernel()), None),
                               (SpreadELBO(0.2), DeterministicDecoder()),
                               (SpreadELBO(0.2, kernel=LaplaceKernel()), DeterministicDecoder())]:
        vae = _gauss_vae(decoder=decoder)
        t = objective(y, vae, generator=torch.Generator().manual_seed(0), step=3)
        t.loss.backward()
        assert math.isfinite(float(t.loss)), objective
        assert all(p.grad is not None and p.grad.isfinite().all() for p in vae.parameters())
        assert t.values["kl"] > 0
    vae = _gauss_vae()
    assert vae.log_px(y).shape == (32,)
    assert torch.equal(vae.log_px(y), vae.log_px(y))  # fixed draws: comparable across epochs
    assert vae.sample(10, generator=torch.Generator().manual_seed(0)).shape == (10, D)
