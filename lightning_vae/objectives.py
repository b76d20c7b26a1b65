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

from lightning_vae.kernels import GaussianKernel, Kernel, convolved_log_lik
from lightning_vae.schedules import Constant, Schedule

LOG_2PI = math.log(2 * math.pi)
_GAUSSIAN = GaussianKernel()  # the kernel argument where sigma is 0 (unused then)
DETERMINISTIC_NEEDS_SPREAD = (
    "a deterministic decoder has no likelihood of its own: train it with a spread objective "
    "(model.objective: lightning_vae.objectives.SpreadELBO with noise_std > 0), not the "
    "ELBO or the denoising ELBO")


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
    return normal_log_prob(x[:, None, :] - loc, scale)  # (B, K, D) -> (B, K)


def normal_log_prob(u: Tensor, scale: Tensor) -> Tensor:
    """log N(u; 0, diag(scale^2)), summed over the last axis (scale broadcasts)."""
    z = u / scale
    return -(0.5 * z.square() + scale.log() + 0.5 * LOG_2PI).sum(-1)


def _likelihood_scale(scale: Tensor, sigma: float) -> Tensor:
    """The std of the decoder convolved with noise of std sigma: variances add, whatever
    the kernel."""
    return torch.hypot(scale, scale.new_tensor(sigma)) if sigma > 0 else scale


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


def _terms(x_in: Tensor, vae, kernel: Kernel, sigma: float, prefix: str, beta: float | None,
           values: bool = True, log_sigma: bool = False, eps: Tensor | None = None) -> Terms:
    """Loss and terms with the decoder convolved with ``kernel`` at level ``sigma`` (0: the
    decoder's own likelihood); ``beta`` weights the KL in training (``None``: evaluation,
    beta = 1); the logged terms only if ``values``. A Gaussian latent (``vae.enumerable``
    False) is sampled with the draws ``eps`` ``(S, B, d)`` (default: fresh from torch's
    global generator)."""
    if not getattr(vae, "enumerable", True):
        return _sampled_terms(x_in, vae, kernel, sigma, prefix, beta, values, log_sigma, eps)
    log_q = vae.log_q(x_in)  # (B, K)
    loc, scale = vae.decoder_params(x_in)  # (K, D); a deterministic decoder's std is 0
    lik_scale = _likelihood_scale(scale, sigma)  # (K, D)
    if not vae.deterministic and (sigma == 0 or isinstance(kernel, GaussianKernel)):
        # Gaussian * Gaussian: one Gaussian. This exact arithmetic is the one the seed's
        # published numbers were produced with (the collapsing ELBO amplifies any rounding).
        log_lik = gaussian_log_lik(x_in, loc, lik_scale)
    else:
        log_lik = convolved_log_lik(kernel, x_in, loc, None if vae.deterministic else scale, sigma)
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
        if log_sigma and beta is not None:
            logged["noise_std"] = torch.tensor(sigma)
    return Terms(loss=loss, values={k: v.detach() for k, v in logged.items()}, scale=lik_scale.detach())


def _sampled_terms(y: Tensor, vae, kernel: Kernel, sigma: float, prefix: str, beta: float | None,
                   values: bool, log_sigma: bool, eps: Tensor | None) -> Terms:
    """``_terms`` for a Gaussian latent: E_q log p~(y|z) by the reparameterised draws, the
    KL exact; ``log_px`` is the importance-weighted bound with the same draws (IWAE)."""
    from lightning_vae.nets import importance_weights, log_mean_exp

    if eps is None:
        eps = vae.latent.draw(len(y), training=beta is not None, generator=None, like=y)
    if vae.deterministic:
        def log_lik(u, scale):
            return kernel.log_prob(u, sigma)
    elif sigma == 0 or isinstance(kernel, GaussianKernel):
        def log_lik(u, scale):
            return normal_log_prob(u, _likelihood_scale(scale, sigma))
    else:
        def log_lik(u, scale):
            return kernel.convolved_log_prob(u, scale, sigma)
    ll, log_ratio, kl, scale = importance_weights(vae, y, eps, log_lik)  # (S, B), (S, B), (B,)
    rec = ll.mean(0)
    loss = -(rec - (1.0 if beta is None else beta) * kl).mean()
    logged = {}
    if values:
        logged = {f"{prefix}elbo": (rec - kl).mean(), "rec": rec.mean(), "kl": kl.mean(),
                  f"{prefix}log_px": log_mean_exp(ll + log_ratio).mean()}
        if beta is not None:
            logged["kl_weight"] = torch.tensor(beta)
        if log_sigma and beta is not None:
            logged["noise_std"] = torch.tensor(sigma)
    lik_scale = _likelihood_scale(scale, sigma)  # (S, B, D)
    return Terms(loss=loss, values={k: v.detach() for k, v in logged.items()},
                 scale=lik_scale.detach().reshape(-1, lik_scale.shape[-1]))


def _draws(vae, y: Tensor, generator: torch.Generator | None, step: int | None) -> Tensor | None:
    """A Gaussian latent's reparameterisation draws for ``y`` from ``generator`` (None for
    an enumerated latent)."""
    if getattr(vae, "enumerable", True):
        return None
    return vae.latent.draw(len(y), training=step is not None, generator=generator, like=y)


def _schedule(noise_std: float | Schedule) -> Schedule:
    """A noise level: a number (constant) or a schedule over optimizer steps."""
    if isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool):
        if not (noise_std >= 0 and math.isfinite(noise_std)):  # `not >=` also catches NaN
            raise ValueError(f"noise_std must be >= 0, got {noise_std} (a finite number or a schedule)")
        return Constant(float(noise_std))
    if not hasattr(noise_std, "value"):
        raise ValueError(f"noise_std must be a number >= 0 or a schedule (Constant, LinearAnneal, "
                         f"CosineAnneal), got {noise_std!r}")
    return noise_std


def _check_warmup(kl_warmup_steps: int) -> int:
    if kl_warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
    return int(kl_warmup_steps)


class _Objective:
    """``objective(x, vae, generator, step, values)``: perturb, draw a Gaussian latent's
    reparameterisation noise from the same generator, score."""

    def __call__(
        self, x: Tensor, vae, generator: torch.Generator | None = None, step: int | None = None,
        values: bool = True,
    ) -> Terms:
        y = self.perturb(x, generator, step)
        return self.terms(y, vae, step, values, eps=_draws(vae, y, generator, step))


class ELBO(_Objective):
    """The evidence lower bound, maximised on the clean data x.

    loss = -mean_x ELBO(x). On data with a zero-variance axis this is unbounded below:
    the decoder std on that axis can shrink to 0 and -log(std) grows without limit.

    Args:
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up). See the module docstring for why.
    """

    def __init__(self, kl_warmup_steps: int = 0) -> None:
        self.kl_warmup_steps = _check_warmup(kl_warmup_steps)

    def perturb(self, x: Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Tensor:
        """The ELBO sees the clean data."""
        return x

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        if vae.deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        return _terms(y, vae, _GAUSSIAN, 0.0, "", kl_weight(step, self.kl_warmup_steps), values, eps=eps)

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return scale

    def __repr__(self) -> str:
        return f"ELBO(kl_warmup_steps={self.kl_warmup_steps})"


class _Noisy(_Objective):
    """Shared by the objectives that perturb the data: the noise level (a number or a
    schedule over optimizer steps; in evaluation, step None, its final value) and the
    kernel it is drawn from."""

    def __init__(self, noise_std: float | Schedule, kl_warmup_steps: int, kernel: Kernel | None) -> None:
        self.schedule = _schedule(noise_std)
        self.kl_warmup_steps = _check_warmup(kl_warmup_steps)
        self.kernel = kernel if kernel is not None else GaussianKernel()

    @property
    def noise_std(self) -> float:
        """The noise level in evaluation (the schedule's final value)."""
        return self.schedule.value(None)

    def sigma(self, step: int | None) -> float:
        """The noise level at optimizer step ``step`` (None: evaluation)."""
        return self.schedule.value(step)

    def perturb(self, x: Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Tensor:
        """y = x + u, u ~ kernel at level sigma(step), drawn from ``generator`` (fresh each call)."""
        sigma = self.sigma(step)
        if sigma == 0:
            return x
        # A generator lives on its own device; move its draw.
        device = generator.device if generator is not None else x.device
        noise = self.kernel.sample(x.shape, sigma, generator=generator, dtype=x.dtype, device=device)
        return x + noise.to(x.device)  # (B, D)

    def _repr_args(self) -> str:
        noise = self.schedule.value(None) if isinstance(self.schedule, Constant) else self.schedule
        return f"noise_std={noise}, kl_warmup_steps={self.kl_warmup_steps}, kernel={self.kernel!r}"


class SpreadELBO(_Noisy):
    """The spread ELBO (Zhang et al., "Spread Divergence", ICML 2020).

    Both the data and the model are convolved with the same noise kernel: y = x + u (fresh
    noise each call), the encoder sees y, and the decoder likelihood is the exact
    convolution of p(x|z) with the kernel (``kernels.convolved_log_lik``: Gaussian * Gaussian,
    Gaussian * Laplace, and a deterministic decoder * either, all closed forms). With
    noise_std = 0 it is the ELBO. Its loss is bounded below: for a Gaussian kernel each axis
    contributes at most -0.5 log(2 pi noise_std^2) to log p~(y|z).

    Args:
        noise_std: the kernel's per-axis std, a number or a schedule
            (``lightning_vae.schedules``: Constant, LinearAnneal, CosineAnneal; logged as
            ``train/noise_std``); > 0 for a bounded loss.
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up).
        kernel: ``GaussianKernel()`` (default) or ``LaplaceKernel()``.
    """

    def __init__(self, noise_std: float | Schedule = 0.3, kl_warmup_steps: int = 0,
                 kernel: Kernel | None = None) -> None:
        super().__init__(noise_std, kl_warmup_steps, kernel)

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        """Spread ELBO terms of already-spread data ``y``."""
        return _terms(y, vae, self.kernel, self.sigma(step), "spread_",
                      kl_weight(step, self.kl_warmup_steps), values, log_sigma=True, eps=eps)

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return _likelihood_scale(scale, self.noise_std)

    def __repr__(self) -> str:
        return f"SpreadELBO({self._repr_args()})"


class DenoisingELBO(_Noisy):
    """The denoising ablation: noise on the data only, y = x + u, scored by the decoder's
    own likelihood (not convolved). It fits the noisy data, so it is biased: on the seed
    data it learns an x-std near sqrt(s^2 + noise_std^2) where the spread ELBO learns s
    (SCIENCE.md §3). One class_path away from ``SpreadELBO``, with the same arguments.
    """

    def __init__(self, noise_std: float | Schedule = 0.3, kl_warmup_steps: int = 0,
                 kernel: Kernel | None = None) -> None:
        super().__init__(noise_std, kl_warmup_steps, kernel)

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        if vae.deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        t = _terms(y, vae, _GAUSSIAN, 0.0, "denoise_", kl_weight(step, self.kl_warmup_steps), values,
                   eps=eps)
        if values and step is not None:
            t.values["noise_std"] = torch.tensor(self.sigma(step))
        return t

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return scale

    def __repr__(self) -> str:
        return f"DenoisingELBO({self._repr_args()})"
