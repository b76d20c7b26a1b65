"""Metric contracts of ``lightning_vae.metrics`` against brute force and closed forms, and of
the torchmetrics wrappers in ``lightning_vae.sample_metrics``.

References (SciPy, dcor, POT) are in test_metrics_reference.py, DDP in test_metrics_ddp.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_vae.data import Circle, TwoClusters
from lightning_vae.metrics import (
    canonical_order,
    energy_distance,
    median_bandwidth,
    mmd_rbf,
    mode_coverage,
    mode_fractions,
    mode_imbalance,
    random_directions,
    sliced_wasserstein,
    subsample,
    wasserstein_1d,
    within_kernel_mean,
)
from lightning_vae.sample_metrics import (
    MMD,
    EnergyDistance,
    ManifoldDistance,
    MarginalWasserstein,
    ModeBalance,
    SlicedWasserstein,
)


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
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 2, generator=g), torch.randn(40, 2, generator=g) + 0.3
    h = median_bandwidth(x, y)
    assert torch.equal(mmd_rbf(x, y, h, yy=within_kernel_mean(y, h)), mmd_rbf(x, y, h))


# --- multi-scale MMD, energy distance, Wasserstein, subsampling, coverage -----------------


def test_mmd_bandwidth_list_is_sum_of_single_kernels():
    # MMD^2 is linear in the kernel: the sum kernel's estimate is the sum of the estimates.
    g = torch.Generator().manual_seed(8)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.randn(25, 2, generator=g, dtype=torch.float64) + 0.5
    hs = [0.2, 1.0, 5.0]
    got = mmd_rbf(x, y, hs)
    assert float(got) == pytest.approx(sum(float(mmd_rbf(x, y, h)) for h in hs), abs=1e-12)
    assert float(got) == pytest.approx(sum(brute_mmd(x, y, h) for h in hs), abs=1e-12)
    assert torch.equal(mmd_rbf(x, y, torch.tensor(hs, dtype=torch.float64)), got)
    assert torch.equal(mmd_rbf(x, y, hs, yy=within_kernel_mean(y, hs)), got)


@pytest.mark.parametrize("bandwidth", [-1.0, [], [1.0, -0.5], float("nan"), [[1.0]]])
def test_mmd_rejects_bad_bandwidth(bandwidth):
    with pytest.raises(ValueError, match="bandwidth must be a number >= 0"):
        mmd_rbf(torch.zeros(3, 2), torch.ones(3, 2), bandwidth)


@pytest.mark.parametrize("fn", [mmd_rbf, energy_distance, sliced_wasserstein, wasserstein_1d])
def test_two_sample_functions_check_shapes(fn):
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"^{name} needs \(N, D\) and \(M, D\) with the same D, "
                                         r"got \(4, 2\) and \(4, 3\)$"):
        fn(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="with the same D"):
        fn(torch.zeros(4), torch.zeros(4))


def test_energy_distance_closed_forms():
    x, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]])
    # E|X-Y| = (1 + 3 + 1 + 1) / 4 = 1.5; U: E|X-X'| = E|Y-Y'| = 2; V: (0 + 2 + 2 + 0) / 4 = 1.
    assert float(energy_distance(x, y)) == pytest.approx(2 * 1.5 - 2 - 2)
    assert float(energy_distance(x, y, unbiased=False)) == pytest.approx(2 * 1.5 - 1 - 1)
    # One point each (V only): 2 |a - b|.
    assert float(energy_distance(torch.zeros(1, 3), torch.ones(1, 3), unbiased=False)) == \
        pytest.approx(2 * 3**0.5)
    with pytest.raises(ValueError, match="energy_distance needs >= 2 points per sample, got 1 and 3"):
        energy_distance(torch.zeros(1, 2), torch.zeros(3, 2))


def test_wasserstein_1d_closed_form_unequal_sizes():
    # x = {0, 1}, y = {0, 1, 2}: the quantile functions differ by 1 on (1/3, 1/2] and on
    # (2/3, 1], so W_p^p = 1/6 + 1/3 = 1/2 for every p.
    x = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [0.0], [1.0]], dtype=torch.float64)
    assert float(wasserstein_1d(x, y)[0]) == pytest.approx(0.5, abs=1e-15)
    assert float(wasserstein_1d(x, y, p=2)[0]) == pytest.approx(0.5**0.5, abs=1e-15)
    assert float(wasserstein_1d(y, x, p=3)[0]) == pytest.approx(0.5 ** (1 / 3), abs=1e-15)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_wasserstein_of_a_translate(p):
    # Translating by c moves every quantile by c: W_p = |c_d| per coordinate, and on each
    # direction theta the projected W_p^p = |theta . c|^p.
    g = torch.Generator().manual_seed(9)
    x = torch.randn(50, 3, generator=g, dtype=torch.float64)
    c = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(wasserstein_1d(x, x + c, p), c.abs(), rtol=0, atol=1e-12)
    theta = random_directions(3, 16, seed=4)
    expected = (c @ theta).abs().pow(p).mean().pow(1 / p)
    torch.testing.assert_close(sliced_wasserstein(x, x + c, 16, p, seed=4), expected, rtol=0, atol=1e-12)


def test_sliced_wasserstein_directions_fixed_by_seed():
    theta = random_directions(5, 32, seed=3)
    assert theta.shape == (5, 32) and theta.dtype == torch.float64
    torch.testing.assert_close(theta.norm(dim=0), torch.ones(32, dtype=torch.float64))
    assert torch.equal(theta, random_directions(5, 32, seed=3))
    assert not torch.equal(theta, random_directions(5, 32, seed=4))
    g = torch.Generator().manual_seed(10)
    x, y = torch.randn(40, 5, generator=g), torch.randn(30, 5, generator=g) + 0.2
    assert torch.equal(sliced_wasserstein(x, y, seed=1), sliced_wasserstein(x, y, seed=1))
    assert not torch.equal(sliced_wasserstein(x, y, seed=1), sliced_wasserstein(x, y, seed=2))


def test_sliced_wasserstein_rejects_bad_arguments():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="^n_projections must be an integer >= 1, got 0$"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="^p must be a finite number >= 1, got 0.5$"):
        sliced_wasserstein(x, x, p=0.5)
    with pytest.raises(ValueError, match=r"^projections must have shape \(2, P\) with P >= 1, got \(3, 8\)$"):
        sliced_wasserstein(x, x, projections=torch.zeros(3, 8))
    with pytest.raises(ValueError, match="^p must be a finite number >= 1, got inf$"):
        wasserstein_1d(x, x, p=float("inf"))


def test_canonical_order_is_lexicographic():
    x = torch.tensor([[1.0, 2.0], [0.0, 5.0], [1.0, -1.0], [0.0, 5.0], [-3.0, 0.0]])
    assert x[canonical_order(x)].tolist() == sorted(x.tolist())


def test_subsample_is_order_invariant_and_seeded():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(500, 3, generator=g).round(decimals=1)  # ties in every coordinate
    perm = torch.randperm(500, generator=g)
    sub = subsample(x, 100, seed=5)
    assert sub.shape == (100, 3)
    assert torch.equal(sub, subsample(x[perm], 100, seed=5))
    assert not torch.equal(sub, subsample(x, 100, seed=6))
    assert sub.tolist() == sorted(sub.tolist())  # returned in canonical order
    rows = x.tolist()
    for row in sub.tolist():  # a subset of the rows, with multiplicity
        rows.remove(row)
    # n >= N or None: every row, in canonical order.
    for n in (500, 1000, None):
        assert torch.equal(subsample(x[perm], n, seed=5), x[canonical_order(x)])
    with pytest.raises(ValueError, match="^n must be an integer >= 1, got 0$"):
        subsample(x, 0, seed=0)
    with pytest.raises(ValueError, match=r"^subsample needs \(N, D\) points, got \(5,\)$"):
        subsample(torch.zeros(5), 2, seed=0)


def test_mode_coverage():
    assert float(mode_coverage(torch.tensor([0.5, 0.5], dtype=torch.float64))) == 1.0
    assert float(mode_coverage(torch.tensor([1.0, 0.0, 0.0, 0.0]))) == 0.25
    # Default threshold 0.5 / K = 0.125: 0.1 misses it.
    assert float(mode_coverage(torch.tensor([0.5, 0.25, 0.15, 0.1]))) == 0.75
    assert float(mode_coverage(torch.tensor([0.5, 0.25, 0.15, 0.1]), min_fraction=0.2)) == 0.5
    with pytest.raises(ValueError, match=r"^min_fraction must be a number in \[0, 1\], got 2$"):
        mode_coverage(torch.tensor([1.0]), 2)
    with pytest.raises(ValueError, match=r"mode_coverage needs fractions of shape \(K,\)"):
        mode_coverage(torch.ones(2, 2))


# --- torchmetrics wrappers (lightning_vae.sample_metrics) ----------------------------------


def two_sample_metrics():
    """One of each two-sample metric, MMD and energy subsampling 300 of the 400 points."""
    return [MMD(max_points=300), MMD([0.5, 2.0], max_points=300), EnergyDistance(max_points=300),
            SlicedWasserstein(n_projections=32), SlicedWasserstein(max_points=300, p=1),
            MarginalWasserstein(), MarginalWasserstein(p=2, max_points=300)]


def gaussian(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("metric", two_sample_metrics(), ids=lambda m: type(m).__name__)
def test_two_sample_metric_batched_equals_single_update_and_permutation_invariant(metric):
    x, y = gaussian(400, 0), gaussian(400, 1) + 0.3
    metric.update(x, y)
    once = metric.compute()
    metric.reset()
    for xb, yb in zip(x.chunk(5), y.chunk(5)):
        metric.update(xb, yb)
    assert torch.equal(metric.compute(), once)
    # Data once, samples later (empty batches on the other side).
    metric.reset()
    metric.update(x[:0], y)
    for xb in x.chunk(5):
        metric.update(xb, y[:0])
    assert torch.equal(metric.compute(), once)
    # Permuting either side, with more points than max_points, changes nothing.
    metric.reset()
    g = torch.Generator().manual_seed(2)
    metric.update(x[torch.randperm(400, generator=g)], y[torch.randperm(400, generator=g)])
    assert torch.equal(metric.compute(), once)
    metric.reset()
    metric.update(x, y[:0])
    with pytest.raises(ValueError, match="has 400 samples and 0 data points: update it with both"):
        metric.compute()


# Two samples of one distribution: MMD^2 and energy are unbiased, ~0 to within 1/n; an
# empirical Wasserstein distance is biased up, ~ n^(-1/2) (about 0.05 here).
@pytest.mark.parametrize("metric,near_zero", [(MMD(), 0.01), (EnergyDistance(), 0.01),
                                              (SlicedWasserstein(), 0.15), (MarginalWasserstein(), 0.15)],
                         ids=lambda m: type(m).__name__)
def test_two_sample_metric_zero_for_same_distribution_and_grows_with_shift(metric, near_zero):
    values = []
    for shift in (0.0, 0.5, 1.0, 2.0):
        metric.reset()
        metric.update(gaussian(3000, 0) + shift, gaussian(3000, 1))
        values.append(float(metric.compute().max()))
    assert abs(values[0]) < near_zero * values[1], values
    assert values == sorted(values) and len(set(values)) == 4, values


def test_two_sample_metric_checks_shapes_and_arguments():
    metric = EnergyDistance()
    with pytest.raises(ValueError, match=r"^data must have shape \(B, 2\), got \(3, 3\)$"):
        metric.update(torch.zeros(4, 2), torch.zeros(3, 3))
    metric.update(torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"^samples must have shape \(B, 2\), got \(4, 3\)$"):
        metric.update(torch.zeros(4, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="^max_points must be an integer >= 2, got 1$"):
        MMD(max_points=1)
    with pytest.raises(ValueError, match='^bandwidth must be "median", a number > 0 or a non-empty list'):
        MMD(bandwidth=[1.0, 0.0])
    with pytest.raises(ValueError, match="^n_projections must be an integer >= 1, got 0$"):
        SlicedWasserstein(n_projections=0)
    with pytest.raises(ValueError, match="^p must be a finite number >= 1, got 0$"):
        MarginalWasserstein(p=0)


def test_manifold_distance_on_and_off_the_circle():
    circle = Circle()
    metric = ManifoldDistance(circle)
    for seed in range(3):
        metric.update(circle.sample(1000, torch.Generator().manual_seed(seed)))
    on = metric.compute()
    assert float(on["mean"]) < 1e-6 and float(on["p95"]) < 1e-6
    # Radial offsets delta: points at radius 1 + delta lie exactly |delta| from the circle.
    offsets = torch.linspace(-0.5, 0.5, 101, dtype=torch.float64)
    angle = torch.linspace(0, 6, 101, dtype=torch.float64)
    points = (1 + offsets)[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    metric.reset()
    for chunk in points.chunk(5):
        metric.update(chunk)
    off = metric.compute()
    assert float(off["mean"]) == pytest.approx(float(offsets.abs().mean()), abs=1e-12)
    assert float(off["p95"]) == pytest.approx(float(torch.quantile(offsets.abs(), 0.95)), abs=1e-12)
    metric.update(torch.tensor([[float("inf"), 0.0]], dtype=torch.float64))
    assert metric.compute()["p95"] == float("inf")


def test_mode_balance_two_clusters():
    manifold = TwoClusters()
    metric = ModeBalance(manifold)
    for seed in range(4):
        metric.update(manifold.sample(2500, torch.Generator().manual_seed(seed)))
    even = metric.compute()
    assert set(even) == {"coverage", "imbalance", "frac_0", "frac_1"}
    assert float(even["coverage"]) == 1.0
    assert float(even["imbalance"]) < 1e-3
    assert float(even["frac_0"] + even["frac_1"]) == pytest.approx(1.0, abs=1e-15)
    metric.reset()
    metric.update(torch.tensor([[1.0, 0.0], [0.9, 0.1], [1.2, -0.3]]))
    one = metric.compute()
    assert float(one["coverage"]) == 0.5
    assert float(one["imbalance"]) == pytest.approx(1.0, abs=1e-12)  # K - 1
    assert float(one["frac_1"]) == 1.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_geometric_metrics_refuse_unsuitable_manifolds():
    with pytest.raises(ValueError, match="^ModeBalance needs a manifold with n_components >= 1, "
                                         "got Circle with n_components=0$"):
        ModeBalance(Circle())
    with pytest.raises(ValueError, match="ManifoldDistance needs a manifold with known geometry"):
        ManifoldDistance(SimpleNamespace(has_geometry=False))
    for metric in (ManifoldDistance(Circle()), ModeBalance(TwoClusters())):
        with pytest.raises(ValueError, match="has no samples: update it before compute"):
            metric.compute()
