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
        "--trainer.callbacks+=killer.KillAtStep", "--trainer.callbacks+=killer.SignalAtStep",
        "--eval_every_n_steps=0"]  # a checkpoint every epoch
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
    # The M-step's mixture weights, and the hyperspherical latent (its data-dependent
    # initialisation must not run again on resume).
    pytest.param("circle_spread.yaml", 32, marks=pytest.mark.slow),
    pytest.param("circle_hyper_spread.yaml", 32, marks=pytest.mark.slow),
])
def test_killed_run_resumes_bit_exactly(config, k, tmp_path, tmp_path_factory):
    common = ["--config", str(CONFIGS / config), *ARGS, f"--data.steps_per_batch={k}",
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    whole_dir = _whole_run(config, k, tmp_path_factory)
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


def _equal_checkpoints(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[name], sb[name]) for name in sa)
    assert torch.equal(a["noise_generator_state"], b["noise_generator_state"])


SIGNAL_ARGS = ARGS
_WHOLE: dict = {}


def _whole_run(config: str, k: int, tmp_path_factory):
    """The uninterrupted run of ``config`` at K = ``k`` (made once, shared by the tests)."""
    if (config, k) not in _WHOLE:
        root = tmp_path_factory.mktemp("whole")
        whole = _run(["fit", "--config", str(CONFIGS / config), *ARGS, f"--data.steps_per_batch={k}",
                      f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}",
                      "--trainer.logger.init_args.name=whole"])
        assert whole.returncode == 0, whole.stderr[-3000:]
        (_WHOLE[config, k],) = run_dirs(root, "whole")
    return _WHOLE[config, k]


def _signal_run(args: list[str], at: int, sig: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
           "LVAE_SIGNAL_AT_STEP": str(at), "LVAE_SIGNAL": sig}
    return subprocess.run([sys.executable, "-m", "lightning_vae", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


# ~16 s each: the default suite keeps the killed run above (its resume is the same code).
@pytest.mark.parametrize("sig,code", [pytest.param("SIGTERM", 143, marks=pytest.mark.slow),
                                      pytest.param("SIGINT", 130, marks=pytest.mark.slow)])
def test_signalled_run_saves_its_step_and_resumes_bit_exactly(sig, code, tmp_path, tmp_path_factory):
    """SIGTERM (a scheduler's time limit, ``timeout``) or SIGINT mid-epoch: the run stops
    after the step in progress, saves that step (not the last epoch end) as last.ckpt,
    records the interruption (outcome.json, a scalar, a line), exits 128 + signal; the
    README's resume command then ends bit-identical to an uninterrupted run."""
    from lightning_vae.runs import outcome_of

    common = ["--config", str(CONFIGS / "seed_spread.yaml"), *SIGNAL_ARGS,
              f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}"]
    whole_dir = _whole_run("seed_spread.yaml", 32, tmp_path_factory)
    assert outcome_of(whole_dir)["outcome"] == "finished"

    cut = _signal_run(["fit", *common, "--trainer.logger.init_args.name=cut"], KILL_AT, sig)
    assert cut.returncode == code, (cut.returncode, cut.stderr[-2000:])
    assert "Traceback" not in cut.stderr
    (run,) = run_dirs(tmp_path, "cut")
    record = outcome_of(run)
    # Stopped at the end of the Lightning step (a group of 32 optimizer steps) in progress:
    # mid-way through the third epoch, after the kill step.
    assert record["outcome"] == "interrupted" and record["signal"] == sig
    step = record["global_step"]
    assert KILL_AT <= step < 3 * STEPS_PER_EPOCH and step % STEPS_PER_EPOCH != 0
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and last.resolve().name == f"interrupted-step={step}.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == step
    assert f"run interrupted by {sig} at step {step}" in cut.stderr and "--ckpt_path" in cut.stderr
    assert dict(read_scalars(run)["run/interrupted"]) == {step: 1.0}

    resumed = _run(["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (new,) = [d for d in run_dirs(tmp_path, "cut") if d != run]
    _equal_checkpoints(torch.load(whole_dir / "checkpoints" / "last.ckpt", weights_only=True),
                       torch.load(new / "checkpoints" / "last.ckpt", weights_only=True))
    sa, sb = read_scalars(whole_dir), read_scalars(new)
    for tag in ("train/loss", "val/loss", "quality/mmd"):
        resumed_part = dict(sb[tag])
        assert resumed_part and all(v == dict(sa[tag])[s] for s, v in resumed_part.items()), tag
    assert min(dict(sb["train/loss"])) > step  # it took up from the interrupted step


def _in_process(args: list[str], capsys) -> tuple[int, str]:
    """The CLI's main in this process (no interpreter start-up): exit code and stderr."""
    import io
    import logging

    from lightning_vae.cli import main

    capsys.readouterr()
    log, lines = logging.getLogger("lightning_vae"), io.StringIO()
    handler = logging.StreamHandler(lines)  # the package's handler holds the stderr of its first use
    log.addHandler(handler)
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        log.removeHandler(handler)
    return code, capsys.readouterr().err + lines.getvalue()


def _tree(root) -> dict:
    return {str(p.relative_to(root)): (p.is_symlink() and os.readlink(p)) or (p.is_file() and p.stat().st_size)
            for p in sorted(root.rglob("*"))}


def test_corrupt_and_dangling_checkpoints(tmp_path, capsys):
    """A checkpoint whose tensor bytes were changed is refused (its zip CRC), one line, exit
    2, nothing written; a last.ckpt that dangles falls back to the newest intact checkpoint
    next to it, with a line saying so, and trains on; with no intact one, a one-line error."""
    import shutil

    from conftest import fit

    run = fit("seed_spread.yaml", tmp_path, "--trainer.max_epochs=2", "--data.n_train=512",
              "--data.batch_size=64")
    folder = run / "checkpoints"
    (epoch_file,) = [p for p in folder.glob("epoch=*.ckpt")]
    resume = ["fit", "--config", str(run / "config.yaml"), "--trainer.max_epochs=3"]

    # Corrupt: 64 bytes zeroed inside the archive (a tensor's data); the zip still opens.
    bad = tmp_path / "bad.ckpt"
    data = bytearray(epoch_file.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    bad.write_bytes(bytes(data))
    before = _tree(tmp_path)
    code, err = _in_process([*resume, f"--ckpt_path={bad}"], capsys)
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert code == 2 and "Traceback" not in err and len(lines) == 1
    assert "fails its CRC check" in lines[0] and str(bad) in lines[0] and "ckpt_path" in lines[0]
    assert _tree(tmp_path) == before  # nothing written

    # Dangling last.ckpt (Lightning deleted its target; the kill came before the new link),
    # an intact older checkpoint next to it: the newest intact one is taken, and said so.
    older = folder / "epoch=0-step=8.ckpt"
    shutil.copy2(epoch_file, older)
    os.utime(older, (1, 1))  # older than any other
    (folder / "last.ckpt").unlink()
    os.symlink("epoch=9-step=999.ckpt", folder / "last.ckpt")
    newest = epoch_file.rename(folder / "moved.ckpt")
    code, err = _in_process([*resume, f"--ckpt_path={folder / 'last.ckpt'}"], capsys)
    assert code == 0, err[-2000:]
    assert "which does not exist" in err and f"resuming from the newest intact checkpoint, {newest}" in err
    (new,) = [d for d in run_dirs(tmp_path, "seed_spread") if d != run]
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * (512 // 64)

    # Nothing intact to fall back to: one line, exit 2, nothing written.
    for p in folder.glob("*.ckpt"):
        if not p.is_symlink():
            p.write_bytes(bytes(data))
    before = _tree(tmp_path)
    code, err = _in_process([*resume, f"--ckpt_path={folder / 'last.ckpt'}"], capsys)
    assert code == 2 and "Traceback" not in err and "no other intact checkpoint" in err
    assert _tree(tmp_path) == before


@pytest.mark.slow  # ~30 s
def test_slurm_requeue_path_still_works_next_to_the_sigterm_checkpoint(tmp_path):
    """Under SLURM (its environment variables; a stand-in ``scontrol`` on PATH), Lightning's
    auto-requeue still runs: SIGUSR1 (``sbatch --signal=USR1@90``) writes its
    ``hpc_ckpt_1.ckpt`` and calls ``scontrol requeue <job>``; the SIGTERM that follows saves
    the interrupted step as last.ckpt and exits 143. Both checkpoints resume."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "LVAE_SIGNAL_AT_STEP": "SIGUSR1@40,SIGTERM@90",
           "SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lvae", "SLURM_NODELIST": "localhost",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    root = tmp_path / "logs"
    args = ["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *SIGNAL_ARGS,
            f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}",
            "--trainer.logger.init_args.name=slurm"]
    out = subprocess.run([sys.executable, "-m", "lightning_vae", *args], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 143, out.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    hpc = torch.load(root / "hpc_ckpt_1.ckpt", weights_only=True)
    (run,) = run_dirs(root, "slurm")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert 40 <= hpc["global_step"] < last["global_step"] and last["global_step"] >= 90
    for ckpt in (root / "hpc_ckpt_1.ckpt", run / "checkpoints" / "last.ckpt"):
        resumed = _run(["fit", "--config", str(run / "config.yaml"), f"--ckpt_path={ckpt}", "--trainer.max_epochs=3"])
        assert resumed.returncode == 0, resumed.stderr[-2000:]
