"""The sweep never loses or mislabels a run: statuses from the run's own record (fake fits
that write it and exit as told), one sweep of a name at a time, the manifest merged,
reports that tolerate partial rows, Ctrl-C, exit statuses, keys checked before any run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONFIGS, ROOT
from lightning_vae import sweep
from lightning_vae.sweep import Job, classify, collect, is_done, run_job, write_manifest

TINY = ["--data.n_train=1024", "--data.n_val=256", "--data.n_test=256", "--data.batch_size=128",
        "--sample_quality.n_samples=200", "--sample_figure.n_points=100", "--eval_every_n_steps=0"]

# A fake fit: makes the run directories it is told to, writes the outcome record it is told
# to (none where "outcome" is null), records its arguments, then exits (or kills itself).
FAKE = r"""
import json, os, signal, sys
spec = json.loads(sys.argv[1])
if spec.get("dir"):
    for d in [spec["dir"], *spec.get("members", [])]:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(spec["dir"], "argv.json"), "w") as f:
        json.dump(sys.argv[2:], f)
    if spec.get("outcome"):
        record = {"outcome": spec["outcome"], "signal": spec.get("signal"), "global_step": 8,
                  "checkpoint": None, "error": spec.get("error")}
        with open(os.path.join(spec["dir"], "outcome.json"), "w") as f:
            json.dump(record, f)
sys.stderr.write(spec.get("stderr", ""))
sys.stderr.flush()
if spec.get("kill"):
    os.kill(os.getpid(), getattr(signal, spec["kill"]))
sys.exit(spec.get("rc", 0))
"""


def _fake_job(tmp_path: Path, ensemble: bool = False, make_dir: bool = True, **spec) -> Job:
    run = tmp_path / "sweeps" / "s" / "base"
    if ensemble:
        members = [(s, str(run / f"seed_{s}")) for s in (0, 1)]
        key = "base"
    else:
        run = run / "seed_0"
        members, key = [(0, str(run))], "base/seed_0"
    spec = {"dir": str(run) if make_dir else None, "members": [d for _, d in members] if ensemble else [], **spec}
    return Job(key, [sys.executable, "-c", FAKE, json.dumps(spec)], str(run), members, ensemble, {},
               sweep_dir=str(tmp_path / "sweeps" / "s"))


# rc, outcome record (None: none written), extra spec -> status, a fragment of its error
CASES = [
    (0, "finished", {}, "finished", None),
    (0, None, {}, "failed", "exit 0 but no outcome record"),
    (0, None, {"make_dir": False}, "failed", "exit 0 but no run directory"),
    (0, "failed", {"error": "RuntimeError: boom"}, "failed", "RuntimeError: boom"),
    (0, "interrupted", {"signal": "SIGTERM"}, "interrupted", "interrupted by SIGTERM at step 8"),
    (143, "interrupted", {"signal": "SIGTERM"}, "interrupted", "interrupted by SIGTERM at step 8 (exit 143)"),
    (130, "interrupted", {"signal": "SIGINT"}, "interrupted", "interrupted by SIGINT at step 8 (exit 130)"),
    (143, None, {}, "interrupted", "interrupted by SIGTERM (exit 143)"),
    (130, "finished", {}, "interrupted", "(exit 130)"),  # the exit code says cut off: not finished
    (1, "interrupted", {"signal": "SIGINT"}, "interrupted", "interrupted by SIGINT"),
    (1, "failed", {"error": "ValueError: x", "stderr": "lightning_vae: error: ValueError: bad x\n"},
     "failed", "lightning_vae: error: ValueError: bad x"),
    (1, "failed", {"error": "ValueError: x", "stderr": "warning only\n"}, "failed", "ValueError: x"),
    (2, None, {"stderr": "lightning_vae: error: model.hidden: expected an int\n"}, "failed", "expected an int"),
    (1, None, {}, "failed", "exit 1"),
    (None, None, {"kill": "SIGKILL"}, "interrupted", "killed by SIGKILL"),
    (None, "interrupted", {"kill": "SIGTERM", "signal": "SIGTERM"}, "interrupted", "killed by SIGTERM"),
]


@pytest.mark.parametrize("rc,outcome,spec,status,error", CASES)
def test_run_job_status_comes_from_the_exit_code_and_the_run_record(tmp_path, rc, outcome, spec, status, error):
    job = _fake_job(tmp_path, rc=rc or 0, outcome=outcome, **spec)
    (row,) = run_job(job)
    assert row["status"] == status, row
    assert (row.get("error") is None) if error is None else (error in row["error"]), row
    record = json.loads((Path(job.run_dir) / "sweep_status.json").read_text())
    assert record["status"] == status and record["rc"] == (rc if rc is not None else record["rc"])
    assert record["outcome"] == (None if outcome is None else json.loads(
        (Path(job.run_dir) / "outcome.json").read_text()))  # the fit's own record, kept in the sweep's
    assert is_done(job) == (status in ("finished", "diverged"))


@pytest.mark.parametrize("outcome,rc,status", [("finished", 0, "finished"), ("interrupted", 143, "interrupted"),
                                               (None, 0, "failed")])
def test_an_ensemble_reads_its_record_in_its_own_directory_for_every_member(tmp_path, outcome, rc, status):
    job = _fake_job(tmp_path, ensemble=True, rc=rc, outcome=outcome)
    rows = run_job(job)
    assert [r["status"] for r in rows] == [status, status]
    for _, member in job.members:
        assert json.loads((Path(member) / "sweep_status.json").read_text())["status"] == status


def test_exit_0_with_a_finished_record_but_a_member_missing_is_failed(tmp_path):
    job = _fake_job(tmp_path, ensemble=True, rc=0, outcome="finished")
    spec = json.loads(job.cmd[-1])
    job.cmd[-1] = json.dumps({**spec, "members": spec["members"][:1]})  # seed_1 never written
    rows = run_job(job)
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "no run directory" in rows[1]["error"] and rows[1]["run"].endswith("seed_1")


def test_an_interrupted_run_is_resumed_by_the_rerun_from_its_checkpoint(tmp_path):
    """rc 143: not finished, so the rerun moves the attempt aside and resumes it from its
    ``last.ckpt`` (the fake fit receives ``--ckpt_path``); then it is finished and skipped."""
    import torch

    job = _fake_job(tmp_path, rc=143, outcome="interrupted", signal="SIGTERM")
    (row,) = run_job(job)
    assert row["status"] == "interrupted" and not is_done(job)
    run = Path(job.run_dir)
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {}, "global_step": 8}, run / "checkpoints" / "last.ckpt")
    again = _fake_job(tmp_path, rc=0, outcome="finished")
    (row,) = run_job(again)
    asides = list(run.parent.glob("seed_0.incomplete-*"))
    assert row["status"] == "finished" and len(asides) == 1
    assert row["resumed_from"] == str(asides[0] / "checkpoints" / "last.ckpt")
    assert json.loads((run / "argv.json").read_text()) == [f"--ckpt_path={row['resumed_from']}"]
    assert is_done(again) and run_job(again)[0]["skipped"] is True


def test_classify_never_trusts_the_exit_code_alone(tmp_path):
    assert classify(0, {"outcome": "finished"}, tmp_path) == ("finished", None)
    assert classify(0, None, tmp_path)[0] == "failed"
    assert classify(0, {"outcome": "weird"}, tmp_path) == ("failed", "exit 0 but its outcome record says 'weird'")
    assert classify(-9, None, tmp_path) == ("interrupted", "killed by SIGKILL")


def test_a_stopping_sweep_starts_nothing_and_leaves_the_attempt_as_it_was(tmp_path, monkeypatch):
    """Ctrl-C just after the job moved its attempt aside: nothing is started, the attempt is
    put back as it was (its checkpoint is still there for the rerun)."""
    job = _fake_job(tmp_path, rc=143, outcome="interrupted")
    run_job(job)
    monkeypatch.setattr(sweep, "_resume_point", lambda aside, job: sweep._STOPPING.set())
    try:
        with pytest.raises(sweep._Stopped):
            run_job(_fake_job(tmp_path, rc=0, outcome="finished"))
    finally:
        sweep._STOPPING.clear()
    run = Path(job.run_dir)
    assert json.loads((run / "sweep_status.json").read_text())["status"] == "interrupted"
    assert not list(run.parent.glob("*.incomplete-*"))  # moved aside and back: nothing lost


# --- the manifest, merged -----------------------------------------------------------------

def test_the_manifest_is_merged_not_overwritten(tmp_path):
    write_manifest({"a/seed_0": {"status": "finished"}, "a/seed_1": {"status": "failed"}}, tmp_path,
                   {"seeds": [0, 1], "extra": []})
    write_manifest({"a/seed_1": {"status": "finished"}, "a/seed_2": {"status": "finished"}}, tmp_path,
                   {"seeds": [1, 2], "extra": []})
    manifest = json.loads((tmp_path / "sweep.json").read_text())
    assert manifest["seeds"] == [1, 2]  # this sweep's settings
    assert manifest["runs"] == {"a/seed_0": {"status": "finished"}, "a/seed_1": {"status": "finished"},
                                "a/seed_2": {"status": "finished"}}  # its runs replace their keys, others kept
    (tmp_path / "sweep.json").write_text("[1, 2")  # unreadable: kept aside, never silently lost
    write_manifest({"b/seed_0": {"status": "finished"}}, tmp_path, {})
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"] == {"b/seed_0": {"status": "finished"}}
    (kept,) = tmp_path.glob("sweep.json.unreadable-*")
    assert kept.read_text() == "[1, 2"


# --- partial and foreign rows ---------------------------------------------------------------

PARTIAL_ROWS = [
    {"status": "finished", "wall_s": 3.0, "both_modes": None, "final": {"train/loss": 1.0}},  # no collapsed
    {"status": "finished", "final": None},  # no final values at all, no wall time
    {"status": "diverged", "wall_s": "3", "final": {"train/loss": "nan?", "collapsed": "yes"}},  # foreign types
    {"status": "finished", "both_modes": True},  # no final key
    {"status": "failed"},
    "not a row",
]


def test_the_table_tolerates_partial_and_foreign_rows():
    from lightning_vae.runs import table

    head, _, row = table({"g": PARTIAL_ROWS}).splitlines()
    cells = dict(zip(head.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["seeds"] == "4/5" and cells["train loss"] == "1.000" and cells["MMD^2"] == "-"
    assert (cells["collapsed"], cells["diverged"], cells["both modes"], cells["wall s / run"]) == ("1", "0", "1/1", "3")


def test_the_csv_and_figures_tolerate_partial_and_foreign_rows(tmp_path):
    from lightning_vae import report

    rows = [r for r in PARTIAL_ROWS if isinstance(r, dict)]
    rows = [{**r, "run": tmp_path / f"r{i}", "grid": {"k": str(i)}} for i, r in enumerate(rows)]
    rows.append({"status": "finished", "final": {"collapsed": True}, "grid": "foreign"})  # no run, odd grid
    report.write_csv({"g": rows + ["not a row"]}, tmp_path / "results.csv", tmp_path)
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and table[0]["collapsed"] == "" and table[0]["train/loss"] == "1.0"
    assert table[5]["run"] == "" and table[5]["collapsed"] == "True" and table[5]["k"] == ""
    groups = {"g": [{**r, "sigma": s} for r, s in zip(rows, [0.1, 0.3, None, 0.1, 0.3, None])]}
    assert report._line_plot(groups, "train/loss", "loss", tmp_path / "l.png") is False  # no scalars: no figure
    assert report._sigma_plot(groups, tmp_path / "s.png") in (True, False)
    assert report._samples_plot({"g": [{"run": tmp_path / "missing"}], "h": []}, tmp_path / "x.png") is False


def test_collect_and_the_report_tolerate_foreign_status_records(tmp_path):
    from lightning_vae import report

    runs = []
    for i, text in enumerate(['[1, 2]', '"finished"', '{"status": "finished"}', "{trunc", '{"wall_s": "x"}']):
        run = tmp_path / "sweeps" / "s" / "base" / f"seed_{i}"
        run.mkdir(parents=True)
        (run / "sweep_status.json").write_text(text)
        (run / "config.yaml").write_text(f"seed_everything: {i}\nmodel:\n  hidden: 8\n")
        (run / "events.out.tfevents.1.host").write_bytes(b"")
        runs.append((i, str(run)))
    job = Job("base", [], str(tmp_path / "sweeps" / "s" / "base"), runs, True, {})
    by_unit = collect([job], tmp_path)
    assert [r["status"] for r in by_unit["base"]] == ["not run", "not run", "finished", "not run", "not run"]
    sweep.write_results(by_unit, tmp_path / "sweeps" / "s", {})  # the manifest, results.csv, the table
    groups = report.collect(tmp_path / "sweeps" / "s")
    assert sorted(r["status"] for rs in groups.values() for r in rs) == ["finished"] * 5
    report.write_report(tmp_path / "sweeps" / "s", tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    assert sweep._summary({"status": "finished"}, {}).startswith("finished in nan s")  # a partial row's line


# --- the command: locks, Ctrl-C, exit statuses, keys checked first ---------------------------

def _cmd(root: Path, *args: str, epochs: int = 2, config: str = "seed_spread.yaml") -> list[str]:
    return [sys.executable, "-m", "lightning_vae", "sweep", "--config", str(CONFIGS / config), "--root", str(root),
            "--name", "s", *args, "--", f"--trainer.max_epochs={epochs}", *TINY]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _wait_for(predicate, proc: subprocess.Popen, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow  # ~25-30 s: the default suite must stay under 5 minutes on 2 cores
def test_two_sweeps_of_one_name_do_not_run_at_once(tmp_path):
    """Sweep A holds the name's lock: B refuses in one line naming A (exit 2), a --unit of it
    refuses too; B with --wait waits for A, then finds A's run finished: nothing moved aside."""
    a = subprocess.Popen(_cmd(tmp_path, epochs=8), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=ROOT, env=_env())
    lock = tmp_path / "sweeps" / "s" / ".lock"
    _wait_for(lambda: lock.is_file() and f'"pid": {a.pid}' in lock.read_text(), a)
    waiting = subprocess.Popen(_cmd(tmp_path, "--wait", epochs=8), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        for extra in ([], ["--unit", "base"]):
            b = subprocess.run(_cmd(tmp_path, *extra, epochs=8), capture_output=True, text=True, cwd=ROOT,
                               env=_env(), timeout=120)
            assert b.returncode == 2, b.stderr
            (line,) = b.stderr.strip().splitlines()
            assert line.startswith("lightning-vae sweep: error: sweep s is running already: ")
            assert f"pid {a.pid} on " in line and str(lock) in line and "--wait" in line, line
        out, err = a.communicate(timeout=300)
        assert a.returncode == 0, err[-3000:]
        w_out, w_err = waiting.communicate(timeout=300)
    finally:
        for p in (a, waiting):
            if p.poll() is None:
                p.kill()
    assert "1 finished, 0 diverged, 0 failed, 0 interrupted" in out
    assert waiting.returncode == 0, w_err[-3000:]
    assert "sweep s is running: pid" in w_err and "waiting for it (--wait)" in w_err
    assert "1 already finished, 0 to run" in w_out
    unit = tmp_path / "sweeps" / "s" / "base"
    assert not list(unit.parent.glob("*.incomplete-*"))  # A's run was never moved aside
    assert json.loads((unit / "seed_0" / "sweep_status.json").read_text())["status"] == "finished"
    runs = json.loads((tmp_path / "sweeps" / "s" / "sweep.json").read_text())["runs"]
    assert runs["base/seed_0"]["status"] == "finished"


@pytest.mark.slow  # ~25-30 s: the default suite must stay under 5 minutes on 2 cores
def test_ctrl_c_stops_the_sweep_in_one_line_and_keeps_the_records(tmp_path):
    """SIGINT to the sweep alone (its fit does not get it): the fit is stopped (SIGTERM: it
    records "interrupted"), the manifest is written, one line, exit 130, no traceback."""
    proc = subprocess.Popen(_cmd(tmp_path, epochs=200), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=_env())
    unit = tmp_path / "sweeps" / "s" / "base"
    try:
        _wait_for(lambda: any(unit.glob("seed_0/events.out.tfevents.*")), proc)  # training has begun
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1].split("\r")[-1] == "sweep s: interrupted; rerun the same command to resume"
    record = json.loads((unit / "seed_0" / "sweep_status.json").read_text())
    assert record["status"] == "interrupted", record
    assert record["rc"] in (143, -15) and (record["rc"] == -15 or record["outcome"]["outcome"] == "interrupted")
    runs = json.loads((tmp_path / "sweeps" / "s" / "sweep.json").read_text())["runs"]
    assert runs["base/seed_0"]["status"] == "interrupted"
    assert (tmp_path / "sweeps" / "s" / "results.csv").is_file()


@pytest.mark.parametrize("dry_run", [pytest.param(True, marks=pytest.mark.slow), False])
def test_a_grid_key_typo_fails_at_once_with_the_clis_line(tmp_path, capsys, dry_run):
    slots = ["--config", str(CONFIGS / "seed_spread.yaml"), "--grid", "model.objective.init_args.nosie_std=0.1,0.3",
             "--seeds", "0-1", "--name", "t", "--root", str(tmp_path), *(["--dry_run"] if dry_run else [])]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as stop:
        sweep.main(slots)
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert "--unit" not in out and "runs (" not in out  # nothing printed, nothing run
    (line,) = err.strip().splitlines()  # one check for both grid values
    assert line == ("lightning-vae sweep: error: nosie_std=0.1: model.objective.init_args.nosie_std: "
                    "unknown key; did you mean noise_std?"), line
    assert not list(tmp_path.rglob("seed_*")) and time.perf_counter() - start < 120


def test_keys_are_checked_once_per_experiment_in_parallel(tmp_path, monkeypatch):
    """One check per distinct (configs, grid keys), not per grid value or seed."""
    units = sweep.plan([[str(CONFIGS / "seed_elbo.yaml"), str(CONFIGS / "seed_spread.yaml")]],
                       {"data.batch_size": ["64", "128", "256"]}, [0, 1], True)
    jobs = sweep.jobs_of(units, tmp_path, "c", [])
    ran = []
    monkeypatch.setattr(sweep, "_run", lambda cmd, env, pass_fds=(): ran.append(cmd) or (0, "", False))
    sweep.check_keys(units, jobs, 4)
    assert len(ran) == 2 and all(cmd[-1] == "--print_config" for cmd in ran)
    assert sorted(cmd[2] for cmd in ran) == ["lightning_vae.ensemble"] * 2
    assert {"--data.batch_size=64"} <= set(ran[0]) and "--model.seeds=[0,1]" in ran[0]


def test_lock_per_unit_lets_different_units_run_side_by_side(tmp_path):
    """--unit runs hold the sweep's lock shared and their own exclusively; the whole sweep
    needs it alone. Held in another process (a flock is per open file, so this holds)."""
    sweep.lock_sweep(tmp_path, "s", unit="a/seed_0")
    try:
        sweep.lock_sweep(tmp_path, "s", unit="a/seed_1")  # another unit: fine
        sweep.release_locks()
        sweep.lock_sweep(tmp_path, "s", unit="a/seed_0")
        with pytest.raises(SystemExit, match="unit a/seed_0 of sweep s is running already: --unit a/seed_0: pid"):
            sweep.lock_sweep(tmp_path, "s", unit="a/seed_0")
        with pytest.raises(SystemExit, match="sweep s is running already: --unit a/seed_0: pid"):
            sweep.lock_sweep(tmp_path, "s")
    finally:
        sweep.release_locks()
    assert (tmp_path / ".lock-a%2Fseed_0").is_file()
    sweep.lock_sweep(tmp_path, "s")  # released: the whole sweep may run
    sweep.release_locks()


@pytest.mark.slow  # three real fits (~20 s): the fake-fit tests above cover every status in the default suite
def test_a_unit_cut_off_by_sigterm_is_interrupted_and_its_rerun_resumes_it(tmp_path):
    """A real fit sent SIGTERM mid-epoch (tests/killer.py's SignalAtStep) exits 143 with its
    record "interrupted": the task fails (exit 1), the rerun resumes from the checkpoint it
    saved at that step, then the unit is finished and a third run is a no-op."""
    env = {**_env(), "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    cmd = _cmd(tmp_path, "--unit", "base", "--trainer.callbacks+=killer.SignalAtStep", epochs=3)
    cut = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**env, "LVAE_SIGNAL_AT_STEP": "12"})
    assert cut.returncode == 1, cut.stdout + cut.stderr[-3000:]
    assert "INTERRUPTED: interrupted by SIGTERM at step" in cut.stdout and "(exit 143)" in cut.stdout, cut.stdout
    unit = tmp_path / "sweeps" / "s" / "base"
    assert json.loads((unit / "seed_0" / "sweep_status.json").read_text())["status"] == "interrupted"
    resumed = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert resumed.returncode == 0 and "finished (resumed from" in resumed.stdout, resumed.stdout + resumed.stderr
    status = json.loads((unit / "seed_0" / "sweep_status.json").read_text())
    assert status["status"] == "finished" and status["outcome"]["outcome"] == "finished"
    assert ".incomplete-" in status["resumed_from"]
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert again.returncode == 0 and "already finished: skipped" in again.stdout
