"""Bad input as one line that names the config key and the value expected there.

jsonargparse reports a bad value as a multi-line report (the key, a Union's subtypes, one
bullet per subtype, a nested parser's report inside a ``class_path``'s); argparse reports
unknown and missing keys as options; a class's ``__init__`` raises with its own argument
names. Here each becomes ``<key>: <problem>; expected <what>``, with the key written as the
user writes it (``model.objective.init_args.noise_std``):

- ``translate(message, parser)``: a parser's error message (what the CLI's parser prints);
- ``keyed_error(err, classes)``: an error raised while the config's classes are built;
- ``bad_input(kind, message)``: an error whose message already names its key.

The messages parsed here are jsonargparse's; ``tests/test_errors.py`` pins them.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Sequence

from lightning_vae.compat import parser_actions

# A class built by the config: (class, config key, given as a class_path, its init args).
BuiltClass = tuple[type, str, bool, object]

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)

_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "NoneType": "null", "dict": "a mapping", "list": "a list", "Path": "a path"}


def bad_input(kind: type[Exception], message: str) -> Exception:
    """A bad-input error whose message already names its key (``keyed_error`` keeps it)."""
    err = kind(message)
    err.names_key = True
    return err


def shorten(err: BaseException, limit: int = 80) -> str:
    """``err``'s message on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- jsonargparse's type errors --------------------------------------------------------


def _describe(spec: str) -> str:
    """``<class 'int'>`` -> "an integer"; ``typing.Literal['a', 'b']`` -> "one of 'a', 'b'"."""
    spec = spec.strip()
    m = re.fullmatch(r"<class '([\w.]+)'>", spec)
    if m:
        name = m.group(1)
        return _TYPE_WORDS.get(name.rsplit(".", 1)[-1], f"a class_path of a {name}")
    m = re.fullmatch(r"typing\.Literal\[(.*)\]", spec)
    return f"one of {m.group(1)}" if m else spec


def _expected(text: str) -> str:
    """What a jsonargparse type error expected, in words: "an integer", "true or false or an
    integer", "one of 'constant', 'cosine'"."""
    subtypes = re.search(r"Subtypes: \[(.*)\]\s*$", text, re.M)
    source = (subtypes.group(1) if subtypes
              else " ".join(re.findall(r"Expected a (.+?)(?:\. Got value|$)", text, re.M)))
    specs = re.findall(r"<class '[^']+'>|typing\.Literal\[[^\]]*\]|[\w.]+\[[^\]]*\]", source)
    literals, others = [], []
    for word in map(_describe, specs):
        if word.startswith("one of "):
            literals.append(word[len("one of "):])
        elif word not in others:
            others.append(word)
    if literals:
        null = "null" in others
        others = [w for w in others if w != "null"]
        others.insert(0, "one of " + ", ".join(literals) + (", null" if null else ""))
    return " or ".join(others) or "a valid value"


def _given(text: str) -> str | None:
    """The value jsonargparse was given (None where it only shows a NestedArg/Namespace)."""
    values = re.findall(r"(?:Given|Got) value: (.*)$", text, re.M)
    values = [v.strip() for v in values if not v.strip().startswith(("NestedArg(", "Namespace("))]
    return values[-1] if values else None


def _subkey(key: str, sub: str) -> str:
    """``model.objective`` + ``noise_std`` -> ``model.objective.init_args.noise_std``."""
    if not key:
        return sub
    return f"{key}.{sub}" if sub.startswith("init_args.") else f"{key}.init_args.{sub}"


def _nested(key: str, cause: str) -> str | None:
    """A nested parser's one-line cause (``noise_std: expected ...``) under ``key``."""
    m = re.match(r"([A-Za-z_][\w.]*): (.+)$", one_line(cause))
    return f"{_subkey(key, m.group(1))}: {m.group(2)}" if m else None


def _unimportable(cause: str) -> bool:
    return "has no attribute" in cause or "No module named" in cause


def _import_problem(class_path: str) -> str:
    """Why ``class_path`` does not import, in words: its module is not found, its module's
    own import failed (naming that error), or the module has no such name."""
    import importlib
    import importlib.util

    module, _, name = class_path.rpartition(".")
    if not module:
        return f"{class_path} is not a dotted path (module.Class)"
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that does not import
        found = False
    if not found:
        return f"no module named {module!r} (is it installed, or on PYTHONPATH?)"
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - the user's module raised: that is the news
        return f"importing module {module!r} failed: {type(err).__name__}: {shorten(err, 120)}"
    if not hasattr(mod, name):
        return f"module {module!r} has no {name!r}"
    return f"{class_path} did not import"


def one_line(message: str) -> str:
    """The useful line of a parser error, as ``<key>: <problem>; expected <what>``.

    The cause (e.g. ``noise_std must be >= 0, got -1.0``) or the expected type becomes the
    line; a class_path that does not import becomes "unknown class X; expected a subclass
    of B"; a nested parser's report is named by the key as the user writes it
    (``model.objective.init_args.noise_std``). A one-line message is returned unchanged
    (``one_line`` is idempotent).
    """
    text = str(message).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return text
    head = re.match(r'Parser key "([^"]+)":\s*(.*)$', lines[0])
    key, first = (head.group(1), head.group(2)) if head else ("", lines[0])
    if len(lines) == 1 and not head:
        return text
    given = _given(text)
    unloadable = re.search(r"Unable to load config ['\"](.*)['\"]\s*$", text, re.M)
    if unloadable and key and "class_path" not in text:  # a group given a value, not a mapping
        return (f"{key}: expected a mapping of {key} settings (--{key}.NAME=VALUE, or a YAML mapping or the path "
                f"of a YAML file of them), got {unloadable.group(1)!r}")
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if problem:
        cls, cause = problem.groups()
        if _unimportable(cause):
            base = re.search(r"Subtypes: \[(?:[\w.]+\[)?(?:<class ')?([\w.]+)", text)
            expected = f"; expected a subclass of {base.group(1)}" if base else ""
            return f"{key}: unknown class {cls}: {_import_problem(cls)}{expected}"
        return _nested(key, cause) or f"{key}: {cls}: {one_line(cause)}"
    call = re.search(r"expects a function or a callable class: (.+?)(?:\. Got value: .*)?$", text, re.M)
    if call:
        cause = call.group(1)
        if _unimportable(cause):
            target = re.search(r"Subtypes: \[typing\.Callable\[\[[^\]]*\], ([\w.]+)\]", text)
            what = f" returning a {target.group(1)}" if target else ""
            why = f": {_import_problem(given)}" if isinstance(given, str) else ""
            return f"{key}: unknown class {given}{why}; expected an importable class_path of a callable{what}"
        return _nested(key, cause) or f"{key}: {cause}"
    bullets = [ln[2:].strip() for ln in lines if ln.startswith("- ")]
    causes = [b for b in bullets if not b.startswith(("Expected a", "Does not validate"))]
    if causes:  # e.g. an __init__'s ValueError inside a Union: the cause itself
        return f"{key}: {causes[0]}" if key else causes[0]
    if "Expected a" in text or "Subtypes:" in text:
        got = f", got {given!r}" if given is not None else ""
        return f"{key}: expected {_expected(text)}{got}"
    missing = re.match(r"(File does not exist|Path is not a file): '?(.*?)'?$", first)
    if missing and key == "config":
        from lightning_vae.config_files import packaged

        return (f"--config: {missing.group(1).lower()}: {missing.group(2)}; "
                f"expected the path of a YAML config file or a packaged config: {', '.join(packaged())}")
    rest = " ".join([first, *lines[1:]]).strip()
    return f"{key}: {rest}" if key else rest


# --- unknown and missing keys ------------------------------------------------------------


def _parser_keys(parser) -> list[str]:
    """Every key a parser (and its subcommands' parsers) accepts, e.g. ``model.hidden``."""
    keys: list[str] = []
    for action in parser_actions(parser):
        dest = getattr(action, "dest", None)
        if isinstance(dest, str) and dest not in ("help", "==SUPPRESS==", "subcommand"):
            keys.append(dest)
        # A subcommands action's choices are its {name: parser} map (argparse's own).
        choices = getattr(action, "choices", None)
        subparsers = [p for p in choices.values() if hasattr(p, "parse_args")] if isinstance(choices, dict) else []
        for sub in subparsers:
            keys += [k for k in _parser_keys(sub) if k not in keys]
    return keys


def _did_you_mean(key: str, parser) -> str:
    close = difflib.get_close_matches(key, _parser_keys(parser), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "expected one of the keys that --help lists"


def explain(message: str, parser) -> str:
    """Unknown and missing keys, named as keys, with the nearest key ``parser`` knows; a
    config file that is not YAML. Other messages are returned unchanged."""
    text = str(message)
    m = re.match(r"unrecognized arguments: (.+)$", text)
    if m:
        keys = [a.lstrip("-").split("=", 1)[0] for a in m.group(1).split() if a.startswith("-")]
        if keys:
            return "; ".join(f"{k}: unknown key; {_did_you_mean(k, parser)}" for k in keys)
    m = re.match(r"(?:Subcommand '\w+' does not accept option|Group '([\w.]+)' does not accept option"
                 r"|Option) '([\w.]+)'(?: is not accepted)?$", text)
    if m:  # a group's option is named relative to the group
        key = f"{m.group(1)}.{m.group(2)}" if m.group(1) else m.group(2)
        return f"{key}: unknown key; {_did_you_mean(key, parser)}"
    m = re.match(r"Problems parsing config: (.+)$", text, re.S)
    if m:
        return (f"--config: not valid YAML ({' '.join(m.group(1).split())}); expected a YAML mapping "
                f"of keys to values")
    m = re.match(r"the following arguments are required: (.+)$", text)
    if m:
        return "; ".join(f"{k.strip()}: missing (required, no default); expected a value"
                         for k in m.group(1).split(","))
    return text


def translate(message: str, parser) -> str:
    """A parser's error ``message`` as one line (what the CLI's parser reports)."""
    return one_line(explain(message, parser))


# --- errors raised while the config's classes are built ----------------------------------


def _params(cls: type) -> list[str]:
    """The keyword arguments of a class's ``__init__`` (and its bases')."""
    names: list[str] = []
    for klass in getattr(cls, "__mro__", (cls,)):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != "self" and p.name not in names
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names


def _culprit(err: BaseException, classes: Sequence[BuiltClass]) -> tuple[str, bool, object, list[str]] | None:
    """The config key of the class whose method raised ``err`` (or the error it wraps): the
    innermost frame whose ``self`` is one of ``classes``."""
    chain, e = [], err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):  # the original error first
        frames, tb = [], e.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for frame in reversed(frames):  # innermost first
            obj = frame.f_locals.get("self")
            if obj is None:
                continue
            matches = [c for c in classes if isinstance(obj, c[0])]
            exact = [c for c in matches if type(obj) is c[0]]
            if matches:
                cls, key, class_path, values = (exact or matches)[0]
                return key, class_path, values, _params(cls)
    return None


def _name_the_key(message: str, key: str, class_path: bool, values, params: Iterable[str]) -> str:
    """``noise_std must be >= 0`` raised by ``model.objective`` ->
    ``model.objective.init_args.noise_std must be >= 0``."""
    params = list(params)

    def full(param: str) -> str:
        return f"{key}.init_args.{param}" if class_path else f"{key}.{param}"

    def value(param: str):
        return values.get(param) if hasattr(values, "get") else getattr(values, param, None)

    first = re.match(r"`?([A-Za-z_]\w*)`?(?![\w.])(.*)$", message, re.S)
    if first and first.group(1) in params:
        return full(first.group(1)) + first.group(2)
    for param in params:  # a file name, a class name: the value that is named
        v = value(param)
        if isinstance(v, str) and len(v) >= 4 and v in message:
            return f"{full(param)}: {message}"
    for param in re.findall(r"`(\w+)`", message) + re.findall(r"[A-Za-z_]\w*", message):
        if param in params:
            return f"{full(param)}: {message}"
    return f"{key}: {message}"


def keyed_error(err: BaseException, classes: Sequence[BuiltClass]) -> BaseException:
    """``err`` as a bad-input error whose one-line message starts with its config key: the
    key of the class in ``classes`` whose method raised it, and of its argument the message
    names."""
    if getattr(err, "names_key", False):
        return err
    message = one_line(str(err))
    found = _culprit(err, classes)
    if found:
        message = _name_the_key(message, *found)
    kind = type(err) if isinstance(err, USER_ERRORS) else ValueError
    try:
        return bad_input(kind, message)
    except Exception:  # noqa: BLE001 - an exception class that takes other arguments
        return bad_input(ValueError, message)
