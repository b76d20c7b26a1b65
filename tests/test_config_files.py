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


# --- a config file checked before the parser reads it (config_files.check_file) ----------

SECTIONS = {"model", "data", "trainer", "checkpoint"}


def _check(tmp_path, content: str | bytes, name: str = "c.yaml") -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    config_files.check_file(str(path), SECTIONS)


@pytest.mark.parametrize("content", [
    "model:\n  hidden: 8\n",
    b"\xef\xbb\xbfmodel:\n  hidden: 8\n",  # a UTF-8 byte-order mark
    "model:\ntrainer:\n  max_epochs: 2\n",  # an empty section: its defaults
    "defaults: &d {hidden: 8}\nmodel:\n  <<: *d\n  depth: 1\n",  # an anchor, a merge key
    "trainer:\n  logger: &tb {class_path: pytorch_lightning.loggers.TensorBoardLogger}\n"
    "  callbacks: [*tb, *tb]\n",  # an alias used twice
    "fit:\n  model: {hidden: 8}\n",  # a subcommand's section
    "model: sub.yaml\n",  # a section given as a file of its settings, next to the config
    "seed_everything: 3\n",
    "# a comment\nmodel:\n  hidden: 8  # another\n",
    "model:\n  hidden: 8\n  objective: !!str text\n",  # YAML's own tags are plain values
])
def test_a_config_file_that_is_one_passes(tmp_path, content):
    (tmp_path / "sub.yaml").write_text("hidden: 8\n")
    _check(tmp_path, content)


def test_every_packaged_config_passes_the_check():
    for path in config_files.CONFIG_DIR.rglob("*.yaml"):
        config_files.check_file(str(path), SECTIONS)


def test_a_missing_path_is_left_to_the_parser(tmp_path):
    config_files.check_file(str(tmp_path / "missing.yaml"), SECTIONS)  # its message names the packaged ones


@pytest.mark.parametrize("content,message", [
    ("", r"c.yaml is empty \(no settings\); expected a YAML mapping of keys to values, e.g. 'model: \{hidden: 32\}'$"),
    ("# only a comment\n", r"c.yaml is empty \(no settings\)"),
    ("- a\n- b\n", r"c.yaml holds a YAML list; expected a YAML mapping of keys to values \(model:, data:, trainer:, "
                   r"\.\.\.\)$"),
    ("42\n", r"c.yaml holds the single value '42'; expected a YAML mapping of keys to values"),
    ("model:\n", r"c.yaml sets no values \(every key is empty: model:\); expected a YAML mapping of keys to values"),
    (b"\x89PNG\r\n\x1a\nIHDR", r"c.yaml is not UTF-8 text \(byte 0x89 at offset 0, line 1\); expected a YAML config "
                               r"file in UTF-8 text$"),
    ("model:\n  hidden: 8 # caf\xe9\n".encode("latin-1"), r"c.yaml is not UTF-8 text \(byte 0xe9 at offset 24, line 2\)"),
    ("model: 1\n".encode("utf-16"), r"c.yaml is UTF-16 text; expected UTF-8 text \(save the file as UTF-8\)$"),
    ("model: 1\n".encode("utf-32"), r"c.yaml is UTF-32 text; expected UTF-8 text"),
    (b"model:\n  hidden: 8\x00\n", r"c.yaml holds a NUL byte at offset 18 \(a binary file\?\); expected a YAML config "
                                   r"file in UTF-8 text$"),
    ("model: [unclosed\n", r"^--config: not valid YAML: .*c.yaml \(while parsing a flow sequence, .* at line 2, "
                           r"column 1\); expected a YAML mapping of keys to values$"),
    ("model:\n\thidden: 8\n", r"c.yaml \(while scanning for the next token, found character '\\t' that cannot start any "
                              r"token at line 2, column 1 \(a tab: YAML indents with spaces\)\)"),
    ("model: !!python/object/apply:os.system ['echo x']\n", r"c.yaml: line 1: the YAML tag "
                                                             r"!!python/object/apply:os.system is not allowed \(it "
                                                             r"would build a Python object\); expected plain YAML "
                                                             r"values \(no tags\)$"),
    ("model: !include other.yaml\n", r"c.yaml: line 1: the YAML tag !include is not allowed"),
    ("model:\n  hidden: 8\n  hidden: 16\n", r"c.yaml: line 3: the key model.hidden is given twice \(also on line 2\); "
                                            r"expected each key once$"),
    ("model:\n  hidden: " + "9" * 5000 + "\n", r"c.yaml: line 2: model.hidden is an integer of 5000 digits; expected "
                                               r"a number of at most 4300 digits$"),
    ("trainer:\n  callbacks: &a [*a]\n", r"c.yaml: line 2: trainer.callbacks\[0\] refers to itself \(a recursive YAML "
                                         r"alias\); expected plain values$"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef")),
     r"c.yaml: its YAML aliases expand to more than 10000 values \(a 'billion laughs' file\?\); expected a config "
     r"without nested aliases$"),
    ("model: [1, 2]\n", r"c.yaml: line 1: model holds a YAML list; expected a mapping of model settings \(model: "
                        r"\{key: value, \.\.\.\}; --help lists them\)$"),
    ("trainer: fast\n", r"c.yaml: line 1: trainer holds the single value 'fast'; expected a mapping of trainer "
                        r"settings"),
    ("data: 5\n", r"c.yaml: line 1: data holds the single value '5'; expected a mapping of data settings"),
    ("fit:\n  model: [1]\n", r"c.yaml: line 2: model holds a YAML list; expected a mapping of model settings"),
])
def test_a_config_file_that_is_not_one_is_refused_naming_it(tmp_path, content, message):
    with pytest.raises(config_files.BadConfigFile, match=message) as info:
        _check(tmp_path, content)
    line = str(info.value)
    assert line.startswith("--config: ") and str(tmp_path / "c.yaml") in line and "\n" not in line, line


def test_a_config_file_that_is_too_big_a_directory_or_unreadable_is_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    big.write_text("#" * (config_files.MAX_BYTES + 1))
    with pytest.raises(config_files.BadConfigFile, match=r"big.yaml is 1.0 MB; expected a YAML config file of at "
                                                         r"most 1 MiB \(a config is a few kB: is it a data file\?\)$"):
        config_files.check_file(str(big))
    with pytest.raises(config_files.BadConfigFile, match=r"^--config: .* is a directory; expected the path of a YAML "
                                                         r"config file$"):
        config_files.check_file(str(tmp_path))
    locked = tmp_path / "locked.yaml"
    locked.write_text("model: {hidden: 8}\n")

    def denied(self):  # chmod 000 does not stop root: the error itself
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_bytes", denied)
    with pytest.raises(config_files.BadConfigFile, match=r"^--config: .*locked.yaml cannot be read \(permission "
                                                         r"denied\); expected a readable YAML config file$"):
        config_files.check_file(str(locked))


def test_a_config_given_inline_is_checked_as_a_file_is():
    config_files.check_text("{model: {hidden: 8}}", SECTIONS)
    with pytest.raises(config_files.BadConfigFile, match=r"^--config: the value '\{model: \[1\]\}': line 1: model "
                                                         r"holds a YAML list; expected a mapping of model settings"):
        config_files.check_text("{model: [1]}", SECTIONS)
    with pytest.raises(config_files.BadConfigFile, match=r"^--config: not valid YAML: the value '\{model: \[' "):
        config_files.check_text("{model: [", SECTIONS)
