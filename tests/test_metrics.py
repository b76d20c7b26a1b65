"""Metric contracts of ``lightning_vae.metrics`` against brute force and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_vae.metrics import median_bandwidth, mmd_rbf, mode_fractions, mode_imbalance


def brute_mmd(x: torch.Tensor, y: torch.Tensor, h: float) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) by explicit float64 loops."""
    xs, ys = x.double().tolist(), y.double().tolist()

    def k(a, b):
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b)) / (2 * h * h))

    n, m = len(xs), len(ys)
    xx = sum(k(xs[i], xs[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(ys[i], ys[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a, b) for a in xs for b in ys) / (n * m)
    return xx + yy - 2 * xy


def off_diagonal_distances(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    pooled = torch.cat([x, y]).double().numpy()
    n = len(pooled)
    return np.array([np.linalg.norm(pooled[i] - pooled[j])
                     for i in range(n) for j in range(n) if i != j])


def test_mmd_matches_brute_force_fixed_bandwidth():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5
    for h in (0.5, 1.3, 4.0):
        expected = brute_mmd(x, y, h)
        got = mmd_rbf(x, y, bandwidth=torch.tensor(h, dtype=torch.float64))
        assert float(got) == pytest.approx(expected, abs=1e-12)
        # A Python-float bandwidth keeps the data's precision.
        assert float(mmd_rbf(x, y, bandwidth=h)) == pytest.approx(expected, abs=1e-12)
        # float32 data.
        assert float(mmd_rbf(x.float(), y.float(), bandwidth=h)) == pytest.approx(
            expected, abs=1e-5)


def test_mmd_python_float_bandwidth_keeps_float64_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5
    assert float(mmd_rbf(x, y, bandwidth=1.3)) == pytest.approx(brute_mmd(x, y, 1.3), abs=1e-12)


def test_mmd_identical_points_is_zero_not_nan():
    assert float(mmd_rbf(torch.zeros(3, 2), torch.zeros(3, 2))) == 0.0


def test_mmd_default_bandwidth_is_median_heuristic():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 2, generator=g, dtype=torch.float64)
    y = torch.randn(7, 2, generator=g, dtype=torch.float64) * 2
    h = median_bandwidth(x, y)
    assert h.dtype == torch.float64
    assert float(mmd_rbf(x, y)) == pytest.approx(brute_mmd(x, y, float(h)), abs=1e-12)


def test_mmd_symmetric():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.randn(45, 2, generator=g, dtype=torch.float64) + 0.3
    assert float(mmd_rbf(x, y)) == pytest.approx(float(mmd_rbf(y, x)), abs=1e-12)
    assert float(mmd_rbf(x, y, 0.7)) == pytest.approx(float(mmd_rbf(y, x, 0.7)), abs=1e-12)


def test_mmd_near_zero_for_same_distribution_and_positive_for_shift():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 2, generator=g)
    y = torch.randn(2000, 2, generator=g)
    same = float(mmd_rbf(x, y))
    assert abs(same) < 0.01
    shifted = float(mmd_rbf(x, y + torch.tensor([1.0, 0.0])))
    assert shifted > 0.1
    # Larger shift, larger discrepancy (at a fixed bandwidth).
    assert float(mmd_rbf(x, y + 2.0, 1.0)) > float(mmd_rbf(x, y + 0.5, 1.0)) > 0.01


def test_mmd_of_a_sample_against_itself_closed_form():
    # x = y: xx = yy = A (mean off-diagonal kernel) and xy = ((n^2 - n) A + n) / n^2, so the
    # unbiased estimate is exactly -2 (1 - A) / n: slightly negative, as the docstring says.
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 2, generator=g, dtype=torch.float64)
    n = len(x)
    k = torch.exp(-torch.cdist(x, x).square() / 2)  # h = 1
    a = float((k.sum() - n) / (n * (n - 1)))
    got = float(mmd_rbf(x, x, torch.tensor(1.0, dtype=torch.float64)))
    assert got == pytest.approx(-2 * (1 - a) / n, abs=1e-12)
    assert got == pytest.approx(brute_mmd(x, x, 1.0), abs=1e-12)
    assert got < 0


@pytest.mark.parametrize("nx,ny", [(1, 5), (5, 1), (0, 3)])
def test_mmd_needs_two_points(nx, ny):
    with pytest.raises(ValueError, match=rf">= 2 points per sample, got {nx} and {ny}"):
        mmd_rbf(torch.zeros(nx, 2), torch.ones(ny, 2))


def test_median_bandwidth_is_median_of_offdiagonal_distances():
    g = torch.Generator().manual_seed(5)
    # 6 + 5 = 11 points: 55 distinct pairs (odd), so every median convention agrees.
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    d = off_diagonal_distances(x, y)
    assert len(d) == 110
    got = median_bandwidth(x, y)
    assert got.ndim == 0
    assert float(got) == pytest.approx(float(np.median(d)), abs=1e-12)
    assert float(got) == pytest.approx(float(torch.from_numpy(d).median()), abs=1e-12)


def test_median_bandwidth_uses_torch_lower_median():
    # 4 + 4 = 8 points: 28 distinct pairs (even). torch.median returns the lower of the two
    # middle values; numpy.median would average them.
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 2, generator=g, dtype=torch.float64)
    d = np.sort(off_diagonal_distances(x, y))
    assert float(median_bandwidth(x, y)) == pytest.approx(float(d[(len(d) - 1) // 2]), abs=1e-12)
    assert float(median_bandwidth(x, y)) == pytest.approx(
        float(torch.from_numpy(d).median()), abs=1e-12)


def test_mode_fractions_known_labels():
    component = torch.tensor([0, 0, 1, 2, 2, 2])
    f = mode_fractions(component, 4)
    assert f.dtype == torch.float64
    assert torch.equal(f, torch.tensor([2 / 6, 1 / 6, 3 / 6, 0.0], dtype=torch.float64))
    assert float(f.sum()) == pytest.approx(1.0, abs=1e-15)


def test_mode_fractions_sum_to_one_random():
    g = torch.Generator().manual_seed(7)
    component = torch.randint(0, 5, (1001,), generator=g)
    f = mode_fractions(component, 5)
    assert f.shape == (5,)
    assert float(f.sum()) == pytest.approx(1.0, abs=1e-12)
    expected = torch.tensor([(component == k).sum().item() / 1001 for k in range(5)],
                            dtype=torch.float64)
    torch.testing.assert_close(f, expected)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_mode_imbalance_extremes(k):
    even = torch.full((k,), 1.0 / k, dtype=torch.float64)
    assert float(mode_imbalance(even)) == pytest.approx(0.0, abs=1e-12)
    one = torch.zeros(k, dtype=torch.float64)
    one[k - 1] = 1.0
    assert float(mode_imbalance(one)) == pytest.approx(k - 1, abs=1e-12)


def test_mode_imbalance_known_value():
    # K = 2, f = (0.75, 0.25): sum (0.25^2 * 2) = 0.25.
    assert float(mode_imbalance(torch.tensor([0.75, 0.25]))) == pytest.approx(0.25)
    # From labels: 3 of 4 in component 0.
    f = mode_fractions(torch.tensor([0, 0, 0, 1]), 2)
    assert float(mode_imbalance(f)) == pytest.approx(0.25)


def test_mmd_with_precomputed_data_term_is_identical():
    from lightning_vae.metrics import within_kernel_mean

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 2, generator=g), torch.randn(40, 2, generator=g) + 0.3
    h = median_bandwidth(x, y)
    assert torch.equal(mmd_rbf(x, y, h, yy=within_kernel_mean(y, h)), mmd_rbf(x, y, h))
