"""The experiment runner: configs x grid x seeds, resumable, from a laptop to a cluster.

    lightning-vae sweep --config seed_spread --grid model.objective.init_args.noise_std=0.1,0.3,1 \\
        --seeds 0-9 [--seeds_as ensemble|processes] [--jobs 2] [--name NAME] [--root logs] [--wait] \\
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
(status, exit code, wall time, and the fit's own record, below). Running the same command
again skips finished (and diverged) runs; a run that was cut off is moved aside
(``<dir>.incomplete-<time>``, nothing is deleted) and resumed from its last checkpoint (its
events before the cut are carried over), or redone where it has none; a failed run is
redone. Each unit's ``fit`` has its own ``trainer.default_root_dir`` (its run directory), so
Lightning's SLURM requeue checkpoints of different tasks never collide.

**How a run ended** (``classify``) comes from the run's own record, ``outcome.json``, which
the fit writes itself (``lightning_vae.callbacks.RunOutcome``; an ensemble's in its own
directory, for all its members), never from the exit code alone. ``finished`` (or
``diverged``, from its final values) only when the fit exited 0 AND its record says
``finished``; ``interrupted`` when it exited 143 (SIGTERM) or 130 (SIGINT), was killed by a
signal (SIGKILL, out of memory) or its record says so: a cut-off run, not finished, so the
rerun resumes it; anything else ``failed``, with its error line (the fit's stderr, kept in
``<run dir>.stderr.txt``). Exit 0 without a record, or without the run directory (a fit
argument such as ``--trainer.logger.init_args.name`` sent the logs elsewhere), is
``failed``, saying where the logs were expected.

**One at a time.** A sweep holds ``<root>/sweeps/<name>/.lock`` (``fcntl.flock``, written
with its pid, host and start time) for the whole of its run, from before its key check to
its last record; a second sweep of the same name refuses in one line naming the holder,
exit 2, or with ``--wait`` waits for it (and then finds the first one's runs finished).
A ``--unit`` run holds that lock shared and its own ``.lock-<unit key>`` (``/`` quoted as
``%2F``) exclusively: array tasks of different units run side by side; the same unit twice,
or a unit beside the whole sweep, refuses (or waits). A submitit sweep passes the lock to
its tasks once they are submitted (each task waits for its unit's lock). A flock belongs to
the process and the fit processes it started, and the system drops it when they are all
gone, however they end (even SIGKILL): there is no stale lock to remove. ``--dry_run``
takes none. Where the filesystem has no locks, a warning says so and the sweep runs.

**Checked first.** Before any run (and before ``--dry_run`` prints its commands), each
distinct experiment (its configs, every grid key at its first grid point, the extra ``fit``
arguments, ensemble or not) is parsed by the CLI that will run it (its command with
``--print_config``: nothing is built), up to ``--jobs`` at a time: a key the CLI refuses
(``--grid model.objective.init_args.nosie_std=...``) fails at once, the CLI's own line
("unknown key; did you mean noise_std?") prefixed by the unit's key, exit 2. A ``--unit``
run does not check again (its ``--dry_run`` did; its fit would say the same).

**Records.** ``<root>/sweeps/<name>/sweep.json`` is the sweep's manifest: its settings
(written when it starts, so that a rerun with other settings is refused even after a kill)
and one entry per run, each run's status record. It is merged, never overwritten: the
runs of this sweep (or of this ``--unit``) replace their own entries, every other entry is
kept; read, merged and replaced atomically under ``.manifest.lock``. ``results.csv`` (one
row per run of this sweep) and the table are rebuilt from the runs' records at the end; a
record that is partial or not a JSON object is tolerated (reported as what it lacks).

**Exit status and Ctrl-C.** 0 only when every planned run finished or diverged; 1 when any
failed, was interrupted or could not run (the summary line counts each); 2 for a usage
error (one line: ``lightning-vae sweep: error: ...``; ``--seeds 5-2`` is one). Ctrl-C (or
SIGTERM to the sweep) starts nothing more, stops the running fits (each is given 10 s to
stop by itself where the terminal's Ctrl-C reached it too, else 2 s; then SIGTERM: each saves
a checkpoint and records "interrupted"; SIGKILL after 60 more), writes ``sweep.json`` and
``results.csv`` from what exists, and ends with one line, ``sweep NAME: interrupted; rerun
the same command to resume``, exit 130 (143 for SIGTERM), no traceback. A ``--unit`` run does
the same for its unit; a submitit sweep stops waiting (its tasks are the scheduler's).

**Launchers.** Locally, ``--jobs`` units run side by side (one intra-op thread each when they
share the cores; on a machine with GPUs, the GPUs are dealt to the job slots round-robin
through ``CUDA_VISIBLE_DEVICES``, ``gpu_slots``). ``--dry_run`` prints one command per unit and runs nothing: each
command is this runner restricted to that unit (``--unit``), so it can run any number of
times, anywhere (a scheduler's array task, a requeue): a finished unit is a no-op, a cut-off
one resumes. ``--launcher submitit`` submits the units as a job array through submitit
(optional: ``pip install submitit``), one task and one GPU per unit, requeued on preemption
or timeout (the task's rerun resumes the unit); ``--submitit cluster=local`` runs the same
array on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fcntl
import itertools
import json
import math
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from lightning_vae import config_files
from lightning_vae import runs as runs_io
from lightning_vae.runs import OUTCOME_FILE, STATUS_FILE, status_of

DONE = ("finished", "diverged")
INTERRUPTED_EXIT = (130, 143)  # a fit cut off by SIGINT / SIGTERM (128 + the signal's number)
LOCK_FILE = ".lock"  # <sweep dir>/.lock: the sweep's lock; .lock-<job key>: one --unit run's
MANIFEST_LOCK = ".manifest.lock"  # held only while sweep.json is read, merged and replaced


# --- the plan: experiments x grid points x seeds -> units -> jobs ------------------------

def parse_seeds(text: str) -> list[int]:
    """'0-9' -> [0..9]; '1,3,5' -> [1, 3, 5]."""
    seeds: list[int] = []
    for part in str(text).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise SystemExit(f"--seeds must look like '0-9' or '1,3,5', got {text!r}") from None
        if last < first:
            raise SystemExit(f"--seeds range {part.strip()!r} is empty (it descends); expected LOW-HIGH with "
                             f"LOW <= HIGH, like '0-9', or a list like '1,3,5', got {text!r}")
        seeds += list(range(first, last + 1))
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
    sweep_dir: str = ""  # its sweep's folder (the locks' place); "" for a job of no sweep


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
                            [(s, str(unit_dir / f"seed_{s}")) for s in unit.seeds], True, unit.point,
                            sweep_dir=str(root / "sweeps" / name)))
            continue
        for s in unit.seeds:
            run_dir = unit_dir / f"seed_{s}"
            cmd = _fit_cmd("lightning_vae", unit.configs, unit.point, root, log_name, f"seed_{s}", run_dir,
                           [f"--seed_everything={s}", *extra])
            jobs.append(Job(f"{unit.key}/seed_{s}", cmd, str(run_dir), [(s, str(run_dir))], False, unit.point,
                            sweep_dir=str(root / "sweeps" / name)))
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
    ``last.ckpt`` (or a SLURM requeue's ``hpc_ckpt_*.ckpt``), intact (every CRC checked; a
    ``last.ckpt`` that dangles or is corrupt: the newest intact checkpoint next to it),
    readable, of the same seeds."""
    from lightning_vae import checkpoints, preflight

    found = []
    last = aside / "checkpoints" / checkpoints.LAST
    if last.exists() or last.is_symlink():
        try:
            found.append(checkpoints.resolve(last)[0])
        except checkpoints.CorruptCheckpoint:
            pass
    found += [p for p in aside.glob("hpc_ckpt_*.ckpt") if checkpoints.problem(p) is None]
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


# --- the fit processes: started, waited for, stopped on Ctrl-C -----------------------------

_LIVE: set[subprocess.Popen] = set()  # the processes this sweep is waiting for
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set on Ctrl-C (or SIGTERM): no new process is started
TERM_GRACE_S = 60.0  # after SIGTERM, how long a fit may take to save its checkpoint and exit


class _Stopped(Exception):
    """The sweep is stopping: the job was not started."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM to the sweep itself (a scheduler's time limit): handled as Ctrl-C is, exit 143."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _in_foreground() -> bool:
    """Whether this process is in the terminal's foreground process group: then a Ctrl-C
    reached its fit processes too, and they are given time to stop by themselves."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _wait_all(procs: list[subprocess.Popen], seconds: float, hurry: threading.Event) -> None:
    deadline = time.monotonic() + seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline and not hurry.is_set():
        time.sleep(0.05)


def stop_children(grace: float | None = None) -> None:
    """Stop the sweep's fit processes and start no more: each is given ``grace`` seconds to
    end by itself (by default 10 s where a terminal's Ctrl-C reached it too, else 2 s), then SIGTERM
    (a fit saves a checkpoint, records "interrupted" and exits 143) and ``TERM_GRACE_S`` to
    exit, then SIGKILL. A second Ctrl-C (or a SIGTERM) meanwhile skips the waiting."""
    with _LIVE_LOCK:
        _STOPPING.set()
        procs = [p for p in _LIVE if p.poll() is None]
    if not procs:
        return
    hurry, old = threading.Event(), {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, lambda signum, frame: hurry.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if grace is None:
            grace = 10.0 if _in_foreground() else 2.0
        _wait_all(procs, grace, hurry)
        for p in procs:
            if p.poll() is None:
                p.terminate()
        _wait_all(procs, TERM_GRACE_S, hurry)
        for p in procs:
            if p.poll() is None:
                p.kill()
        _wait_all(procs, 10.0, threading.Event())
    finally:
        for sig, handler in old.items():
            if handler is not None:
                signal.signal(sig, handler)


def _run(cmd: list[str], env: dict, pass_fds: tuple[int, ...] = ()) -> tuple[int, str, BaseException | None]:
    """Run one process to its end: (exit code, its stderr, the Ctrl-C or SIGTERM that
    interrupted this thread meanwhile, or None). Registered while it runs, so that
    ``stop_children`` reaches it from any thread; raises ``_Stopped`` (nothing started)
    once the sweep is stopping. A Ctrl-C in the main thread (a ``--unit`` run) stops the
    process and is returned, not raised, so that the caller records the run first."""
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise _Stopped()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                errors="replace", env=env, pass_fds=pass_fds)
        _LIVE.add(proc)
    interrupted = None
    try:
        try:
            _, stderr = proc.communicate()
        except KeyboardInterrupt as stop:
            interrupted = stop
            stop_children()
            _, stderr = proc.communicate()
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    return proc.returncode, stderr or "", interrupted


# --- how a fit ended; one job run --------------------------------------------------------

def classify(rc: int, outcome: dict | None, run_dir: Path, stderr: str = "") -> tuple[str, str | None]:
    """(status, error line) of a fit from its exit code and its own record (``outcome.json``).
    ``finished`` only when it exited 0 AND its record says so; ``interrupted`` (cut off: a
    rerun resumes it) when it exited 130 or 143, was killed by a signal, or its record says
    so; else ``failed``, with the reason."""
    said = outcome.get("outcome") if outcome else None
    step = outcome.get("global_step") if outcome else None
    at = f" at step {step}" if isinstance(step, int) else ""
    if rc < 0:
        return "interrupted", f"killed by {_signal_name(-rc)}{at}"
    if rc in INTERRUPTED_EXIT or said == "interrupted":
        sig = (outcome or {}).get("signal") or {130: "SIGINT", 143: "SIGTERM"}.get(rc)
        return "interrupted", f"interrupted by {sig or 'a signal'}{at} (exit {rc})"
    if rc == 0:
        if said == "finished":
            return "finished", None
        if not run_dir.is_dir():
            return "failed", (f"exit 0 but no run directory {run_dir}: the fit's logs and its {OUTCOME_FILE} "
                              f"were expected there (the sweep sets trainer.logger's save_dir, name and version "
                              f"and trainer.default_root_dir; did a fit argument send them elsewhere?)")
        if outcome is None:
            return "failed", (f"exit 0 but no outcome record {run_dir / OUTCOME_FILE}: expected the fit to "
                              f"write it there (did a fit argument send its logs elsewhere, or is "
                              f"trainer.callbacks without lightning_vae's RunOutcome?)")
        return "failed", (outcome.get("error") or f"exit 0 but its outcome record says {said!r}")
    lines = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    own = outcome.get("error") if outcome else None
    return "failed", _error_line(stderr, rc) if lines or not own else str(own)


def _write_status(member: Path, row: dict) -> None:
    runs_io.write_record(member / STATUS_FILE, row)  # a killed sweep leaves a whole record or the old one


def run_job(job: Job) -> list[dict]:
    """Run one job unless its runs have finished: skip, resume or run it; write each run's
    status file (``classify``: from the exit code and the fit's own ``outcome.json``, kept in
    the record); return one row per run (``skipped`` where nothing was run), with its final
    values (``final``: read once here from its event files; not part of the status file).
    Raises ``_Stopped`` where the sweep was stopping before the job began (nothing changed),
    and KeyboardInterrupt after recording the runs where Ctrl-C cut it off in the main thread."""
    if is_done(job):
        return [{"key": job.key, "seed": s, "run": d, "ensemble": job.ensemble, "skipped": True,
                 **(status_of(Path(d)) or {})}
                for s, d in job.members]
    if _STOPPING.is_set():
        raise _Stopped()
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
    try:
        rc, stderr, interrupted = _run(cmd, env, tuple(_HELD))
    except _Stopped:
        if aside is not None and not run_dir.exists():
            aside.rename(run_dir)  # nothing ran: the attempt back where it was, as it was
        raise
    wall = time.perf_counter() - start
    if resumed is not None and run_dir.is_dir():
        _carry_events(aside, run_dir)
    outcome = runs_io.outcome_of(run_dir)
    status, error = classify(rc, outcome, run_dir, stderr)
    if rc != 0 or status != "finished":
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        (run_dir.parent / f"{run_dir.name}.stderr.txt").write_text(stderr)
    rows = []
    for seed, d in job.members:
        member = Path(d)
        row: dict = {"rc": rc, "wall_s": round(wall / len(job.members), 2),
                     "process_wall_s": round(wall, 2), "seeds_in_process": len(job.members), "outcome": outcome}
        if rc < 0:
            row["signal"] = _signal_name(-rc)
        if resumed is not None:
            row["resumed_from"] = str(resumed)
        final: dict = {}
        if status == "finished" and member.is_dir():
            final = runs_io.final_values(member)
            row["status"] = "diverged" if final.get("diverged") else "finished"
        elif status == "finished":
            row["status"], row["error"] = "failed", (f"exit 0 and the fit's record says finished, but no run "
                                                     f"directory {member} (expected one per seed)")
        else:
            row["status"], row["error"] = status, error
        _write_status(member, row)  # also for a run that never began: its record (a rerun drops it)
        rows.append({"key": job.key, "seed": seed, "run": d, "ensemble": job.ensemble, **row, "final": final})
    if interrupted is not None:
        raise interrupted
    return rows


# --- one sweep of a name at a time, one run of a unit at a time ---------------------------

_HELD: list[int] = []  # this process's lock files (open, flock-ed); its fit processes inherit them
_STAMPED: set[int] = set()  # those of them it wrote its pid into (cleared again on release)


def unit_lock_path(sweep_dir: Path, key: str) -> Path:
    """The lock of one ``--unit`` run: ``.lock-<its key>``, the key's ``/`` quoted (``%2F``)."""
    return Path(sweep_dir) / f"{LOCK_FILE}-{urllib.parse.quote(key, safe='=,+-._')}"


def _flock(path: Path, shared: bool, wait: bool) -> int | None:
    """An open descriptor of ``path`` holding its flock, or None where another process holds
    it (without ``wait``). -1 where the filesystem has no locks (a warning said so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as err:
        os.close(fd)
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        print(f"lightning-vae sweep: warning: {path.parent} cannot be locked ({err.strerror}); "
              f"run one sweep of a name at a time yourself", file=sys.stderr, flush=True)
        return -1
    except BaseException:  # Ctrl-C while waiting
        os.close(fd)
        raise
    return fd


def _holder(path: Path) -> tuple[str, bool | None]:
    """Who holds a lock as its file says (pid, host, start), and whether that process is
    alive (None where it runs on another host); its fit processes may outlive it."""
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        return f"holder not recorded (lock {path})", None
    pid, host, alive = info.get("pid"), info.get("host"), None
    if host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
    gone = "; it has exited, its fit processes still run" if alive is False else ""
    unit = f"--unit {info['unit']}: " if info.get("unit") else ""
    return f"{unit}pid {pid} on {host} since {info.get('started')}{gone} (lock {path})", alive


def _holders(sweep_dir: Path) -> str:
    """Who holds a sweep's lock: the sweep, or its ``--unit`` runs (those alive first)."""
    found = [_holder(p) for p in [sweep_dir / LOCK_FILE, *sorted(sweep_dir.glob(f"{LOCK_FILE}-*"))]]
    live = [text for text, alive in found if alive] or [text for text, alive in found if alive is None]
    live = live or [found[0][0]]
    return live[0] + (f" (and {len(live) - 1} more)" if len(live) > 1 else "")


def _take(path: Path, shared: bool, wait: bool, what: str, describe) -> int:
    fd = _flock(path, shared, wait=False)
    if fd is None:
        holder = describe()
        if not wait:
            raise SystemExit(f"{what} is running already: {holder}; expected one at a time: wait for it "
                             f"(--wait), or use another --name")
        print(f"{what} is running: {holder}; waiting for it (--wait)", file=sys.stderr, flush=True)
        fd = _flock(path, shared, wait=True)
    return fd


def lock_sweep(sweep_dir: Path, name: str, unit: str | None = None, wait: bool = False) -> None:
    """Hold the sweep's lock until ``release_locks`` or this process's end (a flock dies with
    its holder and the fit processes it started: never stale). The whole sweep holds
    ``.lock`` exclusively; a ``--unit`` run (a scheduler's array task) holds it shared and
    its own ``.lock-<unit>`` exclusively, so different units run side by side but not the
    same unit twice, and no unit beside the whole sweep. Held: a one-line refusal naming the
    holder (pid, host, start: what it wrote into the file), or, with ``wait``, a wait."""
    sweep_dir = Path(sweep_dir)
    fds: list[int] = []
    try:
        if unit is None:
            fds.append(_take(sweep_dir / LOCK_FILE, False, wait, f"sweep {name}", lambda: _holders(sweep_dir)))
        else:
            fds.append(_take(sweep_dir / LOCK_FILE, True, wait, f"sweep {name}",
                             lambda: _holder(sweep_dir / LOCK_FILE)[0]))
            own = unit_lock_path(sweep_dir, unit)
            fds.append(_take(own, False, wait, f"unit {unit} of sweep {name}", lambda: _holder(own)[0]))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "unit": unit, "argv": sys.argv}
        if fds[-1] >= 0:
            os.ftruncate(fds[-1], 0)
            os.pwrite(fds[-1], (json.dumps(info) + "\n").encode(), 0)
            _STAMPED.add(fds[-1])
    except BaseException:
        for fd in fds:
            if fd >= 0:
                os.close(fd)
        raise
    _HELD.extend(fd for fd in fds if fd >= 0)


def release_locks() -> None:
    """Release the locks this process holds (its fit processes' copies end with them), the
    holder's line cleared from the files it wrote it into."""
    while _HELD:
        fd = _HELD.pop()
        if fd in _STAMPED:
            _STAMPED.discard(fd)
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)


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
        except _Stopped:
            return []  # the sweep was stopping: not started
        finally:
            slots.put(env)

    # Not `with`: on Ctrl-C (raised here, in the main thread) the fit processes are stopped
    # first, so that the workers waiting for them return and the pool shuts down at once.
    pool = ThreadPoolExecutor(max_workers=width)
    try:
        futures = [pool.submit(one, job) for job in jobs]
        for future in as_completed(futures):
            on_done(future.result())
    except BaseException:
        stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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
    values = values if isinstance(values, dict) else {}
    if row.get("status") == "failed":
        return f"FAILED (exit {row.get('rc')}): {row.get('error', '')}"
    if row.get("status") == "interrupted":
        return f"INTERRUPTED: {row.get('error', '')}; a rerun resumes it"
    loss, dist = values.get("train/loss", math.nan), values.get("quality/dist_mean", math.nan)
    how = f" (resumed from {row['resumed_from']})" if row.get("resumed_from") else ""
    if "ica/error" in values:  # linear ICA by EM (lightning_vae/ica_em.py)
        return (f"{row.get('status')}{how} in {row.get('process_wall_s', math.nan):.0f} s: error "
                f"{values['ica/error']:.3f} +- {values.get('ica/error_se', math.nan):.3f} (mean over repeats), "
                f"log-lik {values.get('train/log_lik', math.nan):.3f}")
    return (f"{row.get('status')}{how} in {row.get('process_wall_s', math.nan):.0f} s: loss {loss:.3f}, MMD^2 "
            f"{values.get('quality/mmd', math.nan):.4f}, dist {dist:.3f}, "
            f"collapse {'yes' if values.get('collapsed') else 'no'}")


def collect(jobs: list[Job], root: Path, values: bool = True) -> dict[str, list[dict]]:
    """Every planned run's row by grid point: its status record and (``values``) final
    values. A record that is missing or not a JSON object counts as "not run"; a finished
    run whose event files cannot be read has no final values (its numbers are "-")."""
    by_unit: dict[str, list[dict]] = {}
    for job in jobs:
        unit_key = job.key if job.ensemble else job.key.rsplit("/", 1)[0]
        for seed, d in job.members:
            run = Path(d)
            status = status_of(run) or {}
            row = {"configuration": unit_key, "run": run, "grid": job.point, "seed": seed,
                   "record": status, "status": str(status.get("status", "not run")),
                   "wall_s": status.get("wall_s", math.nan)}
            final: dict = {}
            if values and row["status"] in DONE:
                try:
                    final = runs_io.final_values(run)
                except Exception:  # noqa: BLE001 - unreadable event files: no numbers, not a crash
                    final = {}
            row["final"] = final
            try:
                row["both_modes"] = runs_io.modes_recovered(run, final) if final else None
            except Exception:  # noqa: BLE001 - e.g. a truncated ensemble_summary.json: unknown
                row["both_modes"] = None
            by_unit.setdefault(unit_key, []).append(row)
    return by_unit


def manifest_entries(by_unit: dict[str, list[dict]]) -> dict[str, dict]:
    """``sweep.json``'s ``runs``: each run's key (``<unit>/seed_<s>``), point, seed, directory
    and status record."""
    return {f"{r['configuration']}/seed_{r['seed']}": {
        "point": r["grid"], "seed": r["seed"], "run": str(r["run"]), **(r["record"] or {"status": r["status"]})}
        for rows in by_unit.values() for r in rows}


def _read_manifest(path: Path) -> dict:
    """The manifest as it is, ``{}`` where there is none; one that cannot be read (or is not a
    JSON object) is kept as ``sweep.json.unreadable-<time>`` and counts as none."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        manifest = None
    if isinstance(manifest, dict):
        return manifest
    path.rename(path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"))
    return {}


def write_manifest(entries: dict[str, dict], sweep_dir: Path, meta: dict) -> None:
    """Merge into ``sweep.json``: the sweep's settings (``meta``) and these runs' entries
    replace their own keys, every other entry is kept (a sweep of other seeds, another
    ``--unit``). Read, merged and replaced under ``.manifest.lock`` (concurrent array tasks
    lose no entry), atomically (a killed sweep leaves a whole manifest)."""
    sweep_dir = Path(sweep_dir)
    fd = _flock(sweep_dir / MANIFEST_LOCK, shared=False, wait=True)
    try:
        path = sweep_dir / "sweep.json"
        before = _read_manifest(path)
        runs = before.get("runs") if isinstance(before.get("runs"), dict) else {}
        manifest = {**before, **meta, "runs": {**runs, **entries}}
        runs_io.write_record(path, manifest, indent=1)
    finally:
        if fd is not None and fd >= 0:
            os.close(fd)


def write_results(by_unit: dict[str, list[dict]], sweep_dir: Path, meta: dict) -> str:
    """``sweep.json`` (manifest, merged: ``write_manifest``) and ``results.csv`` (this
    sweep's runs) from the runs' records; the table."""
    from lightning_vae.report import write_csv

    write_manifest(manifest_entries(by_unit), sweep_dir, meta)
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
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(before, dict):
        return
    changed = [k for k in settings if k in before and before[k] != settings[k]]
    if changed:
        what = " and ".join("the configs' contents" if k == "config_sha256" else "the extra fit arguments"
                            for k in changed)
        raise SystemExit(f"--name {sweep_dir.name}: this sweep ran with other settings ({what} differ from "
                         f"{path}); expected the same configs and fit arguments to resume it, or a new --name")


def _unit_key(job: Job) -> str:
    return job.key if job.ensemble else job.key.rsplit("/", 1)[0]


def check_keys(units: list[Unit], jobs: list[Job], n_jobs: int) -> None:
    """Before anything runs: each distinct experiment (its configs, its grid keys, ensemble
    or not) is parsed once by the CLI that will run it, the command of its first job with
    ``--print_config`` (nothing is built or written), up to ``n_jobs`` at a time. A key or
    value the CLI refuses (``--grid model.objective.init_args.nosie_std=...``: "unknown
    key; did you mean noise_std?") is one line per experiment on stderr, prefixed by its
    unit's key, and exit 2, instead of the same failure in every run."""
    first = {}
    for job in jobs:
        first.setdefault(_unit_key(job), job)
    checks: dict[tuple, tuple[str, Job]] = {}
    for unit in units:
        if unit.key in first:
            checks.setdefault((tuple(unit.configs), tuple(unit.point), unit.ensemble), (unit.key, first[unit.key]))
    if not checks:
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def check(item: tuple[str, Job]) -> list[str]:
        key, job = item
        rc, stderr, _ = _run([*job.cmd, "--print_config"], env)
        if rc == 0:
            return []
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines[-1:] or \
            [f"the check exited {rc}" if rc > 0 else f"the check was killed by {_signal_name(-rc)}"]
        return [f"{key}: {re.sub(r'^[^:]*: (internal )?error: ', '', ln)}" for ln in errors]

    pool = ThreadPoolExecutor(max_workers=max(1, min(n_jobs, len(checks))))
    try:
        found = list(pool.map(check, checks.values()))
    except BaseException:
        stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    errors = [line for lines in found for line in lines]
    if errors:
        for line in errors:
            print(f"lightning-vae sweep: error: {line}", file=sys.stderr)
        raise SystemExit(2)


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
    ap.add_argument("--wait", action="store_true",
                    help="when this sweep (or unit) is running already: wait for it, instead of refusing")
    return ap


def main(argv: list[str] | None = None) -> None:
    """The sweep command (the module docstring). A usage error is one line on stderr,
    ``lightning-vae sweep: error: ...``, and exit 2; Ctrl-C one line and exit 130 (SIGTERM:
    143); otherwise 0 only when every planned run finished or diverged, else 1."""
    _STOPPING.clear()
    on_term = None
    if threading.current_thread() is threading.main_thread():
        on_term = signal.signal(signal.SIGTERM, _raise_terminated)  # a scheduler's stop: as Ctrl-C
    try:
        _main(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as err:
        if isinstance(err.code, str):  # a usage error: one line, exit 2 (as argparse's own)
            print(f"lightning-vae sweep: error: {err.code}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    except KeyboardInterrupt as stop:  # before the sweep began (planning, checking)
        stop_children(grace=0.0)
        print("lightning-vae sweep: interrupted; nothing was run", file=sys.stderr)
        raise SystemExit(143 if isinstance(stop, _Terminated) else 130) from None
    finally:
        release_locks()
        if on_term is not None:
            signal.signal(signal.SIGTERM, on_term)


def _main(argv: list[str]) -> None:
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
    meta = {"configs": slots, "grid": grid, "seeds": seeds, "seeds_as": args.seeds_as, **settings}
    if args.unit is not None:
        jobs_run = [j for j in jobs if j.key == args.unit]
        if not jobs_run:
            raise SystemExit(f"--unit must be one of this sweep's units ({', '.join(j.key for j in jobs)}), "
                             f"got {args.unit!r}")
    else:
        jobs_run = jobs
    if args.dry_run:  # checks the keys, takes no lock, writes nothing
        check_keys(units, jobs_run, args.jobs)
        cut = argv.index("--") if "--" in argv else len(argv)  # --unit goes before fit's arguments
        own, rest = [a for a in argv[:cut] if a != "--dry_run"], argv[cut:]
        if args.unit is not None:
            i = own.index("--unit") if "--unit" in own else None
            own = own[:i] + own[i + 2:] if i is not None else [a for a in own if not a.startswith("--unit=")]
        for job in jobs_run:
            print(shlex.join([sys.executable, "-m", "lightning_vae", "sweep", *own, "--unit", job.key, *rest]))
        return
    _check_same_settings(sweep_dir, settings)  # before the lock: a refused rerun leaves no trace
    if args.unit is not None:
        _run_unit(jobs_run[0], root, sweep_dir, name, meta, settings, args.wait)
    else:
        _run_sweep(units, jobs, root, sweep_dir, name, meta, settings, args, params)


def _interrupted(name: str, stop: KeyboardInterrupt, write) -> None:
    """Ctrl-C (or SIGTERM) during a sweep: the fit processes stopped (each records itself
    "interrupted" and keeps its checkpoint), the records written from what exists, one line."""
    stop_children()
    try:
        write()
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: the runs' own records are on disk; the manifest is rebuilt next time
    print(f"sweep {name}: {'terminated' if isinstance(stop, _Terminated) else 'interrupted'}; rerun the same "
          f"command to resume", file=sys.stderr, flush=True)
    raise SystemExit(143 if isinstance(stop, _Terminated) else 130) from None


def _run_unit(job: Job, root: Path, sweep_dir: Path, name: str, meta: dict, settings: dict, wait: bool) -> None:
    """One ``--unit`` (a scheduler's array task): under its unit lock; its runs' entries
    merged into the manifest; exit 1 unless all its runs finished or diverged."""
    lock_sweep(sweep_dir, name, unit=job.key, wait=wait)
    _check_same_settings(sweep_dir, settings)  # again: another may have run while this one waited

    def record() -> None:
        write_manifest(manifest_entries(collect([job], root, values=False)), sweep_dir, meta)

    try:
        rows = run_job(job)
    except KeyboardInterrupt as stop:
        _interrupted(name, stop, record)
    record()
    for row in rows:
        what = "already finished: skipped" if row.get("skipped") else _summary(row, row.get("final", {}))
        print(f"{row['key']} seed {row['seed']}: {what}", flush=True)
    if not all(r.get("status") in DONE for r in rows):
        sys.exit(1)  # a failed or interrupted run: the task fails (its rerun resumes it)


def _run_sweep(units: list[Unit], jobs: list[Job], root: Path, sweep_dir: Path, name: str, meta: dict,
               settings: dict, args, params: dict) -> None:
    lock_sweep(sweep_dir, name, wait=args.wait)
    _check_same_settings(sweep_dir, settings)  # again: another may have run while this one waited
    todo = [j for j in jobs if not is_done(j)]
    check_keys(units, todo, args.jobs)  # a key the CLI refuses: exit 2 before any run
    write_manifest({}, sweep_dir, meta)  # the settings on record from the start (a killed sweep's too)
    n_runs = sum(len(j.members) for j in jobs)
    n_done = sum(len(j.members) for j in jobs if j not in todo)
    how = "one ensemble per unit" if all(u.ensemble for u in units) else \
        "one process per seed" if not any(u.ensemble for u in units) else "ensembles where the model allows"
    print(f"sweep {name}: {n_runs} runs ({len(units)} units x {len(meta['seeds'])} seeds; {how}), "
          f"{n_done} already finished, {n_runs - n_done} to run; runs in {sweep_dir}", flush=True)
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"sweep {name}", unit="unit", file=sys.stderr)

    def on_done(rows: list[dict]) -> None:
        bad = {(r.get("status"), r.get("error")) for r in rows}
        if len(rows) > 1 and len(bad) == 1 and rows[0].get("status") in ("failed", "interrupted"):
            bar.write(f"{rows[0]['key']} ({len(rows)} seeds): {_summary(rows[0], {})}", file=sys.stdout)
            rows = []  # an ensemble that failed (or was cut off) as one: one line
        for row in rows:
            values = row.get("final", {})
            label = row["key"] if not row["ensemble"] else f"{row['key']}/seed_{row['seed']}"
            bar.write(f"{label}: {_summary(row, values)}", file=sys.stdout)
        bar.update()

    try:
        if args.launcher == "submitit":
            from lightning_vae.submit import submit_array  # the one module that imports submitit

            # Submitted, the lock passes to the tasks: each holds its unit's (as --unit does).
            submit_array(todo, sweep_dir / "submitit", params, not args.no_wait, on_done, on_submitted=release_locks)
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
    except KeyboardInterrupt as stop:
        bar.close()
        _interrupted(name, stop, lambda: write_results(collect(jobs, root), sweep_dir, meta))
    statuses = [r["status"] for rs in by_unit.values() for r in rs]
    ok = statuses.count("finished") + statuses.count("diverged")
    not_run = len(statuses) - ok - statuses.count("failed") - statuses.count("interrupted")
    print(f"sweep {name}: {statuses.count('finished')} finished, {statuses.count('diverged')} diverged, "
          f"{statuses.count('failed')} failed, {statuses.count('interrupted')} interrupted"
          f"{f', {not_run} not run' if not_run else ''}; manifest {sweep_dir / 'sweep.json'}, one row per run "
          f"in {sweep_dir / 'results.csv'}", flush=True)
    if ok < len(statuses):
        sys.exit(1)  # a failed or cut-off run: rerun the same command to redo or resume it
