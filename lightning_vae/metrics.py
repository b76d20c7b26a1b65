"""Sample-quality measures (pure torch functions).

All compare clean-model samples with held-out data or with the data's known geometry.
"""

from __future__ import annotations

import torch
from torch import Tensor

# When every pooled point is identical the median distance is 0; any bandwidth then gives
# MMD^2 = 0, so a positive floor avoids 0 * inf = NaN without changing the answer.
MIN_BANDWIDTH = 1e-12


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median heuristic: the median pairwise distance in the pooled sample (a 0-d tensor).

    torch's median: the lower of the two middle values when their count is even.
    """
    pooled = torch.cat([x, y])
    d = torch.cdist(pooled, pooled)
    off_diag = d[~torch.eye(len(pooled), dtype=torch.bool, device=d.device)]
    return off_diag.median()


def within_kernel_mean(y: Tensor, bandwidth: float | Tensor) -> Tensor:
    """Mean of k(a, b) over pairs a != b of ``y``: the MMD term that depends on ``y`` alone.

    Callers comparing many samples against one fixed data set compute it once.
    """
    h = torch.as_tensor(bandwidth, dtype=y.dtype, device=y.device).clamp_min(MIN_BANDWIDTH)
    k = torch.exp(-torch.cdist(y, y).square() / (2 * h**2))
    m = len(y)
    return (k.sum() - k.diagonal().sum()) / (m * (m - 1))


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | Tensor | None = None,
            yy: Tensor | None = None) -> Tensor:
    """Unbiased estimate of MMD^2 with k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    Gretton et al. (2012), eq. 3: the diagonal terms k(a, a) are left out of the within-
    sample means, so the estimate is unbiased and may be slightly negative when the two
    samples come from the same distribution. ``bandwidth`` h defaults to the median
    heuristic on the pooled sample.

    Args: x ``(N, D)``, y ``(M, D)`` with N, M >= 2; ``yy``, optionally,
    ``within_kernel_mean(y, bandwidth)`` computed beforehand (same value, less work).
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd_rbf needs >= 2 points per sample, got {len(x)} and {len(y)}")
    h = median_bandwidth(x, y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype,
                                                                         device=x.device)
    h = h.clamp_min(MIN_BANDWIDTH)
    kxy = torch.exp(-torch.cdist(x, y).square() / (2 * h**2))
    xx = within_kernel_mean(x, h)
    yy = within_kernel_mean(y, h) if yy is None else yy
    return xx + yy - 2 * kxy.mean()


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
