"""Bad input through the real CLI, one table: each case runs ``python -m lightning_vae fit``'s
``main`` (in-process: a fresh interpreter per case cost ~7 s of import each, and
``tests/test_cli.py::test_bad_input_is_one_line`` runs one case as a real subprocess) and must
end with exit 2, no traceback, and exactly one error line that names the offending key and
the value expected there; and no case may write anything: the log directory (which holds a
previous run) is byte-for-byte the same afterwards.

The table is the README's "Troubleshooting" list.
"""

from __future__ import annotations

import hashlib
import io
import os
from contextlib import redirect_stderr
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import CONFIGS, fit

# Small sizes, so that a case that wrongly starts training still ends in seconds.
SMALL = [
    "--trainer.max_epochs=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.n_train=256",
    "--data.n_val=64",
    "--data.n_test=64",
    "--data.batch_size=64",
    "--sample_quality.n_samples=64",
    "--sample_figure.n_points=64",
]

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # chmod does not stop root writing

POINTS = ["--data.manifold=lightning_vae.data.PointCloud"]

# (id, arguments after the base command, substrings of the one error line). Placeholders:
# {tmp} the prepared folder, {logs} the log directory, {run} the previous run there,
# {ckpt16} its checkpoint (a model with hidden=16).
CASES = [
    # unknown keys: on the command line, in a YAML file, inside a class_path's init_args
    ("unknown-key", ["--modle.hidden=3"],
     ["modle.hidden: unknown key", "did you mean model.hidden?"]),
    ("unknown-nested-key", ["--model.hiden=3"],
     ["model.hiden: unknown key", "did you mean model.hidden?"]),
    ("unknown-key-in-yaml", ["--config", "{tmp}/typo.yaml"],
     ["model.hiden: unknown key", "did you mean model.hidden?"]),
    ("unknown-init-arg", ["--model.objective.init_args.nosie_std=0.1"],
     ["model.objective.init_args.nosie_std: unknown key", "did you mean noise_std?"]),
    # wrong types and values
    ("wrong-type", ["--data.batch_size=abc"], ["data.batch_size: expected an integer, got 'abc'"]),
    ("seed-not-a-number", ["--seed_everything=abc"],
     ["seed_everything: expected true or false or an integer, got 'abc'"]),
    ("not-a-choice", ["--model.lr_schedule=linear"],
     ["model.lr_schedule: expected one of 'constant', 'cosine', got 'linear'"]),
    ("negative-noise", ["--model.objective.init_args.noise_std=-1"],
     ["model.objective.init_args.noise_std must be >= 0, got -1.0"]),
    ("nan-noise", ["--model.objective.init_args.noise_std=nan"],
     ["model.objective.init_args.noise_std: expected a number", "got 'nan'"]),
    ("yaml-nan-noise", ["--model.objective.init_args.noise_std=.nan"],
     ["model.objective.init_args.noise_std must be >= 0, got nan"]),
    ("zero-batch-size", ["--data.batch_size=0"], ["data.batch_size must be >= 1, got 0"]),
    ("negative-batch-size", ["--data.batch_size=-5"], ["data.batch_size must be >= 1, got -5"]),
    ("dataset-smaller-than-a-batch", ["--data.n_train=10", "--data.batch_size=256"],
     ["data.batch_size must be <= n_train (10), got 256"]),
    ("zero-hidden-width", ["--model.hidden=0"], ["model.hidden must be an integer >= 1, got 0"]),
    ("ambient-dim-below-natural", ["--data.manifold=lightning_vae.data.Circle",
                                   "--data.manifold.ambient_dim=1"],
     ["data.manifold.init_args.ambient_dim must be >= 2 (the natural dimension of Circle), got 1"]),
    ("negative-max-epochs", ["--trainer.max_epochs=-5"],
     ["trainer.max_epochs must be -1 (no limit) or an integer >= 1, got -5"]),
    ("zero-max-steps", ["--trainer.max_steps=0"],
     ["trainer.max_steps must be -1 (no limit) or an integer >= 1, got 0"]),
    # classes that do not exist
    ("unknown-objective-class", ["--model.objective=lightning_vae.objectives.Nope"],
     ["model.objective: unknown class lightning_vae.objectives.Nope",
      "expected a subclass of lightning_vae.objectives.Objective"]),
    ("unknown-manifold-class", ["--data.manifold=lightning_vae.data.Cirlce"],
     ["data.manifold: unknown class lightning_vae.data.Cirlce",
      "expected a subclass of lightning_vae.data.manifolds.Manifold"]),
    # files: config, checkpoint
    ("missing-config-file", ["--config", "{tmp}/missing.yaml"],
     ["--config: file does not exist", "missing.yaml", "expected the path of a YAML config file"]),
    ("config-not-yaml", ["--config", "{tmp}/broken.yaml"],
     ["--config: not valid YAML", "expected a YAML mapping"]),
    ("missing-checkpoint", ["--ckpt_path={tmp}/missing.ckpt"],
     ["ckpt_path: checkpoint file not found", "expected an existing .ckpt file"]),
    ("corrupt-checkpoint", ["--ckpt_path={tmp}/garbage.ckpt"],
     ["ckpt_path:", "garbage.ckpt is not a readable checkpoint", "expected a .ckpt file"]),
    ("checkpoint-of-another-shape", ["--model.hidden=32", "--ckpt_path={ckpt16}"],
     ["ckpt_path:", "model.hidden is 16 in the checkpoint, 32 in the config",
      "expected the checkpoint's model settings"]),
    # devices
    ("gpu-without-gpu", ["--trainer.accelerator=gpu"],
     ["trainer.accelerator: 'gpu' needs a GPU", "expected 'cpu' or 'auto'"]),
    ("more-devices-than-cores", ["--trainer.accelerator=cpu", "--trainer.devices=1024"],
     ["trainer.devices asks for 1024", "expected at most"]),
    # output directories: never overwrite, never half-create
    ("existing-run-directory", ["--trainer.logger.init_args.version=0"],
     ["trainer.logger.init_args.version: the run directory", "version_0 already exists",
      "expected a new one"]),
    ("existing-checkpoint-directory", ["--checkpoint.dirpath={run}/checkpoints"],
     ["checkpoint.dirpath:", "already holds files", "expected a new or empty directory"]),
    ("log-dir-under-a-file", ["--trainer.logger.init_args.save_dir={tmp}/afile/logs"],
     ["trainer.logger.init_args.save_dir: cannot create", "afile is a file",
      "expected a writable directory"]),
    pytest.param("read-only-log-dir", ["--trainer.logger.init_args.save_dir={tmp}/readonly/logs"],
                 ["trainer.logger.init_args.save_dir: cannot write", "is not writable",
                  "expected a writable directory"],
                 marks=pytest.mark.skipif(AS_ROOT, reason="root writes to a chmod 555 directory")),
    # a user's own points
    ("nan-in-points", [*POINTS, "--data.manifold.path={tmp}/nan.npy"],
     ["data.manifold.init_args.path: expected finite numbers", "nan.npy holds 1 non-finite values"]),
    ("non-numeric-csv", [*POINTS, "--data.manifold.path={tmp}/words.csv"],
     ["data.manifold.init_args.path:", "words.csv is not a numeric CSV", "'abc'"]),
    ("too-few-points", [*POINTS, "--data.manifold.path={tmp}/few.npy"],
     ["data.n_train + n_val + n_test must be <= 20", "got 256 + 64 + 64 = 384"]),
    ("points-path-not-given", POINTS,
     ["data.manifold.init_args.path: missing (required, no default); expected a value"]),
]


def _id(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root: (kind, size, mtime, sha256) for files; directories too, so a
    new empty run directory counts as a change."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = ("dir", path.stat().st_mtime_ns)
        else:
            st = path.stat()
            out[rel] = ("file", st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _prepare(tmp: Path) -> dict[str, str]:
    logs = tmp / "logs"
    run = fit("seed_spread.yaml", logs, "--model.hidden=16", *SMALL)
    (logs / "notes.txt").write_text("a file of the user's, next to the runs\n")
    (tmp / "typo.yaml").write_text("model:\n  hiden: 3\n")
    (tmp / "broken.yaml").write_text("model: [unclosed\n  hidden: 3\n")
    (tmp / "garbage.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "afile").write_text("not a directory\n")
    readonly = tmp / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    points = np.random.default_rng(0).normal(size=(500, 2)).astype(np.float32)
    np.save(tmp / "few.npy", points[:20])
    points[7, 1] = np.nan
    np.save(tmp / "nan.npy", points)
    (tmp / "words.csv").write_text("x,y\n1,2\n3,abc\n")
    return {"tmp": str(tmp), "logs": str(logs), "run": str(run),
            "ckpt16": str(run / "checkpoints" / "last.ckpt")}


def _run(args: list[str], places: dict[str, str]) -> SimpleNamespace:
    """``main`` of the CLI on ``fit`` + args, in ``places["tmp"]``: its exit code and stderr."""
    from lightning_vae.cli import main

    args = [a.format(**places) for a in args]
    base = ["--config", str(CONFIGS / "seed_spread.yaml")]
    if "--config" in args:  # the case's own config file replaces the shipped one
        base = []
    err, code = io.StringIO(), 0
    with redirect_stderr(err):
        try:
            main(["fit", *base, *SMALL, f"--trainer.logger.init_args.save_dir={places['logs']}",
                  f"--trainer.default_root_dir={places['logs']}", *args])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Runs every case once, in parallel; the folder's snapshot before and after."""
    tmp = tmp_path_factory.mktemp("bad_inputs")
    places = _prepare(tmp)
    before = _snapshot(tmp)
    cases = [c.values if hasattr(c, "values") else c for c in CASES]
    if AS_ROOT:
        cases = [c for c in cases if c[0] != "read-only-log-dir"]
    cwd = os.getcwd()
    mp = pytest.MonkeyPatch()
    # The same answer on a GPU machine: the devices cases are about a CPU-only one.
    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(torch.cuda, "device_count", lambda: 0)
    mp.delenv("LVAE_TRACEBACK", raising=False)
    try:
        os.chdir(tmp)
        procs = {c[0]: _run(c[1], places) for c in cases}
    finally:
        os.chdir(cwd)
        mp.undo()
        (tmp / "readonly").chmod(0o755)  # so that pytest can remove it
    after = _snapshot(tmp)
    after.pop("readonly", None)
    before.pop("readonly", None)
    return {"procs": procs, "before": before, "after": after}


@pytest.mark.parametrize("name,args,expected", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_naming_key_and_expected_value(results, name, args, expected):
    proc = results["procs"][name]
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}: {err[-1500:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, err[-1500:]
    line = errors[0]
    assert line.startswith("lightning_vae: error: ") and "internal error" not in line, line
    for part in expected:
        assert part in line, f"{part!r} not in {line!r}"


def test_no_bad_input_writes_or_overwrites_anything(results):
    before, after = results["before"], results["after"]
    assert any("checkpoints/last.ckpt" in p for p in before)  # the previous run is there
    new = sorted(set(after) - set(before))
    gone = sorted(set(before) - set(after))
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    assert not (new or gone or changed), f"new: {new}, removed: {gone}, modified: {changed}"


def test_the_table_has_at_least_15_cases():
    assert len(CASES) >= 15 and len({_id(c) for c in CASES}) == len(CASES)


def test_a_read_only_log_dir_is_refused(tmp_path, monkeypatch):
    """The check behind "read-only-log-dir", also where the tests run as root (chmod 555
    does not stop root, so the subprocess case is skipped there): a directory without write
    permission is refused before anything is created."""
    from lightning_vae import preflight

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(preflight.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    with pytest.raises(ValueError, match=r"^trainer.logger.init_args.save_dir: cannot write to "
                                         r".*locked/logs: .*locked is not writable; "
                                         r"expected a writable directory$"):
        preflight.check_writable("trainer.logger.init_args.save_dir", locked / "logs")
    preflight.check_writable("trainer.logger.init_args.save_dir", tmp_path / "free" / "logs")  # fine
    assert not (locked / "logs").exists() and not (tmp_path / "free").exists()
