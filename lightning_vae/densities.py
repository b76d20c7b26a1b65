"""Density helpers shared by the VAE cores (``nets``) and the objectives (torch only).

This module sits below both: ``nets`` and ``objectives`` import it, it imports neither.

``Expectation`` is what a latent family hands an objective: the expectation over
q(z | y) of a likelihood the objective chooses (exact enumeration for a discrete latent,
reparameterised draws for a Gaussian one), so an objective never branches on the latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)

# log_lik(u, scale): log-likelihood of the residual u = y - loc(z), summed over the last
# axis, given the decoder std ``scale`` (None for a deterministic decoder, which has none).
LogLik = Callable[[Tensor, "Tensor | None"], Tensor]


class Expectation(NamedTuple):
    """E_q over the latent of an objective's log-likelihood, per point.

    rec: E_{q(z|y)} log p~(y | z), ``(B,)``.
    kl: KL(q(z | y) || p(z)), exact for every family, ``(B,)``.
    log_px: log p~(y): exact for an enumerated latent, the importance-weighted bound
        (IWAE) with the same draws for a sampled one, ``(B,)``.
    scale: the decoder std at the latent values scored, ``(N, D)`` (a deterministic
        decoder's is 0): ``(K, D)`` for K enumerated states, ``(S * B, D)`` for draws.
    """

    rec: Tensor
    kl: Tensor
    log_px: Tensor
    scale: Tensor


def normal_log_prob(u: Tensor, scale: Tensor) -> Tensor:
    """log N(u; 0, diag(scale^2)), summed over the last axis (scale broadcasts)."""
    z = u / scale
    return -(0.5 * z.square() + scale.log() + 0.5 * LOG_2PI).sum(-1)


def gaussian_log_lik(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(x_b; loc_k, diag(scale_k^2)) for every point b and state k.

    Args: x ``(B, D)``; loc, scale ``(K, D)``. Returns ``(B, K)``.
    """
    return normal_log_prob(x[:, None, :] - loc, scale)  # (B, K, D) -> (B, K)


def log_marginal(log_prior: Tensor, log_lik: Tensor) -> Tensor:
    """Exact log p(x) = logsumexp_z [log p(z) + log p(x|z)], ``(B,)``."""
    return torch.logsumexp(log_prior + log_lik, dim=-1)


def log_mean_exp(log_w: Tensor) -> Tensor:
    """log (1/S) sum_s exp(log_w[s]) over the first axis."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def elbo_terms(log_q: Tensor, log_prior: Tensor, log_lik: Tensor) -> dict[str, Tensor]:
    """Exact ELBO by enumeration: sum_z q(z|x) [log p(x|z) + log p(z) - log q(z|x)].

    Args: log_q, log_lik ``(B, K)``; log_prior ``(K,)``. Returns per-point ``(B,)`` tensors:
    ``elbo``, ``rec`` = E_q log p(x|z), ``kl`` = KL(q(z|x) || p(z)).
    """
    q = log_q.exp()
    rec = (q * log_lik).sum(-1)
    # 0 * log 0 = 0: where q underflows to 0, log_q is -inf and the product must vanish.
    kl = torch.where(q > 0, q * (log_q - log_prior), torch.zeros_like(q)).sum(-1)
    return {"elbo": rec - kl, "rec": rec, "kl": kl}


def gaussian_kl(loc: Tensor, scale: Tensor) -> Tensor:
    """KL(N(loc, diag(scale^2)) || N(0, I)), summed over the last axis."""
    return 0.5 * (loc.square() + scale.square() - 1).sum(-1) - scale.log().sum(-1)
