"""Noise kernels for the spread objective, and the decoder likelihood convolved with them
(torch only; no Lightning).

A kernel is a stateless family of zero-mean noise densities k(u) on each axis, independent
across axes. The noise level is passed per call as ``noise_std``, the kernel's per-axis
STANDARD DEVIATION whatever its shape, so levels are comparable across kernels and can be
annealed (see ``schedules``). Spreading both the data and the model with such a kernel gives
the spread KL of Zhang et al., "Spread Divergence", ICML 2020 (docs/science.md §2-3)::

    kernel.sample(shape, noise_std, generator)        # u ~ k, (*shape)
    kernel.log_prob(u, noise_std)                     # log k(u), summed over the last axis
    kernel.convolved_log_prob(u, scale, noise_std)    # log of (N(0, scale^2) * k)(u), same

``residual_log_lik`` is the likelihood the spread objective trains: the decoder convolved with
the kernel, at residuals u = y - loc(z); ``convolved_log_lik`` is the same for every point and
latent state. Every case they cover is an exact closed form.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor
from torch.special import erfc, erfcx

from lightning_vae.densities import normal_log_prob

LOG_2PI = math.log(2 * math.pi)
LOG_2 = math.log(2.0)
SQRT_2 = math.sqrt(2.0)
HALF_LOG_PI = 0.5 * math.log(math.pi)
# log erfcx(x) for x >= ERFCX_CF_FROM comes from the continued fraction below, not from
# torch's erfcx: its gradient 2x erfcx(x) - 2/sqrt(pi) cancels to ~ -1/x and loses
# log10(2x^2) digits (5% at x = 700 in float32). At x = 3 the fraction cut after
# ERFCX_CF_TERMS terms is off by 4e-12 relative, and it converges faster for larger x.
ERFCX_CF_FROM = 3.0
ERFCX_CF_TERMS = 20


def _check_noise_std(noise_std: float, positive: bool = False) -> float:
    noise_std = float(noise_std)
    # `not >=` also rejects NaN.
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
    if positive and noise_std == 0:
        raise ValueError(f"noise_std must be > 0 for a density, got {noise_std}")
    return noise_std


def _gaussian_log_prob(u: Tensor, scale: Tensor | float) -> Tensor:
    """log N(u; 0, scale^2) per axis (not summed)."""
    scale = torch.as_tensor(scale, dtype=u.dtype, device=u.device)
    return -0.5 * (u / scale).square() - scale.log() - 0.5 * LOG_2PI


def _device(generator: torch.Generator | None, device: torch.device | str | None):
    # A generator lives on one device and can only draw there: default to it.
    return generator.device if device is None and generator is not None else device


class Kernel(Protocol):
    """A zero-mean noise family, independent across axes, with per-axis std ``noise_std``."""

    def sample(self, shape: torch.Size | tuple[int, ...], noise_std: float,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor: ...

    def log_prob(self, u: Tensor, noise_std: float) -> Tensor: ...

    def convolved_log_prob(self, u: Tensor, scale: Tensor, noise_std: float) -> Tensor: ...


class GaussianKernel:
    """k(u) = N(u; 0, noise_std^2) on each axis."""

    def sample(self, shape: torch.Size | tuple[int, ...], noise_std: float,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        return _check_noise_std(noise_std) * torch.randn(shape, generator=generator, dtype=dtype,
                                                 device=_device(generator, device))

    def log_prob(self, u: Tensor, noise_std: float) -> Tensor:
        return _gaussian_log_prob(u, _check_noise_std(noise_std, positive=True)).sum(-1)

    def convolved_log_prob(self, u: Tensor, scale: Tensor, noise_std: float) -> Tensor:
        """Exact: N(0, scale^2) * N(0, noise_std^2) = N(0, scale^2 + noise_std^2); variances add."""
        noise_std = _check_noise_std(noise_std)
        return normal_log_prob(u, torch.hypot(scale, scale.new_tensor(noise_std)))

    def __repr__(self) -> str:
        return "GaussianKernel()"


def _log_erfcx(x: Tensor) -> Tensor:
    """log erfcx(x) = x^2 + log erfc(x) for x >= 0, with an accurate gradient.

    For large x, erfcx(x) = 1 / (sqrt(pi) (x + c)), c = (1/2)/(x + (2/2)/(x + (3/2)/(x + ...)))
    (the continued fraction of erfc); autograd through it gives d/dx = -(1 + c')/(x + c),
    where nothing cancels.
    """
    small = x < ERFCX_CF_FROM
    direct = erfcx(torch.where(small, x, torch.zeros_like(x))).log()
    x_cf = torch.where(small, torch.full_like(x, ERFCX_CF_FROM), x)
    t = x_cf
    for k in range(ERFCX_CF_TERMS, 1, -1):
        t = x_cf + (k / 2) / t
    fraction = -HALF_LOG_PI - (x_cf + 0.5 / t).log()
    return torch.where(small, direct, fraction)


def _log_emg(u: Tensor, s: Tensor, b: float) -> Tensor:
    """log density at u of e + t, e ~ N(0, s^2), t ~ Exponential(mean b), per axis.

    The exponentially modified Gaussian: (1/b) exp(s^2/(2b^2) - u/b) Phi(a), a = u/s - s/b.
    """
    a = u / s - s / b
    neg = a < 0
    # a >= 0 (u >= s^2/b): each term is at most twice the result, so no cancellation.
    # Inputs are masked where a branch is unused so that neither its value nor its gradient
    # can be inf/NaN (torch.where's gradient is 0 * d(branch), NaN if d(branch) is inf).
    a_pos = torch.where(neg, torch.zeros_like(a), a)
    # log Phi(a) = log1p(-Phi(-a)), Phi(-a) <= 1/2: exact here; torch's log_ndtr would do,
    # but it has no vmap batching rule (a per-member loop under vmap).
    direct = 0.5 * (s / b).square() - u / b + torch.log1p(-0.5 * erfc(a_pos / SQRT_2))
    # a < 0: s^2/(2b^2) - u/b = a^2/2 - u^2/(2s^2), and exp(a^2/2) Phi(a) = erfcx(-a/sqrt2)/2
    # is O(1/|a|); the direct form would add two terms of size a^2/2 (5e5 at s/b = 1e3,
    # where float32 then misses the value by 0.04) whose difference is the answer.
    x = torch.where(neg, -a, torch.zeros_like(a)) / SQRT_2
    scaled = -0.5 * (u / s).square() + _log_erfcx(x) - LOG_2
    return torch.where(neg, scaled, direct) - math.log(b)


class LaplaceKernel:
    """k(u) = exp(-|u|/b) / (2b) on each axis, b = noise_std / sqrt(2) (so its std is noise_std)."""

    def sample(self, shape: torch.Size | tuple[int, ...], noise_std: float,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        """A difference of two Exponential(mean b) draws, each -b log(1 - U), U in [0, 1):
        1 - U > 0, so no draw is infinite."""
        b = _check_noise_std(noise_std) / SQRT_2
        uniform = torch.rand((2, *shape), generator=generator, dtype=dtype,
                             device=_device(generator, device))  # (2, *shape)
        e = -torch.log1p(-uniform)
        return b * (e[0] - e[1])

    def log_prob(self, u: Tensor, noise_std: float) -> Tensor:
        b = _check_noise_std(noise_std, positive=True) / SQRT_2
        return (-u.abs() / b - math.log(2 * b)).sum(-1)

    def convolved_log_prob(self, u: Tensor, scale: Tensor, noise_std: float) -> Tensor:
        """Exact: N(0, s^2) * Laplace(0, b), per axis with b = noise_std/sqrt2, s = scale:

            p(u) = (1/(4b)) exp(s^2/(2b^2)) [exp(-u/b) erfc((s^2/b - u)/(s sqrt2))
                                             + exp(u/b) erfc((s^2/b + u)/(s sqrt2))].

        A Laplace is a 50/50 mixture of +Exponential(b) and -Exponential(b), so p is the mean
        of two exponentially modified Gaussians, computed in log space (see ``_log_emg``).
        """
        noise_std = _check_noise_std(noise_std)
        if noise_std == 0:
            return _gaussian_log_prob(u, scale).sum(-1)
        b = noise_std / SQRT_2
        return (torch.logaddexp(_log_emg(u, scale, b), _log_emg(-u, scale, b)) - LOG_2).sum(-1)

    def __repr__(self) -> str:
        return "LaplaceKernel()"


def convolved_log_lik(kernel: Kernel, y: Tensor, loc: Tensor, scale: Tensor | None,
                      noise_std: float) -> Tensor:
    """log (p(.|z_k) * k_sigma)(y_b) for every point b and latent state k, summed over axes.

    The decoder p(x|z) = N(x; loc, diag(scale^2)), or delta(x - loc) if ``scale`` is None
    (a deterministic decoder, the delta-VAE of docs/science.md §3.3). All cases are exact:

    - noise_std == 0: log N(y; loc, scale^2), the ELBO's likelihood;
    - Gaussian decoder * Gaussian kernel: log N(y; loc, scale^2 + noise_std^2);
    - deterministic decoder * kernel: log k_sigma(y - loc);
    - Gaussian decoder * Laplace kernel: the erfc closed form of
      ``LaplaceKernel.convolved_log_prob``.

    Args: kernel; y ``(..., B, D)``; loc, scale ``(..., K, D)``; noise_std: the kernel's std
    (a Python number, so the cases are chosen before any tensor is seen, also under vmap).
    Returns ``(..., B, K)``.
    """
    u = y[..., :, None, :] - loc[..., None, :, :]  # (..., B, K, D)
    return residual_log_lik(kernel, u, None if scale is None else scale[..., None, :, :], noise_std)


def residual_log_lik(kernel: Kernel, u: Tensor, scale: Tensor | None, noise_std: float) -> Tensor:
    """log (p(.|z) * k_noise_std)(u) at residuals u = y - loc(z), summed over the last axis.

    ``scale`` is the decoder std (broadcasting against u), or None for a deterministic
    decoder (then the kernel itself, which needs noise_std > 0); noise_std 0 is the
    decoder's own Gaussian likelihood. Gaussian * Gaussian is one Gaussian with the
    variances added: the arithmetic of ``densities.normal_log_prob`` (the seed's numbers).
    """
    noise_std = _check_noise_std(noise_std)
    # Half-precision residuals (a bf16 model's) are scored in float32: a sum of D terms,
    # 1024 for a 32x32 image, needs more than bf16's 8 significant bits.
    if u.dtype in (torch.float16, torch.bfloat16):
        u = u.float()
    if scale is not None and scale.dtype in (torch.float16, torch.bfloat16):
        scale = scale.float()
    if scale is None:
        if noise_std == 0:
            raise ValueError("a deterministic decoder needs a spread objective with noise > 0: "
                             "its likelihood without noise is a delta function")
        return kernel.log_prob(u, noise_std)
    if noise_std == 0:
        return normal_log_prob(u, scale)
    return kernel.convolved_log_prob(u, scale, noise_std)
