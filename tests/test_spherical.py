"""The wrapped normal on S^m and the uniform prior (lightning_vae.spherical).

References are independent of the code under test where they can be: adaptive quadrature
(scipy) of the radial density, the wrapped normal on the circle summed directly over signed
angles (numpy), the tangent Gaussian, and Monte Carlo draws through the sampler. All in
float64 with fixed generators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.special import logsumexp

from lightning_vae.spherical import (
    K_WRAPS,
    SIGMA_MAX,
    HypersphericalUniform,
    WrappedNormal,
    exp_map,
    sample_uniform,
    sphere_log_area,
    tangent_frame,
    truncation_bound,
    uniform_log_prob,
    wrapped_normal_log_prob,
    wrapped_normal_rsample,
)

F64 = torch.float64
SIGMAS = [0.05, 0.3, 1.0, 2.0, math.pi]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_unit(m: int, seed: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
    x = torch.randn(*shape, m + 1, generator=gen(seed), dtype=F64)
    return x / x.norm(dim=-1, keepdim=True)


def at_distance(mu: torch.Tensor, r: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Points at geodesic distances r ``(N,)`` from mu ``(m+1,)``, in one random tangent direction."""
    t = torch.randn(mu.shape[-1], generator=gen(seed), dtype=F64)
    t = t - (t @ mu) * mu
    t = t / t.norm()
    return torch.cos(r)[:, None] * mu + torch.sin(r)[:, None] * t


def radial_density(m: int, sigma: float, mu: torch.Tensor, n_wraps: int = K_WRAPS):
    """r -> the density of the geodesic distance r: q(r) area(S^(m-1)) sin(r)^(m-1) (scalar)."""
    s = torch.tensor(sigma, dtype=F64)
    log_area = sphere_log_area(m - 1)

    def f(r: float) -> float:
        z = at_distance(mu, torch.tensor([r], dtype=F64))
        log_q = wrapped_normal_log_prob(z, mu, s, n_wraps=n_wraps).item()
        return math.exp(log_q + log_area) * math.sin(r) ** (m - 1)

    return f


def integrate(f, points: list[float] | None = None) -> float:
    value, _ = quad(f, 0.0, math.pi, epsabs=1e-13, epsrel=1e-13, limit=400, points=points)
    return value


# 1. Normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_density_integrates_to_one(m, sigma):
    # quad never evaluates the end points, where sin r = 0 (the m >= 2 caustics at mu and
    # -mu): the radial integrand q(r) sin(r)^(m-1) is finite and smooth on [0, pi].
    mu = random_unit(m, seed=m)
    points = [min(s * sigma, 3.0) for s in (1.0, 3.0)]
    assert integrate(radial_density(m, sigma, mu), points) == pytest.approx(1.0, abs=1e-9)


# 2. The circle ---------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", SIGMAS)
def test_circle_matches_wrapped_normal(sigma):
    theta0 = 0.7
    phi = np.linspace(-math.pi, math.pi, 401)
    mu = torch.tensor([math.cos(theta0), math.sin(theta0)], dtype=F64)
    z = torch.tensor(np.stack([np.cos(theta0 + phi), np.sin(theta0 + phi)], axis=-1))
    got = wrapped_normal_log_prob(z, mu, torch.tensor(sigma, dtype=F64)).numpy()
    # sum over k in -20..20 of N(phi + 2 pi k; 0, sigma), in logs (the tails underflow).
    x = phi[:, None] + 2 * math.pi * np.arange(-20, 21)[None, :]
    want = logsumexp(-0.5 * (x / sigma) ** 2, axis=-1) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# 3. Samples follow the density -----------------------------------------------------------


def geodesic_distances(z: torch.Tensor, mu: torch.Tensor) -> np.ndarray:
    cos_r = z @ mu
    return torch.atan2((z - cos_r[:, None] * mu).norm(dim=-1), cos_r).sort().values.numpy()


def ks_distance(r_sorted: np.ndarray, f) -> float:
    """sup |ECDF - CDF| of sorted draws r against the radial density f (its CDF integrated
    on a fine grid by the trapezoid rule)."""
    grid = np.linspace(0.0, math.pi, 4001)
    dens = np.array([f(g) for g in grid])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
    assert cdf[-1] == pytest.approx(1.0, abs=1e-6)
    ref = np.interp(r_sorted, grid, cdf)
    n = len(r_sorted)
    return max(np.max(np.arange(1, n + 1) / n - ref), np.max(ref - np.arange(n) / n))


def test_samples_follow_density():
    m, sigma, n = 2, 0.7, 200_000
    mu = random_unit(m, seed=3)
    eps = torch.randn(n, m, generator=gen(4), dtype=F64)
    z = wrapped_normal_rsample(mu, torch.tensor(sigma, dtype=F64), eps)
    assert z.shape == (n, m + 1)
    f = radial_density(m, sigma, mu)
    assert ks_distance(geodesic_distances(z, mu), f) < 0.01  # ~1.36 / sqrt(n) = 0.003 at the 5% level

    mean = integrate(lambda t: math.cos(t) * f(t))
    dots = (z @ mu).numpy()
    se = dots.std() / math.sqrt(n)
    assert abs(dots.mean() - mean) < 3 * se

    # The check has teeth: draws at 1.05 sigma fail it.
    z_wrong = wrapped_normal_rsample(mu, torch.tensor(1.05 * sigma, dtype=F64), eps)
    assert ks_distance(geodesic_distances(z_wrong, mu), f) > 0.01


# 4. Exponential map and tangent frame ----------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 4])
def test_exp_map_is_unit_and_preserves_distance(m):
    mu = random_unit(m, seed=5, shape=(64,))
    c = torch.randn(64, m, generator=gen(6), dtype=F64)
    c = c / c.norm(dim=-1, keepdim=True) * torch.rand(64, 1, generator=gen(7), dtype=F64) * math.pi * 0.999
    z = exp_map(mu, c)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(64, dtype=F64), rtol=0, atol=1e-14)
    cos_r = (z * mu).sum(-1)
    r = torch.atan2((z - cos_r[:, None] * mu).norm(dim=-1), cos_r)
    torch.testing.assert_close(r, c.norm(dim=-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3])
def test_exp_map_at_zero_and_its_gradients(m):
    mu = random_unit(m, seed=8)
    torch.testing.assert_close(exp_map(mu, torch.zeros(m, dtype=F64)), mu, rtol=0, atol=0)
    sigma = torch.tensor(0.5, dtype=F64, requires_grad=True)
    for scale in (0.0, 1e-30, 1e-8):
        mu_ = mu.clone().requires_grad_(True)
        c = (scale * torch.ones(m, dtype=F64)).requires_grad_(True)
        z = exp_map(mu_, c)
        grads = torch.autograd.grad((z * torch.arange(1, m + 2)).sum(), (mu_, c))
        assert all(torch.isfinite(g).all() for g in grads), scale
        # d z / d c at 0 is the frame: the tangent vectors
        if scale == 0.0:
            torch.testing.assert_close(grads[1], tangent_frame(mu).T @ torch.arange(1, m + 2, dtype=F64))
        eps = torch.full((1, m), scale, dtype=F64)
        z = wrapped_normal_rsample(mu_, sigma, eps)
        grads = torch.autograd.grad(z.sum(), (mu_, sigma))
        assert all(torch.isfinite(g).all() for g in grads), scale


def _e(i: int, n: int) -> torch.Tensor:
    e = torch.zeros(n, dtype=F64)
    e[i] = 1.0
    return e


@pytest.mark.parametrize("m", [1, 2, 4])
def test_tangent_frame_is_orthonormal_and_tangent(m):
    n = m + 1
    near_pole = _e(0, n) + 1e-9 * torch.ones(n, dtype=F64)
    near_equator = _e(1, n) + 1e-12 * _e(0, n)
    mus = torch.cat(
        [
            random_unit(m, seed=9, shape=(32,)),
            torch.stack([_e(0, n), -_e(0, n), near_pole / near_pole.norm(), -near_pole / near_pole.norm()]),
            torch.stack([near_equator / near_equator.norm(), -near_equator / near_equator.norm(), _e(n - 1, n)]),
        ]
    )
    frame = tangent_frame(mus)
    assert frame.shape == (len(mus), n, m)
    eye = torch.eye(m, dtype=F64).expand(len(mus), m, m)
    torch.testing.assert_close(frame.transpose(-1, -2) @ frame, eye, rtol=0, atol=1e-14)
    torch.testing.assert_close((mus[:, None, :] @ frame)[:, 0], torch.zeros(len(mus), m, dtype=F64), rtol=0, atol=1e-14)
    # At the poles the frame is (e_2, ..., e_{m+1}).
    torch.testing.assert_close(frame[32], torch.eye(n, dtype=F64)[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(frame[33], torch.eye(n, dtype=F64)[:, 1:], rtol=0, atol=0)


def test_tangent_frame_carries_gradients_through_mu():
    raw = torch.tensor([0.3, -0.5, 0.8], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: tangent_frame(x / x.norm()), (raw,))
    for pole in (_e(0, 3), -_e(0, 3)):  # smooth at the poles (no special case there)
        assert torch.autograd.gradcheck(lambda x: tangent_frame(x / x.norm()), (pole.clone().requires_grad_(True),))


# 5. Small sigma: the tangent Gaussian ----------------------------------------------------


@pytest.mark.parametrize("m", [2, 3])
def test_small_sigma_approaches_tangent_gaussian(m):
    mu = random_unit(m, seed=10, shape=(16,))
    eps = torch.randn(16, m, generator=gen(11), dtype=F64)
    log_n = -0.5 * eps.square().sum(-1) - 0.5 * m * math.log(2 * math.pi)
    diffs = []
    for sigma in (1e-1, 1e-2, 1e-3):
        s = torch.full((16,), sigma, dtype=F64)
        z = wrapped_normal_rsample(mu, s, eps)
        diffs.append((wrapped_normal_log_prob(z, mu, s) - (log_n - m * math.log(sigma))).abs().max().item())
    assert diffs[0] > diffs[1] > diffs[2]
    assert diffs[2] < 1e-4
    assert diffs[0] > 1e-4  # the Jacobian matters at sigma = 0.1 (it would be 0 with none)


# 6. Truncation ---------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3])
def test_truncation_is_converged_at_sigma_max(m):
    mu = random_unit(m, seed=12)
    inner = torch.linspace(0.01, math.pi - 0.01, 200)
    r = torch.cat([torch.tensor([1e-9, 1e-4]), inner, torch.tensor([math.pi - 1e-4])]).to(F64)
    z = at_distance(mu, r)
    s = torch.tensor(SIGMA_MAX, dtype=F64)
    base = wrapped_normal_log_prob(z, mu, s)
    more = wrapped_normal_log_prob(z, mu, s, n_wraps=3 * K_WRAPS)
    assert (base - more).abs().max() < 1e-12
    few = wrapped_normal_log_prob(z, mu, s, n_wraps=1)
    assert (few - more).abs().max() > 1e-6  # the comparison can see missing wraps


@pytest.mark.parametrize("m", [1, 2, 3, 6])
def test_truncation_bound_holds(m):
    assert truncation_bound(K_WRAPS, m) < 1e-17
    # The bound dominates the observed error of shorter series (sigma <= pi, any r).
    mu = random_unit(m, seed=13)
    inner = torch.linspace(0.01, math.pi - 0.01, 100)
    r = torch.cat([torch.tensor([1e-6]), inner, torch.tensor([math.pi - 1e-6])]).to(F64)
    z = at_distance(mu, r)
    for sigma in (1.5, 2.5, SIGMA_MAX):
        s = torch.tensor(sigma, dtype=F64)
        exact = wrapped_normal_log_prob(z, mu, s, n_wraps=30)
        for k in (1, 2):
            err = (wrapped_normal_log_prob(z, mu, s, n_wraps=k) - exact).abs().max().item()
            assert err <= truncation_bound(k, m), (sigma, k, err)


def test_truncation_bound_covers_the_documented_dimensions():
    assert max(truncation_bound(K_WRAPS, m) for m in range(1, 19)) < 1e-17
    assert truncation_bound(K_WRAPS, 19) > 1e-17  # the docstring's m <= 18 is tight


# 7. The uniform prior --------------------------------------------------------------------


def test_sphere_area():
    assert math.exp(sphere_log_area(0)) == pytest.approx(2.0, rel=1e-14)
    assert math.exp(sphere_log_area(1)) == pytest.approx(2 * math.pi, rel=1e-14)
    assert math.exp(sphere_log_area(2)) == pytest.approx(4 * math.pi, rel=1e-14)
    assert math.exp(sphere_log_area(3)) == pytest.approx(2 * math.pi**2, rel=1e-14)


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_uniform_log_prob_integrates_to_one(m):
    mu = random_unit(m, seed=14)
    lp = uniform_log_prob(mu)
    assert lp.shape == () and lp.dtype == F64
    # radially: area(S^(m-1)) integral_0^pi sin(r)^(m-1) dr, an independent route to the area
    value = integrate(lambda r: math.exp(lp.item() + sphere_log_area(m - 1)) * math.sin(r) ** (m - 1))
    assert value == pytest.approx(1.0, abs=1e-12)
    assert uniform_log_prob(torch.zeros(7, 3, m + 1)).shape == (7, 3)


@pytest.mark.parametrize("m", [1, 2])
def test_sample_uniform(m):
    n = 100_000
    z = sample_uniform(n, m, generator=gen(15), dtype=F64)
    assert z.shape == (n, m + 1) and z.dtype == F64
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(n, dtype=F64), rtol=0, atol=1e-14)
    se = math.sqrt(1.0 / (m + 1) / n)  # each coordinate has variance 1 / (m + 1)
    assert z.mean(0).abs().max() < 4 * se
    # second moment: E[z z^T] = I / (m + 1)
    torch.testing.assert_close(z.T @ z / n, torch.eye(m + 1, dtype=F64) / (m + 1), rtol=0, atol=0.01)
    torch.testing.assert_close(z, sample_uniform(n, m, generator=gen(15), dtype=F64), rtol=0, atol=0)


# 8. gradcheck ----------------------------------------------------------------------------


POINTS = [  # (m, seed of the random directions); the poles +-e_1 are checked too
    (1, 20),
    (2, 21),
    (3, 22),
]


@pytest.mark.parametrize("m, seed", POINTS)
def test_gradcheck_log_prob(m, seed):
    z = random_unit(m, seed=seed + 100, shape=(4,))
    raws = [random_unit(m, seed=seed, shape=(4,)), _e(0, m + 1).expand(4, -1), -_e(0, m + 1).expand(4, -1)]
    sigma = torch.tensor([0.2, 0.9, 2.0, math.pi], dtype=F64, requires_grad=True)
    for raw in raws:
        raw = raw.clone().requires_grad_(True)
        f = lambda x, s: wrapped_normal_log_prob(z, x / x.norm(dim=-1, keepdim=True), s)  # noqa: E731
        assert torch.autograd.gradcheck(f, (raw, sigma))


@pytest.mark.parametrize("m, seed", POINTS)
def test_gradcheck_rsample(m, seed):
    eps = torch.randn(3, 4, m, generator=gen(seed + 200), dtype=F64)
    raws = [random_unit(m, seed=seed, shape=(4,)), _e(0, m + 1).expand(4, -1), -_e(0, m + 1).expand(4, -1)]
    sigma = torch.tensor([0.2, 0.9, 2.0, math.pi], dtype=F64, requires_grad=True)
    for raw in raws:
        raw = raw.clone().requires_grad_(True)
        f = lambda x, s: wrapped_normal_rsample(x / x.norm(dim=-1, keepdim=True), s, eps)  # noqa: E731
        assert torch.autograd.gradcheck(f, (raw, sigma))


# 9. float32 ------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3])
def test_float32_agrees_with_float64(m):
    mu = random_unit(m, seed=30, shape=(256,))
    sigma = torch.linspace(0.1, 2.0, 256, dtype=F64)
    eps = torch.randn(8, 256, m, generator=gen(31), dtype=F64)
    z64 = wrapped_normal_rsample(mu, sigma, eps)
    z32 = wrapped_normal_rsample(mu.float(), sigma.float(), eps.float())
    assert z32.dtype == torch.float32 and torch.isfinite(z32).all()
    torch.testing.assert_close(z32.double(), z64, rtol=0, atol=1e-5)
    lp64 = wrapped_normal_log_prob(z64, mu, sigma)
    lp32 = wrapped_normal_log_prob(z64.float(), mu.float(), sigma.float())
    assert lp32.dtype == torch.float32 and torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_log_prob_is_finite_at_mu_and_the_antipode(dtype, m):
    mu = random_unit(m, seed=32).to(dtype).requires_grad_(True)
    z = torch.stack([mu.detach(), -mu.detach()])
    sigma = torch.tensor(1.0, dtype=dtype, requires_grad=True)
    lp = wrapped_normal_log_prob(z, mu, sigma)
    assert torch.isfinite(lp).all()
    grads = torch.autograd.grad(lp.sum(), (mu, sigma))
    assert all(torch.isfinite(g).all() for g in grads)
    if m == 1:  # the wrapped normal on the circle has no caustic
        want = [
            logsumexp([-0.5 * (2 * math.pi * k) ** 2 for k in range(-20, 21)]) - 0.5 * math.log(2 * math.pi),
            logsumexp([-0.5 * (math.pi + 2 * math.pi * k) ** 2 for k in range(-20, 21)]) - 0.5 * math.log(2 * math.pi),
        ]
        np.testing.assert_allclose(lp.detach().double().numpy(), want, rtol=1e-5)


# The distributions objects ---------------------------------------------------------------


def test_wrapped_normal_distribution():
    m, b = 2, 5
    mu = random_unit(m, seed=40, shape=(b,)).requires_grad_(True)
    sigma = torch.linspace(0.1, 1.5, b, dtype=F64).requires_grad_(True)
    q = WrappedNormal(mu, sigma)
    assert isinstance(q, torch.distributions.Distribution)
    assert q.batch_shape == (b,) and q.event_shape == (m + 1,) and q.has_rsample
    z = q.rsample((7,), generator=gen(41))
    assert z.shape == (7, b, m + 1)
    # the noise is the generator's standard normal, passed through wrapped_normal_rsample
    eps = torch.randn(7, b, m, generator=gen(41), dtype=F64)
    torch.testing.assert_close(z, wrapped_normal_rsample(mu, sigma, eps), rtol=0, atol=0)
    torch.testing.assert_close(q.sample((7,), generator=gen(41)), z.detach(), rtol=0, atol=0)
    assert not q.sample((7,), generator=gen(41)).requires_grad
    lp = q.log_prob(z)
    assert lp.shape == (7, b)
    torch.testing.assert_close(lp, wrapped_normal_log_prob(z, mu, sigma))
    g_mu, g_sigma = torch.autograd.grad(lp.sum(), (mu, sigma))
    assert torch.isfinite(g_mu).all() and torch.isfinite(g_sigma).all() and (g_sigma != 0).all()
    # broadcasting: one sigma for the batch
    assert WrappedNormal(mu, torch.tensor(0.5, dtype=F64)).batch_shape == (b,)


def test_hyperspherical_uniform_distribution():
    p = HypersphericalUniform(2, dtype=F64)
    assert p.batch_shape == () and p.event_shape == (3,)
    z = p.sample((4, 6), generator=gen(42))
    assert z.shape == (4, 6, 3) and z.dtype == F64
    torch.testing.assert_close(z.reshape(-1, 3), sample_uniform(24, 2, generator=gen(42), dtype=F64), rtol=0, atol=0)
    torch.testing.assert_close(p.log_prob(z), torch.full((4, 6), -math.log(4 * math.pi), dtype=F64))
    assert p.entropy().item() == pytest.approx(math.log(4 * math.pi), rel=1e-15)
    assert p.sample().shape == (3,)


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 3.0])
def test_entropy_and_mean_by_quadrature_match_the_draws(m, sigma):
    """WrappedNormal.entropy() and .mean (quadrature over r) against 200k draws: within 4
    standard errors; the quadrature's total mass is 1 to 1e-10; at small sigma the entropy
    is the tangent Gaussian's, m/2 log(2 pi e sigma^2), and E[cos r] -> exp(-sigma^2/2) on
    the circle (exact there: the wrapped normal's characteristic function)."""
    from lightning_vae.spherical import WrappedNormal, radial_expectation

    sig = torch.tensor([sigma], dtype=torch.float64)
    mu = torch.zeros(1, m + 1, dtype=torch.float64)
    mu[0, 0] = 1.0
    d = WrappedNormal(mu, sig)
    z = d.sample((200_000,), generator=torch.Generator().manual_seed(0))
    log_q = d.log_prob(z)
    se = log_q.std().item() / math.sqrt(len(z))
    assert abs(d.entropy().item() - (-log_q).mean().item()) < 4 * se + 1e-12
    cos = z[..., 0]
    assert abs(d.mean[0, 0].item() - cos.mean().item()) < 4 * cos.std().item() / math.sqrt(len(z)) + 1e-12
    assert torch.allclose(d.mean[0, 1:], torch.zeros(m, dtype=torch.float64))
    mass = radial_expectation(sig, m, lambda r, lq: torch.ones_like(r))
    assert abs(mass.item() - 1) < 1e-10
    if m == 1:
        assert d.mean[0, 0].item() == pytest.approx(math.exp(-sigma**2 / 2), abs=1e-10)
    if sigma == 0.01:
        assert d.entropy().item() == pytest.approx(m / 2 * math.log(2 * math.pi * math.e * sigma**2), abs=1e-3)
