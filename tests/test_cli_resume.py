"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its run directory
alone (saved config + last checkpoint) ends with bit-identical weights, optimizer state and
logged metrics to an uninterrupted run: the data order, the spread noise stream, the
learning-rate schedule and the callbacks' state all continue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import CONFIGS, ROOT, run_dirs
from lightning_vae.runs import read_scalars

ARGS = ["--trainer.max_epochs=6", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--data.n_train=5000", "--data.n_val=500", "--data.n_test=500", "--data.batch_size=128",
        "--sample_quality.n_samples=500", "--sample_figure.n_points=200",
        "--trainer.callbacks+=killer.KillAtStep", "--eval_every_n_steps=0"]  # a checkpoint every epoch
STEPS_PER_EPOCH = 5000 // 128  # 39
KILL_AT = 2 * STEPS_PER_EPOCH + 20  # mid-way through the third of six epochs


def _run(args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    env.pop("LVAE_KILL_AT_STEP", None)
    if kill_at is not None:
        env["LVAE_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run([sys.executable, "-m", "lightning_vae", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("config,k", [
    ("seed_spread.yaml", 32),
    pytest.param("seed_spread.yaml", 1, marks=pytest.mark.slow),  # groups of one step
    pytest.param("circle_gauss_spread.yaml", 32, marks=pytest.mark.slow),  # Gaussian latent: its draws too
])
def test_killed_run_resumes_bit_exactly(config, k, tmp_path):
    common = ["--config", str(CONFIGS / config), *ARGS, f"--data.steps_per_batch={k}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    whole = _run(["fit", *common, "--trainer.logger.init_args.name=whole"])
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _run(["fit", *common, "--trainer.logger.init_args.name=killed"], kill_at=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    (run,) = run_dirs(tmp_path, "killed")
    last = run / "checkpoints" / "last.ckpt"
    at_kill = torch.load(last, weights_only=True)
    assert at_kill["global_step"] == 2 * STEPS_PER_EPOCH  # the last epoch end before the kill

    # The README's one command: the run directory's own config and checkpoint.
    resumed = _run(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert at_kill["global_step"] < KILL_AT  # it really redid steps the killed run had taken
    (whole_dir,) = run_dirs(tmp_path, "whole")
    new = [d for d in run_dirs(tmp_path, "killed") if d != run]
    assert len(new) == 1 and torch.load(last, weights_only=True)["global_step"] == at_kill["global_step"]
    a = torch.load(whole_dir / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(new[0] / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6 * STEPS_PER_EPOCH
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[name], sb[name]) for name in sa)
    assert torch.equal(a["noise_generator_state"], b["noise_generator_state"])
    # What the resumed run logged from its start on equals the uninterrupted run's values.
    sa, sb = read_scalars(whole_dir), read_scalars(new[0])
    for tag in ("train/loss", "val/loss", "val/log_px", "quality/mmd"):
        resumed_part = dict(sb[tag])
        assert resumed_part and all(v == dict(sa[tag])[s] for s, v in resumed_part.items()), tag
