"""The lab table: several configs x several seeds through the real CLI, tabulated."""

from __future__ import annotations

import math

import pytest

from conftest import CONFIGS
from lightning_vae.lab import main, table


def test_table_gives_mean_and_std_over_seeds_and_counts_failures():
    runs = [
        {"rc": 0, "wall_s": 10.0, "train/loss": 1.0, "quality/dist_mean": 0.02, "collapsed": False, "diverged": False},
        {"rc": 0, "wall_s": 12.0, "train/loss": 3.0, "quality/dist_mean": 0.04, "collapsed": True, "diverged": False},
        {"rc": 1, "wall_s": 1.0},
    ]
    row = table({"circle": runs}).splitlines()[2].split(" | ")
    assert row[0] == "| circle" and row[1] == "2/3"
    assert row[2] == "2.000 ± 1.414"  # train loss: mean and sample std of 1 and 3
    assert row[5] == "0.030 ± 0.014"  # dist mean
    assert row[3] == "-"  # no seed logged val/log_px
    assert row[-3:] == ["1", "0", "11 ± 1 |"]  # collapsed, diverged, wall


def test_lab_runs_configs_over_seeds(tmp_path, capsys):
    out = tmp_path / "table.md"
    main([str(CONFIGS / "circle_spread.yaml"), "--seeds", "0-1", "--root", str(tmp_path),
          "--out", str(out), "--trainer.max_epochs=1", "--data.n_val=256",
          "--data.n_test=256", "--sample_quality.n_samples=200"])
    text = out.read_text()
    row = text.splitlines()[2].split(" | ")
    assert row[0] == "| circle_spread" and row[1] == "2/2"
    assert "±" in row[2] and math.isfinite(float(row[2].split(" ± ")[0]))
    assert len(list(tmp_path.glob("lab/*/circle_spread/seed_*/events.out.tfevents.*"))) == 2
    with pytest.raises(SystemExit, match="--out must be a new file"):
        main([str(CONFIGS / "circle_spread.yaml"), "--out", str(out)])


@pytest.mark.parametrize("args,match", [
    (["missing.yaml"], "config must be an existing YAML file, got 'missing.yaml'"),
    ([str(CONFIGS / "seed_elbo.yaml"), str(CONFIGS / "seed_elbo.yaml")], "distinct file names"),
    ([str(CONFIGS / "seed_elbo.yaml"), "--jobs", "0"], "--jobs must be >= 1, got 0"),
    ([str(CONFIGS / "seed_elbo.yaml"), "--seeds", "a-b"], "--seeds must look like"),
])
def test_lab_bad_arguments(args, match):
    with pytest.raises(SystemExit, match=match):
        main(args)
