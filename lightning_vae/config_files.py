"""The configs that ship with the package, found by name as well as by path.

``--config seed_spread`` (or ``seed_spread.yaml``, ``trainer/gpu``) names a packaged config;
``--config configs/seed_spread.yaml`` (the repository's path, as the README writes it) finds
the packaged file from any directory when no such file exists there. A path that exists is
always taken as given, so a user's own config (or an edited copy of a packaged one) wins.
Every packaged config is self-contained (no includes), so a copy works wherever it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_PREFIXES = ("lightning_vae/configs/", "configs/")


def packaged() -> list[str]:
    """The packaged configs' names (``seed_spread``, ``trainer/gpu``, ...), sorted."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.rglob("*.yaml"))


def find(value: str) -> Path | None:
    """The packaged config ``value`` names (a name, with or without ``.yaml``, or a path
    under ``configs/``), or None."""
    name = value.replace("\\", "/")
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    name = name.removesuffix(".yaml").removesuffix(".yml")
    if not name or name.startswith(("/", ".")):
        return None
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def resolve(value: str) -> str:
    """A ``--config`` value as the file to read: as given where that exists (or is not a
    config name at all: the parser reports it), else the packaged config it names."""
    if Path(value).exists():
        return value
    found = find(value)
    return str(found) if found is not None else value


def resolve_argv(argv: list[str]) -> list[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` resolved (``resolve``)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, resolve(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


def names_model(argv: list[str], class_paths: Iterable[str]) -> bool:
    """Whether the command line's model is one of ``class_paths``: the last
    ``model.class_path`` that its ``--config`` files (resolved as ``resolve_argv`` does; a
    subcommand's section too) or a ``--model.class_path`` / ``--model`` argument set. A file
    that cannot be read says nothing here (the parser reports it)."""
    import yaml

    found, i = None, 0
    argv = resolve_argv(list(argv))
    while i < len(argv):
        arg, value = argv[i], None
        key, eq, inline = arg.partition("=")
        if key in ("--config", "--model.class_path", "--model"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
        i += 1
        if value is None:
            continue
        if key != "--config":
            found = value
            continue
        try:
            root = yaml.safe_load(Path(value).read_text()) if Path(value).is_file() else None
        except Exception:  # noqa: BLE001 - the parser's one-line error will name it
            root = None
        for section in [root, *(root.get(s) for s in SUBCOMMANDS)] if isinstance(root, dict) else []:
            model = section.get("model") if isinstance(section, dict) else None
            if isinstance(model, dict) and isinstance(model.get("class_path"), str):
                found = model["class_path"]
    return found in set(class_paths)


# --- a config file checked before the parser reads it ------------------------------------

MAX_BYTES = 1 << 20  # a config is a few kB; a bigger file is another kind of file
MAX_EXPANDED_NODES = 10_000  # what YAML aliases may expand to (omegaconf's own limit)
INT_DIGITS = 4300  # Python's limit on converting a string of digits to an int
SUBCOMMANDS = ("fit", "validate", "test", "predict")
_STANDARD_TAG = "tag:yaml.org,2002:"
_SAFE_TAGS = {_STANDARD_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp",
                                          "binary", "omap", "pairs", "set", "merge", "value")}
_ENCODINGS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
              (b"\xfe\xff", "UTF-16"))


class BadConfigFile(ValueError):
    """A config file that cannot be a config: its one-line message names the file."""


def check_file(path: str | Path, sections: Iterable[str] = (), key: str = "--config") -> None:
    """Refuse a config file the parser would misread, with one line naming the file and
    what was expected (``BadConfigFile``): a directory, an unreadable file, one of more than
    ``MAX_BYTES``, text that is not UTF-8 (UTF-16, Latin-1, binary, a NUL byte), YAML that
    does not parse, or that parses to something other than a mapping of keys (an empty
    file, a list, a scalar); a tag other than YAML's own (``!!python/object`` would run
    code: the file is composed, never constructed, before this says so), a key given twice
    in one mapping, aliases that expand beyond ``MAX_EXPANDED_NODES`` nodes (a "billion
    laughs"), an integer too long to convert; and, for each key of ``sections`` (the
    parser's groups: ``model``, ``data``, ``trainer``...), a value that is not a mapping of
    that group's settings (``model: [1, 2]``), null, or the path of a file of them. A path
    that does not exist is left to the parser (its message names the packaged configs)."""
    import yaml

    p = Path(path)
    if not p.exists() or not (p.is_file() or p.is_dir()):
        return  # missing (the parser says so), or a pipe or a device: read as it is
    if p.is_dir():
        raise BadConfigFile(f"{key}: {path} is a directory; expected the path of a YAML config file")
    try:
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise BadConfigFile(f"{key}: {path} is {size / 1e6:.1f} MB; expected a YAML config file of at most "
                                f"{MAX_BYTES // 2**20} MiB (a config is a few kB: is it a data file?)")
        raw = p.read_bytes()
    except PermissionError as err:
        raise BadConfigFile(f"{key}: {path} cannot be read (permission denied); expected a readable YAML config "
                            f"file") from err
    except OSError as err:
        raise BadConfigFile(f"{key}: {path} cannot be read ({err.strerror or err}); expected a readable YAML "
                            f"config file") from err
    encoding = next((name for bom, name in _ENCODINGS if raw.startswith(bom)), None)
    if encoding is not None:
        raise BadConfigFile(f"{key}: {path} is {encoding} text; expected UTF-8 text (save the file as UTF-8)")
    if b"\x00" in raw:
        raise BadConfigFile(f"{key}: {path} holds a NUL byte at offset {raw.index(0)} (a binary file?); "
                            f"expected a YAML config file in UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise BadConfigFile(f"{key}: {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}, "
                            f"line {line}); expected a YAML config file in UTF-8 text") from err
    check_text(text, sections, key, str(path), p.parent)


def check_text(text: str, sections: Iterable[str] = (), key: str = "--config", name: str | None = None,
               folder: Path | None = None) -> None:
    """``check_file``'s checks of a config's text (``--config '{model: {hidden: 8}}'`` gives
    the config itself): ``name`` is the file it came from (None: the value itself is
    shown), ``folder`` where the paths it names are read from (the current directory)."""
    import yaml

    if name is None:
        name = f"the value {text if len(text) <= 40 else text[:39] + '…'!r}"
    folder = Path.cwd() if folder is None else folder
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: no tag is acted on
    except yaml.YAMLError as err:
        raise BadConfigFile(f"{key}: not valid YAML: {name} ({_yaml_problem(err)}); expected a YAML mapping of "
                            f"keys to values") from err
    where = f"{key}: {name}"
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value.strip() == ""):
        raise BadConfigFile(f"{where} is empty (no settings); expected a YAML mapping of keys to values, e.g. "
                            f"'model: {{hidden: 32}}'")
    _check_nodes(root, where)
    if not isinstance(root, yaml.MappingNode):
        raise BadConfigFile(f"{where} holds {_describe(root)}; expected a YAML mapping of keys to values "
                            f"(model:, data:, trainer:, ...)")
    if all(_is_null(v) for _, v in root.value):
        raise BadConfigFile(f"{where} sets no values (every key is empty: "
                            f"{', '.join(str(k.value) + ':' for k, _ in root.value[:4])}); expected a YAML mapping of "
                            f"keys to values, e.g. 'model: {{hidden: 32}}'")
    _check_sections(root, set(sections), where, folder)


def _yaml_problem(err: Exception) -> str:
    """A YAML error as one line: what is wrong and where (line, column)."""
    parts = [getattr(err, "context", None), getattr(err, "problem", None)]
    text = ", ".join(str(s) for s in parts if s) or " ".join(str(err).split())
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        text += f" at line {mark.line + 1}, column {mark.column + 1}"
    if "'\\t'" in text:
        text += " (a tab: YAML indents with spaces)"
    return text


def _describe(node) -> str:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return "a YAML list"
    if isinstance(node, yaml.MappingNode):
        return "a YAML mapping"
    value = node.value if len(node.value) <= 40 else node.value[:39] + "…"
    return f"the single value {value!r}"


def _is_null(node) -> bool:
    import yaml

    return isinstance(node, yaml.ScalarNode) and node.tag == _STANDARD_TAG + "null"


def _check_nodes(root, where: str) -> None:
    """Tags, duplicate keys, integers and alias expansion of a composed YAML document."""
    import yaml

    expanded: dict[int, int] = {}  # id(node) -> nodes it stands for, aliases expanded
    physical = 0

    def size(node, path: str, stack: set[int]) -> int:
        nonlocal physical
        if id(node) in expanded:
            return expanded[id(node)]
        if id(node) in stack:
            raise BadConfigFile(f"{where}: line {node.start_mark.line + 1}: {path or 'the document'} refers to "
                                f"itself (a recursive YAML alias); expected plain values")
        physical += 1
        line = node.start_mark.line + 1
        if node.tag not in _SAFE_TAGS:
            shown = node.tag.replace(_STANDARD_TAG, "!!")
            raise BadConfigFile(f"{where}: line {line}: the YAML tag {shown} is not allowed (it would build a "
                                f"Python object); expected plain YAML values (no tags)")
        if isinstance(node, yaml.ScalarNode):
            digits = node.value.lstrip("+-").replace("_", "")
            if node.tag == _STANDARD_TAG + "int" and len(digits) > INT_DIGITS:
                raise BadConfigFile(f"{where}: line {line}: {path or 'the value'} is an integer of {len(digits)} "
                                    f"digits; expected a number of at most {INT_DIGITS} digits")
            expanded[id(node)] = 1
            return 1
        stack = stack | {id(node)}
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                if name is not None and name != "<<":
                    if name in seen:
                        raise BadConfigFile(f"{where}: line {k.start_mark.line + 1}: the key "
                                            f"{_join(path, name)} is given twice (also on line {seen[name]}); "
                                            f"expected each key once")
                    seen[name] = k.start_mark.line + 1
                total += size(k, path, stack) + size(v, _join(path, str(name)), stack)
        else:
            for i, v in enumerate(node.value):
                total += size(v, f"{path}[{i}]", stack)
        if total > MAX_EXPANDED_NODES and total > 2 * physical:
            raise BadConfigFile(f"{where}: its YAML aliases expand to more than {MAX_EXPANDED_NODES} values (a "
                                f"'billion laughs' file?); expected a config without nested aliases")
        expanded[id(node)] = total
        return total

    size(root, "", set())


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _check_sections(root, sections: set[str], where: str, folder: Path) -> None:
    """Each top-level key that is a group of the parser holds a mapping, null, or the path
    of a file (read relative to the config's folder); a subcommand's key (``fit:``) holds
    a mapping whose groups are checked the same way."""
    import yaml

    for k, v in root.value:
        name = k.value if isinstance(k, yaml.ScalarNode) else None
        if name in SUBCOMMANDS and isinstance(v, yaml.MappingNode):
            _check_sections(v, sections, where, folder)
            continue
        if name not in sections or isinstance(v, yaml.MappingNode) or _is_null(v):
            continue
        if isinstance(v, yaml.ScalarNode) and v.tag == _STANDARD_TAG + "str" and (folder / v.value).is_file():
            continue  # the path of a file of the group's settings (the parser reads it)
        raise BadConfigFile(f"{where}: line {v.start_mark.line + 1}: {name} holds {_describe(v)}; expected a "
                            f"mapping of {name} settings ({name}: {{key: value, ...}}; --help lists them)")
