"""The one training loop (``lightning_vae/steps.py``): K optimizer steps per Lightning step
is the same run as K = 1, and Lightning's conventions behave at K = 32 as at K = 1, each
through the real CLI (TINY: 20 optimizer steps an epoch)."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from conftest import CONFIGS, TINY, fit, run_dirs
from lightning_vae.cli import build_cli
from lightning_vae.model import VAE
from lightning_vae.runs import read_scalars
from lightning_vae.steps import align_steps_per_batch, trainer_overrides

NO_VAL = ["--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0"]


def _weights(run) -> dict[str, torch.Tensor]:
    return VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt").net.state_dict()


def _assert_same_weights(a, b, atol: float = 1e-6) -> None:
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=atol), (k, (a[k] - b[k]).abs().max())


def _callback(class_path: str, **init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


# --- pure functions ----------------------------------------------------------------------


def test_group_size_divides_every_cadence():
    assert align_steps_per_batch(32, []) == 32
    assert align_steps_per_batch(32, [50]) == 2
    assert align_steps_per_batch(32, [64, 96]) == 32
    assert align_steps_per_batch(32, [48, 0]) == 16
    assert align_steps_per_batch(1, [7]) == 1


def test_trainer_overrides_move_clipping_and_accumulation_to_the_loop():
    loop, trainer = trainer_overrides({"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value",
                                       "accumulate_grad_batches": 4, "val_check_interval": 40,
                                       "limit_train_batches": 1.0}, k=8)
    assert loop == {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value", "accumulate_grad_batches": 4}
    assert trainer == {"gradient_clip_val": None, "gradient_clip_algorithm": None,
                       "accumulate_grad_batches": 1, "val_check_interval": 5}  # 40 steps = 5 groups
    loop, _ = trainer_overrides({}, k=8)
    assert loop == {"gradient_clip_val": None, "gradient_clip_algorithm": "norm", "accumulate_grad_batches": 1}


@pytest.mark.parametrize("bad,message", [
    ({"gradient_clip_val": -1.0}, "gradient_clip_val must be a number >= 0 or null, got -1.0"),
    ({"gradient_clip_algorithm": "l2"}, "gradient_clip_algorithm must be one of norm, value, got 'l2'"),
    ({"accumulate_grad_batches": 0}, "accumulate_grad_batches must be an integer >= 1, got 0"),
])
def test_bad_loop_settings_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        VAE().configure_loop(**bad)


# --- the same run at any K ---------------------------------------------------------------


@pytest.mark.parametrize("config", ["seed_elbo.yaml", pytest.param("seed_spread.yaml", marks=pytest.mark.slow)])
def test_steps_per_batch_gives_the_same_run(tmp_path, config):
    """Same batches, same order, same weights, the same logged steps and values, the same
    collapse step."""
    one = fit(config, tmp_path, "--data.steps_per_batch=1")  # TINY: 8 epochs of 20 steps
    many = fit(config, tmp_path, "--data.steps_per_batch=6")
    _assert_same_weights(_weights(one), _weights(many))
    sa, sb = read_scalars(one), read_scalars(many)
    for tag in ("train/loss", "train/grad_norm", "train/lr", "val/log_px", "decoder/std_y_z0",
                "decoder/loc_x_z1", "decoder/min_likelihood_std_ratio"):
        assert [s for s, _ in sa[tag]] == [s for s, _ in sb[tag]], tag  # same x-axis
        assert all(math.isclose(u, v, rel_tol=1e-4, abs_tol=1e-6)
                   for (_, u), (_, v) in zip(sa[tag], sb[tag])), tag
    if config == "seed_elbo.yaml":  # exact at any K: checked before every optimizer step
        assert sa["decoder/collapse_step"][-1][1] == sb["decoder/collapse_step"][-1][1]
    else:
        assert "decoder/collapse_step" not in sa and "decoder/collapse_step" not in sb


def test_steps_per_batch_stops_at_max_steps(tmp_path):
    """A group does not run past trainer.max_steps (K = 16, max_steps 50)."""
    run = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=16", "--trainer.max_steps=50")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 50


def test_divergence_is_the_same_at_any_steps_per_batch(tmp_path):
    """The guard ends a group at the first non-finite step: the same step and the same
    last-finite weights as K = 1."""
    ckpts = []
    for k in (1, 16):
        run = fit("seed_elbo_diverge.yaml", tmp_path, f"--data.steps_per_batch={k}")
        assert read_scalars(run)["hp/diverged"][-1][1] == 1.0
        ckpts.append(torch.load(run / "checkpoints" / "last-finite.ckpt", weights_only=False))
    one, many = ckpts
    assert one["global_step"] == many["global_step"] < 50
    for key, v in one["state_dict"].items():
        assert torch.equal(v, many["state_dict"][key]), key


class _HookCounter(pl.Callback):
    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {"before_backward": [], "after_backward": [], "before_step": []}

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.seen["before_backward"].append(trainer.global_step)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.seen["after_backward"].append(trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        assert type(optimizer).__name__ == "Adam"
        self.seen["before_step"].append(trainer.global_step)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_every_step_runs_the_backward_and_optimizer_step_hooks(tmp_path, precision):
    """At K = 32 a callback's on_before_backward, on_after_backward and
    on_before_optimizer_step run once per optimizer step, with Lightning's step count."""
    cli = build_cli(["--config", str(CONFIGS / "seed_spread.yaml"), *TINY, *NO_VAL,
                     "--trainer.max_epochs=2", "--data.steps_per_batch=32",
                     f"--trainer.precision={precision}",
                     f"--trainer.logger.init_args.save_dir={tmp_path}",
                     f"--trainer.default_root_dir={tmp_path}"], run=False)
    counter = _HookCounter()
    cli.trainer.callbacks.append(counter)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 2 * (2560 // 128)
    for hook, steps in counter.seen.items():
        assert steps == list(range(cli.trainer.global_step)), hook
    grad_norms = read_scalars(run_dirs(tmp_path, "seed_spread")[-1])["train/grad_norm"]
    assert grad_norms and all(math.isfinite(v) and v > 0 for _, v in grad_norms)


# --- Lightning's conventions at K = 32 as at K = 1 -----------------------------------------


@pytest.mark.parametrize("algorithm,value", [("norm", 0.5), pytest.param("value", 0.05, marks=pytest.mark.slow)])
def test_trainer_gradient_clipping(tmp_path, algorithm, value):
    clip = [f"--trainer.gradient_clip_val={value}", f"--trainer.gradient_clip_algorithm={algorithm}",
            "--trainer.max_epochs=2", *NO_VAL]
    one = fit("seed_elbo.yaml", tmp_path, "--data.steps_per_batch=1", *clip)
    many = fit("seed_elbo.yaml", tmp_path, "--data.steps_per_batch=32", *clip)
    free = fit("seed_elbo.yaml", tmp_path, "--data.steps_per_batch=32", "--trainer.max_epochs=2", *NO_VAL)
    _assert_same_weights(_weights(one), _weights(many))
    a, c = _weights(many), _weights(free)
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-3  # clipping acted
    if algorithm == "norm":  # the guard's gradient norm is read after clipping
        assert max(v for _, v in read_scalars(many)["train/grad_norm"]) <= value * (1 + 1e-5)
    saved = (many / "config.yaml").read_text()
    assert f"gradient_clip_val: {value}" in saved  # the config says what the run did


def test_trainer_accumulate_grad_batches(tmp_path):
    acc = ["--trainer.accumulate_grad_batches=3", "--trainer.max_epochs=2", *NO_VAL]
    one = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=1", *acc)
    many = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=32", *acc)
    _assert_same_weights(_weights(one), _weights(many))
    # 20 batches an epoch in steps of 3, the last of 2 (Lightning's rule): 7 steps an epoch.
    for run in (one, many):
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 14
    assert [s for s, _ in read_scalars(one)["train/loss"]] == [s for s, _ in read_scalars(many)["train/loss"]]


def test_checkpoint_every_n_train_steps(tmp_path):
    """Checkpoints at the same steps (K is lowered to divide the cadence: 32 -> 2)."""
    every = ["--checkpoint.every_n_train_steps=10", "--checkpoint.save_top_k=-1",
             "--checkpoint.every_n_epochs=null", "--trainer.max_epochs=2", *NO_VAL]
    names = []
    for k in (1, 32):
        run = fit("seed_spread.yaml", tmp_path, f"--data.steps_per_batch={k}", *every)
        names.append(sorted(p.name for p in (run / "checkpoints").glob("epoch=*.ckpt")))
    assert names[0] == names[1] and len(names[0]) == 4, names  # steps 10, 20, 30, 40


def test_val_check_interval_in_steps(tmp_path):
    """An integer val_check_interval counts optimizer steps at any K."""
    val = ["--trainer.val_check_interval=10", "--trainer.max_epochs=2"]
    one = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=1", *val)
    many = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=32", *val)
    a, b = read_scalars(one)["val/loss"], read_scalars(many)["val/loss"]
    assert [s for s, _ in a] == [s for s, _ in b] == [9, 19, 29, 39]
    assert all(math.isclose(u, v, rel_tol=1e-5) for (_, u), (_, v) in zip(a, b))


def test_learning_rate_monitor(tmp_path):
    lrm = [_callback("pytorch_lightning.callbacks.LearningRateMonitor", logging_interval="step"),
           "--trainer.max_epochs=2", "--trainer.log_every_n_steps=5", *NO_VAL]
    logged = [read_scalars(fit("seed_spread.yaml", tmp_path, f"--data.steps_per_batch={k}", *lrm))["lr-Adam"]
              for k in (1, 32)]
    assert logged[0] == logged[1] and len(logged[0]) == 8, logged  # steps 4, 9, ..., 39


def test_early_stopping_on_a_training_metric(tmp_path):
    """EarlyStopping(monitor="train/loss") reads the last step's loss from callback_metrics
    at the end of each epoch: it stops at the same epoch at any K."""
    stop = [_callback("pytorch_lightning.callbacks.EarlyStopping", monitor="train/loss", mode="max",
                      patience=1), "--trainer.max_epochs=8", *NO_VAL]
    steps = []
    for k in (1, 32):
        run = fit("seed_spread.yaml", tmp_path, f"--data.steps_per_batch={k}", *stop)
        steps.append(torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"])
    assert steps[0] == steps[1] < 8 * 20, steps  # the loss falls: 'max' mode stops early


class EMA(WeightAveraging):
    """Test-only: Lightning's WeightAveraging with an exponential moving average."""

    def __init__(self, decay: float = 0.9) -> None:
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))


def test_weight_averaging_updates_every_step(tmp_path):
    """Lightning's WeightAveraging (EMA) averages the weights of every optimizer step."""
    ema = [_callback(f"{__name__}.EMA", decay=0.9), "--trainer.max_epochs=2", *NO_VAL]
    one = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=1", *ema)
    many = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=32", *ema)
    _assert_same_weights(_weights(one), _weights(many), atol=1e-6)
    plain = fit("seed_spread.yaml", tmp_path, "--data.steps_per_batch=32", "--trainer.max_epochs=2", *NO_VAL)
    a, c = _weights(many), _weights(plain)
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-4  # the average is not the last step


def test_planned_steps_counts_a_runs_optimizer_steps():
    """What the cosine schedule spans, the progress bar's total and the finished-run check."""
    import math

    from lightning_vae.steps import planned_steps

    assert planned_steps(39, 1, 60, None) == 2340
    assert planned_steps(39, 4, 2, -1) == 20  # 10 steps an epoch: 9 of 4 batches and a short one
    assert planned_steps(39, 1, -1, 100) == 100 and planned_steps(39, 1, 60, 100) == 100
    assert planned_steps(39, 1, -1, -1) == math.inf and planned_steps(39, 1, None, None) == math.inf
