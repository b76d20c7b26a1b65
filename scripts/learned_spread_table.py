"""The learned-spread tables of the README (Learned spread) from ``make learned``'s sweeps:

    python scripts/learned_spread_table.py logs/learned/sweeps

For every run of the sweeps under the root (single runs and ensemble members alike), its
final ``spread/tangent_fraction`` and principal angles, sample distances, the median
``train/grad_norm`` and, for single runs of the seed and circle, two numbers read from the
checkpoint and the event file:

- held-out log q~: mean over the held-out points of log q~(y), y = x + N(0, s^2 I) drawn
  with a fixed seed, under ONE fixed isotropic kernel for every model (s = 0.3 for the seed,
  0.1 for the circle): q~ = sum_k p(k) N(y; mu_k, diag(sd_k^2) + s^2 I);
- modes found (seed data): the first logged step at which both decoder x-means are within
  0.1 of -1 and +1, one each.

Printed as markdown, one row per sweep and grid point: mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_vae.runs import final_checkpoint, read_scalars  # noqa: E402

COMMON_NOISE = {"TwoClusters": 0.3, "Circle": 0.1}  # the yardstick kernel per data set


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (an event file next to a config.yaml) under ``root``."""
    return sorted({ev.parent for ev in root.rglob("events.out.tfevents.*") if (ev.parent / "config.yaml").is_file()})


def group_of(run: Path, root: Path) -> str:
    parts = run.relative_to(root).parts
    return "/".join(p for p in parts if not (p.startswith(("seed_", "version_", "member_")) and p[-1].isdigit()))


def held_out_log_q(run: Path) -> float:
    """log q~ of held-out points under the common kernel (NaN where it does not apply)."""
    from lightning_vae.data import ManifoldDataModule
    from lightning_vae.kernels import GaussianKernel, convolved_log_lik
    from lightning_vae.model import VAE

    try:
        ckpt = final_checkpoint(run)
        model = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    except Exception:  # an ensemble's member (its checkpoint is the ensemble's) or no checkpoint
        return math.nan
    dm = ManifoldDataModule.load_from_checkpoint(ckpt)
    s = COMMON_NOISE.get(type(dm.manifold).__name__)
    if s is None or not model.net.enumerable:
        return math.nan
    dm.setup()
    x = dm.val_x
    y = x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        loc, scale = model.decoder_params()
        ll = convolved_log_lik(GaussianKernel(), y, loc, scale, s) + model.net.log_prior(y)
    return float(torch.logsumexp(ll, -1).mean())


def modes_found(scalars: dict) -> float:
    a, b = dict(scalars.get("decoder/loc_x_z0", [])), dict(scalars.get("decoder/loc_x_z1", []))
    for step in sorted(set(a) & set(b)):
        near = [min(abs(v + 1), abs(v - 1)) < 0.1 for v in (a[step], b[step])]
        if all(near) and a[step] * b[step] < 0:
            return float(step)
    return math.nan


def row(run: Path) -> dict[str, float]:
    sc = read_scalars(run)
    final = {t: v[-1][1] for t, v in sc.items() if v}
    grad = [v for _, v in sc.get("train/grad_norm", [])]
    return {"share": final.get("spread/tangent_fraction", math.nan),
            "angle_mean": final.get("spread/angle_mean", math.nan),
            "angle_max": final.get("spread/angle_max", math.nan),
            "dist": final.get("quality/dist_mean", final.get("images/dist_mean", math.nan)),
            "p95": final.get("quality/dist_p95", final.get("images/dist_p95", math.nan)),
            "log_q": held_out_log_q(run), "modes": modes_found(sc),
            "grad": statistics.median(grad) if grad else math.nan}


def cell(values: list[float], fmt: str = "{:.3g}") -> str:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return ""
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{fmt.format(statistics.mean(v))} ± {fmt.format(sd)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="the sweeps' folder (make learned: logs/learned/sweeps)")
    args = ap.parse_args()
    runs = run_dirs(args.root)
    if not runs:
        raise SystemExit(f"{args.root}: no runs (run make learned first)")
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(group_of(run, args.root), []).append(row(run))
    print("| sweep / grid point | runs | share along the manifold | below 5% | angle mean / max | dist mean | "
          "dist p95 | held-out log q~ | modes found (step) | median grad norm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        share = [r["share"] for r in rows]
        below = sum(1 for s in share if s < 0.05)
        angles = f"{cell([r['angle_mean'] for r in rows], '{:.0f}')} / {cell([r['angle_max'] for r in rows], '{:.0f}')}"
        print(f"| {name} | {len(rows)} | {cell(share)} | "
              f"{f'{below}/{len(rows)}' if not all(map(math.isnan, share)) else ''} | "
              f"{angles if not all(math.isnan(r['angle_mean']) for r in rows) else ''} | "
              f"{cell([r['dist'] for r in rows])} | {cell([r['p95'] for r in rows])} | "
              f"{cell([r['log_q'] for r in rows], '{:.4g}')} | {cell([r['modes'] for r in rows], '{:.0f}')} | "
              f"{cell([r['grad'] for r in rows])} |")


if __name__ == "__main__":
    main()
