"""The report of many runs: table over seeds and figures, read from the event files."""

from __future__ import annotations

import pytest

from conftest import fit
from lightning_vae.study import find_runs, main, noise_level

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    short = ["--trainer.max_epochs=2", "--sample_figure.every_n_epochs=2"]
    for seed in (0, 1):
        fit("seed_elbo.yaml", root, *short, f"--seed_everything={seed}")
    for sigma in ("0.1", "0.3"):
        fit("seed_spread.yaml", root / f"sigma_{sigma}", *short, f"--model.objective.init_args.noise_std={sigma}")
    return root


def test_report_tables_configurations_over_seeds_and_draws_the_figures(logs, tmp_path, capsys):
    assert len(find_runs(logs)) == 4
    assert [noise_level(r) for r in find_runs(logs)] == [None, None, 0.1, 0.3]
    out = tmp_path / "report"
    main([str(logs), "--out", str(out)])
    text = (out / "report.md").read_text()
    rows = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ") for ln in text.splitlines() if ln.startswith("| ")}
    assert set(rows) == {"configuration", "seed_elbo", "sigma_0.1/seed_spread", "sigma_0.3/seed_spread"}
    assert rows["seed_elbo"][1] == "2/2" and "±" in rows["seed_elbo"][2]  # mean ± std over 2 seeds
    assert rows["sigma_0.1/seed_spread"][1] == "1/1"
    for name in ("loss.png", "decoder_std.png", "samples.png", "metric_vs_sigma.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
        assert f"![{name}]({name})" in text
    assert "report.md" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="exists; expected a new --out folder"):
        main([str(logs), "--out", str(out)])


def test_report_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no runs under"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="root must be an existing folder"):
        main([str(tmp_path / "missing")])
