"""The learned spread's figure (docs/figures/learned_spread_seed.png) from a sweep of
``seed_learned_spread`` over ``ascent`` (README: Learned spread):

    python scripts/learned_spread_figure.py logs/learned/sweeps/seed [--out PATH]

Left: ``spread/tangent_fraction`` (the share of L L^T along the data's line) against the
step, one line per seed, per ascent. Right: the final noise covariance sigma^2 I + L L^T of
every seed, as its 1-sigma ellipse drawn at each cluster centre over the training data.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_vae.report import save_figure  # noqa: E402
from lightning_vae.runs import final_checkpoint, read_scalars  # noqa: E402

COLOURS = {"divergence": "tab:red", "loss": "tab:blue"}


def runs_by_ascent(sweep: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for point in sorted(sweep.glob("ascent=*")):
        seeds = sorted(p for p in point.glob("seed_*") if (p / "checkpoints").is_dir())
        if seeds:
            out[point.name.split("=", 1)[1]] = seeds
    if not out:
        raise SystemExit(f"{sweep}: no ascent=<name>/seed_<n> runs with checkpoints (run the sweep first)")
    return out


def covariance(run: Path) -> torch.Tensor:
    """sigma^2 I + L L^T of a run's final checkpoint."""
    ckpt = torch.load(final_checkpoint(run), map_location="cpu", weights_only=False)
    v = ckpt["state_dict"]["spread.direction"].double()
    init = ckpt["hyper_parameters"]["objective"]["init_args"]
    budget = float(init["kernel"]["init_args"]["budget"])
    sigma = float(init["noise_std"])
    f = v * math.sqrt(budget) / v.norm()
    return sigma**2 * torch.eye(len(f), dtype=torch.float64) + f @ f.T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/figures/learned_spread_seed.png"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_vae.data import TwoClusters

    groups = runs_by_ascent(args.sweep)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ascent, runs in groups.items():
        for i, run in enumerate(runs):
            series = read_scalars(run).get("spread/tangent_fraction", [])
            if series:
                steps, values = zip(*series)
                left.plot(steps, values, color=COLOURS.get(ascent, "k"), alpha=0.6, lw=1,
                          label=f"ascent: {ascent}" if i == 0 else None)
    left.set_xlabel("optimizer step")
    left.set_ylabel("share of L L^T along the manifold")
    left.set_ylim(-0.02, 1.02)
    left.axhline(0.05, color="grey", ls=":", lw=1)
    left.set_title(f"learned noise direction, {max(map(len, groups.values()))} seeds per ascent")
    left.legend(loc="center right")

    x = TwoClusters().sample(2000, torch.Generator().manual_seed(0))
    right.scatter(x[:, 0], x[:, 1], s=2, color="k", alpha=0.3, label="data (the x-axis)")
    t = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    circle = torch.stack([t.cos(), t.sin()])  # (2, 200)
    for ascent, runs in groups.items():
        for i, run in enumerate(runs):
            root = torch.linalg.cholesky(covariance(run))
            ring = (root @ circle).T
            for centre in (-1.0, 1.0):
                right.plot(centre + ring[:, 0], ring[:, 1], color=COLOURS.get(ascent, "k"), alpha=0.5, lw=1,
                           label=f"ascent: {ascent}" if i == 0 and centre < 0 else None)
    right.set_aspect("equal")
    right.set_xlim(-1.8, 1.8)
    right.set_ylim(-0.8, 0.8)
    right.set_title("final noise: 1-sigma ellipse of sigma^2 I + L L^T, each seed")
    right.legend(loc="upper right", fontsize=8)
    print(f"wrote {save_figure(fig, args.out, dpi=110)}")


if __name__ == "__main__":
    main()
