"""Sample-quality measures (pure torch functions).

All compare clean-model samples with held-out data or with the data's known geometry.
Point sets are ``(N, D)`` float tensors; the computation runs in their dtype and on their
device, and the distance-matrix estimators (MMD, energy) hold ``O(N M)`` memory, so the
torchmetrics wrappers in ``lightning_vae.sample_metrics`` subsample large sets first
(``subsample``).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real

import torch
from torch import Tensor

# When every pooled point is identical the median distance is 0; any bandwidth then gives
# MMD^2 = 0, so a positive floor avoids 0 * inf = NaN without changing the answer.
MIN_BANDWIDTH = 1e-12


def _check_pair(name: str, x: Tensor, y: Tensor, min_points: int) -> None:
    """Two point sets ``(N, D)`` and ``(M, D)`` with N, M >= ``min_points``."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"{name} needs (N, D) and (M, D) with the same D, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < min_points or len(y) < min_points:
        raise ValueError(f"{name} needs >= {min_points} points per sample, got {len(x)} and {len(y)}")


def _check_int(name: str, value, minimum: int) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_p(p) -> float:
    if not isinstance(p, Real) or isinstance(p, bool) or not p >= 1 or p == float("inf"):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    return float(p)


def _bandwidths(bandwidth: float | Tensor | Sequence[float], ref: Tensor) -> Tensor:
    """One or several RBF bandwidths as a ``(K,)`` tensor in ``ref``'s dtype and device."""
    h = torch.as_tensor(bandwidth, dtype=ref.dtype, device=ref.device)
    if h.ndim > 1 or h.numel() == 0 or bool((h < 0).any() | h.isnan().any()):
        raise ValueError(f"bandwidth must be a number >= 0 or a non-empty list of them, got {bandwidth!r}")
    return h.reshape(-1).clamp_min(MIN_BANDWIDTH)


def _rbf(sq_dist: Tensor, h: Tensor) -> Tensor:
    """sum_k exp(-d^2 / (2 h_k^2)) elementwise, for ``h`` of shape ``(K,)``."""
    k = torch.exp(-sq_dist / (2 * h[0] ** 2))
    for hk in h[1:]:
        k += torch.exp(-sq_dist / (2 * hk**2))
    return k


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median heuristic: the median pairwise distance in the pooled sample (a 0-d tensor).

    The median over the P = n (n - 1) / 2 distinct pairs (i < j) of the n pooled points,
    torch's lower median when P is even. For a symmetric distance matrix this is also the
    lower median over all ordered pairs i != j (each distance counted twice), at half the
    cost.
    """
    pooled = torch.cat([x, y])
    d = torch.cdist(pooled, pooled)
    # Row by row: much faster than a boolean mask over the n x n matrix.
    return torch.cat([d[i, i + 1:] for i in range(len(pooled) - 1)]).median()


def within_kernel_mean(y: Tensor, bandwidth: float | Tensor | Sequence[float]) -> Tensor:
    """Mean of k(a, b) over pairs a != b of ``y``: the MMD term that depends on ``y`` alone.

    ``k`` is the kernel of ``mmd_rbf`` for the same ``bandwidth``. Callers comparing many
    samples against one fixed data set compute it once.
    """
    k = _rbf(torch.cdist(y, y).square(), _bandwidths(bandwidth, y))
    m = len(y)
    return (k.sum() - k.diagonal().sum()) / (m * (m - 1))


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | Tensor | Sequence[float] | None = None,
            yy: Tensor | None = None) -> Tensor:
    """Unbiased estimate of MMD^2 with a Gaussian (RBF) kernel.

    k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)) over the bandwidths h: one number (the usual
    RBF kernel) or a list of them (a multi-scale kernel; a sum of characteristic kernels is
    characteristic). The estimate is Gretton et al. (2012), eq. 3:

        MMD_u^2 = 1/(N(N-1)) sum_{i != j} k(x_i, x_j) + 1/(M(M-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(N M) sum_{i, j} k(x_i, y_j).

    The diagonal terms k(a, a) are left out of the within-sample means, so the estimate is
    unbiased and may be slightly negative when the two samples come from the same
    distribution. ``bandwidth`` defaults to the median heuristic on the pooled sample
    (``median_bandwidth``); a bandwidth of 0 is floored at ``MIN_BANDWIDTH``.

    Args: x ``(N, D)``, y ``(M, D)`` with N, M >= 2; ``yy``, optionally,
    ``within_kernel_mean(y, bandwidth)`` computed beforehand (same value, less work).
    """
    _check_pair("mmd_rbf", x, y, 2)
    h = _bandwidths(median_bandwidth(x, y) if bandwidth is None else bandwidth, x)
    kxy = _rbf(torch.cdist(x, y).square(), h)
    xx = within_kernel_mean(x, h)
    yy = within_kernel_mean(y, h) if yy is None else yy
    return xx + yy - 2 * kxy.mean()


def energy_distance(x: Tensor, y: Tensor, unbiased: bool = True) -> Tensor:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Szekely & Rizzo), Euclidean |.|.

    ``unbiased`` (default): the U-statistic, whose within-sample means run over the pairs
    i != j,

        2/(N M) sum_{i, j} |x_i - y_j| - 1/(N(N-1)) sum_{i != j} |x_i - x_j|
                                       - 1/(M(M-1)) sum_{i != j} |y_i - y_j|,

    unbiased, and slightly negative at times for two samples of one distribution (N, M >= 2).
    ``unbiased=False``: the V-statistic, the same with the within-sample sums divided by
    N^2 and M^2 (the zero distances i = j included); >= 0, biased upwards (N, M >= 1).
    These are dcor's ``estimation_stat="u_statistic"`` and ``"v_statistic"``.
    """
    _check_pair("energy_distance", x, y, 2 if unbiased else 1)

    def within(a: Tensor) -> Tensor:
        # The zero diagonal is left out of the sum either way: torch.cdist's matrix-product
        # form leaves it at rounding-error level, not exactly 0.
        d, n = torch.cdist(a, a), len(a)
        return (d.sum() - d.diagonal().sum()) / (n * (n - 1) if unbiased else n * n)

    return 2 * torch.cdist(x, y).mean() - within(x) - within(y)


def _wasserstein_pp(a: Tensor, b: Tensor, p: float) -> Tensor:
    """W_p^p between the uniform empirical distributions of each row pair of ``a`` ``(R, N)``
    and ``b`` ``(R, M)``, ``(R,)``: the integral over t in (0, 1] of
    |F_a^{-1}(t) - F_b^{-1}(t)|^p.

    Both quantile functions are step functions, with steps at the levels i/N and j/M. On
    the common denominator N M these levels are the integers i M and j N, so their merged
    grid is exact (no floating-point near-ties between i/N and j/M); on each grid interval
    both quantile functions are constant and the integrand is the interval's width times
    |a_(i) - b_(j)|^p with the order statistics of that interval.
    """
    n, m = a.shape[1], b.shape[1]
    a, b = a.sort(dim=1).values, b.sort(dim=1).values
    steps_a = torch.arange(1, n + 1, device=a.device) * m  # (i + 1)/N on the grid
    steps_b = torch.arange(1, m + 1, device=a.device) * n
    grid = torch.unique(torch.cat([steps_a, steps_b]))  # sorted, ends at N M
    width = torch.diff(grid, prepend=grid.new_zeros(1)).to(a.dtype) / (n * m)
    # On (u_prev, u] the quantile is the order statistic with the first step >= u.
    ia, ib = torch.searchsorted(steps_a, grid), torch.searchsorted(steps_b, grid)
    return ((a[:, ia] - b[:, ib]).abs().pow(p) * width).sum(dim=1)


def wasserstein_1d(x: Tensor, y: Tensor, p: float = 1) -> Tensor:
    """Exact W_p between the empirical marginals of each coordinate, ``(D,)``.

    For coordinate d, W_p(mu_d, nu_d) = (int_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt)^(1/p) with F, G
    the empirical CDFs of ``x[:, d]`` (N points, weight 1/N each) and ``y[:, d]`` (M points);
    N != M is allowed. For p = 1 this is ``scipy.stats.wasserstein_distance``.
    """
    _check_pair("wasserstein_1d", x, y, 1)
    p = _check_p(p)
    return _wasserstein_pp(x.T, y.T, p).pow(1 / p)


def random_directions(dim: int, n: int, seed: int) -> Tensor:
    """``n`` directions uniform on the unit sphere of R^dim, as the columns of a ``(dim, n)``
    float64 tensor: normalised standard Gaussian vectors from a CPU ``torch.Generator``
    seeded with ``seed``, so the same arguments give the same directions on any device."""
    _check_int("dim", dim, 1)
    _check_int("n_projections", n, 1)
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, n, generator=g, dtype=torch.float64)
    return theta / theta.norm(dim=0)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 128, p: float = 2, seed: int = 0,
                       projections: Tensor | None = None) -> Tensor:
    """Monte-Carlo sliced Wasserstein distance SW_p between the empirical distributions.

        SW_p = ( 1/P sum_{k=1..P} W_p^p(theta_k . x, theta_k . y) )^(1/p),

    with W_p the exact 1-D distance between the projected empirical distributions (N != M
    allowed; see ``wasserstein_1d``) and theta_k the columns of ``projections`` ``(D, P)``,
    used as given, or else ``random_directions(D, n_projections, seed)``: a fixed seed gives
    the same directions on every call, so values are comparable across calls. This is
    POT's ``ot.sliced_wasserstein_distance`` for the same directions.

    Implemented here rather than taken from POT: it is a sort and a gather in torch (on the
    samples' device, in their dtype), while POT would add a runtime dependency and draw its
    directions from NumPy's global or legacy random state; POT stays the tests' reference.
    """
    _check_pair("sliced_wasserstein", x, y, 1)
    p = _check_p(p)
    if projections is None:
        projections = random_directions(x.shape[1], n_projections, seed)
    elif projections.ndim != 2 or projections.shape[0] != x.shape[1] or projections.shape[1] == 0:
        raise ValueError(f"projections must have shape ({x.shape[1]}, P) with P >= 1, "
                         f"got {tuple(projections.shape)}")
    theta = projections.to(dtype=x.dtype, device=x.device)
    return _wasserstein_pp((x @ theta).T, (y @ theta).T, p).mean().pow(1 / p)


def canonical_order(x: Tensor) -> Tensor:
    """Indices that sort the rows of ``x`` ``(N, D)`` lexicographically, ``(N,)``.

    ``x[canonical_order(x)]`` does not depend on the order of the rows of ``x``: rows that
    compare equal in every coordinate are interchangeable. Stable sorts from the last
    coordinate to the first; NaN sorts after every number.
    """
    order = torch.arange(len(x), device=x.device)
    for j in reversed(range(x.shape[1])):
        order = order[torch.sort(x[order, j], stable=True).indices]
    return order


def subsample(x: Tensor, n: int | None, seed: int) -> Tensor:
    """An order-invariant, fixed-seed subsample of at most ``n`` rows of ``x`` ``(N, D)``.

    The rows are first put in canonical (lexicographic) order, ``canonical_order``; then
    ``n`` of the N positions are drawn without replacement by ``torch.randperm(N)`` from a
    CPU generator seeded with ``seed``, and returned in canonical order. The result depends
    only on the multiset of rows, ``n`` and ``seed``, not on the rows' order: in DDP, where
    the gathered buffers arrive rank by rank, a metric sees exactly the points it sees in
    one process. ``n`` None or >= N: all rows, in canonical order.
    """
    if x.ndim != 2:
        raise ValueError(f"subsample needs (N, D) points, got {tuple(x.shape)}")
    if n is not None:
        _check_int("n", n, 1)
    order = canonical_order(x)
    if n is not None and n < len(x):
        keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        order = order[keep.sort().values.to(order.device)]
    return x[order]


def mode_fractions(component: Tensor, n_components: int) -> Tensor:
    """Fraction of points in each component, ``(n_components,)``; sums to one."""
    counts = torch.bincount(component, minlength=n_components).to(torch.float64)
    return counts / counts.sum()


def mode_imbalance(fractions: Tensor) -> Tensor:
    """Chi-square-style imbalance: sum_k (f_k - 1/K)^2 / (1/K).

    0 for a perfectly even split; K - 1 when every point falls in one component.
    """
    k = len(fractions)
    return ((fractions - 1.0 / k).square() * k).sum()


def mode_coverage(fractions: Tensor, min_fraction: float | None = None) -> Tensor:
    """Fraction of the K components that hold at least ``min_fraction`` of the points.

    ``fractions`` ``(K,)`` as from ``mode_fractions``; ``min_fraction`` defaults to 0.5 / K
    (half an even share). 1 when every mode is visited; 1/K when all points fall in one.
    """
    if fractions.ndim != 1 or len(fractions) == 0:
        raise ValueError(f"mode_coverage needs fractions of shape (K,) with K >= 1, "
                         f"got {tuple(fractions.shape)}")
    if min_fraction is None:
        min_fraction = 0.5 / len(fractions)
    elif not isinstance(min_fraction, Real) or not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be a number in [0, 1], got {min_fraction!r}")
    return (fractions >= min_fraction).to(torch.float64).mean()
