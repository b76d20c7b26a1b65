"""Image models: ``fit`` against a hand-written PyTorch loop of the same model, side by side.

    python benchmarks/bench_images.py [--config digits_delta_gaussian] [--batch_size 128]
        [--device cpu|cuda] [--precision 32|bf16-mixed] [--steps 1500] [--json out.json]

The same measurement as ``benchmarks/bench_steps.py`` (read its docstring: the rules are
the same), for an image config: the convolutional VAE of ``configs/digits_delta_gaussian.yaml``
by default (``--config NAME``: any image config, e.g. ``digits_vae``,
``fading_delta_gaussian``; several may be given, as may several ``--batch_size``). It prints
images per second (img/s = optimizer steps x batch size / seconds) of:

  - hand:    the best plain loop we can write for the same work. The CLI is built
             in-process from the same arguments (``build_cli(args, run=False)``) and its
             freshly built model is deep-copied, so the network (``ConvNet``, the latent,
             the ``DeterministicDecoder``...), its initial weights, the objective object
             (e.g. ``VAEWarmStart(SpreadELBO(...))``) and the optimizer and learning-rate
             schedule (``lightning_vae.model.optimizer_config``: the config's optimizer,
             default Adam(lr=1e-3), and its cosine schedule over the run's steps) are the
             ones ``fit`` trains. The data are the datamodule's training split as one
             tensor on the device, sliced by a per-epoch ``torch.randperm``; a step is
             ``loss = objective(x, net, generator, step, values=False).loss`` (nothing
             logged), ``loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)``
             and the schedule's step;
  - bare:    ``fit`` through the real CLI with validation off
             (``--trainer.limit_val_batches=0``), everything else at its default
             (callbacks, logging, checkpoints, ``--data.steps_per_batch`` K = 32, which an
             epoch shorter than K caps at the epoch's length);
  - default: ``fit`` as a user runs it: validation, checkpoints, sample and image quality
             (feature-space FD/KID/precision/recall, sharpness) and figures on; only the
             progress bar is off.

Whole epochs (``--steps`` rounded up to whole epochs of ``n_train // batch`` steps, the
same count for all three), the warm-up (``--warmup`` steps, at a group boundary for fit),
where each clock stops (hand: after the last step; bare: in ``on_train_end``; default: when
``fit`` returns), the interleaved repeats (hand, bare, default, hand, ...), the best of
``--repeats`` kept, ratios bare / hand and default / hand computed on the unrounded best
rates (and, after the table, each repeat's fit rates over the hand rate of the same repeat,
with their median: on a machine whose speed swings between repeats the paired median is
the steadier estimate), ``--json`` (every rate, unrounded), ``--threads`` and ``--clock cpu``: exactly as in
``bench_steps.py``, whose ``run_steps``, ``_StepTimer`` and ``_sync`` are used here.

The image scores' feature network (``lightning_vae.image_metrics``) is trained once before
any timing, untimed, into a temporary cache that every ``default`` run then loads
(``--image_quality.cache_dir``): a user's first run on a data set trains it once (seconds
on a CPU), every later run loads it, so ``default`` is the steady state. Everything the
runs write (logs, checkpoints, figures, that cache) goes to a temporary directory, deleted
at the end; nothing lands in ``logs/`` or ``~/.cache``.

``--device cuda``: all three run on the GPU, the training split resident there (the
datamodule moves it there itself, as the hand loop does). ``ConvNet``'s default
``channels_last=True`` applies there (the model's ``on_fit_start`` converts the
convolution weights, and the net converts its activations; the hand loop does the same);
it is a no-op on the CPU. ``--precision bf16-mixed``: the hand loop runs the forward pass
and the loss under ``torch.autocast(device, dtype=torch.bfloat16)``, and fit gets
``--trainer.precision=bf16-mixed``.

Peak memory, per column (the largest over its repeats):

  - cuda: ``torch.cuda.max_memory_allocated()`` in MB, its counter reset (after a
    ``gc.collect()`` and ``torch.cuda.empty_cache()``) before each run;
  - cpu: the process's peak resident set (``VmHWM``) while that column ran, reset before
    each run through ``/proc/self/clear_refs`` (Linux). All three share one process, so
    each includes the baseline already resident (the interpreter, torch, Lightning, the
    data, and memory that earlier runs freed but the allocator kept): compare the columns
    by their differences, not as what a column needs on its own. Where the reset is not
    possible the columns print ``-``; the process's overall peak
    (``getrusage(RUSAGE_SELF).ru_maxrss``) is printed at the end in any case.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import bench_steps  # noqa: E402  (benchmarks/: run_steps, _StepTimer, _sync, and the clock)
from bench_steps import _StepTimer, _sync, run_steps  # noqa: E402

from lightning_vae import config_files  # noqa: E402

COLUMNS = ("hand", "bare", "default")
DEFAULT_CONFIG = "digits_delta_gaussian"
_DEFAULT_N_TRAIN = 10_000  # ManifoldDataModule's, for a config that sets none


# --- peak memory ----------------------------------------------------------------------------

def _can_reset_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _rss_peak_mb() is not None
    except OSError:
        return False


def _rss_peak_mb() -> float | None:
    """The process's peak resident set since the last reset (VmHWM), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one run: ``start()`` before it, ``read()`` after it (MB, or None)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.rss = device == "cpu" and _can_reset_rss()

    @property
    def kind(self) -> str | None:
        if self.device == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "peak RSS of the process (VmHWM)" if self.rss else None

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        elif self.rss:
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> float | None:
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        return _rss_peak_mb() if self.rss else None


def max_rss_mb() -> float:
    """The process's peak resident set over its whole life (``ru_maxrss``, kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the runs -------------------------------------------------------------------------------

def config_path(name: str) -> Path:
    """A config by name (``digits_vae``) or path, as the CLI resolves ``--config``."""
    path = Path(config_files.resolve(name))
    if not path.is_file():
        raise SystemExit(f"--config {name}: no such config (packaged ones: "
                         f"{', '.join(config_files.packaged())})")
    return path


def config_n_train(path: Path) -> int:
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return int(data.get("n_train", _DEFAULT_N_TRAIN))


def cli_args(config: Path, batch_size: int, epochs: int, device: str, precision: str, tmp: str,
             cache_dir: str, n_train: int | None, validate: bool = True,
             steps_per_batch: int | None = None) -> list[str]:
    """The CLI arguments of one run: the config, the batch size, ``epochs`` epochs, the device
    and precision, and every output under ``tmp`` (the image scores' cache: ``cache_dir``)."""
    args = ["--config", str(config), f"--data.batch_size={batch_size}",
            f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.devices=1",
            f"--trainer.max_epochs={epochs}", "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp}", f"--trainer.default_root_dir={tmp}",
            f"--image_quality.cache_dir={cache_dir}"]
    if n_train is not None:
        args.append(f"--data.n_train={n_train}")
    if precision != "32":
        args.append(f"--trainer.precision={precision}")
    if steps_per_batch is not None:
        args.append(f"--data.steps_per_batch={steps_per_batch}")
    if not validate:
        args.append("--trainer.limit_val_batches=0")
    return args


def build(args: list[str]):
    from lightning_vae.cli import build_cli

    return build_cli(args, run=False)


def _autocast(device: str, precision: str):
    if precision == "bf16-mixed":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hand_loop(args: list[str], steps: int, warmup: int, device: str, precision: str) -> float:
    """Images/s of the plain PyTorch loop, over the model the CLI builds from ``args``."""
    from lightning_vae.model import optimizer_config

    cli = build(args)
    model, datamodule = copy.deepcopy(cli.model), cli.datamodule
    del cli
    datamodule.setup()
    x = datamodule.train_x.to(device)
    batch_size = datamodule.batch_size
    model.to(device).train()
    if device == "cuda" and getattr(model.network, "channels_last", False):
        model.net.to(memory_format=torch.channels_last)  # as VAE.on_fit_start does
    net, objective = model.net, model.objective
    config = optimizer_config(model.parameters(), model._optimizer, model.lr_schedule, lambda: steps)
    opt, sched = (config["optimizer"], config["lr_scheduler"]["scheduler"]) if isinstance(config, dict) \
        else (config, None)
    generator = torch.Generator(device=device).manual_seed(model.noise_seed)
    n_batches = len(x) // batch_size
    step, start = 0, None
    while step < steps:
        order = torch.randperm(len(x), device=device)
        for b in range(n_batches):
            if step == warmup:
                _sync(device)
                start = bench_steps._clock()
            xb = x[order[b * batch_size:(b + 1) * batch_size]]
            with _autocast(device, precision):
                loss = objective(xb, net, generator, step, values=False).loss  # nothing is logged
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
            step += 1
            if step == steps:
                break
    _sync(device)
    if not torch.isfinite(loss):
        raise RuntimeError(f"the hand loop's loss is {float(loss)} at step {steps} (diverged?)")
    return (steps - warmup) * batch_size / (bench_steps._clock() - start)


def framework(args: list[str], steps: int, warmup: int, validate: bool, device: str) -> tuple[float, int]:
    """Images/s of ``fit`` through the real CLI, in-process (start-up excluded), and the K
    it ran with. ``validate``: the ``default`` column (timed to the return of ``fit``);
    otherwise ``bare`` (validation off, timed to ``on_train_end``)."""
    cli = build(args)
    timer = _StepTimer(warmup)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if validate:
        _sync(device)
        end = bench_steps._clock()
    else:
        end = timer.end
    done = cli.trainer.global_step
    if done != steps or timer.start is None:
        raise RuntimeError(f"ran {done} of {steps} steps (diverged?); cannot time it")
    batch_size = cli.datamodule.batch_size
    return (done - timer.start_step) * batch_size / (end - timer.start), int(cli.model.steps_per_batch)


def prepare(args: list[str], cache_dir: str) -> bool | None:
    """Train the image scores' feature network into ``cache_dir``, untimed, as
    ``ImageQuality`` builds it (the same images and targets: the same cache key). Returns
    the network's ``channels_last`` (None: not a ``ConvNet``)."""
    from lightning_vae.image_callbacks import feature_targets
    from lightning_vae.image_metrics import FeatureSpaceScores

    cli = build(args)
    datamodule = cli.datamodule
    datamodule.setup()
    if datamodule.image_shape is None:
        raise SystemExit("not an image config: its data have no image_shape (use bench_steps.py for points)")
    FeatureSpaceScores(datamodule.images(datamodule.train_x),
                       targets=feature_targets(datamodule.manifold, datamodule.train_x), cache_dir=cache_dir)
    return getattr(cli.model.network, "channels_last", None)


# --- the table ------------------------------------------------------------------------------

def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_row(row: dict) -> str:
    """One table row from a JSON row (the smoke test checks the two agree)."""
    peak = row["peak_mb"]
    return (f"{row['config']:<22} {row['device']:>6} {row['batch_size']:>5} {row['steps']:>5} "
            f"{row['hand']:>10.0f} {row['bare']:>10.0f} {row['bare_over_hand']:>9.2f} "
            f"{row['default']:>13.0f} {row['default_over_hand']:>12.2f} "
            f"{_mb(peak['hand']):>7} {_mb(peak['bare']):>7} {_mb(peak['default']):>10}")


def format_paired(row: dict) -> str:
    """The repeat-by-repeat ratios of a row and their medians (printed after the table)."""
    cells = []
    for c in ("bare", "default"):
        ratios = " ".join(f"{v:.2f}" for v in row[f"paired_{c}_over_hand"])
        cells.append(f"{c}/hand {ratios} (median {row[f'median_paired_{c}_over_hand']:.2f})")
    return f"  paired by repeat, {row['config']} at batch {row['batch_size']}: " + "; ".join(cells)


HEADER = (f"{'config':<22} {'device':>6} {'batch':>5} {'steps':>5} {'hand img/s':>10} {'bare img/s':>10} "
          f"{'bare/hand':>9} {'default img/s':>13} {'default/hand':>12} {'hand MB':>7} {'bare MB':>7} "
          f"{'default MB':>10}")


def row_name(name: str) -> str:
    return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=[DEFAULT_CONFIG],
                    help="image config(s), by name (digits_vae, fading_delta_gaussian) or path")
    ap.add_argument("--batch_size", type=int, nargs="+", default=[128])
    ap.add_argument("--steps", type=int, default=1500,
                    help="optimizer steps per run, rounded up to whole epochs")
    ap.add_argument("--warmup", type=int, default=100, help="untimed steps at the start of each run")
    ap.add_argument("--n_train", type=int, default=None,
                    help="training images (default: the config's; the digits have 1797 in all, so "
                         "n_train + the config's n_val + n_test must stay <= 1797)")
    ap.add_argument("--steps_per_batch", type=int, default=None, metavar="K",
                    help="--data.steps_per_batch for both fit columns (default: the CLI's)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32", "bf16-mixed"], default="32",
                    help="bf16-mixed: autocast in the hand loop, --trainer.precision=bf16-mixed for fit")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repeats of every column; the best of each is kept")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own; 1 is steadier on a busy machine)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="time the rates by wall time (default) or this process's CPU time")
    ap.add_argument("--json", type=Path, default=None, metavar="PATH",
                    help="write every measured rate, ratio and peak, unrounded, to PATH")
    args = ap.parse_args()
    if args.repeats < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--repeats and --steps must be >= 1, --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    bench_steps._clock = time.process_time if args.clock == "cpu" else time.perf_counter
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning_vae", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {threads} threads"
    memory = PeakMemory(args.device)
    print(f"torch {torch.__version__}, {where}; precision {args.precision}; best of {args.repeats}, "
          f"warm-up {args.warmup} steps; {args.clock} clock; peak MB: {memory.kind or 'not measurable here'}")
    report = {"torch": torch.__version__, "device": args.device, "device_name": where, "threads": threads,
              "precision": args.precision, "steps_requested": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "n_train": args.n_train, "clock": args.clock,
              "peak_kind": memory.kind, "rows": []}
    configs = [(name, config_path(name)) for name in args.config]
    paired_lines: list[str] = []
    ks, channels_last = set(), set()
    with tempfile.TemporaryDirectory(prefix="bench_images_") as tmp:
        cache_dir = str(Path(tmp) / "features")
        print(HEADER, flush=True)
        for name, path in configs:
            n_train = args.n_train if args.n_train is not None else config_n_train(path)
            for bs in args.batch_size:
                steps = run_steps(args.steps, bs, n_train)
                if steps <= args.warmup:
                    ap.error(f"--steps {args.steps} (rounded to {steps} at batch {bs}) must exceed --warmup")
                epochs = steps // (n_train // bs)

                def argv(validate: bool, column: str) -> list[str]:
                    out = Path(tmp) / f"{Path(name).stem}-{bs}-{column}"
                    return cli_args(path, bs, epochs, args.device, args.precision, str(out), cache_dir,
                                    args.n_train, validate, args.steps_per_batch)

                layout = prepare(argv(True, "features"), cache_dir)
                channels_last.add(f"{row_name(name)}: {layout}")
                runs: dict[str, list[float]] = {c: [] for c in COLUMNS}
                peaks: dict[str, list[float]] = {c: [] for c in COLUMNS}
                for _ in range(args.repeats):  # interleaved: a slow spell hits every column alike
                    for column in COLUMNS:
                        memory.start()
                        if column == "hand":
                            rate = hand_loop(argv(True, column), steps, args.warmup, args.device, args.precision)
                        else:
                            rate, k = framework(argv(column == "default", column), steps, args.warmup,
                                                column == "default", args.device)
                            ks.add(k)
                        peak = memory.read()
                        runs[column].append(rate)
                        if peak is not None:
                            peaks[column].append(peak)
                best = {c: max(v) for c, v in runs.items()}
                row = {"config": row_name(name), "channels_last": layout,
                       "config_path": str(path), "device": args.device, "batch_size": bs, "steps": steps,
                       "epochs": epochs, "n_train": n_train, "steps_per_batch": k, **best,
                       "bare_over_hand": best["bare"] / best["hand"],
                       "default_over_hand": best["default"] / best["hand"], "runs": runs,
                       "peak_mb": {c: (max(v) if v else None) for c, v in peaks.items()},
                       "peak_runs_mb": peaks}
                # Repeat by repeat: each fit run against the hand run just before it. On a
                # noisy machine (rates that swing by half between repeats) their median says
                # more than the ratio of bests, which pairs each column's luckiest spell.
                for c in ("bare", "default"):
                    paired = [f / h for f, h in zip(runs[c], runs["hand"])]
                    row[f"paired_{c}_over_hand"] = paired
                    row[f"median_paired_{c}_over_hand"] = statistics.median(paired)
                report["rows"].append(row)
                print(format_row(row), flush=True)
                paired_lines.append(format_paired(row))
    for line in paired_lines:
        print(line)
    report["max_rss_mb"] = max_rss_mb()
    print(f"img/s = optimizer steps x batch size / second; fit ran K = {', '.join(map(str, sorted(ks)))} "
          f"optimizer steps per Lightning step (--data.steps_per_batch; an epoch caps it)")
    print(f"ConvNet channels_last ({'; '.join(sorted(channels_last))}): "
          f"{'applied (weights and activations)' if args.device == 'cuda' else 'a no-op on the CPU'}")
    print(f"peak MB: {memory.kind or 'not measurable per column here'}"
          f"{' (one process: each includes the baseline already resident)' if memory.rss else ''}; "
          f"the process's overall peak RSS (ru_maxrss): {report['max_rss_mb']:.0f} MB")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
