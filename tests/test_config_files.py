"""The configs ship in the package and are found by name, or by the repository's path from
any directory; each is self-contained, so a copy works wherever it is."""

from __future__ import annotations

import shutil

import pytest
import yaml

from conftest import CONFIGS
from lightning_vae import config_files


def test_packaged_configs_are_listed_by_name():
    names = config_files.packaged()
    assert {"seed_elbo", "seed_spread", "circle_spread", "trainer/gpu", "trainer/ddp_cpu2"} <= set(names)
    assert (CONFIGS / "seed_spread.yaml").resolve() == config_files.CONFIG_DIR / "seed_spread.yaml"


@pytest.mark.parametrize("value", ["seed_spread", "seed_spread.yaml", "configs/seed_spread.yaml",
                                   "lightning_vae/configs/seed_spread.yaml"])
def test_a_packaged_config_is_found_from_any_directory(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config_files.resolve(value) == str(config_files.CONFIG_DIR / "seed_spread.yaml")


def test_an_existing_path_wins_and_unknown_names_are_left_to_the_parser(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    own = tmp_path / "configs" / "seed_spread.yaml"
    own.write_text("seed_everything: 7\n")
    assert config_files.resolve("configs/seed_spread.yaml") == "configs/seed_spread.yaml"
    for value in ("nope", "../seed_spread", "/abs/missing.yaml", ""):
        assert config_files.resolve(value) == value
    assert config_files.resolve_argv(["fit", "--config", "seed_elbo", "--config=trainer/cpu", "--x=1"]) == [
        "fit", "--config", str(config_files.CONFIG_DIR / "seed_elbo.yaml"),
        f"--config={config_files.CONFIG_DIR / 'trainer' / 'cpu.yaml'}", "--x=1"]


@pytest.mark.parametrize("name", config_files.packaged())
def test_every_packaged_config_is_self_contained(name):
    """No value refers to another file (an include would break in a copy)."""
    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)
        else:
            yield node

    config = yaml.safe_load((config_files.CONFIG_DIR / f"{name}.yaml").read_text())
    assert not [v for v in walk(config) if isinstance(v, str) and v.endswith((".yaml", ".yml"))], name


def test_a_copied_config_trains_where_it_is(tmp_path, monkeypatch):
    from conftest import TINY, run_dirs
    from lightning_vae.cli import main

    copy = tmp_path / "elsewhere" / "mine.yaml"
    copy.parent.mkdir()
    shutil.copy(CONFIGS / "circle_spread.yaml", copy)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(copy), *TINY, "--trainer.max_epochs=1", "--trainer.logger.init_args.save_dir=logs"])
    (run,) = run_dirs(tmp_path / "logs", "circle_spread")
    assert (run / "checkpoints" / "last.ckpt").exists()


def test_a_missing_config_names_the_packaged_ones(tmp_path, monkeypatch, capsys):
    from lightning_vae.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "seed_sprad"])
    assert exit_.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(err) == 1 and "seed_sprad" in err[0] and "seed_spread" in err[0], err
    assert not any(tmp_path.iterdir())
