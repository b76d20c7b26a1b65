"""Run one config over many seeds through the real CLI and tabulate the outcome.

    python -m lightning_vae.seeds configs/seed_spread.yaml --seeds 0-9 [--jobs 2] [CLI args]

Each seed is a separate ``python -m lightning_vae fit`` process writing to
``logs/<config>-seeds/<timestamp>/seed_<s>``. The table gives, per seed, the decoder
means and x/y stds, mode fractions, MMD and whether both modes were recovered.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lightning_vae.report import recovered_both_modes, summarize


def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '1,3,5' -> [1, 3, 5]."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise SystemExit(f"--seeds must look like '0-9' or '1,3,5', got {text!r}") from None
    return seeds


def run_seed(config: str, seed: int, name: str, extra: list[str], root: str,
             threads: int) -> tuple[int, Path, float, int]:
    cmd = [sys.executable, "-m", "lightning_vae", "fit", "--config", config,
           f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
           "--trainer.enable_model_summary=false",
           f"--trainer.logger.init_args.save_dir={root}",
           f"--trainer.logger.init_args.name={name}", f"--trainer.logger.init_args.version=seed_{seed}",
           *extra]
    start = time.perf_counter()
    # One intra-op thread per job when jobs run side by side: oversubscribed cores
    # make every run several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    run_dir = Path(root) / name / f"seed_{seed}"
    if proc.returncode != 0:
        (run_dir.parent).mkdir(parents=True, exist_ok=True)
        (run_dir.parent / f"seed_{seed}.stderr.txt").write_text(proc.stderr)
    return seed, run_dir, wall, proc.returncode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--root", default="logs")
    args, extra = ap.parse_known_args(argv)
    args.extra = [a for a in extra if a != "--"]  # further CLI arguments, e.g. --model.hidden=32
    if not Path(args.config).is_file():
        raise SystemExit(f"config must be an existing YAML file, got {args.config!r}")
    seeds = parse_seeds(args.seeds)
    name = f"{Path(args.config).stem}-seeds/{time.strftime('%Y%m%d-%H%M%S')}"
    from lightning_vae.data.manifolds import TwoClusters

    centres = TwoClusters().centres
    rows = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        futures = [pool.submit(run_seed, args.config, s, name, args.extra, args.root, threads)
                   for s in seeds]
        for f in futures:
            seed, run_dir, wall, rc = f.result()
            if rc != 0:
                print(f"seed {seed}: FAILED (exit {rc}); stderr in {run_dir.parent}/seed_{seed}.stderr.txt")
                rows.append({"seed": seed, "ok": False})
                continue
            s = summarize(run_dir)
            ok = recovered_both_modes(s, centres)
            rows.append({"seed": seed, "ok": ok, "wall_s": wall, **s})
            locs = " ".join(f"({v[0]:+.2f},{v[1]:+.2f})" for v in s["loc"].values())
            stds = " ".join(f"({v['x']:.3f},{v['y']:.1e})" for v in s["std"].values())
            print(f"seed {seed}: both_modes={'yes' if ok else 'NO '} loc {locs} std(x,y) {stds} "
                  f"frac0 {s.get('quality/mode_frac_0', float('nan')):.2f} "
                  f"mmd {s['quality/mmd']:.4f} collapse_step {s['collapse_step']} "
                  f"loss {s['final_train_loss']:.3f} wall {wall:.0f}s", flush=True)
    n_ok = sum(r["ok"] for r in rows)
    print(f"{args.config}: both modes recovered in {n_ok}/{len(rows)} seeds; runs in {args.root}/{name}")
    out = Path(args.root) / name / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
