"""The configs that ship with the package, found by name as well as by path.

``--config seed_spread`` (or ``seed_spread.yaml``, ``trainer/gpu``) names a packaged config;
``--config configs/seed_spread.yaml`` (the repository's path, as the README writes it) finds
the packaged file from any directory when no such file exists there. A path that exists is
always taken as given, so a user's own config (or an edited copy of a packaged one) wins.
Every packaged config is self-contained (no includes), so a copy works wherever it is.
"""

from __future__ import annotations

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
