"""Data contracts: ``TwoClusters`` geometry and ``ManifoldDataModule`` splits and batches."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_vae.data import ManifoldDataModule, TwoClusters

# --- TwoClusters ---------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_noise_free_samples_lie_on_manifold_at_centres(dim):
    m = TwoClusters(cluster_std=0.0, separation=2.5, dim=dim)
    x = m.sample(1000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, dim)
    assert torch.equal(m.distance(x), torch.zeros(1000))
    assert set(x[:, 0].tolist()) == {-2.5, 2.5}
    assert torch.equal(x[:, 1:], torch.zeros(1000, dim - 1))
    # Each row is exactly the centre of its component.
    assert torch.equal(x, m.centres[m.component(x)])


def test_default_samples_statistics():
    m = TwoClusters()
    n = 20_000
    x = m.sample(n, generator=torch.Generator().manual_seed(0)).double()
    assert x.shape == (n, 2)
    assert torch.equal(x[:, 1], torch.zeros(n, dtype=torch.float64))  # y exactly 0
    assert torch.equal(m.distance(x), torch.zeros(n, dtype=torch.float64))

    comp = m.component(x)
    frac = float(comp.double().mean())
    assert 0.45 < frac < 0.55
    for k, centre in [(0, -1.0), (1, 1.0)]:
        a = x[comp == k, 0]
        n_k = len(a)
        # Standard errors: mean s/sqrt(n), std s/sqrt(2n) for a Gaussian.
        assert abs(float(a.mean()) - centre) < 4 * 0.1 / math.sqrt(n_k)
        assert abs(float(a.std()) - 0.1) < 4 * 0.1 / math.sqrt(2 * n_k)


def test_same_generator_seed_same_samples():
    m = TwoClusters()
    a = m.sample(100, generator=torch.Generator().manual_seed(3))
    b = m.sample(100, generator=torch.Generator().manual_seed(3))
    c = m.sample(100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_distance_and_component_on_known_points():
    m2 = TwoClusters()
    x = torch.tensor([[3.0, 4.0], [-1.0, 0.0], [0.5, -2.0], [-7.0, -0.25],
                      [0.01, 9.0], [-0.01, 0.0]])
    torch.testing.assert_close(m2.distance(x), torch.tensor([4.0, 0.0, 2.0, 0.25, 9.0, 0.0]))
    # Nearest centre: the sign of the first coordinate, whatever the others are.
    assert torch.equal(m2.component(x), torch.tensor([1, 0, 1, 0, 1, 0]))

    m3 = TwoClusters(dim=3)
    x3 = torch.tensor([[10.0, 3.0, 4.0], [-2.0, 0.0, -1.0]])
    torch.testing.assert_close(m3.distance(x3), torch.tensor([5.0, 1.0]))

    m1 = TwoClusters(dim=1)  # the manifold is the whole line
    assert torch.equal(m1.distance(torch.tensor([[5.0], [-3.0]])), torch.zeros(2))


def test_centres():
    c = TwoClusters(separation=1.5, dim=3).centres
    assert torch.equal(c, torch.tensor([[-1.5, 0.0, 0.0], [1.5, 0.0, 0.0]]))


def test_line_entropy_closed_form_for_separated_clusters():
    # Well separated: entropy of an equal mixture = entropy of one Gaussian + log 2.
    s = 0.1
    expected = 0.5 * math.log(2 * math.pi * math.e * s**2) + math.log(2)
    assert TwoClusters(cluster_std=s).line_entropy() == pytest.approx(expected, abs=1e-6)
    assert TwoClusters(cluster_std=0.0).line_entropy() == -math.inf


@pytest.mark.parametrize("kwargs,message", [
    (dict(cluster_std=-0.1), r"cluster_std must be >= 0, got -0.1"),
    (dict(separation=0.0), r"separation must be > 0, got 0.0"),
    (dict(separation=-1.0), r"separation must be > 0, got -1.0"),
    (dict(dim=0), r"dim must be >= 1, got 0"),
])
def test_bad_manifold_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TwoClusters(**kwargs)


# --- ManifoldDataModule --------------------------------------------------------------------


def make_dm(**kwargs) -> ManifoldDataModule:
    defaults = dict(n_train=96, n_val=50, n_test=30, batch_size=16, eval_batch_size=20,
                    data_seed=11, shuffle_seed=5)
    dm = ManifoldDataModule(**{**defaults, **kwargs})
    dm.setup("fit")
    return dm


def rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(r) for r in x.tolist()}


def test_same_data_seed_same_splits_different_seed_different():
    a, b, c = make_dm(), make_dm(), make_dm(data_seed=12)
    for split in ("train_x", "val_x", "test_x"):
        assert torch.equal(getattr(a, split), getattr(b, split)), split
        assert not torch.equal(getattr(a, split), getattr(c, split)), split


def test_setup_is_idempotent():
    dm = make_dm()
    before = dm.train_x
    dm.setup("validate")
    assert dm.train_x is before


def test_splits_sizes_dim_and_disjoint():
    dm = make_dm()
    assert dm.data_dim == 2
    assert dm.train_x.shape == (96, 2)
    assert dm.val_x.shape == (50, 2)
    assert dm.test_x.shape == (30, 2)
    tr, va, te = rows(dm.train_x), rows(dm.val_x), rows(dm.test_x)
    assert len(tr) == 96 and len(va) == 50 and len(te) == 30  # no duplicate rows
    assert not (tr & va) and not (tr & te) and not (va & te)


def test_axis_std_and_data_scale():
    dm = make_dm(n_train=2000, batch_size=100)
    std = dm.axis_std
    assert float(std[1]) == 0.0  # the y axis is exactly zero
    assert float(std[0]) == pytest.approx(float(dm.train_x[:, 0].std()))
    assert dm.data_scale == pytest.approx(float(std[0]))
    assert 0.95 < dm.data_scale < 1.06  # sqrt(1 + 0.1^2) = 1.005 for the seed's clusters


def _epoch(loader, epoch: int) -> list[torch.Tensor]:
    """One epoch's batches. Training batches come in groups, (K, B, D) (K = 1 here);
    evaluation batches one at a time, (B, D)."""
    loader.sampler.set_epoch(epoch)
    items = list(loader)
    if loader.sampler.group is None:
        return items
    assert all(g.dim() == 3 and len(g) == 1 for g in items)
    return [b for g in items for b in g]


def test_train_loader_whole_batches_cover_each_row_once():
    dm = make_dm()  # n_train = 96 = 6 * 16
    loader = dm.train_dataloader()
    assert len(loader) == 6
    batches = _epoch(loader, 0)
    assert len(batches) == 6
    assert all(b.shape == (16, 2) for b in batches)
    seen = torch.cat(batches)
    assert rows(seen) == rows(dm.train_x)
    assert len(seen) == len(dm.train_x)  # each exactly once
    # Shuffled: not the storage order.
    assert not torch.equal(seen, dm.train_x)


def test_train_loader_drops_last_partial_batch():
    dm = make_dm(n_train=100, batch_size=16)
    batches = _epoch(dm.train_dataloader(), 0)
    assert len(batches) == 6 and all(len(b) == 16 for b in batches)
    assert len(rows(torch.cat(batches))) == 96


def test_train_order_depends_only_on_shuffle_seed_and_epoch():
    dm = make_dm()
    e0 = torch.cat(_epoch(dm.train_dataloader(), 0))
    e1 = torch.cat(_epoch(dm.train_dataloader(), 1))
    assert not torch.equal(e0, e1)
    assert rows(e0) == rows(e1)
    # Same (shuffle_seed, epoch): same order, from a fresh loader or a fresh datamodule.
    loader = dm.train_dataloader()
    _epoch(loader, 3)
    assert torch.equal(torch.cat(_epoch(loader, 1)), e1)
    assert torch.equal(torch.cat(_epoch(make_dm().train_dataloader(), 1)), e1)
    # Another shuffle seed: another order on the same data.
    other = torch.cat(_epoch(make_dm(shuffle_seed=6).train_dataloader(), 1))
    assert not torch.equal(other, e1)
    assert rows(other) == rows(e1)


@pytest.mark.parametrize("n_train,world_size", [(96, 2), (96, 3), (128, 4)])
def test_ddp_shards_disjoint_and_cover_all_batches(n_train, world_size):
    dm = make_dm(n_train=n_train)
    n_batches = n_train // 16
    full = [b.tolist() for b in _index_batches(dm, rank=0, world_size=1)]
    assert len(full) == n_batches
    shards = [_index_batches(dm, rank=r, world_size=world_size) for r in range(world_size)]
    assert [len(s) for s in shards] == [n_batches // world_size] * world_size
    index_sets = [set(torch.cat(s).tolist()) for s in shards]
    for i in range(world_size):
        for j in range(i + 1, world_size):
            assert not (index_sets[i] & index_sets[j])
    assert set().union(*index_sets) == set(range(n_train))
    # Each rank takes every world_size-th batch of the same permutation.
    for r, s in enumerate(shards):
        assert [b.tolist() for b in s] == full[r::world_size]


def test_ddp_shards_have_equal_length_for_odd_batch_count():
    dm = make_dm(n_train=80)  # 5 batches of 16 over 2 ranks: the fifth is dropped
    shards = [_index_batches(dm, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in shards] == [2, 2]
    index_sets = [set(torch.cat(s).tolist()) for s in shards]
    assert not (index_sets[0] & index_sets[1])
    assert len(index_sets[0] | index_sets[1]) == 64


def test_ddp_eval_shards_equal_length_and_cover_everything():
    dm = make_dm()  # n_val = 50: batches of 20, 20, 10
    sampler = dm.val_dataloader().sampler
    shards = []
    for r in range(2):
        sampler.rank, sampler.world_size = r, 2
        shards.append(list(sampler))
    assert [len(s) for s in shards] == [2, 2]  # 3 batches: rank 1 wraps to the first
    covered = set(torch.cat([torch.cat(s) for s in shards]).tolist())
    assert covered == set(range(50))


def _index_batches(dm, rank: int, world_size: int) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    sampler = loader.sampler
    sampler.rank, sampler.world_size = rank, world_size
    sampler.set_epoch(2)
    idx = [b for group in sampler for b in group]  # groups of one batch: (1, B)
    assert len(sampler) == len(idx)
    # The loader serves exactly those rows.
    for got, i in zip(loader, idx):
        assert torch.equal(got[0], dm.train_x[i])
    return idx


def test_val_and_test_loaders_deterministic_in_order_keep_last():
    dm = make_dm()  # n_val = 50 = 2 * 20 + 10
    for loader_fn, x in [(dm.val_dataloader, dm.val_x), (dm.test_dataloader, dm.test_x),
                         (dm.predict_dataloader, dm.test_x)]:
        a = _epoch(loader_fn(), 0)
        b = _epoch(loader_fn(), 1)
        assert all(torch.equal(p, q) for p, q in zip(a, b)) and len(a) == len(b)
        assert torch.equal(torch.cat(a), x)
    assert [len(b) for b in _epoch(dm.val_dataloader(), 0)] == [20, 20, 10]


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=97), r"batch_size must be <= n_train \(96\), got 97"),
    (dict(n_train=0), r"n_train must be >= 2 \(the per-axis std of the training data needs two points\), got 0"),
    (dict(n_train=1, batch_size=1), r"n_train must be >= 2 \(.*\), got 1"),
    (dict(n_val=0), r"n_val must be >= 2 \(the sample-quality metrics need two validation points\), got 0"),
    (dict(n_val=1), r"n_val must be >= 2 \(.*\), got 1"),
    (dict(n_test=-3), r"n_test must be >= 1, got -3"),
    (dict(batch_size=0), r"batch_size must be >= 1, got 0"),
    (dict(eval_batch_size=0), r"eval_batch_size must be >= 1, got 0"),
])
def test_bad_datamodule_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_dm(**kwargs)
