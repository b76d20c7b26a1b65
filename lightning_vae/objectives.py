"""Training objectives (torch only; no Lightning): the ELBO, the spread ELBO and the
denoising ablation, and the contract a new objective follows.

The contract. An objective subclasses ``Objective`` and implements one method::

    terms = objective.terms(y, vae, step, values, eps)  # deterministic given y and eps
    terms.loss      # scalar to minimise (mean over the batch)
    terms.values    # named scalars to log, e.g. {"elbo": ..., "kl": ...} ({} if not values)
    terms.scale     # std of the likelihood scored, per latent value and axis (N, D), detached

All the randomness of a step lives in ONE call, ``objective.draw(x, vae, generator, step,
share)``: the perturbed data y (``perturb``: the spread noise; the identity by default)
and the latent's reparameterisation draws eps (None for an enumerated latent), both from
``generator``, in that order. ``share = (world, rank)`` is how a DDP rank takes its part:
every rank draws the noise of the global batch and keeps its own rows, so the run sees the
noise of one process with the global batch. An ensemble member draws from its own
generator. ``objective(x, vae, generator, step, values, share)`` is ``draw`` then ``terms``.

``vae`` is a ``VAECore`` (``nets.DiscreteVAE``, ``nets.GaussianVAE``): the latent family
supplies the expectation over z of the likelihood the objective chooses,
``vae.expectation(y, log_lik, eps)`` -> ``Expectation(rec, kl, log_px, scale)`` (an exact
sum over the states, or the draws eps), so an objective never branches on the latent.
``step`` is the optimizer step (``None`` in evaluation, where the loss is the full
objective); ``values=False`` skips the logged terms (a step that is not logged needs only
the loss). ``trains_deterministic`` says whether the objective can train a decoder without
a density (``DeterministicDecoder``); the model refuses the pair otherwise. A new objective
is one class, named by ``class_path`` in YAML; it works unchanged in single runs, under
DDP and in the vectorised ensemble. For example, a beta-VAE::

    from lightning_vae.densities import normal_log_prob
    from lightning_vae.objectives import Objective, Terms

    class BetaELBO(Objective):
        \"\"\"The ELBO with its KL weighted by beta (Higgins et al. 2017).\"\"\"

        def __init__(self, beta: float = 4.0) -> None:
            self.beta = beta

        def terms(self, y, vae, step=None, values=True, eps=None):
            e = vae.expectation(y, normal_log_prob, eps)  # (B,) each
            loss = -(e.rec - self.beta * e.kl).mean()
            logged = {"rec": e.rec.mean().detach(), "kl": e.kl.mean().detach()} if values else {}
            return Terms(loss, logged, e.scale.detach())

KL warm-up. The ELBO family takes ``kl_warmup_steps``: the KL term of the loss is weighted
by beta = min(1, step / kl_warmup_steps) (Bowman et al. 2016; Sonderby et al. 2016).
Without it a two-state VAE with a learned decoder variance stalls in posterior collapse:
one broad Gaussian (std ~ the data's std) explains the data's first two moments, so at
that point the direction that splits the two states has zero curvature (its drive is of
fourth order, set by the data's kurtosis) while the KL pins q(z|x) to the prior. With
beta ~ 0 the encoder commits to any small asymmetry and the reconstruction term separates
the decoder means at first order; once split, the modes stay split at beta = 1
(docs/science.md §6).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple, Protocol

import torch
from torch import Tensor

from lightning_vae.densities import (  # noqa: F401 - re-exported: the maths of the objectives
    LOG_2PI,
    Expectation,
    LogLik,
    elbo_terms,
    gaussian_log_lik,
    log_marginal,
    normal_log_prob,
)
from lightning_vae.kernels import GaussianKernel, Kernel, residual_log_lik
from lightning_vae.schedules import Constant, Schedule

DETERMINISTIC_NEEDS_SPREAD = (
    "a deterministic decoder has no likelihood of its own: train it with a spread objective "
    "(model.objective: lightning_vae.objectives.SpreadELBO with noise_std > 0), not the "
    "ELBO or the denoising ELBO")

Share = tuple[int, int]  # (world size, rank): which rows of the global batch's noise are ours
ONE_PROCESS: Share = (1, 0)


class Terms(NamedTuple):
    loss: Tensor
    values: dict[str, Tensor]
    # The std of the likelihood that was scored, per latent value and axis, ``(N, D)``,
    # detached: the decoder's for the ELBO, the convolved one for the spread ELBO. Free
    # with every step, so monitors need no second decoder pass.
    scale: Tensor | None = None
    # A scalar that only the learned spread's parameters see (docs/learned_spread.md): the
    # loop back-propagates loss + adversary and the noise ascends it (None: no such term).
    adversary: Tensor | None = None


class VAECore(Protocol):
    """What an objective needs of the model it scores (``nets.DiscreteVAE``, ``nets.GaussianVAE``)."""

    deterministic: bool  # the decoder has no density (p(x|z) = delta(x - loc(z)))

    def draws(self, n: int, training: bool, generator: torch.Generator | None,
              like: Tensor) -> Tensor | None:
        """The latent's reparameterisation noise for ``n`` points (None: enumerated)."""
        ...

    def expectation(self, y: Tensor, log_lik: LogLik, eps: Tensor | None = None) -> Expectation:
        """E_q(z|y) of ``log_lik``, the KL and log p~(y), per point."""
        ...


class Objective(ABC):
    """Base of the objectives: implement ``terms``; override ``perturb`` for noise on the
    data, ``likelihood_scale`` if the likelihood's std is not the decoder's, and set
    ``trains_deterministic`` if the objective has a likelihood for a decoder without a
    density. See the module docstring for the contract and an example."""

    trains_deterministic: ClassVar[bool] = False

    @abstractmethod
    def terms(self, y: Tensor, vae: VAECore, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        """Loss and terms of already-perturbed data ``y`` ``(B, D)`` with the latent draws
        ``eps`` (deterministic)."""

    def perturb(self, x: Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Tensor:
        """The data the objective scores; the clean data by default."""
        return x

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        """Std of the likelihood the objective fits (in evaluation), given the decoder std."""
        return scale

    def draw(self, x: Tensor, vae: VAECore, generator: torch.Generator | None = None,
             step: int | None = None, share: Share = ONE_PROCESS) -> tuple[Tensor, Tensor | None]:
        """All the randomness of one step, from ``generator``: y = perturb(x) ``(B, D)``,
        then the latent's draws ``(S, B, d)`` (None for an enumerated latent).

        With ``share = (world, rank)`` (DDP), ``x`` is rows ``rank*B:(rank+1)*B`` of the
        global batch: the noise of all ``world * B`` rows is drawn, in the order one process
        would draw it, and this rank's rows are kept.
        """
        world, rank = share
        if world == 1:
            y = self.perturb(x, generator, step)
            return y, vae.draws(len(y), step is not None, generator, y)
        rows = slice(rank * len(x), (rank + 1) * len(x))
        y = self.perturb(x.repeat(world, *([1] * (x.dim() - 1))), generator, step)  # (world*B, D)
        eps = vae.draws(len(y), step is not None, generator, y)
        return y[rows], None if eps is None else eps[:, rows]

    def __call__(self, x: Tensor, vae: VAECore, generator: torch.Generator | None = None,
                 step: int | None = None, values: bool = True, share: Share = ONE_PROCESS) -> Terms:
        if vae.deterministic and not self.trains_deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        y, eps = self.draw(x, vae, generator, step, share)
        return self.terms(y, vae, step, values, eps)


def kl_weight(step: int | None, warmup_steps: int) -> float | None:
    """beta = min(1, step / warmup_steps) in training; ``None`` in evaluation (step None)."""
    if step is None:
        return None
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def _check_warmup(kl_warmup_steps: int) -> int:
    if kl_warmup_steps < 0:
        raise ValueError(f"kl_warmup_steps must be >= 0, got {kl_warmup_steps}")
    return int(kl_warmup_steps)


def _convolved_scale(scale: Tensor, noise_std: float) -> Tensor:
    """The std of the decoder convolved with noise of std ``noise_std``: variances add,
    whatever the kernel."""
    return torch.hypot(scale, scale.new_tensor(noise_std)) if noise_std > 0 else scale


def _decoder_log_lik(u: Tensor, scale: Tensor | None) -> Tensor:
    """The decoder's own Gaussian likelihood of the residual (the ELBO's)."""
    if scale is None:
        raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
    return normal_log_prob(u, scale)


class _ELBOFamily(Objective):
    """The ELBO of a likelihood ``log_lik(step)``, with KL warm-up: what ELBO, SpreadELBO
    and DenoisingELBO share. Logged: ``<prefix>elbo``, ``rec``, ``kl``, ``<prefix>log_px``
    and, in training, ``kl_weight`` (and ``noise_std`` where there is noise)."""

    prefix = ""

    def __init__(self, kl_warmup_steps: int = 0) -> None:
        self.kl_warmup_steps = _check_warmup(kl_warmup_steps)

    @abstractmethod
    def log_lik(self, step: int | None) -> LogLik:
        """The likelihood of a residual scored at ``step``."""

    def step_noise_std(self, step: int | None) -> float | None:
        """The noise level at ``step`` (logged as ``noise_std``), None without noise."""
        return None

    def scored_scale(self, scale: Tensor, step: int | None) -> Tensor:
        """The std of the likelihood scored at ``step``, given the decoder std."""
        return scale

    def terms(self, y: Tensor, vae: VAECore, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        e = vae.expectation(y, self.log_lik(step), eps)  # (B,) each
        beta = kl_weight(step, self.kl_warmup_steps)
        # beta 1.0 in evaluation: rec - 1.0 * kl is bit-identical to rec - kl.
        loss = -(e.rec - (1.0 if beta is None else beta) * e.kl).mean()
        noise_std = self.step_noise_std(step)
        logged = {}
        if values:
            logged = {f"{self.prefix}elbo": (e.rec - e.kl).mean(), "rec": e.rec.mean(), "kl": e.kl.mean(),
                      f"{self.prefix}log_px": e.log_px.mean()}
            if beta is not None:
                logged["kl_weight"] = torch.tensor(beta)
                if noise_std is not None:
                    logged["noise_std"] = torch.tensor(noise_std)
        return Terms(loss=loss, values={k: v.detach() for k, v in logged.items()},
                     scale=self.scored_scale(e.scale, step).detach())


class ELBO(_ELBOFamily):
    """The evidence lower bound, maximised on the clean data x.

    loss = -mean_x ELBO(x). On data with a zero-variance axis this is unbounded below:
    the decoder std on that axis can shrink to 0 and -log(std) grows without limit.

    Args:
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up). See the module docstring for why.
    """

    def log_lik(self, step: int | None) -> LogLik:
        return _decoder_log_lik

    def __repr__(self) -> str:
        return f"ELBO(kl_warmup_steps={self.kl_warmup_steps})"


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


class _Noisy(_ELBOFamily):
    """Shared by the objectives that perturb the data: the noise level (a number or a
    schedule over optimizer steps; in evaluation, step None, its final value) and the
    kernel it is drawn from."""

    def __init__(self, noise_std: float | Schedule, kl_warmup_steps: int, kernel: Kernel | None) -> None:
        super().__init__(kl_warmup_steps)
        self.schedule = _schedule(noise_std)
        self.kernel = kernel if kernel is not None else GaussianKernel()

    @property
    def noise_std(self) -> float:
        """The noise level in evaluation (the schedule's final value)."""
        return self.schedule.value(None)

    def step_noise_std(self, step: int | None) -> float:
        """The noise level at optimizer step ``step`` (None: evaluation)."""
        return self.schedule.value(step)

    def perturb(self, x: Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Tensor:
        """y = x + u, u ~ kernel at level noise_std(step), drawn from ``generator``."""
        noise_std = self.step_noise_std(step)
        if noise_std == 0:
            return x
        # A generator lives on its own device; move its draw.
        device = generator.device if generator is not None else x.device
        noise = self.kernel.sample(x.shape, noise_std, generator=generator, dtype=x.dtype, device=device)
        if getattr(self.kernel, "transforms", False):  # a learned mean transform: y = f(x) + noise
            x = self.kernel.transform(x)
        return x + noise.to(x.device)  # (B, D)

    def _repr_args(self) -> str:
        noise = self.schedule.value(None) if isinstance(self.schedule, Constant) else self.schedule
        return f"noise_std={noise}, kl_warmup_steps={self.kl_warmup_steps}, kernel={self.kernel!r}"


class SpreadELBO(_Noisy):
    """The spread ELBO (Zhang et al., "Spread Divergence", ICML 2020; docs/science.md §2).

    Both the data and the model are convolved with the same noise kernel: y = x + u (fresh
    noise each call), the encoder sees y, and the decoder likelihood is the exact
    convolution of p(x|z) with the kernel (``kernels``: Gaussian * Gaussian, Gaussian *
    Laplace, and a deterministic decoder * either, all closed forms). With noise_std = 0
    it is the ELBO. Its loss is bounded below: for a Gaussian kernel each axis contributes
    at most -0.5 log(2 pi noise_std^2) to log p~(y|z).

    Args:
        noise_std: the kernel's per-axis std, a number or a schedule
            (``lightning_vae.schedules``: Constant, LinearAnneal, CosineAnneal; logged as
            ``train/noise_std``); > 0 for a bounded loss.
        kl_warmup_steps: training steps over which the KL weight rises linearly from 0
            to 1 (0: no warm-up).
        kernel: ``GaussianKernel()`` (default) or ``LaplaceKernel()``.
    """

    prefix = "spread_"
    trains_deterministic = True

    def __init__(self, noise_std: float | Schedule = 0.3, kl_warmup_steps: int = 0,
                 kernel: Kernel | None = None) -> None:
        super().__init__(noise_std, kl_warmup_steps, kernel)

    def log_lik(self, step: int | None) -> LogLik:
        """log (p(.|z) * k)(u) at the step's noise level, exact in every case
        (``kernels.residual_log_lik``)."""
        return functools.partial(residual_log_lik, self.kernel, noise_std=self.step_noise_std(step))

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return _convolved_scale(scale, self.noise_std)

    def scored_scale(self, scale: Tensor, step: int | None) -> Tensor:
        return _convolved_scale(scale, self.step_noise_std(step))

    def __repr__(self) -> str:
        return f"SpreadELBO({self._repr_args()})"


class DenoisingELBO(_Noisy):
    """The denoising ablation: noise on the data only, y = x + u, scored by the decoder's
    own likelihood (not convolved). It fits the noisy data, so it is biased: on the seed
    data it learns an x-std near sqrt(s^2 + noise_std^2) where the spread ELBO learns s
    (docs/science.md §4). One class_path away from ``SpreadELBO``, with the same arguments.
    """

    prefix = "denoise_"

    def __init__(self, noise_std: float | Schedule = 0.3, kl_warmup_steps: int = 0,
                 kernel: Kernel | None = None) -> None:
        super().__init__(noise_std, kl_warmup_steps, kernel)

    def log_lik(self, step: int | None) -> LogLik:
        return _decoder_log_lik

    def __repr__(self) -> str:
        return f"DenoisingELBO({self._repr_args()})"


class VAEWarmStart(Objective):
    """Start with a standard VAE, then train ``objective``: the paper's initialisation of
    every delta-VAE ("initialised with one epoch of a standard VAE", Zhang et al. 2020,
    section 5.2.2).

    For the first ``steps`` optimizer steps the loss is the ELBO of the clean data with a
    Gaussian likelihood of fixed std ``std`` around the decoder's mean, N(x; g(z), std^2 I),
    whatever the decoder's own variance (a deterministic decoder included: its mean is all
    it has); from step ``steps`` on, and in evaluation, it is ``objective`` unchanged (its
    noise, its schedule, its logged terms; a schedule's step counts from 0, not from the
    switch). ``train/warm_start`` logs 1 during the warm start, 0 after. One epoch is
    ``steps = n_train // batch_size``.

    Args:
        objective: what to train after the warm start, e.g. ``SpreadELBO(noise_std=0.3)``.
        steps: optimizer steps of the standard VAE (0: none).
        std: the standard VAE's fixed likelihood std (the paper's VAE baseline has variance
            0.5: std 0.7071).
    """

    def __init__(self, objective: Objective, steps: int = 0, std: float = 0.5**0.5) -> None:
        if not isinstance(objective, Objective):
            raise ValueError(f"objective must be an Objective (e.g. SpreadELBO), got {objective!r}")
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
            raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
        if not (isinstance(std, (int, float)) and math.isfinite(std) and std > 0):
            raise ValueError(f"std must be a finite number > 0, got {std!r}")
        self.objective, self.steps, self.std = objective, steps, float(std)
        self.trains_deterministic = objective.trains_deterministic

    def __getattr__(self, name: str):
        # The wrapped objective's attributes (noise_std, kernel, schedule...), for monitors.
        if name == "objective":
            raise AttributeError(name)
        return getattr(self.objective, name)

    def warm(self, step: int | None) -> bool:
        """Whether optimizer step ``step`` is in the warm start (never in evaluation)."""
        return step is not None and step < self.steps

    def perturb(self, x: Tensor, generator: torch.Generator | None = None,
                step: int | None = None) -> Tensor:
        return x if self.warm(step) else self.objective.perturb(x, generator, step)

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        return self.objective.likelihood_scale(scale)

    def terms(self, y: Tensor, vae: VAECore, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        if not self.warm(step):
            terms = self.objective.terms(y, vae, step, values, eps)
            if values and step is not None:
                terms.values["warm_start"] = torch.tensor(0.0)
            return terms
        std = self.std

        def fixed(u: Tensor, scale: Tensor | None) -> Tensor:
            return normal_log_prob(u, u.new_tensor(std))

        e = vae.expectation(y, fixed, eps)
        loss = -(e.rec - e.kl).mean()
        logged = {}
        if values:
            logged = {"elbo": (e.rec - e.kl).mean(), "rec": e.rec.mean(), "kl": e.kl.mean(),
                      "warm_start": torch.tensor(1.0)}
        return Terms(loss=loss, values={k: v.detach() for k, v in logged.items()},
                     scale=torch.full_like(e.scale, std).detach())

    def __repr__(self) -> str:
        return f"VAEWarmStart({self.objective!r}, steps={self.steps}, std={self.std:g})"
