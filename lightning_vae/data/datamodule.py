"""LightningDataModule over a manifold's samples: fixed-seed splits, whole-batch indexing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_vae.data.manifolds import Manifold, TwoClusters
from lightning_vae.checkpoints import SafeLoading
from lightning_vae.errors import bad_input

# Peak memory of drawing a sampled manifold's splits, over their float32 bytes (the float64
# working copies: measured 3x for TwoClusters, 5-6x for Circle with an embedding and noise).
SAMPLING_OVERHEAD = 6
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes
SHUFFLE_STRIDE = 100_003  # an epoch's shuffle is seeded by shuffle_seed x SHUFFLE_STRIDE + epoch
SHUFFLE_SEED_RANGE = (-(2**63 // SHUFFLE_STRIDE), (SEED_RANGE[1] - 2**32) // SHUFFLE_STRIDE)


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
        # Where the epoch number comes from when training: the trainer's current_epoch, read
        # as each epoch's iteration starts, plus ``epoch_offset``; None: what set_epoch was
        # last given. After resuming an iteration-based run (max_epochs -1, max_steps) from
        # a checkpoint written at an epoch's end, Lightning's epoch count is one too high
        # (its restart counts that epoch's end twice): the offset, fixed at the first epoch
        # after a resume from where the checkpoint says training stood, keeps the shuffle
        # the uninterrupted run's.
        self.epoch_source: Callable[[], int] | None = None
        self.epoch_offset = 0
        # (epoch, groups): the first iteration over that epoch skips that many groups, the
        # ones an interrupted run had already trained on (ManifoldDataModule.load_state_dict).
        self.resume_at: tuple[int, int] | None = None

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
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(seed * SHUFFLE_STRIDE + self.epoch))

    def __iter__(self) -> Iterator[Tensor]:
        skip = 0
        if self.group is not None and self.resume_at is not None:
            epoch, groups = self.resume_at
            self.resume_at = None  # once: the epochs after it are whole
            # A checkpoint at an epoch's end (every group taken) resumes at the next epoch.
            resumed = epoch if groups < len(self) else epoch + 1
            if self.epoch_source is not None:
                self.epoch_offset = resumed - int(self.epoch_source())
            skip = groups if resumed == epoch else 0
        if self.epoch_source is not None:
            self.epoch = int(self.epoch_source()) + self.epoch_offset
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
        for j in range(skip * self.group, len(batches), self.group):
            yield torch.stack(batches[j : j + self.group])  # (K, B), or (K, M, B) for an ensemble


class ManifoldDataModule(SafeLoading, pl.LightningDataModule):
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
        num_workers: DataLoader worker processes (0: batches are gathered in the main
            process). A batch is one indexing of an in-memory tensor, so workers rarely
            help; with workers the training split stays in host memory (pinned on an
            accelerator) instead of moving to the device.
        pin_memory: page-locked host batches for faster copies to an accelerator; None
            (default): on when the trainer's device is not the CPU. Without workers the
            training split is moved to the device once (no copy per step), so only the
            evaluation batches are copied.
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
        num_workers: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not (isinstance(num_workers, int) and not isinstance(num_workers, bool) and num_workers >= 0):
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.num_workers, self.pin_memory = num_workers, pin_memory
        # The training data's per-axis std (the data scale) needs two points; the sample
        # quality compares the validation split with samples by two-sample statistics, which
        # need two points a side.
        for name, value, least, why in [
                ("n_train", n_train, 2, " (the per-axis std of the training data needs two points)"),
                ("n_val", n_val, 2, " (the sample-quality metrics need two validation points)"),
                ("n_test", n_test, 1, "")]:
            if value < least:
                raise ValueError(f"{name} must be >= {least}{why}, got {value}")
        for name, value in [("batch_size", batch_size), ("eval_batch_size", eval_batch_size)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if batch_size > n_train:
            raise ValueError(f"batch_size must be <= n_train ({n_train}), got {batch_size}")
        self.manifold = manifold if manifold is not None else TwoClusters()
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        if not SEED_RANGE[0] <= data_seed <= SEED_RANGE[1]:
            raise ValueError(f"data_seed must be an integer in {SEED_RANGE[0]} .. {SEED_RANGE[1]} (a "
                             f"torch.Generator seed), got {data_seed}")
        if shuffle_seed is not None and not SHUFFLE_SEED_RANGE[0] <= shuffle_seed <= SHUFFLE_SEED_RANGE[1]:
            raise ValueError(f"shuffle_seed must be an integer in {SHUFFLE_SEED_RANGE[0]} .. "
                             f"{SHUFFLE_SEED_RANGE[1]} (seed x {SHUFFLE_STRIDE} + epoch seeds a torch.Generator), "
                             f"or null, got {shuffle_seed}")
        self.data_seed = data_seed
        self.shuffle_seed = torch.initial_seed() % 2**31 if shuffle_seed is None else shuffle_seed
        self._resume_at: tuple[int, int] | None = None  # from a checkpoint (load_state_dict)
        if member_seeds is not None and len(member_seeds) == 0:
            raise ValueError("member_seeds must be a non-empty list of seeds or null, got []")
        if steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
        self.member_seeds, self.steps_per_batch = member_seeds, steps_per_batch
        self.train_x: Tensor | None = None
        self.val_x: Tensor | None = None
        self.test_x: Tensor | None = None

    def check_size(self) -> None:
        """Raise if the data cannot be drawn or is unfit to train on: the manifold cannot
        supply ``n_train + n_val + n_test`` distinct points (a user's point cloud holds
        finitely many); drawing them would take more memory than there is
        (``memory_needed``); or the training split has no spread (every point the same:
        no data scale, which the collapse threshold is relative to). ``setup`` would find
        out too, but only once training has started; the CLI calls this before anything is
        written. It draws the splits (``setup``), once: the run then uses them."""
        available = getattr(self.manifold, "n_points", None)
        total = self.n_train + self.n_val + self.n_test
        if available is not None and total > available:
            raise ValueError(
                f"n_train + n_val + n_test must be <= {available} (the points in {self.manifold!r}), "
                f"got {self.n_train} + {self.n_val} + {self.n_test} = {total}")
        if self.train_x is None:
            self._check_memory()
        self.setup()
        scale = self.data_scale
        if not (math.isfinite(scale) and scale > 0):
            points = getattr(self.manifold, "n_points", None) is not None  # a file's points
            key = "manifold.init_args.path" if points else "manifold"
            shown = (repr(self.manifold) if type(self.manifold).__repr__ is not object.__repr__
                     else type(self.manifold).__name__)
            raise bad_input(ValueError, f"data.{key}: the {self.n_train} training points drawn from "
                                        f"{shown} (data.n_train) have no spread: the largest per-axis "
                                        f"std is {scale:g}; expected points that vary along at least one axis")

    def memory_needed(self) -> float:
        """Bytes that drawing the three splits takes at its peak: the float32 splits, and for
        a sampled manifold the float64 working copies of its draws (measured: 3 to 6 times
        the splits); for a point cloud, the index permutation of its points."""
        total, dim = self.n_train + self.n_val + self.n_test, self.manifold.dim
        available = getattr(self.manifold, "n_points", None)
        if available is not None:
            return 4.0 * total * dim + 8.0 * available
        return 4.0 * total * dim * SAMPLING_OVERHEAD

    def _check_memory(self) -> None:
        from lightning_vae.preflight import memory_limit, memory_problem, size_text

        needed = self.memory_needed()
        problem = memory_problem(needed)
        if problem is None:
            return
        splits = {"n_train": self.n_train, "n_val": self.n_val, "n_test": self.n_test}
        key = max(splits, key=splits.get)
        dim, total = self.manifold.dim, sum(splits.values())
        per_point = needed / total
        most = int(memory_limit()[0] // per_point)
        raise bad_input(ValueError, f"data.{key}: drawing n_train + n_val + n_test = {self.n_train} + {self.n_val} "
                                    f"+ {self.n_test} points of {dim} coordinates would take about "
                                    f"{size_text(needed)} of memory (the float32 splits are "
                                    f"{size_text(4.0 * total * dim)}), {problem}; expected n_train + n_val + "
                                    f"n_test <= {most} here")

    @property
    def data_dim(self) -> int:
        """Ambient dimension D of the data (linked to the model by the CLI)."""
        return self.manifold.dim

    @property
    def image_shape(self) -> list[int] | None:
        """(C, H, W) of image data, None for points (linked to the model by the CLI): the
        batches are flat ``(B, C*H*W)`` vectors either way; ``images(x)`` reshapes them."""
        shape = getattr(self.manifold, "image_shape", None)
        return None if shape is None else [int(v) for v in shape]

    def images(self, x: Tensor) -> Tensor:
        """Flat image data ``(..., C*H*W)`` as ``(N, C, H, W)`` images."""
        if self.image_shape is None:
            raise ValueError(f"{self.manifold!r} holds points, not images: expected an image manifold "
                             f"(lightning_vae.data.FadingSquare, Sprites, Digits, ImageFiles)")
        return x.reshape(-1, *self.image_shape)

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
        if shuffle:
            sampler.resume_at, self._resume_at = self._resume_at, None
            if trainer is not None:
                sampler.epoch_source = lambda: trainer.current_epoch
            self._train_sampler = sampler
        on_accelerator = trainer is not None and trainer.strategy.root_device.type != "cpu"
        pin = (on_accelerator if self.pin_memory is None else self.pin_memory) and x.device.type == "cpu"
        # batch_size=None: the sampler yields whole index batches, the dataset slices them.
        return DataLoader(_Rows(x), sampler=sampler, batch_size=None, num_workers=self.num_workers,
                          pin_memory=pin, persistent_workers=self.num_workers > 0)

    def state_dict(self) -> dict:
        """Where training stands in its epoch: the epoch and the training groups (Lightning
        batches) already taken in it, saved in every checkpoint. A checkpoint written
        mid-epoch (an interrupted run's, ``lightning_vae.callbacks.RunOutcome``) resumes
        with the epoch's remaining batches, in order, as the uninterrupted run took them;
        at an epoch's end nothing is skipped (the next epoch is whole)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":  # also mid-validation of a fit
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        sampler = getattr(self, "_train_sampler", None)
        # The epoch the sampler shuffles for (Lightning's count plus its offset after a resume).
        epoch = int(trainer.current_epoch) + (sampler.epoch_offset if sampler is not None else 0)
        return {"epoch": epoch, "groups_done": int(progress.completed)}

    def load_state_dict(self, state_dict: dict) -> None:
        if "epoch" in state_dict and "groups_done" in state_dict:
            self._resume_at = (int(state_dict["epoch"]), int(state_dict["groups_done"]))

    def train_dataloader(self) -> DataLoader:
        x = self.train_x
        trainer = self.trainer
        if trainer is not None and x.device != trainer.strategy.root_device and self.num_workers == 0:
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
