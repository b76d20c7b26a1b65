"""Framework vs a hand-written PyTorch loop, measured side by side in one run.

    python benchmarks/bench_steps.py [--steps 1500] [--batch_sizes 256 4096]

For each objective (ELBO, SpreadELBO) and batch size it times:
  - hand: the best plain loop we can write for the same work: the same DiscreteVAE and
    objective object, Adam(lr=1e-3) with the same cosine schedule, data pre-materialised
    as one tensor and sliced by a per-epoch permutation (no DataLoader), only the loss
    computed (it logs nothing);
  - fit:  ``python -m lightning_vae fit`` on the seed config (built by the real CLI
    in-process), validation off, everything else (callbacks, logging, checkpoints) default;
  - fit+val: the same with the config's validation, quality metrics and figures on.
``fit K=k`` runs k optimizer steps per Lightning step (``--data.steps_per_batch=k``).
Steps/s is measured over the steps after the first ``warmup`` ones, ``repeats`` times
interleaved, keeping the best of each column (noise on a shared machine only ever slows a
run down). Then it prints the ratio fit / hand, the CLI start-up time against ``import
pytorch_lightning``, and the wall time of each seed config and of its 10-seed vectorised
ensemble (again the best of ``repeats`` interleaved runs).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import warnings

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_vae.data.manifolds import TwoClusters  # noqa: E402
from lightning_vae.latents import BernoulliLatent  # noqa: E402
from lightning_vae.nets import DiscreteVAE  # noqa: E402
from lightning_vae.objectives import ELBO, SpreadELBO  # noqa: E402

OBJECTIVES = {"elbo": ("seed_elbo.yaml", lambda: ELBO(kl_warmup_steps=500)),
              "spread": ("seed_spread.yaml", lambda: SpreadELBO(0.3, kl_warmup_steps=500))}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


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
                start = time.perf_counter()
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
    return (steps - warmup) / (time.perf_counter() - start)


class _StepTimer(pl.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step >= self.warmup and self.start is None:
            _sync(trainer.strategy.root_device.type)
            self.start, self.start_step = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(trainer.strategy.root_device.type)
        self.end, self.steps = time.perf_counter(), trainer.global_step


def framework(config: str, batch_size: int, steps: int, warmup: int, validate: bool,
              steps_per_batch: int = 1, device: str = "cpu", n_train: int = 10_000) -> float:
    """Steps/s of ``fit`` through the real CLI (in-process, so start-up is excluded)."""
    from lightning_vae.cli import build_cli

    with tempfile.TemporaryDirectory() as tmp:
        args = ["--config", str(ROOT / "configs" / config), f"--data.batch_size={batch_size}",
                f"--data.steps_per_batch={steps_per_batch}", f"--data.n_train={n_train}",
                f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.devices=1",
                f"--trainer.max_steps={steps}", "--trainer.max_epochs=-1",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                f"--trainer.logger.init_args.save_dir={tmp}", f"--trainer.default_root_dir={tmp}"]
        if not validate:
            args.append("--trainer.limit_val_batches=0")
        cli = build_cli(args, run=False)
        timer = _StepTimer(warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return (timer.steps - timer.start_step) / (timer.end - timer.start)


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 4096])
    ap.add_argument("--skip_wall", action="store_true", help="skip start-up and seed-config timings")
    ap.add_argument("--n_train", type=int, default=10_000,
                    help="training points (raise it for batch-size sweeps beyond 10,000)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where both loops run (cuda: data pre-materialised on the GPU for both)")
    ap.add_argument("--steps_per_batch", type=int, nargs="+", default=[1, 8, 16],
                    help="framework variants: optimizer steps per Lightning step")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repeats of every measurement; the best of each is kept "
                         "(noise on a shared machine only ever slows a run down)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_vae").setLevel(logging.ERROR)
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}")
    head = f"{'objective':<8} {'batch':>6} {'hand it/s':>10}"
    for k in args.steps_per_batch:
        head += f" {'fit K=' + str(k):>10} {'ratio':>6}"
    print(head + f" {'fit+val K=' + str(args.steps_per_batch[-1]):>14} {'ratio':>6}")
    for name, (config, make) in OBJECTIVES.items():
        for bs in args.batch_sizes:
            best: dict[str, float] = {}
            for _ in range(args.repeats):  # interleaved: a slow spell hits every column alike
                runs = {"hand": lambda: hand_loop(make(), bs, args.steps, args.warmup, args.device, args.n_train)}
                for k in args.steps_per_batch:
                    runs[k] = partial(framework, config, bs, args.steps, args.warmup, validate=False,
                                      steps_per_batch=k, device=args.device, n_train=args.n_train)
                runs["val"] = partial(framework, config, bs, args.steps, args.warmup, validate=True,
                                      steps_per_batch=args.steps_per_batch[-1], device=args.device,
                                      n_train=args.n_train)
                for key, run in runs.items():
                    best[key] = max(best.get(key, 0.0), run())
            hand = best["hand"]
            row = f"{name:<8} {bs:>6} {hand:>10.0f}"
            for k in args.steps_per_batch:
                row += f" {best[k]:>10.0f} {best[k] / hand:>6.2f}"
            print(row + f" {best['val']:>14.0f} {best['val'] / hand:>6.2f}", flush=True)
    if args.skip_wall:
        return
    py = sys.executable
    # Minimum of 5: start-up times on a shared machine only ever get slower by noise.
    t_pl = min(_wall([py, "-c", "import pytorch_lightning"]) for _ in range(5))
    t_ours = min(_wall([py, "-c", "import lightning_vae.cli"]) for _ in range(5))
    t_help = min(_wall([py, "-m", "lightning_vae", "fit", "--help"]) for _ in range(5))
    print(f"start-up: import pytorch_lightning {t_pl:.2f} s; import lightning_vae.cli {t_ours:.2f} s "
          f"(+{t_ours - t_pl:.2f} s); lightning_vae fit --help {t_help:.2f} s (+{t_help - t_pl:.2f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.save_dir={tmp}"]
        for config in ("seed_elbo.yaml", "seed_spread.yaml"):
            single, ensemble = [], []
            for _ in range(args.repeats):  # interleaved, the fastest of each kept
                single.append(_wall([py, "-m", "lightning_vae", "fit", "--config", f"configs/{config}",
                                     *common]))
                ensemble.append(_wall([py, "-m", "lightning_vae.ensemble", "fit", "--config",
                                       f"configs/{config}", "--model.seeds=[0,1,2,3,4,5,6,7,8,9]", *common]))
            print(f"wall: fit --config configs/{config}: {min(single):.1f} s; ensemble of 10 seeds: "
                  f"{min(ensemble):.1f} s = {min(ensemble) / min(single):.2f} x one seed "
                  f"(all runs: {', '.join(f'{t:.1f}' for t in single)} / "
                  f"{', '.join(f'{t:.1f}' for t in ensemble)} s)", flush=True)

if __name__ == "__main__":
    main()
