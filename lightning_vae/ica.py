"""Linear ICA by EM, standard and spread (torch only; no Lightning): the Spread Divergence
paper's first experiment (Zhang et al., ICML 2020, section 5.2.1).

The model is x = A z + gamma n, with independent unit-variance Laplace sources z (Z of
them), A (X x Z) and isotropic Gaussian noise n. Three pieces, each a pure function:

- ``ica_data``: the data source (A with entries uniform on +-1, seeded, exact);
- ``em_step``: one EM iteration. The E-step is self-normalised importance sampling with
  the Gaussian proposal N(z | mu(y), Sigma), mu(y) = (A^T A)^{-1} A^T y and
  Sigma = v (A^T A)^{-1}, v the likelihood's variance. The M-step is exact:
  A <- (sum_n E[y z^T]) (sum_n E[z z^T])^{-1}.
  - Standard EM: y = x, v = gamma^2.
  - Spread EM: y = x + sigma e, S_y noisy copies of each point, v = gamma^2 + sigma^2, and
    p(y, z) = prod_j N(y_j | (A z)_j, v) prod_i p(z_i).
  - At gamma = 0, standard EM's posterior is a point mass at A^+ x: the proposal collapses
    onto it. The E-step is then exact (z = A^+ x), and the update is A itself for a square
    invertible A. That is the freeze.
- ``relative_error``: the paper's error, mean_ij |A_est_ij - A_ij| / |A_ij|, after
  matching A_est's columns to A's by Hungarian assignment on |correlation|
  (``scipy.optimize.linear_sum_assignment``) and fixing each matched column's sign. The
  scale needs no fixing: the unit-variance prior pins each column's scale.

``spread_noise(A)`` is the paper's rule for the spread level, sigma = max(0.001,
2.5 sqrt(mean(A A^T))), recomputed from the current A.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

LAPLACE_B = 1 / math.sqrt(2)  # Laplace(0, b) has variance 2 b^2 = 1


class ICAData(NamedTuple):
    x: Tensor  # (N, X) observations
    z: Tensor  # (N, Z) sources
    a: Tensor  # (X, Z) the true mixing matrix


def ica_data(n: int, x_dim: int, z_dim: int, gamma: float, generator: torch.Generator,
             dtype: torch.dtype = torch.float64, a: Tensor | None = None) -> ICAData:
    """N points of x = A z + gamma n: A uniform on [-1, 1], z unit-variance Laplace, n
    standard normal, all drawn from ``generator`` in that order (``a`` given: that A,
    not drawn; more points of the same problem, e.g. held out)."""
    if n < 1 or x_dim < 1 or z_dim < 1:
        raise ValueError(f"n, x_dim and z_dim must be >= 1, got {n}, {x_dim}, {z_dim}")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    if a is None:
        a = 2 * torch.rand(x_dim, z_dim, generator=generator, dtype=dtype) - 1
    elif a.shape != (x_dim, z_dim):
        raise ValueError(f"a must be ({x_dim}, {z_dim}), got {tuple(a.shape)}")
    a = a.to(dtype)
    u = torch.rand(n, z_dim, generator=generator, dtype=dtype) - 0.5
    z = -LAPLACE_B * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF
    x = z @ a.T + gamma * torch.randn(n, x_dim, generator=generator, dtype=dtype)
    return ICAData(x, z, a)


def laplace_log_prob(z: Tensor) -> Tensor:
    """log prod_i Laplace(z_i; 0, b), b = 1/sqrt(2) (unit variance), over the last axis."""
    return (-z.abs() / LAPLACE_B - math.log(2 * LAPLACE_B)).sum(-1)


def spread_noise(a: Tensor, scale: float = 2.5, floor: float = 0.001) -> float | Tensor:
    """The paper's spread level for the current A: max(0.001, 2.5 sqrt(mean(A A^T))); a
    float for one A ``(X, Z)``, one per repeat ``(R,)`` for a batch ``(R, X, Z)``."""
    a64 = a.double()
    level = (scale * (a64 @ a64.transpose(-1, -2)).mean((-1, -2)).clamp_min(0).sqrt()).clamp_min(floor)
    return float(level) if a.dim() == 2 else level.to(a.dtype)


class EStep(NamedTuple):
    yz: Tensor  # sum_n E[y z^T], (..., X, Z), float64
    zz: Tensor  # sum_n E[z z^T], (..., Z, Z), float64
    log_lik: Tensor  # the importance-sampling estimate of mean_n log p(y_n), (...)
    ess: Tensor  # mean effective sample size of the weights, (...)


def e_step(y: Tensor, a: Tensor, variance: float, s_z: int, generator: torch.Generator,
           chunk: int = 2048, log_prior=laplace_log_prob) -> EStep:
    """The sufficient statistics of the M-step by importance sampling, over the rows of y.

    ``y`` ``(N, X)`` and ``a`` ``(X, Z)``, or a batch of independent problems (repeats)
    ``(R, N, X)`` and ``(R, X, Z)``: every output then has the leading ``R``.

    The proposal is N(mu(y), Sigma): the posterior of a Gaussian prior as broad as the
    likelihood allows, mu(y) = (A^T A)^{-1} A^T y, Sigma = variance (A^T A)^{-1} = L L^T.
    With z = mu + L e, ||y - A z||^2 = ||y - A mu||^2 + variance ||e||^2 (y - A mu is
    orthogonal to A's columns, and L^T A^T A L = variance I), so the log weight
    log N(y | A z, variance I) + log p(z) - log q(z | y) is log p(z) plus a constant of
    the point: the weights need the prior at the draws and nothing in X dimensions. There
    are ``s_z`` draws per point, vectorised over draws, points (in chunks of ``chunk``)
    and repeats. ``variance`` 0 is the exact point mass z = A^+ y (the proposal has
    collapsed). ``log_prior``: log p(z) over the last axis (the unit Laplace; tests use a
    Gaussian, whose posterior moments are closed form).
    """
    batched = a.dim() == 3
    if not batched:
        y, a = y[None], a[None]
    r, n, d = y.shape
    z_dim = a.shape[-1]
    v = torch.as_tensor(variance, dtype=torch.float64, device=y.device).expand(r)  # one per repeat
    # The Z x Z algebra in float64 (a proposal of variance 1e-6 (A^T A)^{-1} is not positive
    # definite in float32), the draws in y's precision.
    a64 = a.double()
    gram = a64.transpose(-1, -2) @ a64  # (R, Z, Z)
    pinv = torch.linalg.solve(gram, a64.transpose(-1, -2)).to(y.dtype)  # (R, Z, X): (A^T A)^{-1} A^T
    a = a.to(y.dtype)
    if bool((v == 0).all()):
        y64 = y.double()  # exact, and cheap: the freeze is then a fixed point to float64 rounding
        z = y64 @ torch.linalg.solve(gram, a64.transpose(-1, -2)).transpose(-1, -2)
        out = EStep(y64.transpose(-1, -2) @ z, z.transpose(-1, -2) @ z,
                    torch.full((r,), math.nan, dtype=y.dtype), torch.ones(r, dtype=y.dtype))
    else:
        if bool((v <= 0).any()):
            raise ValueError(f"variance must be > 0 for every repeat (or 0 for all), got {v.tolist()}")
        factor, log_det_l = proposal_factor(gram, v)  # Sigma = L L^T, (R, Z, Z); log det L, (R,)
        chol = factor.to(y.dtype)
        yz = y.new_zeros(r, d, z_dim, dtype=torch.float64)  # the M-step's sums in float64
        zz = y.new_zeros(r, z_dim, z_dim, dtype=torch.float64)
        log_lik_sum, ess_sum = y.new_zeros(r), y.new_zeros(r)
        # The part of every log weight that does not depend on the draw: log N(y | A mu, v I)
        # with the Gaussian's normaliser, less log q's normaliser.
        const = (log_det_l + 0.5 * z_dim * math.log(2 * math.pi) - 0.5 * d * torch.log(2 * math.pi * v)).to(y.dtype)
        for start in range(0, n, chunk):
            yb = y[:, start:start + chunk]  # (R, B, X)
            mu = yb @ pinv.transpose(-1, -2)  # (R, B, Z)
            resid = yb - mu @ a.transpose(-1, -2)
            log_c = const[:, None] - 0.5 * resid.square().sum(-1) / v.to(y.dtype)[:, None]  # (R, B)
            b = yb.shape[1]
            eps = torch.randn(r, b * s_z, z_dim, generator=generator, dtype=y.dtype, device=y.device)
            # (R, B S, Z): batched matrix products over the repeats, draws of a point adjacent.
            z = (eps @ chol.transpose(-1, -2)).view(r, b, s_z, z_dim).add_(mu[:, :, None])
            log_w = log_prior(z)  # (R, B, S), up to log_c
            log_norm = torch.logsumexp(log_w, -1)  # (R, B)
            w = torch.exp(log_w - log_norm[..., None])  # each point's weights sum to 1 over S
            wz = w[..., None] * z  # (R, B, S, Z)
            ez = wz.sum(2)  # (R, B, Z)
            zz += (wz.view(r, b * s_z, z_dim).transpose(-1, -2) @ z.view(r, b * s_z, z_dim)).double()
            yz += (yb.transpose(-1, -2) @ ez).double()
            log_lik_sum += (log_c + log_norm - math.log(s_z)).sum(-1)
            ess_sum += (1 / w.square().sum(-1)).sum(-1)
        out = EStep(yz, zz, log_lik_sum / n, ess_sum / n)
    return out if batched else EStep(*(t[0] for t in out))


def proposal_factor(gram: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """A factor L of the proposal's covariance Sigma = v (A^T A)^{-1} = L L^T, ``(R, Z, Z)``,
    and log det L ``(R,)``, in float64: the Cholesky factor; for a repeat whose A^T A is so
    ill-conditioned that it fails (an A near rank deficiency, which standard EM can reach
    from a bad start), U diag(v / lambda)^{1/2} from A^T A = U diag(lambda) U^T, the
    eigenvalues floored at 1e-12 of the largest: any factor serves, as the weights depend on
    the draws through log p(z) only."""
    inverse, inv_info = torch.linalg.inv_ex(gram)
    chol, info = torch.linalg.cholesky_ex(inverse)
    info = info | inv_info
    factor = v.sqrt()[:, None, None] * chol
    log_det = torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
    bad = (info != 0) | ~torch.isfinite(log_det)
    if bool(bad.any()):
        lam, u = torch.linalg.eigh(gram[bad])
        lam = lam.clamp_min(1e-12 * lam[..., -1:].clamp_min(1e-300))
        factor[bad] = u * (v[bad, None] / lam).sqrt()[:, None, :]
        log_det[bad] = 0.5 * (torch.log(v[bad, None]) - torch.log(lam)).sum(-1)
    return factor, log_det


def m_step(stats: EStep) -> Tensor:
    """The exact M-step: A = (sum_n E[y z^T]) (sum_n E[z z^T])^{-1}, batched like ``stats``."""
    return torch.linalg.solve(stats.zz, stats.yz.transpose(-1, -2)).transpose(-1, -2)  # zz symmetric


def spread_copies(x: Tensor, gamma: float, spread: float | Tensor | None, s_y: int,
                  generator: torch.Generator) -> tuple[Tensor, float | Tensor]:
    """(y, the likelihood's variance) of one EM iteration on ``x`` ``(N, X)`` or
    ``(R, N, X)``: ``spread`` None, (x, gamma^2); a sigma (a number, or one per repeat
    ``(R,)``), ``s_y`` noisy copies y = x + sigma e of every point drawn from
    ``generator`` (``(s_y N, X)`` or ``(R, s_y N, X)``) and variance gamma^2 + sigma^2."""
    if spread is None:
        return x, gamma**2
    sigma = torch.as_tensor(spread, dtype=x.dtype, device=x.device)  # () or (R,)
    noise = torch.randn(s_y, *x.shape, generator=generator, dtype=x.dtype, device=x.device)
    y = (x + sigma.reshape(sigma.shape + (1, 1)) * noise).movedim(0, -3)
    y = y.reshape(*x.shape[:-2], s_y * x.shape[-2], x.shape[-1])
    return y, gamma**2 + torch.as_tensor(spread, dtype=torch.float64).reshape(-1) ** 2


def em_step(x: Tensor, a: Tensor, gamma: float, s_z: int, generator: torch.Generator,
            spread: float | Tensor | None = None, s_y: int = 1, chunk: int = 2048) -> tuple[Tensor, EStep]:
    """One EM iteration; returns (the new A, the E-step's statistics). ``x`` ``(N, X)``
    and ``a`` ``(X, Z)``, or batched over repeats, ``(R, N, X)`` and ``(R, X, Z)``.

    ``spread`` None: standard EM on x with likelihood variance gamma^2. A number sigma:
    spread EM, ``s_y`` noisy copies y = x + sigma e of every point (drawn here, fresh each
    iteration) with variance gamma^2 + sigma^2.
    """
    y, variance = spread_copies(x, gamma, spread, s_y, generator)
    stats = e_step(y, a, variance, s_z, generator, chunk=chunk)
    return m_step(stats).to(a.dtype), stats


def match_columns(a_est: Tensor, a_true: Tensor) -> Tensor:
    """A_est's columns permuted and sign-flipped to match A_true's: the Hungarian
    assignment maximising the summed |correlation| of matched columns, then each sign
    set so that the matched correlation is positive."""
    from scipy.optimize import linear_sum_assignment

    e = a_est - a_est.mean(0)
    t = a_true - a_true.mean(0)
    corr = (t.T @ e) / (t.norm(dim=0)[:, None] * e.norm(dim=0)[None, :]).clamp_min(1e-300)  # (Z, Z)
    rows, cols = linear_sum_assignment(-corr.abs().cpu().numpy())
    matched = a_est[:, torch.as_tensor(cols)]
    signs = torch.sign(corr[torch.as_tensor(rows), torch.as_tensor(cols)])
    return matched * torch.where(signs == 0, torch.ones_like(signs), signs)


def relative_error(a_est: Tensor, a_true: Tensor) -> float:
    """The paper's error: mean_ij |A_est_ij - A_ij| / |A_ij| after ``match_columns``."""
    return float(((match_columns(a_est, a_true) - a_true).abs() / a_true.abs()).mean())
