"""DDP through Lightning itself: 2 CPU processes (gloo) train the run one process trains
with the same global batch: the same epoch metrics and weights, within float tolerance."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import CONFIGS, ROOT, run_dirs
from lightning_vae.runs import read_scalars

# Float tolerance: DDP averages the two ranks' gradients (an all-reduce), one process the
# mean over the whole batch; the sums differ in rounding (~1e-7), which 78 Adam steps
# carry into the weights.
RTOL, ATOL = 1e-4, 1e-5

COMMON = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--data.n_train=5000", "--data.n_val=1000",
          "--data.n_test=500", "--sample_quality.every_n_epochs=1", "--sample_quality.n_samples=1000",
          "--sample_figure.every_n_epochs=2", "--sample_figure.n_points=200", "--eval_every_n_steps=0"]


def _fit(config: str, root, name: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lightning_vae", "fit", "--config", str(CONFIGS / config), *COMMON,
           f"--trainer.logger.init_args.save_dir={root}", f"--trainer.logger.init_args.name={name}",
           f"--trainer.default_root_dir={root}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("config,k,objective", [
    # ~20-30 s each, all in the slow suite (with the image model's, tests/test_images_cli.py).
    pytest.param("seed_spread.yaml", 32, "my_objectives.BetaELBO", marks=pytest.mark.slow),  # a user's own
    pytest.param("seed_elbo.yaml", 32, None, marks=pytest.mark.slow),
    pytest.param("seed_spread.yaml", 32, None, marks=pytest.mark.slow),  # ~20 s each
    pytest.param("seed_spread.yaml", 1, None, marks=pytest.mark.slow),
    # The mixture weights' M-step (its statistic all-reduced) and the hyperspherical latent.
    pytest.param("circle_spread.yaml", 32, None, marks=pytest.mark.slow),
    pytest.param("circle_hyper_spread.yaml", 32, None, marks=pytest.mark.slow),
    # The learned spread: its gradient averaged with the model's, its mixture term over the
    # all-gathered global batch, its own optimizer stepped on every rank.
    pytest.param("seed_learned_spread.yaml", 32, None, marks=pytest.mark.slow),
])
def test_two_cpu_processes_train_the_one_process_run(config, k, objective, tmp_path, monkeypatch):
    """K = 32 optimizer steps per Lightning step (the default; each step's gradients are
    averaged over the ranks) and K = 1; and a user's own objective class (the example of
    the objectives module docstring), unchanged."""
    extra = []
    if objective is not None:
        from test_objectives_contract import _docstring_example

        (tmp_path / "my_objectives.py").write_text(_docstring_example() + "\n")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
        extra = [f"--model.objective={objective}"]
    one = _fit(config, tmp_path, "one", "--data.batch_size=128", f"--data.steps_per_batch={k}", *extra)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = _fit(config, tmp_path, "ddp", "--data.batch_size=64", f"--data.steps_per_batch={k}", "--config",
               str(CONFIGS / "trainer" / "ddp_cpu2.yaml"), *extra)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # One run directory, written once (rank 0): config, checkpoint, one event file.
    (run,) = run_dirs(tmp_path, "ddp")
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    (ref,) = run_dirs(tmp_path, "one")
    a, b = read_scalars(ref), read_scalars(run)
    epoch_tags = [t for t in a if t.startswith(("val/", "quality/", "encoder/")) or t == "decoder/min_std_ratio_val"]
    assert {"val/loss", "val/log_px", "quality/mmd", "quality/energy"} <= set(epoch_tags)
    worst = 0.0
    for tag in epoch_tags:
        steps_a, values_a = zip(*a[tag])
        steps_b, values_b = zip(*b[tag])
        assert steps_a == steps_b, tag  # the same optimizer steps: 2 x 39
        for va, vb in zip(values_a, values_b):
            assert math.isclose(va, vb, rel_tol=RTOL, abs_tol=ATOL), (tag, va, vb)
            worst = max(worst, abs(va - vb))
    # The training scalars are those of the global batch (the mean over the ranks), as one
    # process at that batch logs them, to 1e-5: not rank 0's shard (8-26% off). The gradient
    # norm (of the all-reduced gradient) is held to 1e-2: it is a small difference of large
    # per-point gradients, so the ~1e-7 drift of the weights shows in it 100-10,000-fold
    # (equal to 1e-7 in the first epoch; in the second up to 2e-4 with spread, 2.2e-3 with
    # the collapsing ELBO).
    train_tags = [t for t in a if t.startswith("train/") and t != "train/lr"]
    assert {"train/loss", "train/grad_norm"} <= set(train_tags), sorted(a)
    train_worst = 0.0
    for tag in train_tags:
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        # The collapsing ELBO (slow case) drifts further: measured 1.2e-5 on train/loss.
        tol = 1e-2 if tag == "train/grad_norm" else 1e-4 if "elbo" in config else 1e-5
        for (_, va), (_, vb) in zip(a[tag], b[tag]):
            assert math.isclose(va, vb, rel_tol=tol, abs_tol=tol), (tag, va, vb)
            if tag != "train/grad_norm":
                train_worst = max(train_worst, abs(va - vb) / max(1.0, abs(va)))
    wa = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)
    wb = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert wa["global_step"] == wb["global_step"] == 2 * (5000 // 128)
    for key, value in wa["state_dict"].items():
        torch.testing.assert_close(wb["state_dict"][key], value, rtol=RTOL, atol=ATOL)
    weights = max(float((wb["state_dict"][k] - v).abs().max()) for k, v in wa["state_dict"].items())
    print(f"{config} K={k}: {len(epoch_tags)} epoch tags, max |ddp - one| {worst:.2e}; {len(train_tags)} "
          f"train tags, max relative difference {train_worst:.2e}; weights {weights:.2e}")
