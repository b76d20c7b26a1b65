"""Linear ICA by EM (lightning_vae/ica.py): the freeze at gamma = 0, the importance-sampled
E-step against closed-form posterior moments, the permutation and sign matching."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vae.ica import (e_step, em_step, ica_data, laplace_log_prob, match_columns, relative_error,
                               spread_noise)

from conftest import gen

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sources_have_unit_variance_and_the_data_are_reproducible():
    d = ica_data(200_000, 4, 3, 0.1, gen(0))
    assert abs(float(d.z.var()) - 1) < 0.01 and abs(float(d.z.mean())) < 0.01
    assert (d.a.abs() <= 1).all()
    kurtosis = float((d.z ** 4).mean() / d.z.var() ** 2)
    assert abs(kurtosis - 6) < 0.3  # a Laplace's
    again = ica_data(200_000, 4, 3, 0.1, gen(0))
    assert torch.equal(d.x, again.x) and torch.equal(d.a, again.a)
    assert abs(float((d.x - d.z @ d.a.T).std()) - 0.1) < 0.001  # the observation noise: gamma 0.1


def test_exact_em_at_gamma_zero_is_a_fixed_point_for_a_square_a():
    """At gamma = 0 the posterior is the point mass A^{-1} x, and the M-step returns A
    itself: standard EM cannot move (the freeze), whatever A it starts from."""
    d = ica_data(5000, 5, 5, 0.0, gen(1))
    start = d.a + 0.3 * torch.randn(5, 5, dtype=torch.float64, generator=gen(2))  # not the truth
    new, stats = em_step(d.x, start, 0.0, s_z=10, generator=gen(3))
    torch.testing.assert_close(new, start, rtol=1e-10, atol=1e-10)
    assert relative_error(new, d.a) > 0.05  # and it is stuck away from the truth


def test_importance_sampled_moments_match_the_gaussian_posterior():
    """With a N(0, I) prior the posterior is Gaussian: cov = (A^T A / v + I)^{-1},
    mean = cov A^T y / v. The E-step's sums of E[y z^T] and E[z z^T] over 20 points agree
    with the exact ones to within their Monte Carlo error."""
    torch.manual_seed(0)
    a = 2 * torch.rand(6, 3, dtype=torch.float64, generator=gen(4)) - 1
    y = torch.randn(20, 6, dtype=torch.float64, generator=gen(5))
    v = 0.5

    def gaussian(z):
        return (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).sum(-1)

    stats = e_step(y, a, v, s_z=200_000, generator=gen(6), log_prior=gaussian)
    cov = torch.linalg.inv(a.T @ a / v + torch.eye(3, dtype=torch.float64))
    mean = y @ a @ cov / v  # (N, Z)
    torch.testing.assert_close(stats.yz, y.T @ mean, rtol=0, atol=0.02)
    torch.testing.assert_close(stats.zz, len(y) * cov + mean.T @ mean, rtol=0, atol=0.05)
    # log p(y) exactly: y ~ N(0, A A^T + v I)
    exact = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64),
                                                   a @ a.T + v * torch.eye(6, dtype=torch.float64)).log_prob(y).mean()
    assert abs(float(stats.log_lik - exact)) < 1e-3
    assert float(stats.ess) > 0.5 * 200_000  # a good proposal for a Gaussian prior


def test_the_laplace_prior_is_normalised_with_unit_variance():
    z = torch.linspace(-30, 30, 600_001, dtype=torch.float64)[:, None]
    density = laplace_log_prob(z).exp()
    step = float(z[1, 0] - z[0, 0])
    assert abs(float(density.sum()) * step - 1) < 1e-6
    assert abs(float((density * z[:, 0] ** 2).sum()) * step - 1) < 1e-6


def test_matching_recovers_a_permuted_sign_flipped_copy_with_error_zero():
    a = 2 * torch.rand(8, 5, dtype=torch.float64, generator=gen(7)) - 1
    perm = torch.tensor([3, 0, 4, 1, 2])
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    scrambled = a[:, perm] * signs
    assert relative_error(scrambled, a) == 0.0
    assert torch.equal(match_columns(scrambled, a), a)
    assert relative_error(a + 0.01, a) > 0  # and the error sees a real difference


@pytest.mark.slow  # ~3 s: the default suite keeps the freeze itself (above)
def test_spread_em_moves_where_standard_em_is_frozen():
    """gamma = 0, square A, a wrong start: standard EM returns its start; one spread EM
    step (sigma by the paper's rule) changes A, and twenty bring it closer to the truth."""
    d = ica_data(4000, 4, 4, 0.0, gen(8))
    start = d.a + 0.4 * torch.randn(4, 4, dtype=torch.float64, generator=gen(9))
    a, g = start.clone(), gen(10)
    for _ in range(20):
        a, _ = em_step(d.x, a, 0.0, s_z=200, generator=g, spread=spread_noise(a))
    assert relative_error(a, d.a) < relative_error(start, d.a)
    frozen, _ = em_step(d.x, start, 0.0, s_z=200, generator=gen(11))
    torch.testing.assert_close(frozen, start, rtol=1e-10, atol=1e-10)


def test_the_spread_rule_and_bad_inputs():
    a = torch.full((3, 2), 0.5, dtype=torch.float64)
    assert spread_noise(a) == pytest.approx(2.5 * math.sqrt(0.5))  # mean of A A^T = 2 x 0.25
    assert spread_noise(torch.zeros(3, 2)) == 0.001
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got -1"):
        ica_data(10, 2, 2, -1.0, gen(0))
    with pytest.raises(ValueError, match="n, x_dim and z_dim must be >= 1"):
        ica_data(0, 2, 2, 0.1, gen(0))


def test_the_proposal_factor_falls_back_to_eigenvectors_where_cholesky_fails(monkeypatch):
    """Where a repeat's Cholesky fails (an A^T A too ill-conditioned), its factor comes from
    the eigendecomposition: still L L^T = v (A^T A)^{-1} and the same log det; an exactly
    singular A^T A gives a finite factor instead of an error."""
    from lightning_vae import ica

    a = torch.randn(3, 8, 4, dtype=torch.float64, generator=gen(12))
    gram = a.transpose(-1, -2) @ a
    v = torch.tensor([0.5, 0.2, 1e-4], dtype=torch.float64)
    exact, exact_log_det = ica.proposal_factor(gram, v)
    cholesky_ex = torch.linalg.cholesky_ex

    def failing(m):
        chol, info = cholesky_ex(m)
        return chol, torch.tensor([0, 1, 0], dtype=info.dtype)  # repeat 1 "fails"

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing)
    factor, log_det = ica.proposal_factor(gram, v)
    torch.testing.assert_close(factor[[0, 2]], exact[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(factor[1] @ factor[1].T, v[1] * torch.linalg.inv(gram[1]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(log_det, exact_log_det, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(factor[1], exact[1])  # the other factor, not the Cholesky one
    monkeypatch.setattr(torch.linalg, "cholesky_ex", cholesky_ex)
    a[1, :, 3] = a[1, :, 2]  # exactly rank deficient
    factor, log_det = ica.proposal_factor(a.transpose(-1, -2) @ a, v)
    assert factor.isfinite().all() and log_det.isfinite().all()
