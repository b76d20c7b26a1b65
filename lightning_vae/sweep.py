"""The experiment runner: configs x grid x seeds, resumable, from a laptop to a cluster.

    lightning-vae sweep --config seed_spread --grid model.objective.init_args.noise_std=0.1,0.3,1 \\
        --seeds 0-9 [--seeds_as ensemble|processes] [--jobs 2] [--name NAME] [--root logs] \\
        [--dry_run | --launcher submitit [--submitit KEY=VALUE ...]] [-- more fit arguments]

**Configs.** Each ``--config`` takes one config or several: several are alternatives (one
experiment each, named by the file), and the ``--config`` flags compose as ``fit``'s do
(``--config circle_elbo circle_spread --config trainer/gpu`` is two experiments, each on the
GPU preset). ``--grid key=v1,v2`` (repeatable) sweeps a config key; ``--seeds`` takes
``0-9`` or ``1,3,5``.

**Units.** The unit of work is one experiment at one grid point with all its seeds. By
default (``--seeds_as ensemble``) a unit is one vectorised ensemble (``lightning_vae.ensemble``:
M seeds in one process, each member exactly its single run up to float rounding); with
``--seeds_as processes`` each seed is its own ``fit``. The runs land in the same place
either way, ``<root>/sweeps/<name>/[<experiment>/]<point>/seed_<s>``, and the report reads
them alike. A config whose model is not the package's ``VAE`` (a ``class_path`` of the
user's) runs as processes.

**Resumable, anywhere.** Every run records how it ended in ``<run>/sweep_status.json``
(``finished``, ``diverged`` or ``failed``, exit code, wall time). Running the same command
again skips finished (and diverged) runs; a run that was cut off is moved aside
(``<dir>.incomplete-<time>``, nothing is deleted) and resumed from its last checkpoint (its
events before the cut are carried over), or redone where it has none; a failed run is
redone. Each unit's ``fit`` has its own ``trainer.default_root_dir`` (its run directory), so
Lightning's SLURM requeue checkpoints of different tasks never collide.

**Launchers.** Locally, ``--jobs`` units run side by side (one intra-op thread each when they
share the cores; on a machine with GPUs, the GPUs are dealt to the job slots round-robin
through ``CUDA_VISIBLE_DEVICES``, ``gpu_slots``). ``--dry_run`` prints one command per unit and runs nothing: each
command is this runner restricted to that unit (``--unit``), so it can run any number of
times, anywhere (a scheduler's array task, a requeue): a finished unit is a no-op, a cut-off
one resumes. ``--launcher submitit`` submits the units as a job array through submitit
(optional: ``pip install submitit``), one task and one GPU per unit, requeued on preemption
or timeout (the task's rerun resumes the unit); ``--submitit cluster=local`` runs the same
array on this machine. The sweep's manifest, ``<root>/sweeps/<name>/sweep.json``, and its
``results.csv`` (one row per run) are rebuilt from the runs' status files at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lightning_vae import config_files
from lightning_vae import runs as runs_io
from lightning_vae.runs import STATUS_FILE, status_of

DONE = ("finished", "diverged")


# --- the plan: experiments x grid points x seeds -> units -> jobs ------------------------

def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '1,3,5' -> [1, 3, 5]."""
    seeds: list[int] = []
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            seeds += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
        except ValueError:
            raise SystemExit(f"--seeds must look like '0-9' or '1,3,5', got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds must name distinct seeds, like '0-9' or '1,3,5', got {text!r}")
    return seeds


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


@dataclasses.dataclass
class Unit:
    """One experiment (its configs) at one grid point, with its seeds."""

    key: str  # its folder below the sweep, e.g. "noise_std=0.3" or "circle_elbo/base"
    configs: list[str]
    point: dict[str, str]
    seeds: list[int]
    ensemble: bool


@dataclasses.dataclass
class Job:
    """One ``fit`` process: a unit's ensemble, or one of its seeds. Picklable (submitit)."""

    key: str  # the --unit value that runs it: "<unit key>" or "<unit key>/seed_<s>"
    cmd: list[str]
    run_dir: str  # where its logger writes
    members: list[tuple[int, str]]  # (seed, run directory) of each run it makes
    ensemble: bool
    point: dict[str, str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def _uses_own_model(configs: list[str]) -> bool:
    """A config whose model is a ``class_path`` (not the package's VAE): no ensemble."""
    import yaml

    for config in configs:
        model = (yaml.safe_load(Path(config).read_text()) or {}).get("model")
        if isinstance(model, dict) and "class_path" in model:
            return True
    return False


def plan(slots: list[list[str]], grid: dict[str, list[str]], seeds: list[int], ensemble: bool) -> list[Unit]:
    """The units: every combination of one config per ``--config`` slot, times the grid. A
    grid key ``<config name>:<key>`` applies only to the experiments of that config (the
    study: ``seed_spread:model.objective.init_args.noise_std=...`` next to ``seed_elbo``)."""
    experiments = list(itertools.product(*slots))
    varying = [i for i, slot in enumerate(slots) if len(slot) > 1]
    names = {Path(c).stem for slot in slots for c in slot}
    for key in grid:
        scope = key.split(":", 1)[0] if ":" in key else None
        if scope is not None and scope not in names:
            raise SystemExit(f"--grid {key}: the part before ':' must name one of the configs "
                             f"({', '.join(sorted(names))}), got {scope!r}")
    units = []
    for configs in experiments:
        stems = {Path(c).stem for c in configs}
        own = {k.split(":", 1)[-1]: v for k, v in grid.items() if ":" not in k or k.split(":", 1)[0] in stems}
        exp = "+".join(Path(configs[i]).stem for i in varying)
        for values in itertools.product(*own.values()):
            point = dict(zip(own, values))
            parts = ([exp] if exp else []) + ([point_name(point)] if own or not exp else [])
            units.append(Unit("/".join(parts), list(configs), point, seeds,
                              ensemble and not _uses_own_model(list(configs))))
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        raise SystemExit(f"--config alternatives must have distinct file names (their runs are named "
                         f"by them), got {sorted(set(k for k in keys if keys.count(k) > 1))}")
    return units


def _fit_cmd(module: str, configs: list[str], point: dict[str, str], save_dir: Path, name: str,
             version: str, run_dir: Path, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", module, "fit"]
    for config in configs:
        cmd += ["--config", config]
    cmd += [f"--{key}={value}" for key, value in point.items()]
    return cmd + ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                  f"--trainer.logger.init_args.save_dir={save_dir}", f"--trainer.logger.init_args.name={name}",
                  f"--trainer.logger.init_args.version={version}", f"--trainer.default_root_dir={run_dir}",
                  *extra]


def jobs_of(units: list[Unit], root: Path, name: str, extra: list[str]) -> list[Job]:
    """The ``fit`` processes of the units: one per ensemble unit, one per seed otherwise."""
    jobs = []
    for unit in units:
        unit_dir = root / "sweeps" / name / unit.key
        log_name = str(Path("sweeps") / name / unit.key)
        if unit.ensemble:
            seeds = "[" + ",".join(map(str, unit.seeds)) + "]"
            parent = str(Path(log_name).parent)
            cmd = _fit_cmd("lightning_vae.ensemble", unit.configs, unit.point, root, parent, unit_dir.name,
                           unit_dir, [f"--model.seeds={seeds}", *extra])
            jobs.append(Job(unit.key, cmd, str(unit_dir),
                            [(s, str(unit_dir / f"seed_{s}")) for s in unit.seeds], True, unit.point))
            continue
        for s in unit.seeds:
            run_dir = unit_dir / f"seed_{s}"
            cmd = _fit_cmd("lightning_vae", unit.configs, unit.point, root, log_name, f"seed_{s}", run_dir,
                           [f"--seed_everything={s}", *extra])
            jobs.append(Job(f"{unit.key}/seed_{s}", cmd, str(run_dir), [(s, str(run_dir))], False, unit.point))
    return jobs


# --- running one job: skip, resume, or run; classify ----------------------------------

def is_done(job: Job) -> bool:
    return all((status_of(Path(d)) or {}).get("status") in DONE for _, d in job.members)


def _move_aside(path: Path) -> Path:
    """An earlier attempt's directory, kept under another name before the run is redone."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.incomplete-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.incomplete-{stamp}-{n}"), n + 1
    path.rename(aside)
    return aside


def _drop_failure_records(run_dir: Path) -> None:
    """Before a rerun: a directory that holds nothing but the status records of a run that
    failed before it wrote anything (``run_job`` keeps the failure there) is removed, not
    moved aside: there is nothing of the run to keep."""
    if not run_dir.is_dir():
        return
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    if files and all(p.name == STATUS_FILE for p in files):
        for p in files:
            p.unlink()
        for d in sorted((p for p in run_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        run_dir.rmdir()


def _resume_point(aside: Path, job: Job) -> Path | None:
    """The newest checkpoint of a cut-off attempt that this job can resume from: its
    ``last.ckpt`` (or a SLURM requeue's ``hpc_ckpt_*.ckpt``), readable, of the same seeds."""
    from lightning_vae import preflight

    found = [p for p in [aside / "checkpoints" / "last.ckpt", *aside.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    for ckpt in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            info = preflight.read_checkpoint(str(ckpt.resolve()), "lightning-vae")
        except (SystemExit, Exception):  # noqa: BLE001 - an unreadable checkpoint: try the next
            continue
        seeds = (info.hparams or {}).get("seeds") if info else None
        if job.ensemble and list(seeds or []) != [s for s, _ in job.members]:
            continue
        return ckpt
    return None


def _carry_events(aside: Path, run_dir: Path) -> None:
    """The cut-off attempt's TensorBoard events into the resumed run (its own and each
    member's): the resumed run's event files are newer, so its values come last."""
    for source in [aside, *sorted(p for p in aside.glob("seed_*") if p.is_dir())]:
        target = run_dir / source.relative_to(aside)
        if not target.is_dir():
            continue
        for event in source.glob("events.out.tfevents.*"):
            if not (target / event.name).exists():
                shutil.copy2(event, target / event.name)


def _error_line(stderr: str, rc: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [f"exit {rc}"])[-1]


def run_job(job: Job) -> list[dict]:
    """Run one job unless its runs have finished: skip, resume or run it; write each run's
    status file; return one row per run (``skipped`` where nothing was run), with its final
    values (``final``: read once here from its event files; not part of the status file)."""
    if is_done(job):
        return [{"key": job.key, "seed": s, "run": d, "ensemble": job.ensemble, "skipped": True,
                 **(status_of(Path(d)) or {})}
                for s, d in job.members]
    run_dir = Path(job.run_dir)
    cmd, resumed = list(job.cmd), None
    _drop_failure_records(run_dir)
    aside = _move_aside(run_dir) if run_dir.exists() else None
    if aside is not None:
        resumed = _resume_point(aside, job)
        if resumed is not None:
            cmd.append(f"--ckpt_path={resumed}")
    env = {**os.environ, **job.env}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if resumed is not None and run_dir.is_dir():
        _carry_events(aside, run_dir)
    if proc.returncode != 0:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        (run_dir.parent / f"{run_dir.name}.stderr.txt").write_text(proc.stderr)
    rows = []
    for seed, d in job.members:
        member = Path(d)
        row: dict = {"rc": proc.returncode, "wall_s": round(wall / len(job.members), 2),
                     "process_wall_s": round(wall, 2), "seeds_in_process": len(job.members)}
        if resumed is not None:
            row["resumed_from"] = str(resumed)
        final: dict = {}
        if proc.returncode == 0 and member.is_dir():
            final = runs_io.final_values(member)
            row["status"] = "diverged" if final["diverged"] else "finished"
        else:
            row["status"] = "failed"
            row["error"] = _error_line(proc.stderr, proc.returncode) if proc.returncode else \
                f"exit 0 but no run directory {member}"
        if member.is_dir() or row["status"] == "failed":  # a run that failed before it began: its record
            member.mkdir(parents=True, exist_ok=True)
            (member / STATUS_FILE).write_text(json.dumps(row))
        rows.append({"key": job.key, "seed": seed, "run": d, "ensemble": job.ensemble, **row, "final": final})
    return rows


# --- launchers ----------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` where set, else all of them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPUs
        return []


def gpu_slots(jobs: int, gpus: list[str]) -> list[dict[str, str]]:
    """The environment of each of ``jobs`` local job slots (``CUDA_VISIBLE_DEVICES``): the
    GPUs dealt round-robin, so slot i sees GPUs i, i + jobs, ... (a one-device run takes
    the first; a unit whose preset asks for more finds its share); with fewer GPUs than
    jobs, slot i sees GPU i mod n. Without GPUs, nothing is set."""
    if not gpus:
        return [{} for _ in range(jobs)]
    if len(gpus) < jobs:
        return [{"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(jobs)]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpus[i::jobs])} for i in range(jobs)]


def run_local(jobs: list[Job], n_jobs: int, on_done) -> None:
    """``n_jobs`` jobs at a time on this machine, each in its own slot (threads, GPU)."""
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    width = min(n_jobs, len(jobs)) or 1
    threads = str(max(1, (os.cpu_count() or 1) // width))
    for env in gpu_slots(width, visible_gpus()):
        slots.put({"OMP_NUM_THREADS": threads, **env})

    def one(job: Job) -> list[dict]:
        env = slots.get()
        try:
            return run_job(dataclasses.replace(job, env={**env, **job.env}))
        finally:
            slots.put(env)

    with ThreadPoolExecutor(max_workers=width) as pool:
        futures = {pool.submit(one, job): job for job in jobs}
        for future in as_completed(futures):
            on_done(future.result())


def parse_submitit(items: list[str]) -> dict:
    """``["timeout_min=60", "slurm_partition=gpu"]`` -> parameters for submitit (numbers as numbers)."""
    params: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--submitit must look like key=value (e.g. timeout_min=60), got {item!r}")
        for cast in (int, float):
            try:
                params[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
    return params


# --- the command ----------------------------------------------------------------------------

def _summary(row: dict, values: dict) -> str:
    if row.get("status") == "failed":
        return f"FAILED (exit {row.get('rc')}): {row.get('error', '')}"
    loss, dist = values.get("train/loss", math.nan), values.get("quality/dist_mean", math.nan)
    how = f" (resumed from {row['resumed_from']})" if row.get("resumed_from") else ""
    return (f"{row['status']}{how} in {row['process_wall_s']:.0f} s: loss {loss:.3f}, MMD^2 "
            f"{values.get('quality/mmd', math.nan):.4f}, dist {dist:.3f}, "
            f"collapse {'yes' if values.get('collapsed') else 'no'}")


def collect(jobs: list[Job], root: Path) -> dict[str, list[dict]]:
    """Every planned run's row by grid point: its status record and final values."""
    by_unit: dict[str, list[dict]] = {}
    for job in jobs:
        unit_key = job.key if job.ensemble else job.key.rsplit("/", 1)[0]
        for seed, d in job.members:
            run = Path(d)
            status = status_of(run)
            row = {"configuration": unit_key, "run": run, "grid": job.point, "seed": seed,
                   "record": status or {}, "status": (status or {}).get("status", "not run"),
                   "wall_s": (status or {}).get("wall_s", math.nan)}
            final = runs_io.final_values(run) if row["status"] in DONE else {}
            row["final"] = final
            row["both_modes"] = runs_io.modes_recovered(run, final) if final else None
            by_unit.setdefault(unit_key, []).append(row)
    return by_unit


def write_results(by_unit: dict[str, list[dict]], sweep_dir: Path, meta: dict) -> str:
    """``sweep.json`` (manifest) and ``results.csv`` from the runs' records; the table."""
    from lightning_vae.report import write_csv

    manifest = {**meta, "runs": {f"{r['configuration']}/seed_{r['seed']}": {
        "point": r["grid"], "seed": r["seed"], "run": str(r["run"]), **(r["record"] or {"status": r["status"]})}
        for rows in by_unit.values() for r in rows}}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / "sweep.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(sweep_dir / "sweep.json")  # atomic: a killed sweep leaves a whole manifest
    write_csv(by_unit, sweep_dir / "results.csv", sweep_dir)
    return runs_io.table(by_unit, label="grid point")


def _digest(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _check_same_settings(sweep_dir: Path, settings: dict) -> None:
    """A sweep resumes only with the settings that every run of it had (its configs' text
    and the extra ``fit`` arguments; seeds and grid points may be added): otherwise its
    finished runs would be skipped as if they were runs of the new settings."""
    path = sweep_dir / "sweep.json"
    try:
        before = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return
    changed = [k for k in settings if k in before and before[k] != settings[k]]
    if changed:
        what = " and ".join("the configs' contents" if k == "config_sha256" else "the extra fit arguments"
                            for k in changed)
        raise SystemExit(f"--name {sweep_dir.name}: this sweep ran with other settings ({what} differ from "
                         f"{path}); expected the same configs and fit arguments to resume it, or a new --name")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lightning-vae sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", nargs="+", required=True,
                    help="config(s): several after one --config are alternatives (one experiment "
                         "each); repeated --config flags compose (e.g. a trainer preset)")
    ap.add_argument("--grid", action="append", default=[],
                    help="key=v1,v2,... (repeatable); <config name>:key=... for that config's experiments only")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--seeds_as", choices=("ensemble", "processes"), default="ensemble",
                    help="a unit's seeds as one vectorised ensemble (default) or one fit each")
    ap.add_argument("--jobs", type=int, default=2, help="local jobs in parallel (default 2)")
    ap.add_argument("--name", default=None, help="sweep name (default: the configs' file names)")
    ap.add_argument("--root", default="logs")
    ap.add_argument("--dry_run", action="store_true",
                    help="print one rerunnable command per unit (for a scheduler), run nothing")
    ap.add_argument("--unit", default=None, help="run only this unit (what --dry_run's commands do)")
    ap.add_argument("--launcher", choices=("local", "submitit"), default="local")
    ap.add_argument("--submitit", action="append", default=[], metavar="KEY=VALUE",
                    help="submitit parameter (repeatable): cluster=local|slurm, timeout_min=, "
                         "slurm_partition=, gpus_per_node= (default 1 on SLURM), mem_gb=, ...")
    ap.add_argument("--no_wait", action="store_true", help="with --launcher submitit: submit and return")
    return ap


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    slots = [[config_files.resolve(c) for c in slot] for slot in args.config]  # packaged by name too
    for config in itertools.chain(*slots):
        if not Path(config).is_file():
            raise SystemExit(f"--config must be an existing YAML file or a packaged config "
                             f"({', '.join(config_files.packaged())}), got {config!r}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    grid, seeds = parse_grid(args.grid), parse_seeds(args.seeds)
    params = parse_submitit(args.submitit)
    name = args.name or "+".join(Path(c).stem for slot in slots for c in slot)
    if not re.fullmatch(r"[\w.=,+-]+", name):
        raise SystemExit(f"--name must be a folder name (letters, digits, . = , + - _), got {name!r}")
    root = Path(args.root)
    sweep_dir = root / "sweeps" / name
    units = plan(slots, grid, seeds, args.seeds_as == "ensemble")
    jobs = jobs_of(units, root, name, extra)
    settings = {"config_sha256": [[_digest(c) for c in slot] for slot in slots], "extra": extra}
    if not args.dry_run:
        _check_same_settings(sweep_dir, settings)
    if args.unit is not None:
        chosen = [j for j in jobs if j.key == args.unit]
        if not chosen:
            raise SystemExit(f"--unit must be one of this sweep's units ({', '.join(j.key for j in jobs)}), "
                             f"got {args.unit!r}")
        rows = run_job(chosen[0])
        for row in rows:
            what = "already finished: skipped" if row.get("skipped") else _summary(row, row["final"])
            print(f"{row['key']} seed {row['seed']}: {what}", flush=True)
        sys.exit(0 if all(r.get("status") in DONE for r in rows) else 1)  # a failed run: the task fails
    if args.dry_run:
        cut = argv.index("--") if "--" in argv else len(argv)  # --unit goes before fit's arguments
        own, rest = [a for a in argv[:cut] if a != "--dry_run"], argv[cut:]
        for job in jobs:
            print(shlex.join([sys.executable, "-m", "lightning_vae", "sweep", *own, "--unit", job.key, *rest]))
        return
    todo = [j for j in jobs if not is_done(j)]
    n_runs = sum(len(j.members) for j in jobs)
    n_done = sum(len(j.members) for j in jobs if j not in todo)
    how = "one ensemble per unit" if all(u.ensemble for u in units) else \
        "one process per seed" if not any(u.ensemble for u in units) else "ensembles where the model allows"
    print(f"sweep {name}: {n_runs} runs ({len(units)} units x {len(seeds)} seeds; {how}), "
          f"{n_done} already finished, {n_runs - n_done} to run; runs in {sweep_dir}", flush=True)
    meta = {"configs": slots, "grid": grid, "seeds": seeds, "seeds_as": args.seeds_as, **settings}
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"sweep {name}", unit="unit", file=sys.stderr)

    def on_done(rows: list[dict]) -> None:
        failed = {r.get("error") for r in rows if r.get("status") == "failed"}
        if len(rows) > 1 and len(failed) == 1 and all(r.get("status") == "failed" for r in rows):
            bar.write(f"{rows[0]['key']} ({len(rows)} seeds): {_summary(rows[0], {})}", file=sys.stdout)
            rows = []  # an ensemble that failed as one: one line
        for row in rows:
            values = row.get("final", {})
            label = row["key"] if not row["ensemble"] else f"{row['key']}/seed_{row['seed']}"
            bar.write(f"{label}: {_summary(row, values)}", file=sys.stdout)
        bar.update()

    if args.launcher == "submitit":
        from lightning_vae.submit import submit_array  # the one module that imports submitit

        submit_array(todo, sweep_dir / "submitit", params, not args.no_wait, on_done)
        if args.no_wait:
            bar.close()
            print(f"sweep {name}: {len(todo)} units submitted; rerun this command (it skips finished "
                  f"units) or `lightning-vae report {sweep_dir}` when they are done")
            return
    else:
        run_local(todo, args.jobs, on_done)
    bar.close()
    by_unit = collect(jobs, root)
    print(write_results(by_unit, sweep_dir, meta))
    statuses = [r["status"] for rs in by_unit.values() for r in rs]
    print(f"sweep {name}: {statuses.count('finished')} finished, {statuses.count('diverged')} diverged, "
          f"{len(statuses) - statuses.count('finished') - statuses.count('diverged')} failed; "
          f"manifest {sweep_dir / 'sweep.json'}, one row per run in {sweep_dir / 'results.csv'}")
