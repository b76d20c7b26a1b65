"""The translation of real jsonargparse errors into one line that names the key and the
value expected there (``lightning_vae.errors``).

Each case builds a small ``jsonargparse.ArgumentParser``, parses bad input with
``exit_on_error=False`` and translates the ``ArgumentError``'s message, so that a jsonargparse
release that words its errors differently fails here (the range in pyproject.toml is the one
these tests passed with). A class_path's init args are parsed by a nested parser of the same
class as the outer one; ``Translating`` translates in ``error`` as the CLI's parser does, so
the nested report reaches the outer one already translated, as in the CLI.
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Union

import jsonargparse
import pytest
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from lightning_vae.config_files import packaged
from lightning_vae.errors import bad_input, explain, keyed_error, one_line, shorten, translate

VERSION = f"jsonargparse {jsonargparse.__version__}"
HERE = __name__  # class_paths below name classes of this module


class Base:
    def __init__(self, x: float = 1.0):
        if x < 0:
            raise ValueError(f"x must be >= 0, got {x}")
        self.x = x


class Sub(Base):
    def __init__(self, x: float = 1.0, y: int = 2):
        super().__init__(x)
        self.y = y


class Needs:
    def __init__(self, path: str):
        self.path = path


class Group:
    def __init__(self, hidden: int = 4, obj: Optional[Base] = None):
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.hidden, self.obj = hidden, obj


class Translating(ArgumentParser):
    """Translates its errors, as the CLI's parser does (also in its nested parsers)."""

    def error(self, message: str, ex: Exception | None = None):
        super().error(translate(message, getattr(ex, "subcommand_parser", None) or self), ex)


def _parser(cls: type[ArgumentParser] = ArgumentParser) -> ArgumentParser:
    p = cls(exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--x", type=float, default=1.0)
    p.add_argument("--flag", type=bool, default=False)
    p.add_argument("--mode", type=Literal["a", "b"], default="a")
    p.add_argument("--opt", type=Optional[int], default=None)
    p.add_argument("--seed", type=Union[bool, int], default=0)
    p.add_argument("--choice", type=Optional[Literal["a", "b"]], default=None)
    p.add_argument("--obj", type=Optional[Base], default=None)
    p.add_argument("--fn", type=Optional[Callable[[int], Base]], default=None)
    p.add_argument("--needs", type=Optional[Needs], default=None)
    p.add_class_arguments(Group, "model")
    p.add_argument("--req", type=int, required=True)
    return p


def _error(parser: ArgumentParser, args: list[str]) -> str:
    """The message of the ArgumentError ``parser`` raises on ``args``."""
    with pytest.raises(ArgumentError) as info:
        parser.parse_args(args)
    return str(info.value)


def _check(line: str, expected: str, raw: str) -> None:
    assert line == expected, (f"{VERSION}: the translation changed\n  got:      {line!r}\n"
                              f"  expected: {expected!r}\n  from jsonargparse's message:\n{raw}")
    assert "\n" not in line


# (arguments, the one line): messages of the outer parser itself, translated here
TOP_LEVEL = [
    (["--n=abc"], "n: expected an integer, got 'abc'"),
    (["--x=abc"], "x: expected a number, got 'abc'"),
    (["--flag=maybe"], "flag: expected true or false, got 'maybe'"),
    (["--mode=c"], "mode: expected one of 'a', 'b', got 'c'"),
    (["--opt=abc"], "opt: expected an integer or null, got 'abc'"),
    (["--seed=abc"], "seed: expected true or false or an integer, got 'abc'"),
    (["--choice=c"], "choice: expected one of 'a', 'b', null, got 'c'"),
    (["--model.hidden=abc"], "model.hidden: expected an integer, got 'abc'"),
    ([f"--obj={HERE}.Nope"],
     f"obj: unknown class {HERE}.Nope: module '{HERE}' has no 'Nope'; expected a subclass of {HERE}.Base"),
    (["--obj=no_such_module.Nope"],
     f"obj: unknown class no_such_module.Nope: no module named 'no_such_module' (is it installed, or on "
     f"PYTHONPATH?); expected a subclass of {HERE}.Base"),
    ([f"--fn={HERE}.Nope"], f"fn: unknown class {HERE}.Nope: module '{HERE}' has no 'Nope'; expected an "
                           f"importable class_path of a callable returning a {HERE}.Base"),
    (["--nn=3"], "nn: unknown key; did you mean n?"),
    (["--model.hiden=3"], "model.hiden: unknown key; did you mean model.hidden?"),
    (["--model.hidden=3", "--mdoel.obj=x"], "mdoel.obj: unknown key; did you mean model.obj?"),
]


@pytest.mark.parametrize("args,expected", TOP_LEVEL, ids=[" ".join(a) for a, _ in TOP_LEVEL])
def test_a_parser_error_is_one_line_naming_key_and_expected_value(args, expected):
    parser = _parser()
    raw = _error(parser, [*args, "--req=1"])
    _check(translate(raw, parser), expected, raw)


# (arguments, the one line): a class_path's init args, reported by a nested parser
NESTED = [
    ([f"--obj={HERE}.Sub", "--obj.init_args.y=abc"], "obj.init_args.y: expected an integer, got 'abc'"),
    ([f"--obj={HERE}.Sub", "--obj.init_args.yy=1"], "obj.init_args.yy: unknown key; did you mean y?"),
    ([f"--obj={HERE}.Sub", "--obj.init_args.q=1"],
     "obj.init_args.q: unknown key; expected one of the keys that --help lists"),
    ([f"--model.obj={HERE}.Sub", "--model.obj.init_args.x=abc"],
     "model.obj.init_args.x: expected a number, got 'abc'"),
    ([f"--fn={HERE}.Sub", "--fn.init_args.y=abc"], "fn.init_args.y: expected an integer, got 'abc'"),
    ([f"--needs={HERE}.Needs"], "needs.init_args.path: missing (required, no default); expected a value"),
]


@pytest.mark.parametrize("args,expected", NESTED, ids=[" ".join(a) for a, _ in NESTED])
def test_a_nested_error_is_named_by_its_full_key(args, expected):
    raw = _error(_parser(Translating), [*args, "--req=1"])
    _check(raw, expected, raw)  # Translating raised it translated already
    assert one_line(raw) == raw  # idempotent: the CLI translates the outer line once more


def test_a_missing_key_is_named():
    parser = _parser()
    raw = _error(parser, [])
    _check(translate(raw, parser), "req: missing (required, no default); expected a value", raw)


def test_a_config_file_that_is_missing_or_not_yaml_is_named(tmp_path):
    parser = _parser()
    raw = _error(parser, ["--config", str(tmp_path / "missing.yaml"), "--req=1"])
    _check(translate(raw, parser), f"--config: file does not exist: {tmp_path / 'missing.yaml'}; "
                                   f"expected the path of a YAML config file or a packaged config: "
                                   f"{', '.join(packaged())}", raw)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n  hidden: 3\n")
    raw = _error(parser, ["--config", str(broken), "--req=1"])
    line = translate(raw, parser)
    assert line.startswith("--config: not valid YAML (") and "line 1" in line, f"{VERSION}: {line!r}\n{raw}"
    assert line.endswith("); expected a YAML mapping of keys to values") and "\n" not in line, line


@pytest.mark.parametrize("value", ["[1,2]", "5", "fast"])
def test_a_group_given_a_value_is_named_with_the_mapping_expected(value):
    parser = _parser()
    raw = _error(parser, [f"--model={value}", "--req=1"])
    _check(translate(raw, parser), f"model: expected a mapping of model settings (--model.NAME=VALUE, or a YAML "
                                   f"mapping or the path of a YAML file of them), got {value!r}", raw)


def test_an_unknown_key_in_a_config_file_is_named_with_its_group(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  hiden: 3\n")
    parser = _parser()
    raw = _error(parser, ["--config", str(typo), "--req=1"])
    _check(translate(raw, parser), "model.hiden: unknown key; did you mean model.hidden?", raw)


def _with_subcommand() -> ArgumentParser:
    main = Translating(exit_on_error=False)
    main.add_argument("--config", action=ActionConfigFile)
    fit = Translating(exit_on_error=False)
    fit.add_argument("--config", action=ActionConfigFile)
    fit.add_class_arguments(Group, "model")
    main.add_subcommands().add_subcommand("fit", fit)
    return main


@pytest.mark.parametrize("where", ["command line", "subcommand's config", "main config"])
def test_an_unknown_key_of_a_subcommand_is_named(tmp_path, where):
    (tmp_path / "fit.yaml").write_text("model:\n  hiden: 3\n")
    (tmp_path / "main.yaml").write_text("fit:\n  model:\n    hiden: 3\n")
    args = {"command line": ["fit", "--model.hiden=3"],
            "subcommand's config": ["fit", "--config", str(tmp_path / "fit.yaml")],
            "main config": ["--config", str(tmp_path / "main.yaml")]}[where]
    raw = _error(_with_subcommand(), args)
    _check(raw, "model.hiden: unknown key; did you mean model.hidden?", raw)


def test_an_init_error_names_the_key_of_the_class_and_argument():
    parser = _parser()
    # ``instantiate`` since 4.49 (``instantiate_classes`` is deprecated there)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = parser.parse_args([f"--obj={HERE}.Base", "--obj.init_args.x=-1", "--req=1"])
    with pytest.raises(ValueError) as info:
        instantiate(cfg)
    classes = [(Base, "obj", True, cfg.obj.init_args), (Group, "model", False, cfg.model)]
    err = keyed_error(info.value, classes)
    _check(str(err), "obj.init_args.x must be >= 0, got -1.0", str(info.value))
    assert isinstance(err, ValueError) and keyed_error(err, []) is err  # marked: kept as is

    cfg = parser.parse_args(["--model.hidden=0", "--req=1"])
    with pytest.raises(ValueError) as info:
        instantiate(cfg)
    _check(str(keyed_error(info.value, classes)), "model.hidden must be >= 1, got 0", str(info.value))


def test_an_error_of_no_known_class_is_one_line_and_a_value_error():
    err = keyed_error(RuntimeError("something\n  went wrong"), [])
    assert isinstance(err, ValueError) and str(err) == "something went wrong"
    assert one_line('Parser key "k":\n  odd report\n  in two lines') == "k: odd report in two lines"


def test_helpers():
    err = bad_input(FileNotFoundError, "ckpt_path: nope")
    assert isinstance(err, FileNotFoundError) and err.names_key
    assert shorten(ValueError("a\n b" + "c" * 100), limit=10) == "a bcccccc…"
    assert explain("some other message", _parser()) == "some other message"
    assert one_line("") == "" and one_line("one line") == "one line"
