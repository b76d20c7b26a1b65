"""Sweeps: the cartesian product of a grid of config values and seeds, one ``fit`` each.

    python -m lightning_vae sweep --config configs/seed_spread.yaml \\
        --grid model.objective.init_args.noise_std=0.1,0.3,1 --seeds 0-9 [--jobs 2] \\
        [--name NAME] [--root logs] [--dry_run] [-- more fit arguments for every run]

Every run is a normal run directory, ``<root>/sweeps/<name>/<point>/seed_<s>`` (``<point>``
names the grid values, e.g. ``noise_std=0.3``), written by its own ``python -m lightning_vae
fit`` process (``--jobs`` at a time, one intra-op thread each when jobs share the cores). The
sweep's manifest, ``<root>/sweeps/<name>/sweep.json``, records each run's grid values, seed,
status (``finished``, ``diverged`` or ``failed``), exit code and wall time; a failed run's
stderr is kept as ``<run>.stderr.txt``. Failures are recorded, not fatal.

Resumable: run the same command again and finished (and diverged) runs are skipped; a run
that failed or was cut off is run again, its old directory first moved aside to
``<run>.incomplete-<time>`` (nothing is deleted).

``--dry_run`` prints one ``fit`` command per line and runs nothing: the same grid on a cluster
is one array task per line, e.g. with SLURM::

    python -m lightning_vae sweep ... --dry_run > commands.txt
    sbatch --array=1-$(wc -l < commands.txt) --wrap 'eval "$(sed -n ${SLURM_ARRAY_TASK_ID}p commands.txt)"'
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lightning_vae import config_files
from lightning_vae.lab import final_values, table
from lightning_vae.seeds import parse_seeds

STATUS_FILE = "sweep_status.json"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["a.b=1,2", "c=x"]`` -> ``{"a.b": ["1", "2"], "c": ["x"]}`` (values as the CLI reads them)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not values.strip():
            raise SystemExit(f"--grid must look like key=v1,v2,..., got {item!r}")
        if key in grid:
            raise SystemExit(f"--grid key {key} given twice; expected each key once")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def point_name(point: dict[str, str]) -> str:
    """A directory name for one grid point: the last part of each key and its value."""
    if not point:
        return "base"
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in point.items()]
    return re.sub(r"[^\w.=,+-]", "_", ",".join(parts))


def fit_command(configs: list[str], point: dict[str, str], seed: int, root: Path, name: str,
                extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "lightning_vae", "fit"]
    for config in configs:
        cmd += ["--config", config]
    cmd += [f"--{key}={value}" for key, value in point.items()]
    cmd += [f"--seed_everything={seed}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={root}",
            f"--trainer.logger.init_args.name={name}", f"--trainer.logger.init_args.version=seed_{seed}",
            *extra]
    return cmd


def _status(run_dir: Path) -> dict | None:
    path = run_dir / STATUS_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


def _move_aside(run_dir: Path) -> None:
    """An earlier attempt's directory, kept under another name before the run is redone."""
    if run_dir.exists():
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"))


def run_one(cmd: list[str], run_dir: Path, threads: int) -> tuple[dict, dict]:
    """Run one ``fit``; classify it; write its status file (and its stderr when it failed).
    Returns the status row and the run's final values (``{}`` when it failed)."""
    _move_aside(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    row: dict = {"rc": proc.returncode, "wall_s": round(wall, 2)}
    values: dict = {}
    if proc.returncode == 0 and run_dir.is_dir():
        values = final_values(run_dir)
        row["status"] = "diverged" if values["diverged"] else "finished"
        row["collapsed"] = values["collapsed"]
    else:
        row["status"] = "failed"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        (run_dir.parent / f"{run_dir.name}.stderr.txt").write_text(proc.stderr)
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        row["error"] = (errors or lines or [f"exit {proc.returncode}"])[-1]
    if run_dir.is_dir():
        (run_dir / STATUS_FILE).write_text(json.dumps(row))
    return row, values


def _summary(row: dict, values: dict) -> str:
    if row["status"] == "failed":
        return f"FAILED (exit {row['rc']}): {row.get('error', '')}"
    loss, dist = values.get("train/loss", math.nan), values.get("quality/dist_mean", math.nan)
    return (f"{row['status']} in {row['wall_s']:.0f} s: loss {loss:.3f}, MMD^2 "
            f"{values.get('quality/mmd', math.nan):.4f}, dist {dist:.3f}, "
            f"collapse {'yes' if values.get('collapsed') else 'no'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m lightning_vae sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True, help="base config (repeatable)")
    ap.add_argument("--grid", action="append", default=[], help="key=v1,v2,... (repeatable)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    ap.add_argument("--name", default=None, help="sweep name (default: the first config's file name)")
    ap.add_argument("--root", default="logs")
    ap.add_argument("--dry_run", action="store_true", help="print the fit commands, run nothing")
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    args.config = [config_files.resolve(c) for c in args.config]  # packaged configs by name too
    for config in args.config:
        if not Path(config).is_file():
            raise SystemExit(f"--config must be an existing YAML file or a packaged config "
                             f"({', '.join(config_files.packaged())}), got {config!r}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    grid, seeds = parse_grid(args.grid), parse_seeds(args.seeds)
    name = args.name or Path(args.config[0]).stem
    sweep_dir = Path(args.root) / "sweeps" / name
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    runs = [(point, seed, f"sweeps/{name}/{point_name(point)}") for point in points for seed in seeds]
    commands = {(point_name(p), s): fit_command(args.config, p, s, Path(args.root), run_name, extra)
                for p, s, run_name in runs}
    if args.dry_run:
        for cmd in commands.values():
            print(shlex.join(cmd))
        return
    manifest_path = sweep_dir / "sweep.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"runs": {}}
    todo, results, finals = [], {}, {}  # finals: each run's final values, read once
    for point, seed, run_name in runs:
        run_dir = Path(args.root) / run_name / f"seed_{seed}"
        key = f"{point_name(point)}/seed_{seed}"
        done = _status(run_dir)
        if done is not None and done.get("status") in ("finished", "diverged"):
            results[key] = {"point": point, "seed": seed, "run": str(run_dir), **done}
        else:
            todo.append((point, seed, run_dir, key))
    print(f"sweep {name}: {len(runs)} runs ({len(points)} grid points x {len(seeds)} seeds), "
          f"{len(runs) - len(todo)} already finished, {len(todo)} to run; runs in {sweep_dir}", flush=True)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def save() -> None:
        manifest["runs"] = {k: results[k] for k in sorted(results)}
        manifest["grid"], manifest["seeds"], manifest["configs"] = grid, seeds, args.config
        tmp = manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(manifest_path)  # atomic: a killed sweep leaves a whole manifest

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=args.jobs) as pool, \
            tqdm(total=len(todo), desc=f"sweep {name}", unit="run", file=sys.stderr) as bar:
        futures = {pool.submit(run_one, commands[(point_name(p), s)], d, threads): (p, s, d, k)
                   for p, s, d, k in todo}
        for future in as_completed(futures):
            point, seed, run_dir, key = futures[future]
            row, finals[key] = future.result()
            results[key] = {"point": point, "seed": seed, "run": str(run_dir), **row}
            save()
            bar.write(f"{key}: {_summary(row, finals[key])}", file=sys.stdout)
            bar.update()
    save()
    by_point: dict[str, list[dict]] = {}
    for key, row in sorted(results.items()):
        if key not in finals:  # finished in an earlier invocation
            finals[key] = final_values(Path(row["run"])) if row["status"] != "failed" else {}
        entry = {**row, **finals[key]}
        by_point.setdefault(key.rsplit("/", 1)[0], []).append(entry)
    print(table(by_point, label="grid point"))
    failed = sum(r["status"] == "failed" for r in results.values())
    diverged = sum(r["status"] == "diverged" for r in results.values())
    print(f"sweep {name}: {len(results) - failed - diverged} finished, {diverged} diverged, {failed} failed; "
          f"manifest {manifest_path}")
