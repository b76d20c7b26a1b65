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
             dtype: torch.dtype = torch.float64) -> ICAData:
    """N points of x = A z + gamma n: A uniform on [-1, 1], z unit-variance Laplace, n
    standard normal, all drawn from ``generator`` in that order."""
    if n < 1 or x_dim < 1 or z_dim < 1:
        raise ValueError(f"n, x_dim and z_dim must be >= 1, got {n}, {x_dim}, {z_dim}")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")
    a = 2 * torch.rand(x_dim, z_dim, generator=generator, dtype=dtype) - 1
    u = torch.rand(n, z_dim, generator=generator, dtype=dtype) - 0.5
    z = -LAPLACE_B * torch.sign(u) * torch.log1p(-2 * u.abs())  # inverse CDF
    x = z @ a.T + gamma * torch.randn(n, x_dim, generator=generator, dtype=dtype)
    return ICAData(x, z, a)


def laplace_log_prob(z: Tensor) -> Tensor:
    """log prod_i Laplace(z_i; 0, b), b = 1/sqrt(2) (unit variance), over the last axis."""
    return (-z.abs() / LAPLACE_B - math.log(2 * LAPLACE_B)).sum(-1)


def spread_noise(a: Tensor) -> float:
    """The paper's spread level for the current A: max(0.001, 2.5 sqrt(mean(A A^T)))."""
    return max(0.001, 2.5 * math.sqrt(max(float((a @ a.T).mean()), 0.0)))


class EStep(NamedTuple):
    yz: Tensor  # sum_n E[y z^T], (X, Z)
    zz: Tensor  # sum_n E[z z^T], (Z, Z)
    log_lik: Tensor  # the importance-sampling estimate of mean_n log p(y_n), ()
    ess: Tensor  # mean effective sample size of the weights, ()


def e_step(y: Tensor, a: Tensor, variance: float, s_z: int, generator: torch.Generator,
           chunk: int = 2048, log_prior=laplace_log_prob) -> EStep:
    """The sufficient statistics of the M-step by importance sampling, over the rows of y.

    The proposal is N(mu(y), Sigma): the posterior of a Gaussian prior as broad as the
    likelihood allows, mu(y) = (A^T A)^{-1} A^T y, Sigma = variance (A^T A)^{-1}. There
    are ``s_z`` draws per point, vectorised over points in chunks of ``chunk``. The log
    weights are log N(y | A z, variance I) + log p(z) - log q(z | y).
    ``variance`` 0 is the exact point mass z = A^+ y (the proposal has collapsed).
    ``log_prior``: log p(z) over the last axis (the unit Laplace; tests use a Gaussian,
    whose posterior moments are closed form).
    """
    z_dim = a.shape[1]
    gram = a.T @ a
    pinv = torch.linalg.solve(gram, a.T)  # (Z, X): (A^T A)^{-1} A^T
    yz = torch.zeros(a.shape[0], z_dim, dtype=y.dtype)
    zz = torch.zeros(z_dim, z_dim, dtype=y.dtype)
    if variance == 0:
        z = y @ pinv.T
        return EStep(y.T @ z, z.T @ z, torch.tensor(math.nan, dtype=y.dtype), torch.tensor(1.0, dtype=y.dtype))
    chol = torch.linalg.cholesky(variance * torch.linalg.inv(gram))  # Sigma = chol chol^T
    log_lik_sum, ess_sum = y.new_zeros(()), y.new_zeros(())
    d = a.shape[0]
    for start in range(0, len(y), chunk):
        yb = y[start:start + chunk]  # (B, X)
        mu = yb @ pinv.T  # (B, Z)
        eps = torch.randn(s_z, len(yb), z_dim, generator=generator, dtype=y.dtype)  # (S, B, Z)
        z = mu + eps @ chol.T  # (S, B, Z)
        resid = yb - z @ a.T  # (S, B, X)
        log_p_y = -0.5 * (resid.square().sum(-1) / variance + d * math.log(2 * math.pi * variance))
        # log q(z|y) up to the constant shared by all draws of a point (it cancels in the
        # self-normalised weights, but the log-likelihood needs it): the Gaussian's.
        log_q = (-0.5 * eps.square().sum(-1) - torch.log(torch.diagonal(chol)).sum()
                 - 0.5 * z_dim * math.log(2 * math.pi))
        log_w = log_p_y + log_prior(z) - log_q  # (S, B)
        log_norm = torch.logsumexp(log_w, 0)  # (B,)
        w = torch.exp(log_w - log_norm)  # (S, B), each column sums to 1
        ez = torch.einsum("sb,sbz->bz", w, z)
        ezz = torch.einsum("sb,sbi,sbj->ij", w, z, z)
        yz += yb.T @ ez
        zz += ezz
        log_lik_sum += (log_norm - math.log(s_z)).sum()
        ess_sum += (1 / w.square().sum(0)).sum()
    return EStep(yz, zz, log_lik_sum / len(y), ess_sum / len(y))


def em_step(x: Tensor, a: Tensor, gamma: float, s_z: int, generator: torch.Generator,
            spread: float | None = None, s_y: int = 1) -> tuple[Tensor, EStep]:
    """One EM iteration; returns (the new A, the E-step's statistics).

    ``spread`` None: standard EM on x with likelihood variance gamma^2. A number sigma:
    spread EM, ``s_y`` noisy copies y = x + sigma e of every point (drawn here, fresh each
    iteration) with variance gamma^2 + sigma^2.
    """
    if spread is None:
        y, variance = x, gamma**2
    else:
        noise = torch.randn(s_y, *x.shape, generator=generator, dtype=x.dtype)
        y, variance = (x + spread * noise).reshape(-1, x.shape[1]), gamma**2 + spread**2
    stats = e_step(y, a, variance, s_z, generator)
    return stats.yz @ torch.linalg.inv(stats.zz), stats


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
