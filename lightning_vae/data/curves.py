"""Numerically exact distance to a parametric curve (torch only).

``curve_distance(x, curve, t0, t1)``: for each point, the distance to the curve c(t),
t in [t0, t1], from a coarse float64 grid of the parameter, then golden-section refinement
of the few best local minima to a bracket of 1e-10 in t (endpoints included). Used by the
spiral, the helix and the swiss roll; accurate to ~1e-11 for points on the curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# Numerically exact distance to a parametric curve (``curve_distance``).
_GOLDEN = (math.sqrt(5) - 1) / 2
_T_TOL = 1e-10  # final golden-section bracket width in t: distance error ~ |c'| * 1e-10 at an endpoint
_N_CANDIDATES = 3  # grid local minima refined per point: near-ties between branches stay exact
_GRID_BYTES = 200e6  # cap on the (points x grid) buffers of one chunk
_GRID_PER_TURN = 256  # grid points per turn (2 pi) of a curve: each basin of |x - c(t)|^2 spans many


def _cos_sin(t: Tensor) -> tuple[Tensor, Tensor]:
    """cos t and sin t in one elementwise kernel, as ``torch.polar(1, t)``.

    On CPU, float ``torch.cos``/``torch.sin`` wake the thread pool on every call whatever
    the size (measured: ~8 ms per call on a busy 2-core machine, 0.04 ms on one thread),
    and ``curve_distance`` evaluates a curve ~50 times per chunk; ``torch.polar`` does not,
    and agrees with them to 1 ulp.
    """
    z = torch.polar(torch.ones_like(t), t)
    return z.real, z.imag


def _grid_brackets(x: Tensor, t_grid: Tensor, c_grid: Tensor, c_sq: Tensor,
                   k: int) -> tuple[Tensor, Tensor]:
    """Brackets ``[t_(i-1), t_(i+1)]`` around the k lowest discrete local minima of |x - c|^2.

    Two ``(M, k)`` tensors of parameters.
    A function of its own so that the ``(M, G)`` buffers are freed before the next chunk.
    """
    d2 = (x @ c_grid.T).mul_(-2).add_((x * x).sum(1, keepdim=True)).add_(c_sq)  # (M, G), in place
    is_min = torch.ones_like(d2, dtype=torch.bool)  # an end of the curve has one neighbour
    is_min[:, 1:] &= d2[:, 1:] <= d2[:, :-1]
    is_min[:, :-1] &= d2[:, :-1] <= d2[:, 1:]
    idx = d2.masked_fill_(is_min.logical_not_(), math.inf).topk(k, dim=1, largest=False).indices  # (M, k)
    return t_grid[(idx - 1).clamp(min=0)], t_grid[(idx + 1).clamp(max=len(t_grid) - 1)]


def _golden_min(f: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, n_iter: int) -> Tensor:
    """min of f over each bracket [a, b] (f unimodal there) by golden-section search; a, b count."""
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(n_iter):
        left = fc <= fd  # the minimum lies in [a, d]: c becomes the new d
        a, b = torch.where(left, a, c), torch.where(left, d, b)
        keep, f_keep = torch.where(left, c, d), torch.where(left, fc, fd)
        new = torch.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        f_new = f(new)
        c, fc = torch.where(left, new, keep), torch.where(left, f_new, f_keep)
        d, fd = torch.where(left, keep, new), torch.where(left, f_keep, f_new)
    return torch.minimum(torch.minimum(f(a), f((a + b) / 2)), f(b))


def curve_distance(x: Tensor, curve: Callable[[Tensor], Tensor], t0: float, t1: float,
                   n_grid: int) -> Tensor:
    """Distance of each row of ``x`` ``(N, d)`` to the curve ``c(t)``, t in [t0, t1], ``(N,)`` float64.

    ``curve`` maps parameters of any shape ``S`` to points ``S + (d,)``. The squared
    distance f(t) = |x - c(t)|^2 is evaluated on a grid of ``n_grid`` parameters; each of
    the ``_N_CANDIDATES`` lowest discrete local minima brackets a local minimum of f
    between its grid neighbours, refined by golden-section search to a bracket of
    ``_T_TOL``; the smallest of f at the bracket ends and middle wins. Refining several
    candidates keeps near-ties between branches exact when the grid prefers the wrong
    one. The grid must be fine enough that every basin of f spans several grid points.
    Endpoints of the curve are ordinary candidates, so distances to an end are exact
    too. Points are processed in chunks so that the ``(chunk, n_grid)`` buffers stay under
    ``_GRID_BYTES``.
    """
    x = x.to(torch.float64)
    t_grid = torch.linspace(t0, t1, n_grid, dtype=torch.float64, device=x.device)  # (G,)
    c_grid = curve(t_grid)  # (G, d)
    c_sq = (c_grid * c_grid).sum(1)
    k = min(_N_CANDIDATES, n_grid)
    n_iter = max(0, math.ceil(math.log(2 * (t1 - t0) / (n_grid - 1) / _T_TOL) / math.log(1 / _GOLDEN)))
    chunk = max(1, int(_GRID_BYTES // (10 * n_grid)))  # peak: one float64 and two bool (chunk, G) buffers
    out = []
    for xc in x.split(chunk):
        a, b = _grid_brackets(xc, t_grid, c_grid, c_sq, k)  # (M, K) each
        f2 = _golden_min(lambda t: ((xc[:, None, :] - curve(t)) ** 2).sum(-1), a, b, n_iter)  # noqa: B023
        out.append(f2.amin(dim=1).sqrt())
    return torch.cat(out) if out else x.new_zeros(0)
