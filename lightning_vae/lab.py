"""Run several experiment configs over several seeds and tabulate their final numbers.

    python -m lightning_vae.lab configs/circle_elbo.yaml configs/circle_spread.yaml \\
        --seeds 0-2 [--jobs 2] [--out table.md] [CLI args for every run]

Each (config, seed) is a separate ``python -m lightning_vae fit`` process writing to
``logs/lab/<timestamp>/<config>/seed_<s>``. The table has one row per config: the mean and
std over seeds of the final logged scalars (read back from the TensorBoard event files),
how many seeds collapsed or diverged, and the wall time of one run. A failed run is
reported (its stderr saved next to it), not fatal.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lightning_vae.report import read_scalars
from lightning_vae.seeds import parse_seeds, run_seed

# (tag, column heading, format): the final value of each tag.
COLUMNS = [
    ("train/loss", "train loss", "{:.3f}"),
    ("val/log_px", "val log p(x)", "{:.3f}"),
    ("quality/mmd", "MMD^2", "{:.4f}"),
    ("quality/dist_mean", "dist mean", "{:.3f}"),
    ("quality/dist_p95", "dist p95", "{:.3f}"),
    ("decoder/min_likelihood_std_ratio", "min lik. std / data", "{:.3g}"),
]


def final_values(run_dir: Path, scalars: dict | None = None) -> dict:
    """Final value of each scalar tag of a run; ``collapsed`` and ``diverged`` flags.
    ``scalars``: the run's ``read_scalars`` when the caller has already read them."""
    scalars = read_scalars(run_dir) if scalars is None else scalars
    out = {tag: series[-1][1] for tag, series in scalars.items() if series}
    out["collapsed"] = "decoder/collapse_step" in scalars
    out["diverged"] = bool(out.get("hp/diverged", 0)) or not math.isfinite(out.get("train/loss", 0.0))
    return out


def _stat(values: list[float], fmt: str) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if max(abs(v) for v in values) >= 1e5:  # a diverged run's numbers: no fixed-point digits
        fmt = "{:.3g}"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def table(results: dict[str, list[dict]], label: str = "config") -> str:
    """Markdown: one row per config (or grid point), mean ± std over its seeds."""
    head = [label, "seeds", *[c[1] for c in COLUMNS], "collapsed", "diverged", "wall s / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, runs in results.items():
        ok = [r for r in runs if r["rc"] == 0]
        cells = [config, f"{len(ok)}/{len(runs)}"]
        cells += [_stat([r.get(tag) for r in ok], fmt) for tag, _, fmt in COLUMNS]
        cells += [str(sum(r["collapsed"] for r in ok)), str(sum(r["diverged"] for r in ok)),
                  _stat([r["wall_s"] for r in ok], "{:.0f}")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--root", default="logs")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    for config in args.configs:
        if not Path(config).is_file():
            raise SystemExit(f"config must be an existing YAML file, got {config!r}")
    stems = [Path(c).stem for c in args.configs]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"configs must have distinct file names (their runs are named by them), got {stems}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.out and Path(args.out).exists():
        raise SystemExit(f"--out must be a new file, got existing {args.out!r}")
    seeds = parse_seeds(args.seeds)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    results: dict[str, list[dict]] = {Path(c).stem: [] for c in args.configs}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [(Path(c).stem, pool.submit(run_seed, c, s, f"lab/{stamp}/{Path(c).stem}", extra,
                                              args.root, threads))
                   for c in args.configs for s in seeds]
        for name, future in futures:
            seed, run_dir, wall, rc = future.result()
            row = {"seed": seed, "rc": rc, "wall_s": wall, "run": str(run_dir)}
            if rc == 0:
                row.update(final_values(run_dir))
                print(f"{name} seed {seed}: loss {row.get('train/loss', math.nan):.3f} "
                      f"dist {row.get('quality/dist_mean', math.nan):.3f} "
                      f"collapsed {row['collapsed']} wall {wall:.0f}s", flush=True)
            else:
                print(f"{name} seed {seed}: FAILED (exit {rc}); stderr in "
                      f"{run_dir.parent}/seed_{seed}.stderr.txt", flush=True)
            results[name].append(row)
    text = table(results)
    print(text)
    print(f"runs in {args.root}/lab/{stamp}")
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
