"""A hyperspherical latent: the wrapped normal on the unit sphere S^m, and the uniform prior.

The latent z lives on S^m = {z in R^(m+1) : |z| = 1} (m = 1: a circle in R^2; m = 2: the
sphere in R^3) under a uniform prior, so a decoder can map it continuously onto a closed
manifold (circles, spheres, tori as products) without the hole or seam that a Gaussian
latent in R^m must tear somewhere.

The posterior q(z | x) is the wrapped (Riemannian) normal: the push-forward of an isotropic
tangent Gaussian through the exponential map at a mean direction mu,

    v ~ N(0, sigma^2 I_m) in T_mu S^m,   z = exp_mu(v) = cos(|v|) mu + sin(|v|) v / |v|.

Its density w.r.t. the surface measure is exact as a series over the preimages of z: for z
at geodesic distance r in [0, pi] from mu, the tangent vectors mapped onto z have lengths
L in {r + 2 pi k : k >= 0} U {2 pi k - r : k >= 1}, each with |sin L| = sin r, and the
Jacobian of exp_mu at v is (sin|v| / |v|)^(m-1), so

    q(z) = sum_L (2 pi sigma^2)^(-m/2) exp(-L^2 / (2 sigma^2)) (L / sin r)^(m-1).

For m = 1 it is the wrapped normal on the circle. For m >= 2 the density is infinite (an
integrable caustic, a null set) at the antipode -mu, where every term's 1 / sin r blows
up, and, through the wrapped terms k >= 1 (weight ~ exp(-2 pi^2 k^2 / sigma^2)), at mu
itself; there sin r is clamped at the dtype's smallest normal number, so the log-density
is large but finite and nothing is NaN. Draws land on neither point.

Why this family: its noise is a plain standard normal eps (v = sigma * eps in an orthonormal
tangent frame), drawn from the run's own torch.Generator, so draws are reproducible and the
sample path is differentiable in mu and sigma; and its density is exact (to below float64
precision, see K_WRAPS). Davidson et al. 2018, "Hyperspherical Variational Auto-Encoders",
motivate the spherical latent with a uniform prior using the von Mises-Fisher posterior, but
its rejection sampler (like the Beta draws of the Power Spherical) cannot take a generator
in torch. The wrapped normal via the exponential map follows Falorsi et al. 2019,
"Reparameterizing Distributions on Lie Groups", and Mathieu et al. 2019, "Continuous
Hierarchical Representations with Poincare Variational Auto-Encoders" (the same
construction, there on the Poincare ball).

Shapes: leading batch dims broadcast; the last axis of z and mu is the ambient R^(m+1), the
last axis of tangent coordinates (and of eps) is R^m. Torch only (no Lightning).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

__all__ = [
    "K_WRAPS",
    "SIGMA_MAX",
    "HypersphericalUniform",
    "WrappedNormal",
    "exp_map",
    "sample_uniform",
    "sphere_log_area",
    "tangent_frame",
    "truncation_bound",
    "uniform_log_prob",
    "wrapped_normal_log_prob",
    "wrapped_normal_rsample",
]

LOG_2PI = math.log(2 * math.pi)
# The latent's sigma is bounded: sigma = SIGMA_MAX * sigmoid(raw). At sigma = pi one tangent
# std already reaches the antipode; the truncation bound below is proved up to this value.
SIGMA_MAX = math.pi

# The series keeps the lengths r + 2 pi k (k = 0..K) and 2 pi k - r (k = 1..K): 2K + 1 terms.
#
# Truncation bound, for sigma <= pi. All terms are positive, so the omitted sum relative to
# q is at most the omitted sum relative to the kept term L0 = 2 pi - r in [pi, 2 pi]; the
# common factor (1 / sin r)^(m-1) cancels, leaving per term
#     R(L) = exp(-(L^2 - L0^2) / (2 sigma^2)) (L / L0)^(m-1).
# The omitted lengths come in pairs n = K, K+1, ...: 2 pi (n+1) - r = L0 + d and
# r + 2 pi (n+1) = L0 + d + 2r, with d = 2 pi n. R decreases in L once L^2 > (m-1) sigma^2,
# which holds for every omitted L >= (2K+1) pi when m - 1 < (2K+1)^2, so the pair's second
# member is at most its first. With L0 >= pi and sigma <= pi:
#     (L0 + d)^2 - L0^2 = d^2 + 2 d L0 >= 4 pi^2 (n^2 + n),   (L0 + d) / L0 <= 1 + 2n,
#     so R <= exp(-2 n (n+1)) (2n + 1)^(m-1), and
#     omitted / q <= B(K, m) = 2 sum_{n >= K} exp(-2 n (n+1)) (2n + 1)^(m-1),
# which bounds the error of log q too (log(1 + B) <= B). K = 6: B = 6.6e-37 for m = 1,
# 8.6e-36 for m = 2, 5.7e-18 for m = 18: below 1e-17 (float64's relative precision is
# 2.2e-16) for every m <= 18. Larger m: pass n_wraps (truncation_bound says how many).
K_WRAPS = 6


def truncation_bound(n_wraps: int, m: int) -> float:
    """B(n_wraps, m) above: a bound on the relative error of q truncated at n_wraps wraps
    (any r, sigma <= SIGMA_MAX; valid while m - 1 < (2 n_wraps + 1)^2)."""
    if n_wraps < 1 or m - 1 >= (2 * n_wraps + 1) ** 2:
        raise ValueError(f"the bound needs n_wraps >= 1 and m - 1 < (2 n_wraps + 1)^2; got {n_wraps}, {m}")
    # The terms fall faster than geometrically; 60 of them reach far below any float.
    return 2 * sum(math.exp(-2 * n * (n + 1) + (m - 1) * math.log(2 * n + 1)) for n in range(n_wraps, n_wraps + 60))


def sphere_log_area(m: int) -> float:
    """log of the surface area of S^m in R^(m+1): log(2 pi^((m+1)/2) / Gamma((m+1)/2))."""
    return math.log(2.0) + 0.5 * (m + 1) * math.log(math.pi) - math.lgamma(0.5 * (m + 1))


def uniform_log_prob(z: Tensor) -> Tensor:
    """log density of the uniform distribution on S^m at z ``(..., m+1)``: ``(...)``."""
    return z.new_full(z.shape[:-1], -sphere_log_area(z.shape[-1] - 1))


def sample_uniform(
    n: int,
    m: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``n`` uniform draws on S^m, ``(n, m+1)``: normalised standard normals from ``generator``."""
    x = torch.randn(n, m + 1, generator=generator, device=device, dtype=dtype)
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


def tangent_frame(mu: Tensor) -> Tensor:
    """An orthonormal basis of the tangent space at the unit vector mu ``(..., m+1)``:
    ``(..., m+1, m)``, one basis vector per column, differentiable in mu.

    The columns 2..m+1 of a Householder reflection H = I - 2 w w^T / |w|^2 that maps e_1 to
    -s mu, with w = e_1 + s mu and s = sign(mu_1) (+1 at mu_1 = 0): H maps the tangent space
    at e_1 onto that at -s mu, which is the tangent space at mu. The sign is LAPACK's choice:
    |w|^2 = 2 (1 + |mu_1|) >= 2, so nothing cancels and no point needs a special case (the
    reflection e_1 -> mu has w -> 0 at mu = e_1, and its limit there is not the identity).
    At mu = +-e_1 the frame is (e_2, ..., e_{m+1}). Column j is the parallel transport of
    e_j from s e_1 to mu along their geodesic: smooth in mu on each open half mu_1 > 0 and
    mu_1 < 0; it flips across the equator mu_1 = 0, where no global smooth frame exists for
    m = 2 anyway. The wrapped normal is isotropic, so its law does not depend on the frame.
    """
    n = mu.shape[-1]
    s = torch.where(mu[..., :1] >= 0, 1.0, -1.0).to(mu.dtype)  # (..., 1), no gradient
    e1 = torch.zeros(n, dtype=mu.dtype, device=mu.device)
    e1[0] = 1.0
    w = e1 + s * mu
    w2 = (w * w).sum(-1, keepdim=True)[..., None]  # (..., 1, 1), >= 2 for unit mu
    eye = torch.eye(n, dtype=mu.dtype, device=mu.device)[:, 1:]
    return eye - 2.0 * w[..., :, None] * w[..., None, 1:] / w2


def exp_map(mu: Tensor, v_tangent_coords: Tensor, frame: Tensor | None = None) -> Tensor:
    """z = exp_mu(F c) on S^m for tangent coordinates c ``(..., m)`` in the frame F
    (``tangent_frame(mu)`` by default): cos(|c|) mu + sin(|c|) F c / |c|, ``(..., m+1)``.

    sin(t) / t is torch.sinc(t / pi), so c -> 0 (and c = 0 exactly) is smooth: z -> mu,
    with finite gradients.
    """
    if frame is None:
        frame = tangent_frame(mu)
    c = v_tangent_coords
    v = (frame @ c[..., None]).squeeze(-1)
    t = torch.linalg.vector_norm(c, dim=-1, keepdim=True)  # |v| = |c|: F is orthonormal
    return torch.cos(t) * mu + torch.sinc(t / math.pi) * v


def wrapped_normal_rsample(mu: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    """Reparameterised draws z = exp_mu(sigma * F eps), ``(S, ..., m+1)``.

    mu ``(..., m+1)`` unit vectors, sigma ``(...)`` > 0, eps ``(S, ..., m)`` standard normal
    (the leading S is the draw dim; all broadcast). Differentiable in mu and sigma.
    """
    return exp_map(mu, sigma[..., None] * eps)


def wrapped_normal_log_prob(z: Tensor, mu: Tensor, sigma: Tensor, n_wraps: int = K_WRAPS) -> Tensor:
    """log q(z) of the wrapped normal (the series in the module docstring, truncated at
    ``n_wraps`` wraps: 2 n_wraps + 1 terms, see K_WRAPS), ``(...)``.

    z, mu ``(..., m+1)`` unit vectors, sigma ``(...)`` > 0; broadcast. Computed in the input
    dtype with a logsumexp over the terms; r = atan2(|z - (mu.z) mu|, mu.z), stable near 0
    and pi (unlike arccos).
    """
    m = z.shape[-1] - 1
    dtype, device = z.dtype, z.device
    cos_r = (mu * z).sum(-1)
    sin_r = torch.linalg.vector_norm(z - cos_r[..., None] * mu, dim=-1)
    r = torch.atan2(sin_r, cos_r)  # in [0, pi]
    # sin r = 0 at mu and -mu: clamped (see the caustics in the module docstring).
    log_sin = torch.log(sin_r.clamp_min(torch.finfo(dtype).tiny))[..., None]

    k = torch.arange(n_wraps + 1, dtype=dtype, device=device)
    two_pi_k = 2 * math.pi * k
    lengths = torch.cat([r[..., None] + two_pi_k, two_pi_k[1:] - r[..., None]], dim=-1)  # (..., 2K+1), >= 0
    sigma_ = sigma[..., None]
    log_terms = -0.5 * (lengths / sigma_).square()
    if m > 1:
        # log(L / sin r); for the k = 0 term L = r, where r / sin r = 1 / sinc(r / pi) -> 1 as
        # r -> 0. Each branch is guarded so the unused one is finite too (no NaN gradients).
        small = r < 1.0
        log_ratio0 = torch.where(
            small,
            -torch.log(torch.sinc(torch.where(small, r, 0.0) / math.pi)),
            torch.log(torch.where(small, 1.0, r)) - log_sin[..., 0],
        )
        log_ratio = torch.log(lengths[..., 1:]) - log_sin  # the wrapped lengths are >= pi
        log_terms = log_terms + (m - 1) * torch.cat([log_ratio0[..., None], log_ratio], dim=-1)
    log_norm = -0.5 * m * LOG_2PI - m * torch.log(sigma)
    return log_norm + torch.logsumexp(log_terms, dim=-1)


class _Sphere(constraints.Constraint):
    """Unit vectors in R^(m+1) (to a loose tolerance: float32 draws are unit to ~1e-7)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        return (torch.linalg.vector_norm(value, dim=-1) - 1.0).abs() < 1e-5


sphere = _Sphere()
_Shape = torch.Size | tuple[int, ...]


class WrappedNormal(Distribution):
    """The wrapped normal on S^m as a torch.distributions object: mean direction ``mu``
    ``(..., m+1)`` (unit), tangent std ``sigma`` ``(...)``; batch shape their broadcast.

    ``rsample`` draws its standard normal noise from an explicit ``generator``. ``mean`` is
    the Euclidean E[z] (inside the sphere; the mean direction is ``mu``) and ``entropy``
    -E[log q], both by quadrature over the geodesic distance (``radial_expectation``).
    """

    arg_constraints = {"mu": sphere, "sigma": constraints.positive}
    support = sphere
    has_rsample = True

    def __init__(self, mu: Tensor, sigma: Tensor, validate_args: bool | None = False) -> None:
        batch_shape = torch.broadcast_shapes(mu.shape[:-1], sigma.shape)
        self.mu = mu.expand(*batch_shape, mu.shape[-1])
        self.sigma = sigma.expand(batch_shape)
        self.m = mu.shape[-1] - 1
        super().__init__(batch_shape, mu.shape[-1:], validate_args=validate_args)

    def rsample(self, sample_shape: _Shape = (), generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + (self.m,)
        eps = torch.randn(shape, generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return wrapped_normal_rsample(self.mu, self.sigma, eps)

    def sample(self, sample_shape: _Shape = (), generator: torch.Generator | None = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return wrapped_normal_log_prob(value, self.mu, self.sigma)

    @property
    def mean(self) -> Tensor:
        """E[z] = E[cos r] mu (the tangent part averages to 0 by symmetry), by quadrature."""
        return radial_expectation(self.sigma, self.m, lambda r, log_q: torch.cos(r))[..., None] * self.mu

    def entropy(self) -> Tensor:
        """-E[log q(z)], by quadrature over the geodesic distance r (``radial_expectation``)."""
        return -radial_expectation(self.sigma, self.m, lambda r, log_q: log_q)


QUADRATURE_NODES = 96  # Gauss-Legendre nodes on each of the two pieces of [0, pi]


def radial_expectation(sigma: Tensor, m: int, fn) -> Tensor:
    """E[fn(r)] under the wrapped normal on S^m with tangent std ``sigma`` ``(...)``, r the
    geodesic distance to its mean direction: the integral over r in [0, pi] of
    q(r) fn(r) area(S^(m-1)) sin(r)^(m-1), by Gauss-Legendre quadrature on [0, a] and
    [a, pi], a = min(pi, 12 sigma) (where the density lives, whatever sigma). ``fn(r, log_q)`` maps
    the nodes r ``(..., N)`` and log q there to values of the same shape. The nodes avoid the endpoints, where the
    density has its caustics (integrable: q(r) sin(r)^(m-1) stays finite). ``(...)``."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
    t = torch.as_tensor(nodes, dtype=sigma.dtype, device=sigma.device)
    w = torch.as_tensor(weights, dtype=sigma.dtype, device=sigma.device)
    a = (12 * sigma).clamp(max=math.pi)[..., None]  # (..., 1)
    pieces = [(torch.zeros_like(a), a), (a, torch.full_like(a, math.pi))]
    e1 = torch.zeros(m + 1, dtype=sigma.dtype, device=sigma.device)
    e1[0] = 1.0
    total = sigma.new_zeros(sigma.shape)
    for lo, hi in pieces:
        half = (hi - lo) / 2
        r = lo + half * (t + 1)  # (..., N)
        z = torch.zeros(*r.shape, m + 1, dtype=r.dtype, device=r.device)
        z[..., 0] = torch.cos(r)
        z[..., 1] = torch.sin(r)
        log_q = wrapped_normal_log_prob(z, e1, sigma[..., None].expand(r.shape))
        log_jac = sphere_log_area(m - 1) + (m - 1) * torch.log(torch.sin(r))
        total = total + (half * w * torch.exp(log_q + log_jac) * fn(r, log_q)).sum(-1)
    return total


class HypersphericalUniform(Distribution):
    """The uniform distribution on S^m (the prior), event shape ``(m+1,)``."""

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = sphere

    def __init__(
        self,
        m: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        validate_args: bool | None = False,
    ) -> None:
        self.m, self.device, self.dtype = m, torch.device(device) if device is not None else None, dtype
        super().__init__(torch.Size(), torch.Size((m + 1,)), validate_args=validate_args)

    def sample(self, sample_shape: _Shape = (), generator: torch.Generator | None = None) -> Tensor:
        shape = torch.Size(sample_shape)
        z = sample_uniform(shape.numel(), self.m, generator=generator, device=self.device, dtype=self.dtype)
        return z.reshape(shape + self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return uniform_log_prob(value)

    def entropy(self) -> Tensor:
        return torch.tensor(sphere_log_area(self.m), dtype=self.dtype, device=self.device)
