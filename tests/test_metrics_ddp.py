"""The sample metrics under real DDP: 2 CPU processes, gloo, each with its own shard.

Rank r takes rows r::2 of the same samples and data (interleaved, so the gathered order
differs from the one-process order; 3001 points, so the shards differ in size), feeds the
data once and the samples in chunks, and computes. Both ranks must give the value one
process gives on all the points, with subsampling active for MMD and energy (3001 > 2000).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_vae.data import TwoClusters
from lightning_vae.sample_metrics import (
    MMD,
    EnergyDistance,
    ManifoldDistance,
    MarginalWasserstein,
    ModeBalance,
    SlicedWasserstein,
)

WORLD_SIZE = 2
N_POINTS = 3001
TIMEOUT_S = 120
TOL = 1e-6


def make_metrics() -> dict:
    manifold = TwoClusters()
    return {"mmd": MMD(), "mmd_multiscale": MMD([0.1, 0.5, 2.0]), "energy": EnergyDistance(),
            "sliced_w2": SlicedWasserstein(), "sliced_w2_sub": SlicedWasserstein(max_points=2000),
            "marginal_w1": MarginalWasserstein(), "manifold_distance": ManifoldDistance(manifold),
            "mode_balance": ModeBalance(manifold)}


def make_points() -> tuple[torch.Tensor, torch.Tensor]:
    """Model-like samples (the clusters, blurred and shifted) and clean data."""
    g = torch.Generator().manual_seed(0)
    data = TwoClusters().sample(N_POINTS, g)
    samples = TwoClusters(noise_std=0.05).sample(N_POINTS, g) + torch.tensor([0.1, 0.0])
    return samples, data


def compute_all(samples: torch.Tensor, data: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Every metric, the data fed once and the samples in 3 chunks; results as dicts."""
    out = {}
    for name, metric in make_metrics().items():
        if isinstance(metric, (ManifoldDistance, ModeBalance)):
            for chunk in samples.chunk(3):
                metric.update(chunk)
        else:
            metric.update(samples[:0], data)
            for chunk in samples.chunk(3):
                metric.update(chunk, data[:0])
        value = metric.compute()
        out[name] = value if isinstance(value, dict) else {"value": value}
    return out


def callback_values(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """What the SampleQuality callback logs for a fixed untrained model, computed on this
    rank's share of samples and validation points (rows rank::world_size)."""
    from lightning_vae.callbacks import SampleQuality
    from lightning_vae.data import ManifoldDataModule
    from lightning_vae.model import VAE

    torch.manual_seed(0)
    model = VAE()
    dm = ManifoldDataModule(n_train=512, n_val=2501, n_test=256)
    dm.setup()
    values = SampleQuality(n_samples=2501).compute(model, dm, rank, world_size)
    return {k: torch.tensor(v) for k, v in values.items()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # One thread per process on a small machine. The one-process reference sums with more
    # threads, in another order: MMD and energy then differ by about one float32 ulp.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        samples, data = make_points()
        result = compute_all(samples[rank::WORLD_SIZE], data[rank::WORLD_SIZE])
        result["callback"] = callback_values(rank, WORLD_SIZE)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def test_ddp_equals_one_process(ddp_results):
    expected = {**compute_all(*make_points()), "callback": callback_values(0, 1)}
    assert len(expected["callback"]) == 11  # mmd, energy, sliced_w2, w1 x/y, dist x2, mode x4
    report = []
    for name, values in expected.items():
        diff = max((ranked[name][key].double() - value.double()).abs().max().item()
                   for ranked in ddp_results for key, value in values.items())
        report.append(f"{name}: max |ddp - single| = {diff:.1e}")
        assert diff <= TOL, report[-1]
    print("\n".join(report))
