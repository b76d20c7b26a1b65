"""Reading runs back: the table over seeds, grouping by configuration, the runs found."""

from __future__ import annotations

import yaml

from lightning_vae.runs import find_runs, group_runs, table, varying_keys


def _row(status="finished", wall=10.0, both=None, **final):
    return {"status": status, "wall_s": wall, "both_modes": both,
            "final": {"collapsed": False, "diverged": False, **final}}


def test_table_gives_mean_and_std_over_seeds_and_counts_failures():
    runs = [_row(wall=10.0, **{"train/loss": 1.0, "quality/dist_mean": 0.02}),
            _row(wall=12.0, **{"train/loss": 3.0, "quality/dist_mean": 0.04, "collapsed": True}),
            _row(status="failed", wall=1.0), _row(status="not run")]
    head, _, row = table({"circle": runs}).splitlines()
    cells = dict(zip(head.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["config"] == "circle" and cells["seeds"] == "2/4"
    assert cells["train loss"] == "2.000 ± 1.414"  # mean and sample std of 1 and 3
    assert cells["dist mean"] == "0.030 ± 0.014"
    assert cells["val log p(x)"] == "-"  # no run logged it
    assert (cells["collapsed"], cells["diverged"], cells["wall s / run"]) == ("1", "0", "11 ± 1")
    assert "both modes" not in cells  # data without modes
    with_modes = table({"seed": [_row(both=True), _row(both=False), _row(both=True)]})
    assert with_modes.splitlines()[2].split(" | ")[-2] == "2/3"
    diverged = table({"d": [_row(**{"train/loss": 2.6e14, "diverged": True})]}).splitlines()[2]
    assert "2.6e+14" in diverged  # no fixed-point digits for a diverged run's numbers


def _run(root, rel, **config):
    run = root / rel
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "events.out.tfevents.1.host").write_bytes(b"")
    return run


def test_runs_are_grouped_by_configuration_not_by_folder(tmp_path):
    base = {"model": {"hidden": 64}, "trainer": {"logger": {"init_args": {"save_dir": "x"}}}}
    a0 = _run(tmp_path, "s/version_0", seed_everything=0, **base)
    a1 = _run(tmp_path, "s/version_1", seed_everything=1, **{**base, "trainer": {"logger": {"init_args": {"save_dir": "y"}}}})
    b = _run(tmp_path, "s/version_2", seed_everything=0, model={"hidden": 32})
    _run(tmp_path, "s/version_0/validate/version_0", seed_everything=0, **base)  # an evaluation
    _run(tmp_path, "s/version_3.incomplete-20260101", seed_everything=0, **base)  # moved aside
    ens = _run(tmp_path, "e/version_0", seed_everything=0, model={"hidden": 64, "seeds": [0, 1]})
    m0 = _run(tmp_path, "e/version_0/seed_0", seed_everything=0, model={"hidden": 64})
    found = find_runs(tmp_path)
    assert found == sorted([a0, a1, b, m0]) and ens not in found
    groups = group_runs([a0, a1, b], tmp_path)
    assert groups == {"s [hidden=32]": [b], "s [hidden=64]": [a0, a1]}  # the seed and save_dir do not count
    assert varying_keys([a0, a1, b]) == ["model.hidden"]
