"""Sweeps: grid x seeds through the real CLI, recorded, resumable, failures not fatal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import CONFIGS, ROOT
from lightning_vae.sweep import parse_grid, point_name

TINY = ["--trainer.max_epochs=1", "--data.n_train=1024", "--data.n_val=256", "--data.n_test=256",
        "--data.batch_size=128", "--sample_quality.n_samples=200", "--sample_figure.n_points=100"]


def _sweep(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_vae", "sweep", "--config",
                           str(CONFIGS / "seed_spread.yaml"), "--root", str(root), *args, *TINY],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow  # five fit subprocesses (~45 s): the default suite stays under 5 minutes
def test_grid_runs_are_recorded_and_a_rerun_skips_finished_ones(tmp_path):
    grid = ["--grid", "model.objective.init_args.noise_std=0.3,-1", "--seeds", "0", "--name", "s"]
    first = _sweep(tmp_path, *grid)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((tmp_path / "sweeps" / "s" / "sweep.json").read_text())
    status = {k: r["status"] for k, r in manifest["runs"].items()}
    assert status == {"noise_std=0.3/seed_0": "finished", "noise_std=-1/seed_0": "failed"}
    bad = manifest["runs"]["noise_std=-1/seed_0"]
    assert bad["rc"] == 2 and "noise_std must be >= 0, got -1" in bad["error"]
    for point in ("noise_std=0.3",):  # a normal run directory
        run = tmp_path / "sweeps" / "s" / point / "seed_0"
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
        assert f"noise_std: {point.split('=')[1]}" in (run / "config.yaml").read_text()
    assert "noise_std=0.3/seed_0: finished in" in first.stdout  # a summary line per run
    assert "| noise_std=0.3 | 1/1 |" in first.stdout and "1 finished, 0 diverged, 1 failed" in first.stdout

    # A run cut off mid-way (a directory without a status) is redone, its files moved aside.
    cut = tmp_path / "sweeps" / "s" / "noise_std=0.3" / "seed_1"
    cut.mkdir(parents=True)
    (cut / "events.out.tfevents.partial").write_text("x")
    again = _sweep(tmp_path, *grid[:2], "--seeds", "0-1", "--name", "s")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 runs (2 grid points x 2 seeds), 1 already finished, 3 to run" in again.stdout
    aside = list(cut.parent.glob("seed_1.incomplete-*"))
    assert len(aside) == 1 and (aside[0] / "events.out.tfevents.partial").read_text() == "x"
    runs = json.loads((tmp_path / "sweeps" / "s" / "sweep.json").read_text())["runs"]
    assert runs["noise_std=0.3/seed_1"]["status"] == "finished" and len(runs) == 4


def test_dry_run_prints_one_fit_command_per_run(tmp_path):
    out = _sweep(tmp_path, "--grid", "model.hidden=16,32", "--grid", "data.batch_size=64,128",
                 "--seeds", "0-2", "--dry_run")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 12 and all(" -m lightning_vae fit --config " in ln for ln in lines)
    assert sum("--model.hidden=32 --data.batch_size=64 --seed_everything=2" in ln for ln in lines) == 1
    assert not (tmp_path / "sweeps").exists()


def test_grid_parsing():
    assert parse_grid(["a.b=1,2", "c=x"]) == {"a.b": ["1", "2"], "c": ["x"]}
    assert point_name({"model.objective.init_args.noise_std": "0.3", "data.batch_size": "64"}) == \
        "noise_std=0.3,batch_size=64"
    for bad, match in [("novalue", "--grid must look like key=v1,v2"), ("a=", "--grid must look like")]:
        with pytest.raises(SystemExit, match=match):
            parse_grid([bad])
    with pytest.raises(SystemExit, match="given twice"):
        parse_grid(["a=1", "a=2"])
