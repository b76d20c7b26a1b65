"""``lightning_vae.metrics`` against independent references, in float64.

MMD against a naive NumPy/SciPy implementation of the unbiased estimator, energy distance
against dcor, sliced Wasserstein against POT (given the same directions), per-coordinate
W1 against SciPy. Random inputs over several seeds and shapes, N != M included.
"""

from __future__ import annotations

import dcor
import numpy as np
import ot
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import cdist

from lightning_vae.metrics import (
    energy_distance,
    median_bandwidth,
    mmd_rbf,
    random_directions,
    sliced_wasserstein,
    wasserstein_1d,
)

RTOL = 1e-5
SHAPES = [(40, 40), (37, 53), (60, 25)]  # (N, M)
CASES = [(seed, n, m, d) for seed in (0, 1, 2) for n, m in SHAPES for d in (1, 2, 5)]


def sample(seed: int, n: int, m: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two different distributions: standard normal and a shifted, stretched one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 1.5 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.4
    return x, y


def naive_mmd(x: np.ndarray, y: np.ndarray, bandwidths: list[float]) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) for the sum of RBF kernels."""
    def k(a, b):
        d2 = cdist(a, b, "sqeuclidean")
        return sum(np.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return xx + yy - 2 * k(x, y).mean()


def assert_close(got: torch.Tensor, expected: float) -> None:
    rel = abs(float(got) - expected) / abs(expected)
    assert rel < RTOL, f"got {float(got)!r}, expected {expected!r} (relative error {rel:.1e})"


@pytest.mark.parametrize("seed,n,m,d", CASES)
def test_mmd_matches_naive_scipy(seed, n, m, d):
    x, y = sample(seed, n, m, d)
    xn, yn = x.numpy(), y.numpy()
    for bandwidth in (0.7, [0.3, 1.0, 3.0]):
        hs = bandwidth if isinstance(bandwidth, list) else [bandwidth]
        assert_close(mmd_rbf(x, y, bandwidth), naive_mmd(xn, yn, hs))
    # Median heuristic: torch's lower median of the distinct pooled pairwise distances.
    pooled = np.concatenate([xn, yn])
    dists = np.sort(cdist(pooled, pooled)[np.triu_indices(len(pooled), 1)])
    h = dists[(len(dists) - 1) // 2]
    assert float(median_bandwidth(x, y)) == pytest.approx(h, rel=RTOL)
    assert_close(mmd_rbf(x, y), naive_mmd(xn, yn, [h]))


@pytest.mark.parametrize("seed,n,m,d", CASES)
def test_energy_distance_matches_dcor(seed, n, m, d):
    x, y = sample(seed, n, m, d)
    for unbiased, stat in ((True, "u_statistic"), (False, "v_statistic")):
        expected = float(dcor.energy_distance(x.numpy(), y.numpy(), estimation_stat=stat))
        assert_close(energy_distance(x, y, unbiased=unbiased), expected)


@pytest.mark.parametrize("seed,n,m,d", CASES)
@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_matches_pot(seed, n, m, d, p):
    x, y = sample(seed, n, m, d)
    theta = random_directions(d, 64, seed)
    expected = float(ot.sliced_wasserstein_distance(x.numpy(), y.numpy(), n_projections=64, p=p,
                                                    projections=theta.numpy()))
    assert_close(sliced_wasserstein(x, y, n_projections=64, p=p, seed=seed), expected)
    # Passing the directions gives the same value as drawing them from the seed.
    assert torch.equal(sliced_wasserstein(x, y, p=p, projections=theta),
                       sliced_wasserstein(x, y, n_projections=64, p=p, seed=seed))


@pytest.mark.parametrize("seed,n,m,d", CASES)
def test_marginal_w1_matches_scipy(seed, n, m, d):
    x, y = sample(seed, n, m, d)
    got = wasserstein_1d(x, y)
    assert got.shape == (d,)
    for j in range(d):
        expected = scipy.stats.wasserstein_distance(x[:, j].numpy(), y[:, j].numpy())
        assert_close(got[j], expected)


@pytest.mark.parametrize("seed,n,m", [(0, 40, 40), (1, 37, 53)])
def test_marginal_w2_matches_pot(seed, n, m):
    x, y = sample(seed, n, m, 3)
    got = wasserstein_1d(x, y, p=2)
    expected = ot.wasserstein_1d(x.numpy(), y.numpy(), p=2) ** 0.5  # POT returns W_p^p
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL)
