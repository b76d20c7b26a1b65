"""Learned spread: a Gaussian noise kernel whose covariance is trained to maximise the spread
divergence while the model minimises it (torch only; no Lightning). docs/learned_spread.md
has the derivation; Zhang et al., "Spread Divergence", ICML 2020, section 4.1, the idea.

The kernel is k(u) = N(u; 0, Sigma) with

    Sigma = noise_std^2 I + L L^T,    L = sqrt(budget) V / ||V||_F    (D x R, rank R),

``noise_std`` the objective's fixed isotropic level and V the learned parameter. The
constraint tr(L L^T) = ||L||_F^2 = ``budget`` is what makes the maximisation meaningful:
spreading can only lower a divergence (data processing inequality; nested Gaussian noise
is a further spreading of the less noisy pair), so over a free L the maximiser is L = 0.
With the total noise variance fixed, D noise_std^2 + budget, the noise can only choose
WHERE to put its variance, and it puts it where it blurs the difference between data and
model the least.

Everything is exact and costs O(D R^2) per residual (the matrix determinant lemma and the
Woodbury identity), written in the form that has no cancellation:

    u^T (A + L L^T)^{-1} u = min_a [ (u - L a)^T A^{-1} (u - L a) + |a|^2 ]
                           = (u - L a*)^T A^{-1} (u - L a*) + |a*|^2,
    a* = M^{-1} L^T A^{-1} u,   M = I_R + L^T A^{-1} L,
    log det (A + L L^T) = log det A + log det M,

with A diagonal: noise_std^2 I (a deterministic decoder) or diag(scale^2 + noise_std^2) (a
Gaussian decoder, its std ``scale`` per point, state and axis). Both terms of the sum are
non-negative, so nothing cancels however small noise_std is against the budget.

The spread data's own log-density, which the divergence needs and the model's loss does
not, is the mixture over the (global) batch of clean points x_j (``spread_log_density``):

    log p~(y_i) = logsumexp_j log N(y_i; x_j, Sigma) - log B.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_vae.kernels import LOG_2PI, _check_noise_std, _device

ASCENTS = ("divergence", "loss")
EIGEN_TAGS = 32  # at most this many spread/eigen_<r> scalars (the largest)


def _solve_cholesky(chol: Tensor, b: Tensor) -> Tensor:
    """M^{-1} b for M = chol chol^T, b ``(..., R)`` against chol ``(..., R, R)``, which
    broadcasts against b. M = I + (positive semi-definite) has eigenvalues >= 1, so its
    inverse is as accurate as a solve; formed once per distinct M, it is one matrix product
    per residual instead of a triangular solve each (the mixture's B x B residuals share one)."""
    return (b.unsqueeze(-2) @ torch.cholesky_inverse(chol)).squeeze(-2)


def low_rank_log_normal(u: Tensor, diag_var: Tensor, factor: Tensor) -> Tensor:
    """log N(u; 0, diag(diag_var) + factor factor^T), summed over the last axis.

    Args: u ``(..., D)``; diag_var ``(..., D)`` > 0, broadcasting against u (the Gram
    matrix M is formed on diag_var's own shape, so a variance shared by many residuals
    costs one M); factor ``(D, R)``. O(D R^2) per distinct diag_var, O(D R) per residual.
    """
    d = u.shape[-1]
    inv = diag_var.reciprocal()  # (..., D)
    rank = factor.shape[1]
    eye = torch.eye(rank, dtype=u.dtype, device=u.device)
    m = eye + torch.einsum("...d,dr,ds->...rs", inv, factor, factor)  # (..., R, R)
    chol = torch.linalg.cholesky(m)
    a = _solve_cholesky(chol, (u * inv) @ factor)  # (..., R): the minimiser a*
    r = u - a @ factor.T  # (..., D)
    maha = (r.square() * inv).sum(-1) + a.square().sum(-1)
    log_det = diag_var.log().sum(-1) + 2 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * (maha + log_det + d * LOG_2PI)


class LearnedGaussianKernel(torch.nn.Module):
    """k(u) = N(u; 0, noise_std^2 I + L L^T), L ``(D, rank)`` learned under tr(L L^T) = budget.

    Used as ``SpreadELBO(kernel=LearnedGaussianKernel(...))``; the model builds it for its
    data dimension (``build``) and trains it with its own optimizer (``VAE(spread_optimizer=...)``),
    ascending while the model descends (docs/learned_spread.md). The noise level passed per
    call (``noise_std``, the objective's, a number or a schedule) is the fixed isotropic
    part sigma; sampling is reparameterised (u = sigma e1 + L e2), so gradients reach L
    through the perturbed data as well as through the likelihood.

    Args:
        rank: R, the number of learned noise directions (1 <= R <= D).
        budget: tr(L L^T), the learned part's total variance (> 0, in the data's units
            squared). A fixed spread with the same total noise has per-axis std
            sqrt(noise_std^2 + budget / D).
        ascent: what the noise ascends. "divergence" (default): an estimate of the spread
            KL, the model's loss (an upper bound on -E log q~(y)) plus the spread data's own
            log-density E log p~(y) (``spread_log_density``: the mixture over the batch);
            "loss": the model's loss alone (the cross-entropy; it also rewards noise that
            raises the spread data's entropy). docs/learned_spread.md compares them.
    """

    learned = True

    def __init__(self, rank: int = 1, budget: float = 0.16,
                 ascent: Literal["divergence", "loss"] = "divergence") -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) \
                or not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget must be a finite number > 0 (tr(L L^T), the learned "
                             f"noise's total variance), got {budget!r}")
        if ascent not in ASCENTS:
            raise ValueError(f"ascent must be one of {', '.join(ASCENTS)}, got {ascent!r}")
        self.rank, self.budget, self.ascent = rank, float(budget), ascent
        self.direction: torch.nn.Parameter | None = None  # V (D, R); L = sqrt(budget) V / ||V||

    def build(self, data_dim: int, generator: torch.Generator | None = None) -> None:
        """Create V ``(data_dim, rank)`` for data of dimension ``data_dim`` (random
        directions, from torch's global RNG unless a generator is given)."""
        if self.rank > data_dim:
            raise ValueError(f"rank must be <= the data dimension {data_dim}, got {self.rank}")
        v = torch.randn(data_dim, self.rank, generator=generator)
        self.direction = torch.nn.Parameter(v / v.norm())

    def _v(self) -> torch.nn.Parameter:
        if self.direction is None:
            raise RuntimeError("LearnedGaussianKernel.build(data_dim) has not been called "
                               "(the VAE does it; in Python, call it before use)")
        return self.direction

    @property
    def factor(self) -> Tensor:
        """L ``(D, R)``, with ||L||_F^2 = budget exactly (up to rounding)."""
        v = self._v()
        return v * (math.sqrt(self.budget) / v.norm())

    @torch.no_grad()
    def renormalise(self) -> None:
        """V <- V / ||V||_F after each noise step: L is unchanged, and V's scale, which L
        does not see, cannot drift (it would shrink or grow the optimizer's effective step)."""
        v = self._v()
        v.div_(v.norm())

    def covariance(self, noise_std: float) -> Tensor:
        """Sigma ``(D, D)`` (dense; for tests and small D)."""
        f = self.factor
        return noise_std**2 * torch.eye(len(f), dtype=f.dtype, device=f.device) + f @ f.T

    # --- the Kernel protocol (lightning_vae.kernels) -------------------------------------

    def sample(self, shape: torch.Size | tuple[int, ...], noise_std: float,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        """u = noise_std e1 + e2 L^T, e1 ``(*shape)`` then e2 ``(*shape[:-1], R)`` from
        ``generator``, in that order; differentiable in L."""
        noise_std = _check_noise_std(noise_std)
        device = _device(generator, device)
        e1 = torch.randn(shape, generator=generator, dtype=dtype, device=device)
        e2 = torch.randn((*shape[:-1], self.rank), generator=generator, dtype=dtype, device=device)
        f = self.factor
        return noise_std * e1 + e2 @ f.to(device=device, dtype=dtype).T

    def log_prob(self, u: Tensor, noise_std: float) -> Tensor:
        """log N(u; 0, Sigma), ``(...)`` from u ``(..., D)``."""
        noise_std = _check_noise_std(noise_std, positive=True)
        f = self.factor.to(u.dtype)
        return low_rank_log_normal(u, u.new_full((u.shape[-1],), noise_std**2), f)

    def convolved_log_prob(self, u: Tensor, scale: Tensor, noise_std: float) -> Tensor:
        """log of (N(0, diag(scale^2)) * k)(u) = log N(u; 0, diag(scale^2 + noise_std^2) + L L^T)."""
        noise_std = _check_noise_std(noise_std)
        f = self.factor.to(u.dtype)
        return low_rank_log_normal(u, scale.square() + noise_std**2, f)

    # --- the divergence's other half, and what is logged ---------------------------------

    def spread_log_density(self, y: Tensor, x: Tensor, noise_std: float) -> Tensor:
        """log p~(y_i) with p~ = (1/N) sum_j N(.; x_j, Sigma), the spread of the points x
        ``(N, D)``, at y ``(B, D)``: ``(B,)``. Exact for that mixture; as an estimate of the
        spread data distribution's density it is the batch's (x: the global batch)."""
        noise_std = _check_noise_std(noise_std, positive=True)
        u = y[:, None, :] - x[None, :, :]  # (B, N, D)
        f = self.factor.to(u.dtype)
        log_k = low_rank_log_normal(u, u.new_full((u.shape[-1],), noise_std**2), f)  # (B, N)
        return torch.logsumexp(log_k, dim=1) - math.log(len(x))

    @torch.no_grad()
    def scalars(self, noise_std: float, data_dim: int, x: Tensor | None = None) -> dict[str, float]:
        """``spread/eigen_<r>`` (the spectrum, largest first, up to ``EIGEN_TAGS``), ``total_variance``
        (tr Sigma = D noise_std^2 + tr L L^T) and ``budget_error`` (|tr L L^T - budget|)."""
        trace = float(self.factor.detach().square().sum())
        out = {f"spread/eigen_{r}": float(v) for r, v in enumerate(self.spectrum()[:EIGEN_TAGS])}
        out["spread/total_variance"] = data_dim * noise_std**2 + trace
        out["spread/budget_error"] = abs(trace - self.budget)
        return out

    @torch.no_grad()
    def spectrum(self) -> Tensor:
        """The R eigenvalues of L L^T (the squared singular values of L), descending."""
        return torch.linalg.svdvals(self.factor.detach().double()).square().float()

    @torch.no_grad()
    def alignment(self, tangent: Tensor) -> dict[str, float]:
        """How the learned noise sits against the data manifold, from orthonormal tangent
        bases ``(N, D, d)`` at N data points (``Manifold.tangent``):

        - ``tangent_fraction``: the share of L L^T's variance in the tangent space,
          mean_x ||T_x^T L||_F^2 / ||L||_F^2 (0: all of it normal to the manifold);
        - ``angle_mean`` / ``angle_max``: the principal angles (degrees) between L's column
          space and the normal space at x: their mean over the R angles and the points /
          the largest of the R at each point, averaged over the points (0: L lies in the
          normal space). Needs R <= D - d; the R angles are the
          arccos of the singular values of (I - T T^T) Q, Q an orthonormal basis of col(L).
        """
        f = self.factor.detach().double()
        t = tangent.to(f.device, torch.float64)  # (N, D, d)
        in_tangent = torch.einsum("ndk,dr->nkr", t, f).square().sum((1, 2))  # (N,)
        out = {"tangent_fraction": float((in_tangent / f.square().sum()).mean())}
        if f.shape[1] <= t.shape[1] - t.shape[2]:
            q = torch.linalg.qr(f).Q  # (D, R)
            normal_part = q - t @ (t.transpose(1, 2) @ q)  # (N, D, R)
            cos = torch.linalg.svdvals(normal_part).clamp(0, 1)  # (N, R)
            angles = torch.rad2deg(torch.arccos(cos))
            out["angle_mean"] = float(angles.mean())
            out["angle_max"] = float(angles.max(dim=1).values.mean())
        return out

    def extra_repr(self) -> str:
        return f"rank={self.rank}, budget={self.budget:g}, ascent={self.ascent!r}"

    def __repr__(self) -> str:
        return f"LearnedGaussianKernel(rank={self.rank}, budget={self.budget:g}, ascent={self.ascent!r})"


class _LipschitzLinear(torch.nn.Module):
    """A linear layer whose weight is scaled down to spectral norm <= 1 when it is above:
    W / max(1, sigma(W)), sigma by one power iteration per training forward pass (the
    vector kept as a buffer: deterministic, checkpointed), as in invertible residual
    networks (Behrmann et al. 2019). Unlike torch's spectral_norm, which always divides by
    sigma, a small weight stays small, so a block can start near the identity."""

    def __init__(self, a: int, b: int, init_std: float | None = None) -> None:
        super().__init__()
        linear = torch.nn.Linear(a, b)
        if init_std is not None:
            torch.nn.init.normal_(linear.weight, std=init_std)
            torch.nn.init.zeros_(linear.bias)
        self.weight, self.bias = linear.weight, linear.bias
        u = torch.randn(b)
        self.register_buffer("u", u / u.norm())

    def sigma(self) -> Tensor:
        """The power iteration's estimate of the spectral norm (a lower bound)."""
        w = self.weight
        if self.training:
            with torch.no_grad():
                v = torch.nn.functional.normalize(w.T @ self.u, dim=0)
                self.u.copy_(torch.nn.functional.normalize(w @ v, dim=0))
        u = self.u.clone()  # the graph keeps this copy: later iterations update the buffer in place
        v = torch.nn.functional.normalize(w.T @ u, dim=0).detach()
        return u @ w @ v

    def effective_weight(self) -> Tensor:
        return self.weight / self.sigma().clamp_min(1.0)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x, self.effective_weight(), self.bias)


class _ResidualBlock(torch.nn.Module):
    """x -> x + c h(x), h an MLP of linear layers of spectral norm <= 1 and ELUs (both
    1-Lipschitz), so Lip(c h) <= c < 1 and the block is invertible (Behrmann et al. 2019).
    The last layer starts small (std 1e-3): f starts close to the identity."""

    def __init__(self, dim: int, hidden: int, depth: int, coefficient: float) -> None:
        super().__init__()
        sizes = [dim, *([hidden] * depth), dim]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(_LipschitzLinear(a, b, init_std=1e-3 if last else None))
            if not last:
                layers.append(torch.nn.ELU())
        self.h = torch.nn.Sequential(*layers)
        self.coefficient = coefficient

    def forward(self, x: Tensor) -> Tensor:
        return x + self.coefficient * self.h(x)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """c times the product of the layers' exact spectral norms (as scaled now)."""
        bound = self.coefficient
        for layer in self.h:
            if isinstance(layer, _LipschitzLinear):
                w = layer.weight.double()
                bound *= float(torch.linalg.matrix_norm(w, ord=2)) / max(1.0, float(layer.sigma()))
        return bound


class ResidualTransformKernel(torch.nn.Module):
    """Learned spread by an injective mean transform (Zhang et al., section 4.2):

        y = f_psi(x) + noise_std e,   e ~ N(0, I),

    on the data and on the model alike: the spread likelihood of a deterministic decoder
    is N(y; f(g(z)), noise_std^2 I), exact (a Gaussian decoder pushed through a non-linear
    f is not Gaussian: refused). f is an invertible residual network, ``blocks`` blocks
    x -> x + c h(x) with Lip(c h) < 1 (spectral normalisation, c = ``coefficient``), so f is
    injective and the spread divergence stays a divergence; the constraint bounds what the
    maximiser can do (f expands distances by at most (1 + c)^blocks, contracts them by at
    most (1 - c)^blocks). f starts close to the identity (the fixed spread), as the paper's
    model starts from the fixed-spread one. Trained like ``LearnedGaussianKernel``: its own
    optimizer, ascending (``ascent``, the same two choices; docs/learned_spread.md).

    Each layer's spectral norm is estimated by one power iteration per training forward
    pass (a lower bound, so a bound a little above c is possible); ``spread/lipschitz``
    logs the exact one, the largest over the blocks of c x the product of the layers'
    spectral norms as scaled.

    Args:
        blocks: residual blocks (>= 1).
        hidden: width of each block's MLP.
        depth: hidden layers per block (>= 1).
        coefficient: c in (0, 1).
        ascent: "divergence" (default) or "loss", as for ``LearnedGaussianKernel``.
    """

    learned = True
    transforms = True  # the model's decoder means go through ``transform`` too

    def __init__(self, blocks: int = 2, hidden: int = 64, depth: int = 1, coefficient: float = 0.9,
                 ascent: Literal["divergence", "loss"] = "divergence") -> None:
        super().__init__()
        for name, value, low in (("blocks", blocks, 1), ("hidden", hidden, 1), ("depth", depth, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(coefficient, bool) or not isinstance(coefficient, (int, float)) \
                or not 0 < coefficient < 1:
            raise ValueError(f"coefficient must be a number in (0, 1) (each block's Lipschitz bound), "
                             f"got {coefficient!r}")
        if ascent not in ASCENTS:
            raise ValueError(f"ascent must be one of {', '.join(ASCENTS)}, got {ascent!r}")
        self.n_blocks, self.hidden, self.depth = blocks, hidden, depth
        self.coefficient, self.ascent = float(coefficient), ascent
        self.blocks: torch.nn.ModuleList | None = None

    def build(self, data_dim: int, generator: torch.Generator | None = None) -> None:
        """Create the blocks for data of dimension ``data_dim`` (f near the identity)."""
        self.blocks = torch.nn.ModuleList(_ResidualBlock(data_dim, self.hidden, self.depth, self.coefficient)
                                          for _ in range(self.n_blocks))

    def transform(self, x: Tensor) -> Tensor:
        """f(x), over the last axis of ``x`` ``(..., D)``."""
        if self.blocks is None:
            raise RuntimeError("ResidualTransformKernel.build(data_dim) has not been called "
                               "(the VAE does it; in Python, call it before use)")
        for block in self.blocks:
            x = block(x)
        return x

    def renormalise(self) -> None:
        """Nothing to restore: the constraint is built into the parametrisation."""

    # --- the Kernel protocol: isotropic Gaussian noise around f(x) -----------------------

    def sample(self, shape: torch.Size | tuple[int, ...], noise_std: float,
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> Tensor:
        noise_std = _check_noise_std(noise_std)
        return noise_std * torch.randn(shape, generator=generator, dtype=dtype, device=_device(generator, device))

    def log_prob(self, u: Tensor, noise_std: float) -> Tensor:
        noise_std = _check_noise_std(noise_std, positive=True)
        return (-0.5 * (u / noise_std).square() - math.log(noise_std) - 0.5 * LOG_2PI).sum(-1)

    def convolved_log_prob(self, u: Tensor, scale: Tensor, noise_std: float) -> Tensor:
        raise ValueError("ResidualTransformKernel needs a deterministic decoder (model.decoder: "
                         "lightning_vae.nets.DeterministicDecoder): a Gaussian decoder pushed through "
                         "a non-linear transform has no closed-form likelihood")

    def spread_log_density(self, y: Tensor, x: Tensor, noise_std: float) -> Tensor:
        """log p~(y_i), p~ = (1/N) sum_j N(.; f(x_j), noise_std^2 I), ``(B,)``."""
        u = y[:, None, :] - self.transform(x)[None, :, :]  # (B, N, D)
        return torch.logsumexp(self.log_prob(u, noise_std), dim=1) - math.log(len(x))

    @torch.no_grad()
    def scalars(self, noise_std: float, data_dim: int, x: Tensor | None = None) -> dict[str, float]:
        """``spread/lipschitz`` (the largest block bound, < 1 by construction) and, on
        points ``x``, ``spread/displacement``: the rms of |f(x) - x| over the points."""
        out = {"spread/lipschitz": max(b.lipschitz_bound() for b in self.blocks)}
        if x is not None:
            was = self.training
            self.eval()  # no power-iteration update for a measurement
            out["spread/displacement"] = float((self.transform(x) - x).square().sum(-1).mean().sqrt())
            self.train(was)
        return out

    def __repr__(self) -> str:
        return (f"ResidualTransformKernel(blocks={self.n_blocks}, hidden={self.hidden}, depth={self.depth}, "
                f"coefficient={self.coefficient:g}, ascent={self.ascent!r})")
