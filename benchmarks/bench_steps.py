"""Framework vs a hand-written PyTorch loop, measured side by side in one process.

    python benchmarks/bench_steps.py [--steps 1500] [--batch_sizes 256 4096] [--json out.json]

For each seed config (``configs/seed_elbo.yaml``, ``configs/seed_spread.yaml``) and batch
size it measures optimizer steps per second (it/s) of:

  - hand:    the best plain loop we can write for the same work: the same DiscreteVAE and
             objective object, Adam(lr=1e-3) with the same cosine schedule, the data held as
             one tensor and sliced by a per-epoch permutation (no DataLoader), and only the
             loss computed (it logs nothing);
  - bare:    ``fit`` through the real CLI, built in-process (``build_cli(args, run=False)``,
             then ``trainer.fit``) with validation off (``--trainer.limit_val_batches=0``)
             and everything else at its default: callbacks, logging, a checkpoint every
             epoch, ``--data.steps_per_batch`` (the CLI's K = 32 unless ``--steps_per_batch``);
  - default: ``fit`` exactly as a user runs it, with validation, checkpoints, sample-quality
             metrics and figures on. Nothing is turned off except the progress bar.

Which steps are timed. Every run covers whole epochs. ``--steps`` is rounded up to a whole
number of epochs (``n_train // batch`` steps each) and all three columns run that many
steps, so that a framework run ends as a user's run does: the last epoch's validation,
quality metrics, checkpoint and the final figure all happen. The clock starts at the first
step after ``--warmup`` steps. For ``fit`` that is the first Lightning batch whose
``global_step`` is at least ``warmup``, since with K steps per batch the count moves K at a
time. Start-up, the sanity check and the first steps are excluded from every column. The
clock stops:

  - hand: after the last optimizer step;
  - bare: in ``on_train_end``, after the last step and the other callbacks'
    ``on_train_end`` work. This is the steady-state cost per step, including the
    per-epoch checkpoints;
  - default: when ``trainer.fit`` returns. This is the whole run after the warm-up: every
    validation epoch, checkpoint, sample-quality computation and figure in between, plus
    the end-of-run work (``on_train_end``, ``on_fit_end``: the final figure, the hparams
    summary, the logger's flush). A fixed end-of-run cost is thus spread over the timed
    steps, as a user experiences it.

The rate is the number of timed optimizer steps over the timed wall time, both on
unrounded numbers. Each row's columns run ``--repeats`` times, interleaved (hand, bare,
default, hand, ...), so a slow spell on a shared machine hits every column alike. The best
of each column is kept, because noise only ever slows a run down. The ratios are
bare / hand and default / hand of those best rates, computed before any rounding.
``--json PATH`` writes every measured rate (each repeat and the best) and both ratios
unrounded.

``--threads N`` sets torch's thread count for all of it (subprocesses included); on a busy
shared machine 1 thread is the steadier measurement. ``--clock cpu`` times the step rates by
this process's CPU time (``time.process_time``) instead of wall time: other tenants' load
stretches wall time, by up to 1.8x between runs of one column on the 2-core machine this
was written on, but not the CPU time the work itself takes.

Unless ``--skip_wall`` is given, it then times CLI start-up against
``import pytorch_lightning``, and the wall time of each seed config and of its 10-seed
vectorised ensemble as subprocesses (the best of ``--repeats`` interleaved runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_vae.data.manifolds import TwoClusters  # noqa: E402
from lightning_vae.latents import BernoulliLatent  # noqa: E402
from lightning_vae.nets import DiscreteVAE  # noqa: E402
from lightning_vae.objectives import ELBO, SpreadELBO  # noqa: E402

# name -> (seed config, the objective the hand loop builds: the config's own)
OBJECTIVES = {"elbo": ("seed_elbo.yaml", lambda: ELBO(kl_warmup_steps=500)),
              "spread": ("seed_spread.yaml", lambda: SpreadELBO(0.3, kl_warmup_steps=500))}
COLUMNS = ("hand", "bare", "default")
_DEFAULT_THREADS = torch.get_num_threads()
_clock = time.perf_counter  # --clock cpu: time.process_time


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_steps(steps: int, batch_size: int, n_train: int) -> int:
    """``steps`` rounded up to whole epochs of ``n_train // batch_size`` steps."""
    per_epoch = n_train // batch_size
    if per_epoch < 1:
        raise SystemExit(f"batch size {batch_size} is larger than --n_train {n_train}")
    return math.ceil(steps / per_epoch) * per_epoch


def hand_loop(objective, batch_size: int, steps: int, warmup: int, device: str = "cpu",
              n_train: int = 10_000) -> float:
    """Steps/s of the plain PyTorch loop (data pre-materialised on ``device``)."""
    torch.manual_seed(0)
    x = TwoClusters().sample(n_train, torch.Generator().manual_seed(1234)).to(device)
    net = DiscreteVAE(2, BernoulliLatent(), hidden=64, depth=2).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    n_batches = len(x) // batch_size
    step, start = 0, None
    while step < steps:
        order = torch.randperm(len(x))
        for b in range(n_batches):
            if step == warmup:
                _sync(device)
                start = _clock()
            xb = x[order[b * batch_size:(b + 1) * batch_size]]
            loss = objective(xb, net, step=step, values=False).loss  # nothing is logged
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step == steps:
                break
    _sync(device)
    return (steps - warmup) / (_clock() - start)


class _StepTimer(pl.Callback):
    """Starts the clock at the first Lightning batch at or after ``warmup`` optimizer steps;
    stops it in ``on_train_end`` (used by ``bare``; ``default`` stops after ``fit``)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.start_step = 0
        self.end: float | None = None

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            _sync(trainer.strategy.root_device.type)
            self.start, self.start_step = _clock(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(trainer.strategy.root_device.type)
        self.end = _clock()


def framework(config: str, batch_size: int, steps: int, warmup: int, validate: bool,
              steps_per_batch: int | None = None, device: str = "cpu",
              n_train: int = 10_000) -> tuple[float, int]:
    """Steps/s of ``fit`` through the real CLI, in-process (so start-up is excluded), and
    the K it ran with. ``validate``: the ``default`` column (the whole run, timed to the
    return of ``fit``); otherwise ``bare`` (validation off, timed to ``on_train_end``)."""
    from lightning_vae.cli import build_cli

    with tempfile.TemporaryDirectory() as tmp:
        epochs = steps // (n_train // batch_size)
        args = ["--config", str(ROOT / "configs" / config), f"--data.batch_size={batch_size}",
                f"--data.n_train={n_train}",
                f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.devices=1",
                f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false",
                f"--trainer.logger.init_args.save_dir={tmp}", f"--trainer.default_root_dir={tmp}"]
        if steps_per_batch is not None:
            args.append(f"--data.steps_per_batch={steps_per_batch}")
        if not validate:
            args.append("--trainer.limit_val_batches=0")
        cli = build_cli(args, run=False)
        timer = _StepTimer(warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if validate:
            _sync(device)
            end = _clock()
        else:
            end = timer.end
        done = cli.trainer.global_step
        if done != steps or timer.start is None:
            raise RuntimeError(f"{config} at batch {batch_size}: ran {done} of {steps} steps "
                               f"(diverged?); cannot time it")
        return (done - timer.start_step) / (end - timer.start), int(cli.model.steps_per_batch)


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    env = None
    if torch.get_num_threads() != _DEFAULT_THREADS:  # --threads: the subprocesses too
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    return time.perf_counter() - start


def format_row(row: dict) -> str:
    """One table row from a JSON row (the smoke test checks the two agree)."""
    return (f"{row['objective']:<8} {row['batch_size']:>6} {row['steps']:>6} {row['hand']:>10.0f} "
            f"{row['bare']:>10.0f} {row['bare_over_hand']:>10.2f} {row['default']:>10.0f} "
            f"{row['default_over_hand']:>13.2f}")


HEADER = (f"{'objective':<8} {'batch':>6} {'steps':>6} {'hand it/s':>10} {'bare it/s':>10} "
          f"{'bare/hand':>10} {'default it/s':>10} {'default/hand':>13}")


def wall_times(repeats: int) -> dict:
    """Start-up and whole-run wall times, as subprocesses; printed as they come."""
    py = sys.executable
    # Minimum of 5: start-up times on a shared machine only ever get slower by noise.
    t_pl = min(_wall([py, "-c", "import pytorch_lightning"]) for _ in range(5))
    t_ours = min(_wall([py, "-c", "import lightning_vae.cli"]) for _ in range(5))
    t_help = min(_wall([py, "-m", "lightning_vae", "fit", "--help"]) for _ in range(5))
    print(f"start-up: import pytorch_lightning {t_pl:.2f} s; import lightning_vae.cli {t_ours:.2f} s "
          f"(+{t_ours - t_pl:.2f} s); lightning_vae fit --help {t_help:.2f} s (+{t_help - t_pl:.2f} s)")
    out = {"import_pytorch_lightning_s": t_pl, "import_lightning_vae_cli_s": t_ours,
           "fit_help_s": t_help, "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp}"]
        for config in ("seed_elbo.yaml", "seed_spread.yaml"):
            single, ensemble = [], []
            for _ in range(repeats):  # interleaved, the fastest of each kept
                single.append(_wall([py, "-m", "lightning_vae", "fit", "--config", f"configs/{config}",
                                     *common]))
                ensemble.append(_wall([py, "-m", "lightning_vae.ensemble", "fit", "--config",
                                       f"configs/{config}", "--model.seeds=[0,1,2,3,4,5,6,7,8,9]", *common]))
            print(f"wall: fit --config configs/{config}: {min(single):.1f} s; ensemble of 10 seeds: "
                  f"{min(ensemble):.1f} s = {min(ensemble) / min(single):.2f} x one seed "
                  f"(all runs: {', '.join(f'{t:.1f}' for t in single)} / "
                  f"{', '.join(f'{t:.1f}' for t in ensemble)} s)", flush=True)
            out["configs"][config] = {"single_s": single, "ensemble_s": ensemble}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500,
                    help="optimizer steps per run, rounded up to whole epochs")
    ap.add_argument("--warmup", type=int, default=100, help="untimed steps at the start of each run")
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--steps_per_batch", type=int, default=None, metavar="K",
                    help="--data.steps_per_batch for both fit columns (default: pass nothing, i.e. "
                         "the CLI's default)")
    ap.add_argument("--skip_wall", action="store_true", help="skip start-up and seed-config timings")
    ap.add_argument("--n_train", type=int, default=10_000,
                    help="training points (raise it for batch-size sweeps beyond 10,000)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where all three run (cuda: data pre-materialised on the GPU for each)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repeats of every measurement; the best of each is kept "
                         "(noise on a shared machine only ever slows a run down)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads for all three (default: torch's own; 1 is steadier on a "
                         "busy shared machine, where threads spin-waiting for each other can slow a run "
                         "several-fold)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="what the step rates count: wall time (default), or this process's CPU time "
                         "(time.process_time: steadier on a shared machine, where other tenants' load "
                         "stretches wall time; the CLI start-up and seed-config timings stay wall)")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="write every measured rate and ratio, unrounded, to PATH")
    args = ap.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--repeats and --steps must be >= 1, --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    logging.getLogger("lightning_vae").setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {threads} threads"
    print(f"torch {torch.__version__}, {where}; best of {args.repeats}, warm-up {args.warmup} steps; "
          f"{args.clock} clock")
    print(HEADER, flush=True)
    report = {"torch": torch.__version__, "device": where, "threads": threads,
              "steps_requested": args.steps, "warmup": args.warmup, "repeats": args.repeats,
              "n_train": args.n_train, "clock": args.clock, "rows": []}
    ks = set()
    for name, (config, make) in OBJECTIVES.items():
        for bs in args.batch_sizes:
            steps = run_steps(args.steps, bs, args.n_train)
            if steps <= args.warmup:
                ap.error(f"--steps {args.steps} (rounded to {steps} at batch {bs}) must exceed --warmup")
            runs: dict[str, list[float]] = {c: [] for c in COLUMNS}
            for _ in range(args.repeats):  # interleaved: a slow spell hits every column alike
                runs["hand"].append(hand_loop(make(), bs, steps, args.warmup, args.device, args.n_train))
                for column, validate in (("bare", False), ("default", True)):
                    rate, k = framework(config, bs, steps, args.warmup, validate, args.steps_per_batch,
                                        args.device, args.n_train)
                    runs[column].append(rate)
                    ks.add(k)
            best = {c: max(v) for c, v in runs.items()}
            row = {"objective": name, "config": f"configs/{config}", "batch_size": bs, "steps": steps,
                   "steps_per_batch": k, **best,
                   "bare_over_hand": best["bare"] / best["hand"],
                   "default_over_hand": best["default"] / best["hand"], "runs": runs}
            report["rows"].append(row)
            print(format_row(row), flush=True)
    print(f"it/s = optimizer steps per second; fit ran K = {', '.join(map(str, sorted(ks)))} optimizer "
          f"steps per Lightning step (--data.steps_per_batch)")
    if not args.skip_wall:
        report["wall"] = wall_times(args.repeats)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
