"""Noise kernels, the convolved decoder likelihood, and noise-level schedules.

References are independent of the code under test: numerical quadrature (composite Simpson
in float64), Monte Carlo convolution, and torch.distributions.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.distributions import Laplace, Normal

from lightning_vae.kernels import GaussianKernel, LaplaceKernel, convolved_log_lik
from lightning_vae.schedules import Constant, CosineAnneal, LinearAnneal

F64 = torch.float64
KERNELS = [GaussianKernel(), LaplaceKernel()]
IDS = ["gaussian", "laplace"]
# |estimate - truth| <= Z_TOL standard errors: a correct formula fails one such comparison
# with probability ~6e-7 (two-sided normal tail), and the seeds are fixed anyway.
Z_TOL = 5.0


def simpson(f: torch.Tensor, h: float, dim: int = -1) -> torch.Tensor:
    """Composite Simpson over an odd number of equally spaced points along ``dim``."""
    f = f.movedim(dim, -1)
    assert f.shape[-1] % 2 == 1
    return h / 3 * (f[..., 0] + f[..., -1] + 4 * f[..., 1:-1:2].sum(-1)
                    + 2 * f[..., 2:-1:2].sum(-1))


def symmetric_grid(half_width: float, n_half: int) -> tuple[torch.Tensor, float]:
    """2 n_half + 1 points on [-L, L]; 0 is a point and n_half is even, so no Simpson
    panel straddles 0, where the Laplace density has its kink."""
    assert n_half % 2 == 0
    t = torch.linspace(-half_width, half_width, 2 * n_half + 1, dtype=F64)
    return t, half_width / n_half


def laplace_b(sigma: float) -> float:
    return sigma / math.sqrt(2)


def normal(loc, scale) -> Normal:
    # Python-float parameters would make float32 distributions: references must be float64.
    return Normal(torch.as_tensor(loc, dtype=F64), torch.as_tensor(scale, dtype=F64))


def laplace(loc, scale) -> Laplace:
    return Laplace(torch.as_tensor(loc, dtype=F64), torch.as_tensor(scale, dtype=F64))


def gauss_laplace_quadrature(u: float, s: float, b: float) -> float:
    """p(u) = int Laplace(t; 0, b) N(u - t; 0, s^2) dt by Simpson, step min(s, b)/100.

    The log integrand f(t) = -|t|/b - (u - t)^2/(2 s^2) + const is concave with curvature
    >= 1/s^2, so f < max f - 50 beyond 10 s from its maximiser t*; and f <= -|t|/b while
    max f >= f(u) = -|u|/b, so also beyond |t| = |u| + 50 b. Outside both: ~e^-50 of p.
    """
    c = s * s / b
    t_star = u - c if u > c else (u + c if u < -c else 0.0)
    lo, hi = max(t_star - 10 * s, -abs(u) - 50 * b), min(t_star + 10 * s, abs(u) + 50 * b)
    pieces = [(lo, 0.0), (0.0, hi)] if lo < 0 < hi else [(lo, hi)]  # the kink at 0 is a node
    total = 0.0
    for a, z in pieces:
        n = 2 * math.ceil((z - a) / (2 * min(s, b) / 100))  # even number of intervals
        t = torch.linspace(a, z, n + 1, dtype=F64)
        f = torch.exp(-t.abs() / b) / (2 * b) * normal(0.0, s).log_prob(u - t).exp()
        total += simpson(f, (z - a) / n).item()
    return total


# --- densities ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
@pytest.mark.parametrize("sigma", [0.05, 1.0, 3.0])
def test_density_integrates_to_one(kernel, sigma):
    t, h = symmetric_grid(60 * sigma, 20_000)  # (T,)
    mass = simpson(kernel.log_prob(t[:, None], sigma).exp(), h)
    assert abs(mass.item() - 1) < 1e-10


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_density_2d_is_a_product_that_integrates_to_one(kernel):
    sigma = 0.7
    # 15 sigma: the Laplace tails beyond hold 2 e^-21 = 1e-9; Simpson's error is
    # ~ (h/b)^4 / 180 = 2e-8 per axis.
    t, h = symmetric_grid(15 * sigma, 500)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1)  # (T, T, 2)
    log_p = kernel.log_prob(grid, sigma)  # (T, T)
    marginal = kernel.log_prob(t[:, None], sigma)
    torch.testing.assert_close(log_p, marginal[:, None] + marginal[None, :])
    assert abs(simpson(simpson(log_p.exp(), h), h).item() - 1) < 1e-7


def test_densities_match_torch_distributions():
    u = torch.linspace(-5, 5, 41, dtype=F64)[:, None]
    sigma = 1.3
    torch.testing.assert_close(GaussianKernel().log_prob(u, sigma),
                               normal(0.0, sigma).log_prob(u).sum(-1))
    torch.testing.assert_close(LaplaceKernel().log_prob(u, sigma),
                               laplace(0.0, laplace_b(sigma)).log_prob(u).sum(-1))


# --- sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel, excess_kurtosis", [(KERNELS[0], 0.0), (KERNELS[1], 3.0)],
                         ids=IDS)
def test_sample_moments(kernel, excess_kurtosis):
    n, sigma = 1_000_000, 0.8
    u = kernel.sample((n,), sigma, torch.Generator().manual_seed(0), dtype=F64)
    # Standard errors for n draws: mean sigma/sqrt(n); std sigma sqrt((kurt - 1)/(4n));
    # excess kurtosis ~ sqrt(24/n) for a Gaussian and ~ sqrt(2500/n) for a Laplace
    # (mu_8/sigma^8 = 2520), i.e. 0.005 and 0.05 here.
    kurt = excess_kurtosis + 3
    assert abs(u.mean().item()) < Z_TOL * sigma / math.sqrt(n)
    assert abs(u.std().item() / sigma - 1) < Z_TOL * math.sqrt((kurt - 1) / (4 * n))
    z = (u - u.mean()) / u.std()
    se_kurt = math.sqrt((24 if excess_kurtosis == 0 else 2500) / n)
    assert abs((z**4).mean().item() - kurt) < Z_TOL * se_kurt


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_sampling_is_reproducible_with_a_generator(kernel):
    draw = lambda seed: kernel.sample((3, 4), 0.5, torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = draw(7), draw(7), draw(8)
    assert a.shape == (3, 4) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert kernel.sample((3,), 0.5, dtype=F64).dtype == F64
    assert torch.equal(kernel.sample((5,), 0.0, torch.Generator().manual_seed(0)), torch.zeros(5))


def test_laplace_draws_are_finite_in_float32():
    u = LaplaceKernel().sample((2_000_000,), 1.0, torch.Generator().manual_seed(3))
    assert torch.isfinite(u).all()


# --- the convolved likelihood against Monte Carlo -----------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_deterministic_decoder_matches_monte_carlo_bin_masses(kernel):
    """p(y) = k(y - loc) for x = loc: bin masses of the formula, by quadrature, equal the
    frequencies of loc + u, u ~ kernel, within Z_TOL binomial standard errors."""
    n, sigma, loc = 400_000, 0.6, 0.3
    y = loc + kernel.sample((n,), sigma, torch.Generator().manual_seed(1), dtype=F64)
    edges = loc + sigma * torch.linspace(-4, 4, 17, dtype=F64)  # loc is an edge: no kink inside
    counts = torch.histogram(y, edges).hist
    per_bin = 2000
    t = edges[:-1, None] + (edges[1:] - edges[:-1])[:, None] * torch.linspace(
        0, 1, per_bin + 1, dtype=F64)  # (bins, per_bin + 1)
    log_p = convolved_log_lik(kernel, t.reshape(-1, 1), torch.tensor([[loc]], dtype=F64),
                              None, sigma)  # (bins * (per_bin + 1), 1)
    mass = simpson(log_p.reshape(t.shape).exp(), (edges[1] - edges[0]).item() / per_bin)
    se = (mass * (1 - mass) / n).sqrt()
    assert ((counts / n - mass).abs() <= Z_TOL * se).all()


def gaussian_decoder_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Points near and far from the means; decoder stds below and above the noise std."""
    y = torch.tensor([[0.0, 0.0], [0.3, -0.2], [1.5, 0.5], [-1.0, 1.2]], dtype=F64)  # (B, D)
    loc = torch.tensor([[0.0, 0.0], [1.0, -0.5], [-1.5, 1.0]], dtype=F64)  # (K, D)
    scale = torch.tensor([[0.2, 0.5], [1.0, 0.3], [0.4, 0.8]], dtype=F64)  # (K, D)
    return y, loc, scale, 0.5


def mc_convolution(kernel, y, loc, scale, sigma, n=200_000, seed=0):
    """E_{u ~ kernel} N(y - u; loc, scale^2) and its standard error, ``(B, K)`` each."""
    u = kernel.sample((n, y.shape[-1]), sigma, torch.Generator().manual_seed(seed), dtype=F64)
    p = Normal(loc, scale).log_prob((y - u[:, None, :])[:, :, None, :]).sum(-1).exp()  # (N, B, K)
    return p.mean(0), p.std(0) / math.sqrt(n)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_gaussian_decoder_matches_monte_carlo_convolution(kernel):
    y, loc, scale, sigma = gaussian_decoder_case()
    estimate, se = mc_convolution(kernel, y, loc, scale, sigma)
    exact = convolved_log_lik(kernel, y, loc, scale, sigma).exp()  # (B, K)
    # The comparison has power: within 5% of p for the typical point, 50% in the far tail
    # (p ~ 1e-5 there, where few draws land near the decoder mean).
    assert (se / exact).median() < 0.01 and (se / exact).max() < 0.1
    assert ((estimate - exact).abs() <= Z_TOL * se).all()


def test_monte_carlo_comparison_rejects_the_gaussian_approximation_of_the_laplace():
    """The same comparison tells the Laplace convolution from N(loc, scale^2 + sigma^2),
    which has the same variance: the MC test above is not vacuous."""
    y, loc, scale, sigma = gaussian_decoder_case()
    estimate, se = mc_convolution(LaplaceKernel(), y, loc, scale, sigma)
    wrong = convolved_log_lik(GaussianKernel(), y, loc, scale, sigma).exp()
    assert ((estimate - wrong).abs() / se).max() > 4 * Z_TOL


def test_gaussian_gaussian_is_the_normal_with_added_variances():
    y, loc, scale, sigma = gaussian_decoder_case()
    expected = Normal(loc, (scale**2 + sigma**2).sqrt()).log_prob(y[:, None, :]).sum(-1)
    torch.testing.assert_close(convolved_log_lik(GaussianKernel(), y, loc, scale, sigma),
                               expected, rtol=1e-12, atol=1e-12)


# --- Gaussian * Laplace closed form -------------------------------------------------------


@pytest.mark.parametrize("s", [0.05, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_gaussian_laplace_matches_quadrature(s, sigma):
    u = [-4.0, -1.0, -0.1, 0.0, 0.03, 0.5, 2.0, 6.0]
    closed = LaplaceKernel().convolved_log_prob(
        torch.tensor(u, dtype=F64)[:, None], torch.full((len(u), 1), s, dtype=F64), sigma).exp()
    quad = torch.tensor([gauss_laplace_quadrature(v, s, laplace_b(sigma)) for v in u], dtype=F64)
    assert ((closed - quad).abs() / quad).max() < 1e-8


def test_gaussian_laplace_tends_to_the_laplace_as_the_decoder_std_vanishes():
    sigma, s = 0.5, 1e-6
    b = laplace_b(sigma)
    u = torch.linspace(-3, 3, 25, dtype=F64)[:, None]  # includes 0, where the kink is smoothed
    got = LaplaceKernel().convolved_log_prob(u, torch.full_like(u, s), sigma)
    # The smoothing changes the density by O(s/b) at the kink, O(s^2/b^2) away from it.
    torch.testing.assert_close(got, laplace(0.0, b).log_prob(u).sum(-1), rtol=0, atol=2 * s / b)


@pytest.mark.parametrize("ratio", [10.0, 20.0, 40.0])
def test_gaussian_laplace_tends_to_the_normal_of_same_variance_for_a_broad_decoder(ratio):
    """For s >> b the sum is nearly N(0, s^2 + sigma^2) (variances add; the Laplace has
    sigma^2 = 2 b^2). The first correction is Edgeworth's, (g2/24) He4(z), with the excess
    kurtosis g2 = kappa_4 / var^2 = 3 sigma^4 / (s^2 + sigma^2)^2; what remains is O(g2 b^2/s^2)."""
    sigma = 0.5
    s = ratio * laplace_b(sigma)
    total = math.hypot(s, sigma)
    z = torch.linspace(-3, 3, 13, dtype=F64)
    got = LaplaceKernel().convolved_log_prob((z * total)[:, None], torch.full((13, 1), s,
                                             dtype=F64), sigma)
    log_normal = normal(0.0, total).log_prob(z * total)
    g2 = 3 * sigma**4 / (s**2 + sigma**2) ** 2
    edgeworth = g2 / 24 * (z**4 - 6 * z**2 + 3)
    assert ((got - log_normal).abs() <= 1.3 * g2).all()
    assert ((got - log_normal - edgeworth).abs() <= 3 * g2 / ratio**2).all()


EXTREME_U_OVER_B = [-1e3, -30.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 30.0, 1e3]
EXTREME_S = [1e-6, 1e-3, 0.1, 1.0, 10.0, 700.0]  # with b = 0.707: s/b from 1.4e-6 to 1e3


def extreme_log_lik(dtype):
    """Gaussian * Laplace at the extreme inputs; values and gradients w.r.t. y and scale."""
    sigma = 1.0
    b = laplace_b(sigma)
    u, s = torch.meshgrid(torch.tensor(EXTREME_U_OVER_B, dtype=F64) * b,
                          torch.tensor(EXTREME_S, dtype=F64), indexing="ij")
    y = u.reshape(-1, 1).to(dtype).requires_grad_()  # (B, 1)
    scale = s.reshape(-1, 1).to(dtype).requires_grad_()  # (K, 1), K = B: use the diagonal
    log_p = convolved_log_lik(LaplaceKernel(), y, torch.zeros_like(scale), scale, sigma)
    diag = log_p.diagonal()
    grad_y, grad_scale = torch.autograd.grad(diag.sum(), (y, scale))
    return diag.detach(), grad_y[:, 0], grad_scale[:, 0], s.reshape(-1), b


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gaussian_laplace_is_finite_with_finite_gradients_at_extremes(dtype):
    values, grad_y, grad_scale, _, _ = extreme_log_lik(dtype)
    for t in (values, grad_y, grad_scale):
        assert torch.isfinite(t).all()


def test_gaussian_laplace_float32_agrees_with_float64_at_extremes():
    """Stable, not just finite: float32 loses nothing beyond its rounding. Gradients are
    compared on their natural scale 1/max(s, b). Measured failures this catches, both at
    s/b = 1e3: torch's own erfcx gradient (d/ds 5% off, 0.018 of the scale) and the direct
    form exp(s^2/(2b^2) - u/b) Phi(a) in log space alone (0.04 off in the value)."""
    v32, gy32, gs32, s, b = extreme_log_lik(torch.float32)
    v64, gy64, gs64, _, _ = extreme_log_lik(F64)
    assert ((v32.double() - v64).abs() / v64.abs().clamp(min=1)).max() < 1e-6
    natural = 1 / s.clamp(min=b)
    for g32, g64 in ((gy32, gy64), (gs32, gs64)):
        assert ((g32.double() - g64).abs() / (g64.abs() + natural)).max() < 1e-4


def test_gaussian_laplace_gradcheck():
    # Both branches of the stable form (a = u/s - s/b of either sign) and both sides of the
    # continued-fraction switch (s/b = 2 and 6 put -a/sqrt2 on either side of 3 at u = 0).
    b = laplace_b(0.7)
    u = torch.tensor([-2.0, -0.3, 0.0, 0.1, 1.5, 0.05], dtype=F64)[:, None].requires_grad_()
    s = torch.tensor([0.2, 2 * b, 6 * b, 0.5, 0.05, 1.0], dtype=F64)[:, None].requires_grad_()
    assert torch.autograd.gradcheck(lambda u, s: LaplaceKernel().convolved_log_prob(u, s, 0.7),
                                    (u, s))


# --- special cases, shapes, errors --------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_zero_noise_is_the_plain_gaussian_likelihood(kernel):
    y, loc, scale, _ = gaussian_decoder_case()
    expected = Normal(loc, scale).log_prob(y[:, None, :]).sum(-1)
    torch.testing.assert_close(convolved_log_lik(kernel, y, loc, scale, 0.0), expected)


@pytest.mark.parametrize("kernel, reference", [(KERNELS[0], lambda sigma: normal(0.0, sigma)),
                                               (KERNELS[1], lambda sigma: laplace(0.0, laplace_b(sigma)))],
                         ids=IDS)
def test_deterministic_decoder_is_the_kernel_around_the_mean_and_the_gaussian_limit(kernel,
                                                                                    reference):
    y, loc, scale, sigma = gaussian_decoder_case()
    got = convolved_log_lik(kernel, y, loc, None, sigma)  # (B, K)
    expected = reference(sigma).log_prob(y[:, None, :] - loc).sum(-1)
    torch.testing.assert_close(got, expected)
    tiny = torch.full_like(scale, 1e-7)
    limit = convolved_log_lik(kernel, y, loc, tiny, sigma)
    torch.testing.assert_close(limit, got, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
def test_deterministic_decoder_without_noise_raises(kernel):
    y, loc, _, _ = gaussian_decoder_case()
    with pytest.raises(ValueError, match="a deterministic decoder needs a spread objective with "
                                         "noise > 0: its likelihood without noise is a delta"):
        convolved_log_lik(kernel, y, loc, None, 0.0)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_invalid_noise_level_raises(sigma):
    y, loc, scale, _ = gaussian_decoder_case()
    message = f"noise_std must be a finite number >= 0, got {sigma}"
    with pytest.raises(ValueError, match=message):
        convolved_log_lik(LaplaceKernel(), y, loc, scale, sigma)
    with pytest.raises(ValueError, match=message):
        LaplaceKernel().sample((2,), sigma)
    with pytest.raises(ValueError, match=r"noise_std must be > 0 for a density, got 0.0"):
        GaussianKernel().log_prob(y, 0.0)


@pytest.mark.parametrize("kernel", KERNELS, ids=IDS)
@pytest.mark.parametrize("deterministic", [False, True])
def test_leading_dims_and_vmap_match_a_loop(kernel, deterministic):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 5, 2, generator=g)  # (E, B, D)
    loc = torch.randn(3, 4, 2, generator=g)  # (E, K, D)
    scale = None if deterministic else torch.rand(3, 4, 2, generator=g) + 0.05
    sigma = 0.4
    looped = torch.stack([convolved_log_lik(kernel, y[e], loc[e],
                                            None if scale is None else scale[e], sigma)
                          for e in range(3)])  # (E, B, K)
    batched = convolved_log_lik(kernel, y, loc, scale, sigma)
    assert batched.shape == (3, 5, 4)
    torch.testing.assert_close(batched, looped)
    in_dims = (0, 0, None if scale is None else 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every op has a batching rule: no per-member loop
        mapped = torch.func.vmap(
            lambda y, loc, scale: convolved_log_lik(kernel, y, loc, scale, sigma),
            in_dims=in_dims)(y, loc, scale)
    torch.testing.assert_close(mapped, looped)


def test_kernel_repr():
    assert [repr(k) for k in KERNELS] == ["GaussianKernel()", "LaplaceKernel()"]


# --- schedules ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [LinearAnneal, CosineAnneal])
@pytest.mark.parametrize("start, end", [(1.0, 0.1), (0.0, 0.5)])
def test_anneal_endpoints_midpoint_and_evaluation(cls, start, end):
    steps = 100
    sched = cls(start, end, steps)
    assert sched.value(0) == start
    assert sched.value(steps) == end and sched.value(10 * steps) == end
    assert sched.value(None) == end
    # Both shapes are symmetric about the middle of the anneal.
    assert sched.value(steps // 2) == pytest.approx((start + end) / 2, abs=1e-12)


@pytest.mark.parametrize("cls", [LinearAnneal, CosineAnneal])
@pytest.mark.parametrize("start, end", [(1.0, 0.1), (0.0, 0.5)])
def test_anneal_is_monotone_from_start_to_end(cls, start, end):
    values = [cls(start, end, 37).value(step) for step in range(60)]
    diffs = [b - a for a, b in zip(values, values[1:])]
    sign = 1 if end > start else -1
    assert all(sign * d >= 0 for d in diffs)
    assert all(min(start, end) <= v <= max(start, end) for v in values)


def test_cosine_follows_its_formula_and_is_flat_at_both_ends():
    start, end, steps = 0.8, 0.2, 1000
    sched = CosineAnneal(start, end, steps)
    for step in (0, 1, 250, 600, 999):
        want = end + (start - end) * 0.5 * (1 + math.cos(math.pi * step / steps))
        assert sched.value(step) == pytest.approx(want, abs=1e-15)
    first, last = start - sched.value(1), sched.value(steps - 1) - end
    middle = sched.value(steps // 2) - sched.value(steps // 2 + 1)
    assert first < middle / 100 and last < middle / 100
    linear = LinearAnneal(start, end, steps)
    assert linear.value(1) - linear.value(2) == pytest.approx((start - end) / steps)


def test_constant():
    sched = Constant(0.3)
    assert [sched.value(s) for s in (0, 5, 10**6, None)] == [0.3] * 4


@pytest.mark.parametrize("make, message", [
    (lambda: Constant(-0.1), "value must be a finite number >= 0, got -0.1"),
    (lambda: Constant(float("nan")), "value must be a finite number >= 0, got nan"),
    (lambda: LinearAnneal(-1.0, 0.1, 10), "start must be a finite number >= 0, got -1.0"),
    (lambda: CosineAnneal(1.0, float("nan"), 10), "end must be a finite number >= 0, got nan"),
    (lambda: LinearAnneal(1.0, float("inf"), 10), "end must be a finite number >= 0, got inf"),
    (lambda: LinearAnneal(1.0, 0.1, 0), "steps must be an integer >= 1, got 0"),
    (lambda: CosineAnneal(1.0, 0.1, 2.5), "steps must be an integer >= 1, got 2.5"),
    (lambda: LinearAnneal(1.0, 0.1, 10).value(-1), "step must be >= 0 (or None for evaluation), got -1"),
])
def test_schedule_errors(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert str(info.value) == message


def test_schedule_repr():
    assert repr(Constant(0.3)) == "Constant(value=0.3)"
    assert repr(LinearAnneal(1, 0.1, 10)) == "LinearAnneal(start=1.0, end=0.1, steps=10)"
    assert repr(CosineAnneal(1.0, 0, 10)) == "CosineAnneal(start=1.0, end=0.0, steps=10)"
