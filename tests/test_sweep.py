"""The runner: configs x grid x seeds, units as ensembles or processes with the same results,
rerunnable commands for schedulers (skip, resume after a kill), submitit's local executor."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import CONFIGS, ROOT
from lightning_vae.runs import read_scalars
from lightning_vae.sweep import _digest, gpu_slots, parse_grid, parse_seeds, plan, point_name

TINY = ["--trainer.max_epochs=2", "--data.n_train=1024", "--data.n_val=256", "--data.n_test=256",
        "--data.batch_size=128", "--sample_quality.n_samples=200", "--sample_figure.n_points=100",
        "--eval_every_n_steps=0"]
FINALS = ("train/loss", "val/loss", "val/log_px", "quality/mmd", "quality/dist_mean",
          "decoder/min_likelihood_std_ratio")


def _sweep(root, *args: str, env: dict | None = None, config: str = "seed_spread.yaml") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_vae", "sweep", "--config", str(CONFIGS / config),
                           "--root", str(root), *args, "--", *TINY],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, **(env or {})})


def _results(path) -> dict[tuple[str, str], dict]:
    with open(path) as f:
        return {(r["configuration"], r["seed"]): r for r in csv.DictReader(f)}


@pytest.mark.slow  # five processes (~30-45 s); tests/test_ensemble.py checks the members' weights in-process
def test_a_unit_gives_the_same_results_as_an_ensemble_and_as_processes(tmp_path):
    args = ["--grid", "model.objective.init_args.noise_std=0.2", "--seeds", "0-1", "--name", "s"]
    ens = _sweep(tmp_path / "ens", *args)
    assert ens.returncode == 0, ens.stderr[-2000:]
    assert "2 runs (1 units x 2 seeds; one ensemble per unit), 0 already finished, 2 to run" in ens.stdout
    procs = _sweep(tmp_path / "procs", *args, "--seeds_as", "processes")
    assert procs.returncode == 0, procs.stderr[-2000:]
    assert "one process per seed" in procs.stdout
    a = _results(tmp_path / "ens" / "sweeps" / "s" / "results.csv")
    b = _results(tmp_path / "procs" / "sweeps" / "s" / "results.csv")
    assert set(a) == set(b) == {("noise_std=0.2", s) for s in ("0", "1")}
    for key in a:
        assert a[key]["status"] == b[key]["status"] == "finished"
        assert a[key]["model.objective.init_args.noise_std"] == key[0].split("=")[1]
        for tag in FINALS:  # float rounding of batched matrix products only
            assert float(a[key][tag]) == pytest.approx(float(b[key][tag]), rel=1e-3, abs=1e-4), (key, tag)
    # The same run directories either way, and the sweep's table says the same.
    for p in ("noise_std=0.2",):
        for s in (0, 1):
            for root in ("ens", "procs"):
                run = tmp_path / root / "sweeps" / "s" / p / f"seed_{s}"
                assert f"seed_everything: {s}" in (run / "config.yaml").read_text()
    rows = [ln for ln in ens.stdout.splitlines() if ln.startswith("| noise_std=0.2 |")]
    assert rows and rows[0].split(" | ")[1] == "2/2"
    head = next(ln for ln in ens.stdout.splitlines() if ln.startswith("| grid point |")).split(" | ")
    assert "both modes" in head  # the seed data has modes: each run's verdict, counted


@pytest.mark.slow  # ~25-30 s: the default suite must stay under 5 minutes on 2 cores
def test_dry_run_commands_rerun_safely_and_resume_a_killed_unit(tmp_path):
    """Each printed command is the runner restricted to one unit: killed mid-run, the same
    command resumes it from its checkpoint; run again, it is a no-op."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = _sweep(tmp_path, "--seeds", "0-1", "--name", "d", "--dry_run",
                 "--trainer.callbacks+=killer.KillAtStep", env=env)  # TINY: 2 epochs of 8 steps
    assert out.returncode == 0, out.stderr[-2000:]  # the dry run's key check imports the callback
    (line,) = out.stdout.strip().splitlines()
    assert "--unit base" in line and not (tmp_path / "sweeps").exists()
    cmd = shlex.split(line)
    killed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**env, "LVAE_KILL_AT_STEP": "12"})  # after the checkpoint at step 8
    # Killed outright (no outcome record): cut off, not failed; the task fails, its rerun resumes.
    assert killed.returncode == 1 and killed.stdout.count("INTERRUPTED: killed by SIGKILL") == 2, \
        killed.stdout + killed.stderr[-2000:]
    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-2000:]
    assert resumed.stdout.count("finished (resumed from") == 2, resumed.stdout
    unit = tmp_path / "sweeps" / "d" / "base"
    assert len(list(unit.parent.glob("base.incomplete-*"))) == 1  # the killed attempt, kept
    for s in (0, 1):
        status = json.loads((unit / f"seed_{s}" / "sweep_status.json").read_text())
        assert status["status"] == "finished" and "incomplete" in status["resumed_from"]
        # The resumed run starts at step 8: epoch 1's validation (x = 7) is the killed
        # attempt's, carried over (flushed to disk with its checkpoint).
        assert sorted({step for step, _ in read_scalars(unit / f"seed_{s}")["val/loss"]}) == [7, 15]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert again.returncode == 0 and again.stdout.count("already finished: skipped") == 2, again.stdout
    assert len(list(unit.parent.glob("base.incomplete-*"))) == 1  # nothing moved, nothing rerun


@pytest.mark.slow  # two submitit tasks of 2-seed ensembles (~50 s)
def test_submitit_local_executor_runs_the_units_and_the_report_reads_them(tmp_path):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit): "
                                           "--launcher submitit cannot be tested")
    out = _sweep(tmp_path, "--grid", "model.objective.init_args.noise_std=0.2,0.5", "--seeds", "0-1",
                 "--name", "sub", "--launcher", "submitit", "--submitit", "cluster=local",
                 "--submitit", "timeout_min=10")
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "submitit (local): 2 tasks" in out.stdout and "4 finished, 0 diverged, 0 failed" in out.stdout
    report = subprocess.run([sys.executable, "-m", "lightning_vae", "report", str(tmp_path / "sweeps" / "sub")],
                            capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (tmp_path / "sweeps" / "sub" / "report" / "report.md").read_text()
    assert "4 runs in 2 configurations" in text and "| noise_std=0.2 | 2/2 |" in text


def test_plan_names_units_by_experiment_and_point(tmp_path):
    own = tmp_path / "own_model.yaml"
    own.write_text("model:\n  class_path: mypkg.MyModel\n")
    slots = [[str(CONFIGS / "circle_elbo.yaml"), str(own)], [str(CONFIGS / "trainer" / "cpu.yaml")]]
    units = plan(slots, {"data.batch_size": ["64", "128"]}, [0, 1], ensemble=True)
    assert [u.key for u in units] == ["circle_elbo/batch_size=64", "circle_elbo/batch_size=128",
                                      "own_model/batch_size=64", "own_model/batch_size=128"]
    assert [u.ensemble for u in units] == [True, True, False, False]  # a user's model: processes
    assert all(u.configs[1].endswith("cpu.yaml") for u in units)  # a second --config composes
    assert [u.key for u in plan([[str(CONFIGS / "seed_elbo.yaml")]], {}, [0], True)] == ["base"]
    with pytest.raises(SystemExit, match="distinct file names"):
        plan([[str(CONFIGS / "seed_elbo.yaml"), str(CONFIGS / "seed_elbo.yaml")]], {}, [0], True)


def test_each_local_job_gets_its_own_gpu_round_robin():
    assert gpu_slots(3, ["0", "1"]) == [{"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1"},
                                        {"CUDA_VISIBLE_DEVICES": "0"}]
    assert gpu_slots(2, ["0", "1", "2", "3"]) == [{"CUDA_VISIBLE_DEVICES": "0,2"}, {"CUDA_VISIBLE_DEVICES": "1,3"}]
    assert gpu_slots(2, []) == [{}, {}]  # no GPUs: nothing set


def test_grid_and_seed_parsing():
    assert parse_grid(["a.b=1,2", "c=x"]) == {"a.b": ["1", "2"], "c": ["x"]}
    assert point_name({"model.objective.init_args.noise_std": "0.3", "data.batch_size": "64"}) == \
        "noise_std=0.3,batch_size=64"
    for bad, match in [("novalue", "--grid must look like key=v1,v2"), ("a=", "--grid must look like")]:
        with pytest.raises(SystemExit, match=match):
            parse_grid([bad])
    with pytest.raises(SystemExit, match="given twice"):
        parse_grid(["a=1", "a=2"])
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("1,3,5-6") == [1, 3, 5, 6]
    for bad in ("a-b", "1,1"):
        with pytest.raises(SystemExit, match="--seeds must"):
            parse_seeds(bad)
    with pytest.raises(SystemExit, match="--seeds range '5-2' is empty \\(it descends\\); expected LOW-HIGH"):
        parse_seeds("5-2")


@pytest.mark.parametrize("args,match", [
    (["--config", "missing.yaml"], "--config must be an existing YAML file or a packaged config"),
    (["--config", "seed_elbo", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--config", "seed_elbo", "--name", "a/b"], "--name must be a folder name"),
    (["--config", "seed_elbo", "--unit", "nope"], "--unit must be one of this sweep's units \\(base\\)"),
    (["--config", "seed_elbo", "--launcher", "submitit", "--submitit", "bad"], "--submitit must look like key=value"),
    (["--config", "seed_elbo", "--seeds", "5-2"], "--seeds range '5-2' is empty \\(it descends\\); expected LOW-HIGH"),
    (["--config", "seed_elbo", "--grid", "a=1", "--grid", "a=2"], "--grid key a given twice"),
    (["--config", "seed_elbo", "--jobs", "x"], "argument --jobs: invalid int value: 'x'"),  # argparse's own
])
def test_bad_arguments_are_one_line(args, match, tmp_path, capsys):
    """A usage error: one line on stderr, exit 2 (argparse's convention), nothing written."""
    from lightning_vae.sweep import main

    with pytest.raises(SystemExit) as stop:
        main([*args, "--root", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lightning-vae sweep: error: ") and re.search(match, err[-1]), err
    assert len(err) == 1 or err[0].startswith("usage:"), err  # argparse's own: usage, then the line
    assert not (tmp_path / "sweeps").exists()


def test_a_grid_key_can_belong_to_one_config():
    """The study in one sweep: the ELBO alone, the spread ELBO at three noise levels."""
    slots = [[str(CONFIGS / "seed_elbo.yaml"), str(CONFIGS / "seed_spread.yaml")]]
    units = plan(slots, {"seed_spread:model.objective.init_args.noise_std": ["0.1", "0.3"]}, [0], True)
    assert [u.key for u in units] == ["seed_elbo", "seed_spread/noise_std=0.1", "seed_spread/noise_std=0.3"]
    assert units[1].point == {"model.objective.init_args.noise_std": "0.1"} and units[0].point == {}
    with pytest.raises(SystemExit, match="must name one of the configs \\(seed_elbo, seed_spread\\), got 'nope'"):
        plan(slots, {"nope:model.hidden": ["16"]}, [0], True)


@pytest.mark.slow  # ~16 s: the default suite must stay under 5 minutes on 2 cores
def test_a_failed_unit_is_recorded_with_its_error_not_fatal(tmp_path):
    out = _sweep(tmp_path, "--grid", "model.objective.init_args.noise_std=-1", "--seeds", "0-1", "--name", "f")
    assert out.returncode == 1, out.stderr[-2000:]  # the sweep ran to its end; not every run finished
    assert "0 finished, 0 diverged, 2 failed, 0 interrupted" in out.stdout  # one ensemble of two: both its runs
    runs = json.loads((tmp_path / "sweeps" / "f" / "sweep.json").read_text())["runs"]
    assert set(runs) == {"noise_std=-1/seed_0", "noise_std=-1/seed_1"}
    assert all(r["status"] == "failed" for r in runs.values())
    stderr = (tmp_path / "sweeps" / "f" / "noise_std=-1.stderr.txt").read_text()
    assert "noise_std must be >= 0, got -1" in stderr  # the fit's own one-line error, kept
    assert "noise_std must be >= 0, got -1" in out.stdout  # and in the summary line
    # A rerun redoes them; the records of runs that never began are dropped, not moved aside.
    from lightning_vae.sweep import _drop_failure_records

    unit = tmp_path / "sweeps" / "f" / "noise_std=-1"
    assert sorted(p.relative_to(unit).as_posix() for p in unit.rglob("*.json")) == [
        "seed_0/sweep_status.json", "seed_1/sweep_status.json"]
    _drop_failure_records(unit)
    assert not unit.exists()
    kept = tmp_path / "kept"
    (kept / "seed_0").mkdir(parents=True)
    (kept / "seed_0" / "sweep_status.json").write_text("{}")
    (kept / "seed_0" / "events.out.tfevents.1").write_text("x")  # a run that began: left for move-aside
    _drop_failure_records(kept)
    assert (kept / "seed_0" / "events.out.tfevents.1").exists()


def test_a_sweep_resumes_only_with_its_own_settings(tmp_path, capsys):
    """A rerun with other fit arguments (or edited configs) would skip finished runs of the
    old settings as if they were new: refused in one line, exit 2, nothing touched."""
    from lightning_vae.sweep import main

    sweep_dir = tmp_path / "sweeps" / "s"
    sweep_dir.mkdir(parents=True)
    config = str(CONFIGS / "seed_spread.yaml")
    (sweep_dir / "sweep.json").write_text(json.dumps({
        "config_sha256": [[_digest(config)]],
        "extra": ["--trainer.max_epochs=2"], "runs": {}}))
    with pytest.raises(SystemExit) as stop:
        main(["--config", config, "--name", "s", "--root", str(tmp_path), "--", "--trainer.max_epochs=3"])
    assert stop.value.code == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "this sweep ran with other settings (the extra fit arguments differ" in err
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.json"]
    capsys.readouterr()
    main(["--config", config, "--name", "s", "--root", str(tmp_path), "--dry_run", "--",
          "--trainer.max_epochs=3"])  # a dry run writes and checks nothing
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.endswith("--unit base -- --trainer.max_epochs=3")
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.json"]
