"""The divergence guard's policies through the real CLI: stop (the seed's clean ending),
skip (drop a non-finite step and go on) and rollback (restore the last finite snapshot with
a lower learning rate), each at K = 1 and K = 32 optimizer steps per Lightning step.

Non-finite steps come from two sources, both real values the guard has to detect:
``configs/seed_elbo_diverge.yaml``'s own divergence (plain SGD: the y-std underflows to 0
and the loss is NaN from step 15 on), and ``Tamper``, a test callback that writes a NaN
into one data row of a chosen step's batch, or an inf into a weight.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import Tensor

from conftest import CONFIGS, TINY, run_dirs
from lightning_vae.callbacks import DivergenceGuard
from lightning_vae.objectives import ELBO, Terms
from lightning_vae.runs import read_scalars

FAST = ["--trainer.check_val_every_n_epoch=1000", "--trainer.num_sanity_val_steps=0"]
DIVERGE = "seed_elbo_diverge.yaml"  # SGD lr 0.03, constant: NaN loss from step 15 on
FIRST_NAN = 15


class Tamper(pl.Callback):
    """Test-only: a NaN in row 0 of the batch of each step in ``nan_data_at``; an inf in the
    first weight at step ``inf_weight_at``, which must start a Lightning step (at K = 32
    with TINY's 20-step epochs: 0, 20, 40, ...); and a record, before every optimizer step,
    of the weights, the optimizer state and the learning rate (this callback runs before
    the guard)."""

    def __init__(self, nan_data_at: list[int] | None = None, inf_weight_at: int | None = None) -> None:
        self.nan_data_at = set(nan_data_at or [])
        self.inf_weight_at = inf_weight_at
        self.weights: dict[int, dict] = {}
        self.opt_state: dict[int, dict] = {}
        self.lr: dict[int, float] = {}

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        start = trainer.global_step
        steps = batch  # (K, B, D), a view
        for i in range(len(steps)):
            if start + i in self.nan_data_at:
                steps[i, 0] = math.nan
        if self.inf_weight_at is not None and start <= self.inf_weight_at < start + len(steps):
            assert start == self.inf_weight_at, "inf_weight_at must start a Lightning step"
            next(pl_module.parameters()).view(-1)[0] = math.inf

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        self.weights[step] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        state = optimizer.state_dict()["state"]  # by parameter index
        self.opt_state[step] = {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                                for i, s in state.items()}
        self.lr[step] = optimizer.param_groups[0]["lr"]


class InfLossAt(ELBO):
    """Test-only: the ELBO plus a constant +inf at optimizer step ``at``: a non-finite loss
    whose gradient is finite (the constant has none), which the gradient check cannot see."""

    def __init__(self, at: int = 5) -> None:
        super().__init__()
        self.at = at

    def terms(self, y: Tensor, vae, step: int | None = None, values: bool = True,
              eps: Tensor | None = None) -> Terms:
        terms = super().terms(y, vae, step=step, values=values, eps=eps)
        return terms._replace(loss=terms.loss + math.inf) if step == self.at else terms


@contextmanager
def captured_warnings():
    """The lines the package writes to stderr (its logger does not propagate)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("lightning_vae")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def run(tmp_path: Path, config: str, *extra: str, tamper: dict | None = None):
    """One ``fit`` through the real CLI in-process: (run dir, guard, tamper, trainer, stderr lines)."""
    from lightning_vae.cli import main

    args = ["fit", "--config", str(CONFIGS / config), *TINY, *FAST,
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    if tamper is not None:
        args.append("--trainer.callbacks+=" + json.dumps(
            {"class_path": f"{__name__}.Tamper", "init_args": tamper}))
    name = Path(config).stem
    before = set(run_dirs(tmp_path, name))
    with captured_warnings() as lines:
        cli = main([*args, *extra])
    new = [p for p in run_dirs(tmp_path, name) if p not in before]
    assert len(new) == 1
    trainer = cli.trainer
    guard = next(c for c in trainer.callbacks if isinstance(c, DivergenceGuard))
    probe = next((c for c in trainer.callbacks if isinstance(c, Tamper)), None)
    return new[0], guard, probe, trainer, lines


def finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def same(a: dict, b: dict) -> bool:
    """Bit-exact equality of two state dicts (tensors or nested dicts of them)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not same(x, y):
                return False
        elif torch.is_tensor(x):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def final_weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}


def diagnosis(lines: list[str]) -> str:
    found = [ln for ln in lines if ln.startswith("Training diverged at step")]
    assert len(found) == 1, lines
    return found[0]


# --- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "halt"}, "policy must be 'stop', 'skip' or 'rollback', got 'halt'"),
    ({"max_skips": -1}, "max_skips must be an integer >= 0, got -1"),
    ({"max_skips": 2.5}, "max_skips must be an integer >= 0, got 2.5"),
    ({"lr_factor": 0.0}, "lr_factor must be in (0, 1], got 0.0"),
    ({"lr_factor": 1.5}, "lr_factor must be in (0, 1], got 1.5"),
    ({"lr_factor": math.nan}, "lr_factor must be in (0, 1], got nan"),
    ({"max_rollbacks": -1}, "max_rollbacks must be an integer >= 0, got -1"),
    ({"snapshot_every_n_steps": 0}, "snapshot_every_n_steps must be an integer >= 1, got 0"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        DivergenceGuard(**kwargs)
    assert str(err.value) == message


def test_defaults():
    guard = DivergenceGuard()
    assert (guard.policy, guard.max_skips, guard.lr_factor, guard.max_rollbacks,
            guard.snapshot_every_n_steps) == ("stop", 100, 0.1, 3, 50)


@pytest.mark.parametrize("arg, message", [
    ("--divergence_guard.lr_factor=2", "lr_factor must be in (0, 1], got 2.0"),
    ("--divergence_guard.policy=halt", "divergence_guard.policy"),
])
def test_bad_arguments_through_the_cli(arg, message, tmp_path, capsys):
    from lightning_vae.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(CONFIGS / DIVERGE), f"--trainer.default_root_dir={tmp_path}", arg])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --- stop -----------------------------------------------------------------------------


def test_stop_ends_at_the_divergence_step(tmp_path):
    run_dir, guard, _, trainer, lines = run(tmp_path, DIVERGE, "--divergence_guard.policy=stop")
    assert guard.diverged["step"] == FIRST_NAN and guard.diverged["policy"] == "stop"
    assert trainer.global_step == FIRST_NAN + 1  # the non-finite step ran (as a no-op), no more
    ckpt = torch.load(run_dir / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert ckpt["global_step"] == FIRST_NAN + 1 and finite(ckpt["state_dict"])
    text = diagnosis(lines)
    assert f"Training diverged at step {FIRST_NAN}" in text
    assert "Divergence policy 'stop': the step was skipped and training stopped cleanly" in text
    s = read_scalars(run_dir)
    assert s["hp/diverged"][-1][1] == 1.0
    assert "train/skipped_steps" not in s and "train/rollbacks" not in s
    assert (guard.skipped, guard.rollbacks) == (0, 0)


# --- skip -----------------------------------------------------------------------------


def test_skip_drops_non_finite_steps_and_finishes(tmp_path):
    """NaN data at steps 5-7 and 33: each step is skipped (a no-op: the weights before the
    next step are those before it), the run goes on to max_steps on finite weights, and
    K = 1 and K = 32 end on the same weights bit for bit."""
    bad = [5, 6, 7, 33]
    ends = []
    for k in (1, 32):
        run_dir, guard, probe, trainer, lines = run(
            tmp_path, "seed_elbo.yaml", f"--data.steps_per_batch={k}", "--trainer.max_steps=48",
            "--divergence_guard.policy=skip", "--divergence_guard.max_skips=3",
            tamper={"nan_data_at": bad})
        assert trainer.global_step == 48
        assert guard.diverged is None and guard.skipped == len(bad)
        s = read_scalars(run_dir)
        assert s["train/skipped_steps"] == [(step, float(i + 1)) for i, step in enumerate(bad)]
        assert s["hp/diverged"][-1][1] == 0.0
        for step in bad:
            assert same(probe.weights[step + 1], probe.weights[step]), step
            assert same(probe.opt_state[step + 1], probe.opt_state[step]), step
        assert not same(probe.weights[9], probe.weights[8])  # finite steps do update
        assert finite(final_weights(trainer))
        assert math.isfinite(s["train/loss"][-1][1])
        assert not any(ln.startswith("Training diverged") for ln in lines)
        assert any("policy 'skip'" in ln and "4 non-finite steps skipped" in ln for ln in lines)
        ends.append(final_weights(trainer))
    assert same(*ends)


@pytest.mark.parametrize("k", [1, 32])
def test_skip_gives_up_after_max_skips_in_a_row(tmp_path, k):
    """The seed's divergence does not pass: every step from 15 on is non-finite, so after
    5 skips the 6th stops the run with the diagnosis."""
    run_dir, guard, _, trainer, lines = run(
        tmp_path, DIVERGE, f"--data.steps_per_batch={k}", "--divergence_guard.policy=skip",
        "--divergence_guard.max_skips=5")
    stop = FIRST_NAN + 5
    assert guard.skipped == 5 and guard.diverged["step"] == stop and trainer.global_step == stop + 1
    text = diagnosis(lines)
    assert f"Training diverged at step {stop}" in text
    assert (f"Divergence policy 'skip' gave up: 5 non-finite steps in a row, from step {FIRST_NAN}, "
            f"had been skipped (max_skips 5; 5 in all)") in text
    s = read_scalars(run_dir)
    assert s["hp/diverged"][-1][1] == 1.0
    assert s["train/skipped_steps"][-1] == (stop - 1, 5.0)
    ckpt = torch.load(run_dir / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert finite(ckpt["state_dict"])


def test_skip_stops_at_once_on_non_finite_weights(tmp_path):
    run_dir, guard, _, trainer, lines = run(
        tmp_path, "seed_elbo.yaml", "--trainer.max_steps=56", "--divergence_guard.policy=skip",
        tamper={"inf_weight_at": 40})
    assert guard.skipped == 0 and guard.diverged["step"] == 40 and trainer.global_step == 41
    text = diagnosis(lines)
    assert "Divergence policy 'skip' gave up: the weights themselves were non-finite" in text
    # The weights at the stop are not finite: the last usable ones, the snapshot of step
    # 0 (taken every 50 steps), are saved instead, and the diagnosis says so.
    assert "the last usable weights, of step 0 (at the stop parameter " in text
    ckpt = torch.load(run_dir / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert finite(ckpt["state_dict"])
    assert read_scalars(run_dir)["hp/diverged"][-1][1] == 1.0


# --- rollback ---------------------------------------------------------------------------


def cosine(step: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def test_rollback_restores_the_snapshot_and_lowers_the_cosine_lr(tmp_path):
    """The seed's divergence under a cosine schedule (over 64 steps: NaN from step 16),
    snapshots every 10 steps: at the first non-finite step the weights and optimizer state of
    step 10 come back bit for bit, the learning rate is 0.1 x the schedule's from then on,
    and with that rate the SGD run no longer diverges. K = 1 and K = 32 give the same run."""
    total, lr0 = 64, 0.03
    ends = []
    for k in (1, 32):
        run_dir, guard, probe, trainer, lines = run(
            tmp_path, DIVERGE, f"--data.steps_per_batch={k}", f"--trainer.max_steps={total}",
            "--model.lr_schedule=cosine", "--divergence_guard.policy=rollback",
            "--divergence_guard.lr_factor=0.1", "--divergence_guard.snapshot_every_n_steps=10",
            tamper={})
        s = read_scalars(run_dir)
        assert len(s["train/rollbacks"]) == 1
        at = s["train/rollbacks"][0][0]  # the non-finite step
        assert 10 < at < 20
        assert s["train/rollbacks"] == [(at, 1.0)] and s["train/lr_scale"] == [(at, pytest.approx(0.1))]
        assert guard.rollbacks == 1 and guard.lr_scale == pytest.approx(0.1) and guard.diverged is None
        assert trainer.global_step == total  # the rolled-back steps still count
        assert same(probe.weights[at + 1], probe.weights[10])
        assert same(probe.opt_state[at + 1], probe.opt_state[10])
        assert not same(probe.weights[at], probe.weights[10])
        for step, lr in probe.lr.items():
            scale = 0.1 if step > at else 1.0
            assert lr == pytest.approx(lr0 * scale * cosine(step, total), rel=1e-6, abs=1e-12), step
        assert s["hp/diverged"][-1][1] == 0.0
        assert math.isfinite(s["train/loss"][-1][1]) and finite(final_weights(trainer))
        warned = [ln for ln in lines if "policy 'rollback'" in ln and "rolled back" in ln]
        assert len(warned) == 1 and f"at step {at};" in warned[0] and "of step 10," in warned[0]
        assert f"now {lr0 * 0.1 * cosine(at, total):.4g}" in warned[0]  # this step's lr, lowered
        ends.append(final_weights(trainer))
    assert same(*ends)


def test_rollback_recovers_from_non_finite_weights_with_adam(tmp_path):
    """An inf weight at step 40 (Adam, cosine): rolled back to the snapshot of step 30,
    Adam's moments and step counts included, and the run finishes finite."""
    run_dir, guard, probe, trainer, _ = run(
        tmp_path, "seed_elbo.yaml", "--trainer.max_steps=56", "--divergence_guard.policy=rollback",
        "--divergence_guard.snapshot_every_n_steps=10", tamper={"inf_weight_at": 40})
    assert not finite(probe.weights[40])
    assert same(probe.weights[41], probe.weights[30])
    assert same(probe.opt_state[41], probe.opt_state[30])
    assert float(probe.opt_state[41][0]["step"]) == 30
    assert guard.rollbacks == 1 and guard.diverged is None and trainer.global_step == 56
    assert finite(final_weights(trainer))
    assert read_scalars(run_dir)["hp/diverged"][-1][1] == 0.0


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    """Without a lower rate (lr_factor 1) the run diverges again after the rollback; the
    next non-finite step is one too many."""
    run_dir, guard, _, trainer, lines = run(
        tmp_path, DIVERGE, "--divergence_guard.policy=rollback", "--divergence_guard.lr_factor=1",
        "--divergence_guard.max_rollbacks=1")
    assert guard.rollbacks == 1 and guard.diverged is not None
    stop = guard.diverged["step"]
    assert FIRST_NAN < stop < 60 and trainer.global_step == stop + 1
    text = diagnosis(lines)
    assert f"Training diverged at step {stop}" in text
    assert ("Divergence policy 'rollback' gave up: it had rolled back 1 time already "
            "(max_rollbacks 1; learning rate x1 of the configured one)") in text
    s = read_scalars(run_dir)
    assert s["hp/diverged"][-1][1] == 1.0 and s["train/rollbacks"] == [(FIRST_NAN, 1.0)]
    ckpt = torch.load(run_dir / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert finite(ckpt["state_dict"])


# --- the backstop -----------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 32])
def test_a_non_finite_loss_with_a_finite_gradient_stops_every_policy(tmp_path, k):
    """Its step has been taken (nothing to skip or roll back): the run stops at the end of
    that Lightning step with the diagnosis, on finite weights."""
    objective = json.dumps({"class_path": f"{__name__}.InfLossAt", "init_args": {"at": 5}})
    run_dir, guard, _, trainer, lines = run(
        tmp_path, "seed_elbo.yaml", f"--data.steps_per_batch={k}", "--trainer.max_steps=40",
        f"--model.objective={objective}", "--divergence_guard.policy=skip")
    assert guard.skipped == 0 and guard.diverged["step"] == 5
    assert trainer.global_step == (6 if k == 1 else 20)  # the end of that Lightning step
    assert "the loss was non-finite though its gradient was finite" in diagnosis(lines)
    assert read_scalars(run_dir)["hp/diverged"][-1][1] == 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert finite(ckpt["state_dict"])
