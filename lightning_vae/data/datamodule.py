"""LightningDataModule over a manifold's samples: fixed-seed splits, whole-batch indexing."""

from __future__ import annotations

from collections.abc import Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_vae.data.manifolds import Manifold, TwoClusters


class _Rows(Dataset):
    """A tensor indexed by a whole batch of row indices at once (no per-sample collate)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: Tensor) -> Tensor:
        return self.x[index]


class _Batches(Sampler):
    """Yields index tensors of whole batches; reshuffled per epoch from ``(seed, epoch)``.

    The order depends only on the seed and the epoch number (Lightning calls
    ``set_epoch``), so a resumed run sees the same batches as an uninterrupted one. Under
    DDP each rank takes every ``world_size``-th batch of the same permutation, and every
    rank gets the same number of batches (unequal counts would hang the gradient
    all-reduce): training drops the batches left over, evaluation wraps around to the
    first batches (as ``DistributedSampler`` pads). Training batches are served ``group``
    consecutive ones at a time, ``(group, B)`` or an ensemble's ``(group, M, B)`` (the last
    group of an epoch may be smaller; group 1 is ``(1, B)``): the same batches in the same
    order for any group size, fewer trips through the loader.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 member_seeds: list[int] | None = None, group: int | None = None) -> None:
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.drop_last, self.member_seeds, self.group = drop_last, member_seeds, group
        self.epoch, self.rank, self.world_size = 0, 0, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _n_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def _n_rank_batches(self) -> int:
        n, ws = self._n_batches(), self.world_size
        return n // ws if self.drop_last else -(-n // ws)

    def __len__(self) -> int:
        return -(-self._n_rank_batches() // (self.group or 1))

    def _order(self, seed: int) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * 100_003 + self.epoch))

    def __iter__(self) -> Iterator[Tensor]:
        if self.member_seeds is None:
            order = self._order(self.seed)  # (N,)
        else:  # an ensemble: each member's own order, exactly as its single run would see
            order = torch.stack([self._order(s) for s in self.member_seeds])  # (M, N)
        n = self._n_batches()
        batches = [order[..., b * self.batch_size : (b + 1) * self.batch_size]
                   for b in ((self.rank + i * self.world_size) % n for i in range(self._n_rank_batches()))]
        if self.group is None:  # evaluation: one batch at a time
            yield from batches
            return
        for j in range(0, len(batches), self.group):
            yield torch.stack(batches[j : j + self.group])  # (K, B), or (K, M, B) for an ensemble


class ManifoldDataModule(pl.LightningDataModule):
    """Train/val/test points drawn once from a manifold with a fixed data seed.

    The data seed is independent of the model seed (``seed_everything``): every model
    seed sees the same data set, so runs differ only in initialisation and noise.

    Args:
        manifold: the data distribution (default: the seed's two clusters on a line in R^2).
        n_train: number of training points.
        n_val: number of validation points (held out; used for log-likelihood and quality).
        n_test: number of test points.
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and predict.
        data_seed: seed of the ``torch.Generator`` that draws all three splits.
        shuffle_seed: seed of the per-epoch shuffling; ``None`` takes ``torch.initial_seed()``
            at construction, i.e. the run's ``seed_everything`` value.
        member_seeds: for an ensemble (``python -m lightning_vae.ensemble``; linked from
            ``model.seeds``): training batches become ``(M, B, D)``, member m shuffled as a
            single run with ``shuffle_seed = member_seeds[m]`` (``(K, M, B, D)`` with
            ``steps_per_batch`` K > 1).
        steps_per_batch: serve this many consecutive training batches at once, ``(K, B, D)``
            (1: ``(1, B, D)``); the model's training loop takes one optimizer step per batch
            (``lightning_vae/steps.py``). Same batches, same order, same results at any K.
    """

    def __init__(
        self,
        manifold: Manifold | None = None,
        n_train: int = 10_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        batch_size: int = 256,
        eval_batch_size: int = 4_096,
        data_seed: int = 1234,
        shuffle_seed: int | None = None,
        member_seeds: list[int] | None = None,
        steps_per_batch: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value in [("n_train", n_train), ("n_val", n_val), ("n_test", n_test)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if batch_size > n_train:
            raise ValueError(f"batch_size must be <= n_train ({n_train}), got {batch_size}")
        self.manifold = manifold if manifold is not None else TwoClusters()
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.data_seed = data_seed
        self.shuffle_seed = torch.initial_seed() % 2**31 if shuffle_seed is None else shuffle_seed
        if member_seeds is not None and len(member_seeds) == 0:
            raise ValueError("member_seeds must be a non-empty list of seeds or null, got []")
        if steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
        self.member_seeds, self.steps_per_batch = member_seeds, steps_per_batch
        self.train_x: Tensor | None = None
        self.val_x: Tensor | None = None
        self.test_x: Tensor | None = None

    def check_size(self) -> None:
        """Raise if the manifold cannot supply ``n_train + n_val + n_test`` distinct points (a
        user's point cloud holds finitely many). ``setup`` would find out too, but only once
        training has started; the CLI calls this before anything is written."""
        available = getattr(self.manifold, "n_points", None)
        total = self.n_train + self.n_val + self.n_test
        if available is not None and total > available:
            raise ValueError(
                f"n_train + n_val + n_test must be <= {available} (the points in {self.manifold!r}), "
                f"got {self.n_train} + {self.n_val} + {self.n_test} = {total}")

    @property
    def data_dim(self) -> int:
        """Ambient dimension D of the data (linked to the model by the CLI)."""
        return self.manifold.dim

    def setup(self, stage: str | None = None) -> None:
        if self.train_x is not None:
            return
        g = torch.Generator().manual_seed(self.data_seed)
        x = self.manifold.sample(self.n_train + self.n_val + self.n_test, generator=g)  # (N, D)
        self.train_x, self.val_x, self.test_x = x.split([self.n_train, self.n_val, self.n_test])
        self._axis_std = self.train_x.std(dim=0)

    @property
    def axis_std(self) -> Tensor:
        """Per-axis standard deviation of the training data, ``(D,)`` (computed once)."""
        self.setup()
        return self._axis_std

    @property
    def data_scale(self) -> float:
        """The largest per-axis std of the training data: the scale thresholds are relative to."""
        return float(self.axis_std.max())

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Training batches (optimizer steps) per epoch on each rank."""
        return (self.n_train // self.batch_size) // world_size

    def _loader(self, x: Tensor, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = _Batches(len(x), batch_size, shuffle, seed=self.shuffle_seed, drop_last=shuffle,
                           member_seeds=self.member_seeds if shuffle else None,
                           group=self.steps_per_batch if shuffle else None)
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler.rank, sampler.world_size = trainer.global_rank, trainer.world_size
        # batch_size=None: the sampler yields whole index batches, the dataset slices them.
        return DataLoader(_Rows(x), sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        x = self.train_x
        trainer = self.trainer
        if trainer is not None and x.device != trainer.strategy.root_device:
            # The whole training split lives on the accelerator (it is small): batches are
            # gathered there, with no host-to-device copy per step.
            x = x.to(trainer.strategy.root_device)
        return self._loader(x, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_x, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_x, self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_x, self.eval_batch_size, shuffle=False)
