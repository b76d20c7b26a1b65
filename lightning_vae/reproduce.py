"""Reproduce the seed ("A Failure Case of VAE") in one command.

    python -m lightning_vae.reproduce [--max_epochs N]

Trains ``configs/seed_elbo.yaml`` (the failure) and ``configs/seed_spread.yaml`` (the fix)
through the real CLI, one process each, then prints what each run learned.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from lightning_vae import config_files
from lightning_vae.runs import recovered_both_modes, summarize

RUNS = [("FAILURE: plain ELBO", "configs/seed_elbo.yaml"),
        ("FIX: spread ELBO", "configs/seed_spread.yaml")]


def _train(config: str, extra: list[str], root: Path) -> tuple[Path, float, str]:
    """Run ``fit`` on a config; return the new run directory, wall time and stderr."""
    import yaml

    config = config_files.resolve(config)  # the packaged file, from any directory
    name = yaml.safe_load(Path(config).read_text())["trainer"]["logger"]["init_args"]["name"]
    before = set((root / name).glob("version_*"))
    cmd = [sys.executable, "-m", "lightning_vae", "fit", "--config", config,
           "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
           f"--trainer.logger.init_args.save_dir={root}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"reproduce: {config} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    new = sorted(set((root / name).glob("version_*")) - before, key=lambda p: p.stat().st_mtime)
    if not new:
        raise SystemExit(f"reproduce: {config} wrote no run under {root / name}")
    return new[-1], wall, proc.stderr


def format_summary(title: str, config: str, s: dict, wall: float, line_entropy: float, centres=None) -> str:
    lines = [f"== {title}  ({config})", f"   run dir            {s['run']}   ({wall:.0f} s)"]
    floor = ""
    if s["objective"].startswith("ELBO"):
        floor = f"; no model of the x-coordinate alone can go below {line_entropy:.3f}"
    lines.append(f"   final train loss   {s['final_train_loss']:.3f}   (lowest {s['min_train_loss']:.3f}{floor})")
    lines.append(f"   gradient norm      max {s['max_grad_norm']:.3g} over the run")
    for k, loc in s["loc"].items():
        std = s["std"][k]
        stds = "  ".join(f"std_{a} {v:.3g}" for a, v in std.items())
        lines.append(f"   decoder {k}         loc ({', '.join(f'{v:+.3f}' for v in loc)})  {stds}")
    if s["collapse_step"] is not None:
        lines.append(f"   variance collapse  yes, at step {s['collapse_step']} (likelihood std < 0.01 x data scale)")
    else:
        lines.append("   variance collapse  no")
    fracs = [s[k] for k in sorted(s) if k.startswith("quality/mode_frac_")]
    lines.append(f"   clean samples      MMD^2 {s['quality/mmd']:.2e}  mean dist to manifold "
                 f"{s['quality/dist_mean']:.2e}  mode fractions {' / '.join(f'{f:.2f}' for f in fracs)}")
    lines.append(f"                      energy {s['quality/energy']:.2e}  sliced W2 {s['quality/sliced_w2']:.2e}  "
                 f"W1 per axis {' / '.join(f'{s[k]:.2e}' for k in sorted(s) if k.startswith('quality/w1_'))}")
    lines.append(f"   held-out log p(x)  {s['val_log_px']:.3f} (exact, clean model)")
    if centres is not None:
        lines.append(f"   verdict            {verdict(s, centres)}")
    return "\n".join(lines)


def verdict(s: dict, centres, tol: float = 0.25) -> str:
    """Both modes recovered (a decoder mean within ``tol`` of each centre, the samples split
    evenly: ``report.recovered_both_modes``) and variance collapsed, in plain words. The
    mode fractions alone cannot tell: one broad Gaussian over both clusters splits 50/50."""
    import torch

    locs = torch.tensor([v for v in s["loc"].values()])
    missed = [c for c in centres if float(torch.linalg.vector_norm(locs - c, dim=1).min()) >= tol]
    if recovered_both_modes(s, centres, tol=tol):
        modes = "both modes recovered: yes"
    elif missed:
        where = ", ".join(f"({', '.join(f'{v:+.2f}' for v in c.tolist())})" for c in missed)
        modes = f"both modes recovered: NO (no decoder mean within {tol} of {where})"
    else:
        modes = "both modes recovered: NO (the samples do not split evenly between them)"
    collapsed = "yes" if s["collapse_step"] is not None else "no"
    return f"{modes}; variance collapsed: {collapsed}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max_epochs", type=int, default=None, help="override the configs' epochs")
    ap.add_argument("--root", default="logs", help="where runs are written (default logs)")
    args = ap.parse_args(argv)
    extra = [f"--trainer.max_epochs={args.max_epochs}"] if args.max_epochs else []
    from lightning_vae.data.manifolds import TwoClusters

    h = TwoClusters().line_entropy()
    root = Path(args.root)
    for title, config in RUNS:
        print(f"training {config} ...", flush=True)
        run_dir, wall, stderr = _train(config, extra, root)
        for line in stderr.splitlines():
            if line.startswith("lightning_vae:") and not line.startswith("lightning_vae: run directory"):
                print("   " + line, flush=True)
        print(format_summary(title, config, summarize(run_dir), wall, h, TwoClusters().centres), flush=True)
    from lightning_vae.cli import tensorboard_command

    print(f"\nInspect: {tensorboard_command(root)}")


if __name__ == "__main__":
    main()
