"""Training objectives for discrete-latent VAEs (torch only; no Lightning).

Every objective is a small object with one contract::

    terms = objective(x, vae, generator=None, step=None, values=True)
    terms.loss      # scalar to minimise (mean over the batch)
    terms.values    # named scalar terms to log, e.g. {"elbo": ..., "kl": ...} ({} if not values)
    terms.scale     # std of the likelihood scored, per latent state and axis (K, D)

which is ``objective.terms(objective.perturb(x, generator), vae, step, values)``: ``perturb``
holds all the randomness (the spread noise), ``terms`` is deterministic, so an ensemble
can draw each member's noise from its own generator and vmap ``terms`` over members.

``vae`` is any module with ``log_q(x)`` ``(B, K)``, ``log_prior(x)`` ``(K,)`` and
``decoder_params(x)`` -> (loc, scale) ``(K, D)`` (see ``nets.DiscreteVAE``). ``step`` is
the training step (``None`` in evaluation, where the loss is always the full objective).
``values=False`` skips the logged terms (a training step that is not logged needs only the
loss; they cost ~5% of a step).
A new objective needs no change to the LightningModule.

KL warm-up. Both objectives take ``kl_warmup_steps``: the KL term of the loss is weighted
by beta = min(1, step / kl_warmup_steps) (Bowman et al. 2016; Sonderby et al. 2016).
Without it a two-state VAE with a learned decoder variance stalls in posterior collapse:
one broad Gaussian (std ~ the data's std) explains the data's first two moments, so at
that point the direction that splits the two states has zero curvature (its drive is of
fourth order, set by the data's kurtosis) while the KL pins q(z|x) to the prior. With
beta ~ 0 the encoder commits to any small asymmetry and the reconstruction term separates
the decoder means at first order; once split, the modes stay split at beta = 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


class Terms(NamedTuple):
    loss: Tensor
    values: dict[str, Tensor]
    # The std of the likelihood that was scored, per latent state and axis, ``(K, D)``,
    # detached: the decoder's for the ELBO, the convolved one for the spread ELBO. Free
    # with every step, so monitors need no second decoder pass.
    scale: Tensor | None = None


class Objective(Protocol):
    def __call__(
        self, x: Tensor, vae, generator: torch.Generator | None = None, step: int | None = None,
        values: bool = True,
    ) -> Terms: ...

    def perturb(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The data the objective scores (all its randomness is here)."""
        ...

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True) -> Terms:
        """Loss and terms of perturbed data ``y`` (deterministic)."""
        ...

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        """Std of the likelihood the objective fits, given the decoder std ``scale``."""
        ...


def kl_weight(step: int | None, warmup_steps: int) -> float | None:
    """beta = min(1, step / warmup_steps) in training; ``None`` in evaluation (step None)."""
    if step is None:
        return None
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def gaussian_log_lik(x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(x_b; loc_k, diag(scale_k^2)) for every point b and state k.

    Args: x ``(B, D)``; loc, scale ``(K, D)``. Returns ``(B, K)``.
    """
    z = (x[:, None, :] - loc) / scale  # (B, K, D)
    return -(0.5 * z.square() + scale.log() + 0.5 * LOG_2PI).sum(-1)


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


def log_marginal(log_prior: Tensor, log_lik: Tensor) -> Tensor:
    """Exact log p(x) = logsumexp_z [log p(z) + log p(x|z)], ``(B,)``."""
    return torch.logsumexp(log_prior + log_lik, dim=-1)


def _convolved_scale(scale: Tensor, noise_std: float) -> Tensor:
    """Gaussian decoder convolved with N(0, noise_std^2): variances add (SCIENCE.md §2)."""
    return torch.hypot(scale, scale.new_tensor(noise_std))


def _terms(x_in: Tensor, vae, noise_std: float, prefix: str, beta: float | None,
           values: bool = True) -> Terms:
    """Loss and terms; ``beta`` weights the KL in training (``None``: evaluation, beta = 1);
    the logged terms only if ``values``."""
    log_q = vae.log_q(x_in)  # (B, K)
    loc, scale = vae.decoder_params(x_in)  # (K, D)
    if noise_std > 0:
        scale = _convolved_scale(scale, noise_std)
    log_lik = gaussian_log_lik(x_in, loc, scale)
    log_prior = vae.log_prior(x_in)
    t = elbo_terms(log_q, log_prior, log_lik)
    if beta is None or beta == 1.0:
        loss = -t["elbo"].mean()
    else:
        loss = -(t["rec"] - beta * t["kl"]).mean()
    logged = {}
    if values:
        logged = {
            f"{prefix}elbo": t["elbo"].mean(),
            "rec": t["rec"].mean(),
            "kl": t["kl"].mean(),
            f"{prefix}log_px": log_marginal(log_prior, log_lik).mean(),
        }
        if beta is not None:
            logged["kl_weight"] = torch.tensor(beta)
    return Terms(loss=loss, values={k: v.detach() for k, v in logged.items()}, scale=scale.detach())


def _check_warmup(kl_warmup_steps: int) -> int:
    if kl_warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
    return int(kl_warmup_steps)


class ELBO:
    """The evidence lower bound, maximised on the clean data x.

    loss = -mean_x ELBO(x). On data with a zero-variance axis this is unbounded below:
    the decoder std on that axis can shrink to 0 and -log(std) grows without limit.

    Args:
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up). See the module docstring for why.
    """

    def __init__(self, kl_warmup_steps: int = 0) -> None:
        self.kl_warmup_steps = _check_warmup(kl_warmup_steps)

    def __call__(
        self, x: Tensor, vae, generator: torch.Generator | None = None, step: int | None = None,
        values: bool = True,
    ) -> Terms:
        return self.terms(self.perturb(x, generator), vae, step, values)

    def perturb(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The ELBO sees the clean data."""
        return x

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True) -> Terms:
        return _terms(y, vae, 0.0, "", kl_weight(step, self.kl_warmup_steps), values)

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return scale

    def __repr__(self) -> str:
        return f"ELBO(kl_warmup_steps={self.kl_warmup_steps})"


class SpreadELBO:
    """The spread ELBO (Zhang et al., "Spread Divergence", ICML 2020).

    Both the data and the model are convolved with Gaussian noise N(0, noise_std^2 I):
    y = x + noise (fresh noise each call), the encoder sees y, and the decoder likelihood
    is the exact convolution N(y; loc, scale^2 + noise_std^2). With noise_std = 0 it is
    the ELBO. Its loss is bounded below: each axis contributes at most
    -0.5 log(2 pi noise_std^2) to log p~(y|z).

    Args:
        noise_std: standard deviation of the spread noise (> 0 for a bounded loss).
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up).
    """

    def __init__(self, noise_std: float = 0.3, kl_warmup_steps: int = 0) -> None:
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.noise_std = float(noise_std)
        self.kl_warmup_steps = _check_warmup(kl_warmup_steps)

    def __call__(
        self, x: Tensor, vae, generator: torch.Generator | None = None, step: int | None = None,
        values: bool = True,
    ) -> Terms:
        return self.terms(self.perturb(x, generator), vae, step, values)

    def perturb(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y = x + noise_std * eps, eps ~ N(0, I) drawn from ``generator`` (fresh each call)."""
        if self.noise_std == 0:
            return x
        # A generator lives on its own device; move its draw.
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
        return x + self.noise_std * noise.to(x.device)  # (B, D)

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True) -> Terms:
        """Spread ELBO terms of already-spread data ``y``."""
        return _terms(y, vae, self.noise_std, "spread_", kl_weight(step, self.kl_warmup_steps), values)

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return _convolved_scale(scale, self.noise_std) if self.noise_std > 0 else scale

    def __repr__(self) -> str:
        return f"SpreadELBO(noise_std={self.noise_std}, kl_warmup_steps={self.kl_warmup_steps})"
