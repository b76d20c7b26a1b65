"""Linear ICA by EM through the one training loop and the real CLI (lightning_vae/ica_em.py):
one EM iteration per optimizer step, exactly the pure functions' iteration; the freeze
visible in TensorBoard; exact resume; the sweep; one-line errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch

from conftest import CONFIGS, ICA_CONFIGS, ICA_TINY, ROOT, fit_ica
from lightning_vae import config_files, ica
from lightning_vae.ica_em import ICAData, LinearICA, stream_seed
from lightning_vae.runs import read_scalars

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ICA_TINY
fit = fit_ica


def _in_process(args: list[str], capsys) -> tuple[int, str]:
    from lightning_vae.cli import main

    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def spread_run(tmp_path_factory):
    """One tiny spread-EM run (gamma 0.1), shared by the tests that read a finished run."""
    root = tmp_path_factory.mktemp("ica")
    return fit("ica_spread.yaml", root, "--data.init_args.gamma=0.1")


# Set-up (b)'s configs are set-up (a)'s code with other sizes (the slow suite runs them).
@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("ica_n_") else c
                                    for c in ICA_CONFIGS])
def test_every_ica_config_runs_through_the_cli(config, tmp_path, spread_run):
    """The packaged config, tiny: its logger name, the scalars of every iteration in
    TensorBoard, the run's record and ``ica_result.json`` with one error per repeat."""
    run = spread_run if config == "ica_spread.yaml" else fit(config, tmp_path, "--data.init_args.gamma=0.1")
    assert run.parent.name == config.removesuffix(".yaml")
    s = read_scalars(run)
    for tag in ("train/loss", "train/log_lik", "ica/error", "ica/error_se", "ica/change", "ica/ess"):
        assert [step for step, _ in s[tag]] == list(range(8)), tag
        assert all(math.isfinite(v) for _, v in s[tag]), tag
    assert ("ica/spread_std" in s) == ("spread" in config)
    assert [step for step, _ in s["val/error"]] == [3, 7]  # every epoch (4 iterations)
    assert json.loads((run / "outcome.json").read_text())["outcome"] == "finished"
    result = json.loads((run / "ica_result.json").read_text())
    assert result["iterations"] == 8 and len(result["errors"]) == 3 and result["gamma"] == 0.1
    assert result["method"] == ("spread" if "spread" in config else "standard")
    assert s["ica/error"][-1][1] == pytest.approx(result["error_mean"])


def test_one_optimizer_step_is_one_em_iteration_of_the_pure_functions(tmp_path):
    """fit for 3 steps = 3 calls of ``ica.em_step`` from the same start with the same
    generator: the wiring adds nothing and loses nothing (global_step counts iterations)."""
    torch.manual_seed(5)
    data = ICAData(x_dim=5, z_dim=3, n=300, gamma=0.05, repeats=2, iterations_per_epoch=3, dtype="float64")
    model = LinearICA(x_dim=5, z_dim=3, gamma=0.05, repeats=2, method="spread", s_z=20, s_y=2)
    start = model.a.detach().clone()
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 3
    a, g = start, torch.Generator().manual_seed(model.noise_seed)
    for _ in range(3):
        a, _ = ica.em_step(data.x, a, 0.05, 20, g, spread=ica.spread_noise(a), s_y=2, chunk=model.chunk)
    torch.testing.assert_close(model.a.detach(), a, rtol=1e-12, atol=1e-12)
    assert not torch.equal(model.a.detach(), start)


def test_the_problems_are_seeded_and_the_start_is_not_the_truth():
    one, two = ICAData(x_dim=4, z_dim=2, n=50, repeats=3, seed=7), ICAData(x_dim=4, z_dim=2, n=80, repeats=3, seed=7)
    one.prepare_problems(), two.prepare_problems()
    assert torch.equal(one.a_true, two.a_true)  # A does not depend on N: a sweep over N keeps the problems
    assert not torch.equal(one.a_true[0], one.a_true[1])  # each repeat its own
    model = LinearICA(x_dim=4, z_dim=2, repeats=3, init_seed=7)
    assert not any(torch.allclose(model.a[r].detach(), one.a_true[r]) for r in range(3))
    assert len({stream_seed(s, k, r) for s in range(3) for k in range(2) for r in range(50)}) == 300


def test_standard_em_freezes_at_gamma_zero_and_spread_em_does_not(tmp_path):
    """In TensorBoard: ica/change, the relative change of A per iteration, is 0 after the
    first iteration of standard EM at gamma = 0 (the first projects A's columns onto the
    data's span); spread EM's is not."""
    extra = ["--data.init_args.gamma=0", "--data.init_args.dtype=float64"]
    standard = read_scalars(fit("ica_standard.yaml", tmp_path, *extra))
    spread = read_scalars(fit("ica_spread.yaml", tmp_path, *extra))
    assert standard["ica/change"][0][1] > 1e-3
    assert max(v for _, v in standard["ica/change"][1:]) < 1e-12
    assert min(v for _, v in spread["ica/change"][1:]) > 1e-4
    # log-likelihood: the noiseless density on A's column space, finite and frozen too
    assert len({round(v, 9) for _, v in standard["train/log_lik"][1:]}) == 1


def test_a_resumed_run_ends_where_the_whole_run_ends(tmp_path, spread_run):
    whole = spread_run
    first = fit("ica_spread.yaml", tmp_path / "cut", "--trainer.max_steps=4", "--data.init_args.gamma=0.1")
    resumed = fit("ica_spread.yaml", tmp_path / "cut", f"--ckpt_path={first / 'checkpoints' / 'last.ckpt'}",
                  "--data.init_args.gamma=0.1")
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["a"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["a"]
    assert torch.equal(a, b)
    sa, sb = read_scalars(whole), read_scalars(resumed)
    assert dict(sa["ica/error"])[7] == dict(sb["ica/error"])[7]
    assert json.loads((whole / "ica_result.json").read_text())["initial_errors"] == \
        json.loads((resumed / "ica_result.json").read_text())["initial_errors"]


def test_validate_and_test_score_a_checkpoint_on_held_out_points(tmp_path, capsys, spread_run):
    """``validate`` / ``test`` of a run's checkpoint: the error of its A (what training
    logged last) and the held-out log-likelihood, at the checkpoint's last iteration; the
    held-out points are the same problems' (the same A), not the training points."""
    ckpt = spread_run / "checkpoints" / "last.ckpt"
    final = read_scalars(spread_run)
    for stage in ("validate", "test"):
        code, err = _in_process([stage, "--config", "ica_spread", *TINY, "--data.init_args.gamma=0.1",
                                 f"--trainer.logger.init_args.save_dir={tmp_path}", f"--ckpt_path={ckpt}"], capsys)
        assert code == 0, err
    scored = read_scalars(tmp_path / "ica_spread" / "version_0")
    assert scored["val/error"] == [(7, pytest.approx(final["ica/error"][-1][1], rel=1e-6))]
    assert final["val/log_lik"][-1][1] == pytest.approx(scored["val/log_lik"][-1][1], rel=1e-6)
    tested = read_scalars(tmp_path / "ica_spread" / "version_1")
    assert math.isfinite(tested["test/log_lik"][-1][1]) and tested["test/log_lik"][-1][1] != scored["val/log_lik"][-1][1]
    data = ICAData(x_dim=4, z_dim=2, n=50, repeats=2, n_val=30, n_test=20, seed=3)
    data.prepare_problems()
    assert data.val_x.shape == (2, 30, 4) and data.test_x.shape == (2, 20, 4)
    a = data.a_true.float()
    for held_out in (data.val_x, data.test_x):  # x = A z exactly (gamma 0): in A's column space
        z = torch.linalg.lstsq(a, held_out.transpose(-1, -2)).solution
        torch.testing.assert_close(a @ z, held_out.transpose(-1, -2), atol=1e-5, rtol=0)
        assert not torch.equal(held_out[:, :20], data.x[:, :20])


def _ica_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ica_table", ROOT / "scripts" / "ica_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ~15 s: two processes (the sweep's key check, the fit). The process path itself is the
# default suite's (tests/test_sweep.py: --seeds_as processes; a class_path model planned as
# processes); this is linear ICA's end to end, with the README's table script.
@pytest.mark.slow
def test_the_sweep_runs_an_ica_config_as_processes_and_the_table_reads_it(tmp_path, capsys):
    from lightning_vae.sweep import main as sweep

    sweep(["--config", str(CONFIGS / "ica_spread.yaml"), "--grid", "data.init_args.gamma=0.1", "--seeds", "0",
           "--root", str(tmp_path), "--name", "ica", "--", *TINY])
    rows = (tmp_path / "sweeps" / "ica" / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",finished," in rows[1], rows
    [result] = (tmp_path / "sweeps" / "ica").rglob("ica_result.json")
    errors = json.loads(result.read_text())["errors"]
    table = _ica_table()
    table.main([str(tmp_path / "sweeps" / "ica"), "--by", "gamma", "--figure", str(tmp_path / "ica.png")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.1 |"))
    assert row.split("|")[3].strip().startswith(f"{sum(errors) / 3:.3f} ±") and row.split("|")[2].strip() == "-", row
    assert (tmp_path / "ica.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        table.main([str(tmp_path / "nothing"), "--by", "gamma"])
    assert "is not a directory; expected a sweep's directory" in capsys.readouterr().err


def test_the_table_groups_repeats_by_method_and_setting(tmp_path):
    """Mean, standard error (std / sqrt(count)) and median over every repeat of every run
    of a method at a setting, seeds pooled."""
    table = _ica_table()
    records = [("standard", 0.0, 0, [1.0, 2.0, 6.0]), ("standard", 0.0, 1, [3.0]), ("spread", 0.0, 0, [0.5, 0.7]),
               ("spread", 0.5, 0, [0.4, 0.6])]
    for method, gamma, seed, errors in records:
        run = tmp_path / method / f"gamma={gamma}" / f"seed_{seed}"
        run.mkdir(parents=True)
        (run / "ica_result.json").write_text(json.dumps({"method": method, "gamma": gamma, "n": 10, "errors": errors,
                                                          "initial_errors": [9.0] * len(errors)}))
    groups = table.grouped(table.results(tmp_path), "gamma")
    assert table.summary(groups[("standard", 0.0)]["errors"]) == {
        "mean": 3.0, "se": pytest.approx(math.sqrt(14 / 3) / 2), "median": 2.5, "count": 4}
    lines = table.table(groups, "gamma").splitlines()
    assert lines[2] == f"| 0 | 3.000 ± {math.sqrt(14 / 3) / 2:.3f} (2.500) | 0.600 ± 0.100 (0.600) | 4 | 9.000 |"
    assert lines[3] == "| 0.5 | - | 0.500 ± 0.100 (0.500) | 2 | 9.000 |"


def test_config_names_its_model():
    ica_model = ("lightning_vae.ica_em.LinearICA",)
    assert config_files.names_model(["fit", "--config", "ica_spread"], ica_model)
    assert not config_files.names_model(["fit", "--config", "seed_spread"], ica_model)
    assert not config_files.names_model(["fit", "--config", "ica_spread", "--model.class_path=x.Y"], ica_model)
    assert not config_files.names_model(["fit", "--config", "/no/such/file.yaml"], ica_model)


@pytest.mark.parametrize("arg,message", [
    ("--data.init_args.z_dim=9", r"z_dim must be <= x_dim \(6\)"),
    ("--data.init_args.gamma=-1", r"gamma must be a finite number >= 0, got -1"),
    ("--model.init_args.method=em", r"method"),
    ("--model.init_args.s_z=0", r"s_z must be an integer >= 1, got 0"),
    ("--model.init_args.spread_std=-0.5", r"spread_std must be a number > 0 or null"),
    ("--trainer.devices=2", r"trainer.devices: LinearICA runs in one process .*expected devices=1"),
])
def test_bad_input_is_one_line(arg, message, tmp_path, capsys):
    import re

    code, err = _in_process(["fit", "--config", "ica_spread", *TINY, f"--trainer.logger.init_args.save_dir={tmp_path}",
                             f"--trainer.default_root_dir={tmp_path}", arg], capsys)
    assert code == 2, err
    first = err.strip().splitlines()[0]
    assert first.startswith("lightning_vae: error:") and re.search(message, first), err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))
