"""Wall time of the sample-quality metrics at evaluation size, on CPU.

    python benchmarks/bench_metrics.py [--n 10000] [--dim 2] [--repeats 3]

Times ``update`` + ``compute`` of each ``lightning_vae.sample_metrics`` class on ``n``
model-like samples (TwoClusters, blurred and shifted) against ``n`` data points: the
default policy (MMD and energy on 2,000-point subsamples, sliced W2 with 128 directions and
the marginal W1 on all points), and for reference MMD and energy on all points (memory and
time grow as n^2). Each row is the best of ``repeats`` runs (noise on a shared machine only
ever slows a run down). Then the total of MMD + energy + sliced W2 under the default
policy, against the ``target`` in seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_vae.data.manifolds import TwoClusters  # noqa: E402
from lightning_vae.sample_metrics import (  # noqa: E402
    MMD,
    EnergyDistance,
    MarginalWasserstein,
    SlicedWasserstein,
)

DEFAULT_POLICY = ("MMD", "energy", "sliced W2")


def points(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-like samples and data, ``(n, dim)`` each."""
    g = torch.Generator().manual_seed(0)
    data = TwoClusters(dim=dim).sample(n, g)
    samples = TwoClusters(dim=dim, noise_std=0.05).sample(n, g) + 0.1
    return samples, data


def best_time(metric, samples: torch.Tensor, data: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Fastest of ``repeats`` runs of reset + update + compute, with the value."""
    best = float("inf")
    for _ in range(repeats):
        metric.reset()
        start = time.perf_counter()
        metric.update(samples, data)
        value = metric.compute()
        best = min(best, time.perf_counter() - start)
    return best, value


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print the table; return the seconds per metric and the default-policy ``total``."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="points per side")
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.5,
                    help="seconds allowed for MMD + energy + sliced W2 under the default policy")
    args = ap.parse_args(argv)
    metrics = {"MMD": MMD(), "energy": EnergyDistance(), "sliced W2": SlicedWasserstein(),
               "marginal W1": MarginalWasserstein(), "MMD, all points": MMD(max_points=None),
               "energy, all points": EnergyDistance(max_points=None)}
    samples, data = points(args.n, args.dim)
    print(f"torch {torch.__version__}, cpu, {torch.get_num_threads()} threads; "
          f"{args.n} samples vs {args.n} data points in {args.dim}-D, best of {args.repeats}")
    print(f"{'metric':<20} {'points/side':>11} {'seconds':>8}  value")
    seconds = {}
    for name, metric in metrics.items():
        seconds[name], value = best_time(metric, samples, data, args.repeats)
        used = min(args.n, metric.max_points or args.n)
        shown = ", ".join(f"{v:.4g}" for v in value.reshape(-1).tolist())
        print(f"{name:<20} {used:>11} {seconds[name]:>8.3f}  {shown}", flush=True)
    seconds["total"] = sum(seconds[name] for name in DEFAULT_POLICY)
    verdict = "under" if seconds["total"] < args.target else "OVER"
    print(f"{' + '.join(DEFAULT_POLICY)} (default policy): {seconds['total']:.3f} s, "
          f"{verdict} the {args.target} s target")
    return seconds


if __name__ == "__main__":
    main()
