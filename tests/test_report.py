"""The report of many runs: table over seeds and figures, read from the event files."""

from __future__ import annotations

import csv

import pytest

from conftest import CONFIGS, fit
from lightning_vae.report import main, noise_level
from lightning_vae.runs import find_runs

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    short = ["--trainer.max_epochs=2", "--sample_figure.every_n_epochs=2"]
    for seed in (0, 1):
        fit("seed_elbo.yaml", root, *short, f"--seed_everything={seed}")
    for sigma in ("0.1", "0.3"):
        fit("seed_spread.yaml", root / f"sigma_{sigma}", *short, f"--model.objective.init_args.noise_std={sigma}")
    # An evaluation of the first run (it logs into <run>/validate/version_0: not a run), and
    # a run of another configuration under the same name (not a third seed of the first).
    from lightning_vae.cli import main as cli

    cli(["validate", "--config", str(CONFIGS / "seed_elbo.yaml"), "--ckpt_path",
         str(root / "seed_elbo" / "version_0" / "checkpoints" / "last.ckpt"),
         "--trainer.enable_progress_bar=false"])
    fit("seed_elbo.yaml", root, *short, "--model.hidden=32")
    return root


def test_report_tables_configurations_over_seeds_and_draws_the_figures(logs, tmp_path, capsys):
    assert (logs / "seed_elbo" / "version_0" / "validate" / "version_0").is_dir()
    found = find_runs(logs)
    assert [r.relative_to(logs).as_posix() for r in found] == [
        "seed_elbo/version_0", "seed_elbo/version_1", "seed_elbo/version_2",
        "sigma_0.1/seed_spread/version_0", "sigma_0.3/seed_spread/version_0"]  # not the evaluation
    assert [noise_level(r) for r in found] == [None, None, None, 0.1, 0.3]
    out = tmp_path / "report"
    main([str(logs), "--out", str(out)])
    text = (out / "report.md").read_text()
    rows = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ")}
    # Grouped by configuration, not by folder: the hidden=32 run is not a third seed.
    assert set(rows) == {"configuration", "seed_elbo [hidden=64]", "seed_elbo [hidden=32]",
                         "sigma_0.1/seed_spread", "sigma_0.3/seed_spread"}
    assert rows["seed_elbo [hidden=64]"][1] == "2/2" and "±" in rows["seed_elbo [hidden=64]"][2]
    assert rows["seed_elbo [hidden=32]"][1] == "1/1" and rows["sigma_0.1/seed_spread"][1] == "1/1"
    assert "both modes" in text.splitlines()[4]  # seed data: each run's verdict from its checkpoint
    for name in ("loss.png", "decoder_std.png", "samples.png", "metric_vs_sigma.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
        assert f"![{name}]({name})" in text
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 5 and {r["status"] for r in table} == {"finished"}
    by_run = {r["run"]: r for r in table}
    assert by_run["seed_elbo/version_1"]["seed"] == "1" and by_run["seed_elbo/version_2"]["model.hidden"] == "32"
    assert by_run["sigma_0.3/seed_spread/version_0"]["model.objective.init_args.noise_std"] == "0.3"
    from lightning_vae.runs import read_scalars

    final = read_scalars(logs / "seed_elbo" / "version_0")["train/loss"][-1][1]
    assert float(by_run["seed_elbo/version_0"]["train/loss"]) == pytest.approx(final, rel=1e-6)
    assert "report.md" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists; expected a new --out folder"):
        main([str(logs), "--out", str(out)])


def test_report_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no runs under"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="root must be an existing folder"):
        main([str(tmp_path / "missing")])
