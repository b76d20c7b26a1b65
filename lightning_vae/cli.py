"""The Lightning CLI: ``python -m lightning_vae {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

import logging
import os
import re
import sys
import zipfile
from pathlib import Path

from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from lightning_vae.callbacks import (
    DecoderVarianceMonitor,
    DivergenceGuard,
    HParamsSummary,
    PredictionWriter,
    SampleFigure,
    SampleQuality,
)
from lightning_vae.data import ManifoldDataModule
from lightning_vae.model import VAE

LOG_ROOT = "logs"
TRACEBACK_ENV = "LVAE_TRACEBACK"  # set to 1 to see the full traceback of an error

LOGGER_DEFAULT = {
    "trainer.logger": {
        "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
        "init_args": {"save_dir": LOG_ROOT, "name": "default", "default_hp_metric": False},
    },
}

TRAINER_DEFAULTS = {
    "max_epochs": 60,
    "log_every_n_steps": 10,
    "default_root_dir": LOG_ROOT,
    # The datamodule's sampler shards batches across ranks itself (and resumes exactly).
    "use_distributed_sampler": False,
}


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "NoneType": "null", "dict": "a mapping", "list": "a list", "Path": "a path"}


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


def one_line(message: str) -> str:
    """The useful line of a parser error, as ``<key>: <problem>; expected <what>``.

    jsonargparse reports a bad value as a multi-line report: the key (``Parser key "..."``),
    the types a Union accepts, and one bullet per subtype; a bad value inside a ``class_path``
    group nests the inner parser's (already one-line) report in the outer one. The cause (e.g.
    ``noise_std must be >= 0, got -1.0``) or the expected type becomes the line; a class_path
    that does not import becomes "unknown class X; expected a subclass of B"; a nested key is
    named as the user writes it (``model.objective.init_args.noise_std``). A one-line message
    is returned unchanged (``one_line`` is idempotent).
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
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if problem:
        cls, cause = problem.groups()
        if "has no attribute" in cause or "No module named" in cause:
            base = re.search(r"Subtypes: \[(?:[\w.]+\[)?(?:<class ')?([\w.]+)", text)
            expected = f"; expected a subclass of {base.group(1)}" if base else ""
            return f"{key}: unknown class {cls}{expected}"
        return _nested(key, cause) or f"{key}: {cls}: {one_line(cause)}"
    call = re.search(r"expects a function or a callable class: (.+?)(?:\. Got value: .*)?$", text, re.M)
    if call:
        cause = call.group(1)
        if "has no attribute" in cause or "No module named" in cause:
            target = re.search(r"Subtypes: \[typing\.Callable\[\[[^\]]*\], ([\w.]+)\]", text)
            what = f" returning a {target.group(1)}" if target else ""
            return f"{key}: unknown class {given}; expected an importable class_path of a callable{what}"
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
        return (f"--config: {missing.group(1).lower()}: {missing.group(2)}; "
                f"expected the path of a YAML config file")
    rest = " ".join([first, *lines[1:]]).strip()
    return f"{key}: {rest}" if key else rest


def _parser_keys(parser) -> list[str]:
    """Every key a parser (and its subcommands' parsers) accepts, e.g. ``model.hidden``."""
    keys: list[str] = []
    for action in getattr(parser, "_actions", []):
        dest = getattr(action, "dest", None)
        if isinstance(dest, str) and dest not in ("help", "==SUPPRESS==", "subcommand"):
            keys.append(dest)
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            keys += [k for k in _parser_keys(sub) if k not in keys]
    return keys


def _did_you_mean(key: str, parser) -> str:
    import difflib

    keys = _parser_keys(parser)
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return "expected one of the keys that --help lists"


def _explain(message: str, parser) -> str:
    """Unknown and missing keys, named as keys, with the nearest known key."""
    text = str(message)
    m = re.match(r"unrecognized arguments: (.+)$", text)
    if m:
        keys = [a.lstrip("-").split("=", 1)[0] for a in m.group(1).split() if a.startswith("-")]
        if keys:
            return "; ".join(f"{k}: unknown key; {_did_you_mean(k, parser)}" for k in keys)
    m = re.match(r"(?:Subcommand '\w+' does not accept option|Group '[\w.]+' does not accept option"
                 r"|Option) '([\w.]+)'(?: is not accepted)?$", text)
    if m:
        return f"{m.group(1)}: unknown key; {_did_you_mean(m.group(1), parser)}"
    m = re.match(r"Problems parsing config: (.+)$", text, re.S)
    if m:
        return (f"--config: not valid YAML ({' '.join(m.group(1).split())}); expected a YAML mapping "
                f"of keys to values")
    m = re.match(r"the following arguments are required: (.+)$", text)
    if m:
        return "; ".join(f"{k.strip()}: missing (required, no default); expected a value"
                         for k in m.group(1).split(","))
    return text


PROG = "python -m lightning_vae"  # how the user ran the CLI, for the --help tip (set by run_cli)


class _Parser(LightningArgumentParser):
    """Parse errors are one line, ``lightning_vae: error: <key>: <problem>; expected ...``
    (plus a ``--help`` tip), not the full usage."""

    def print_usage(self, file=None) -> None:
        pass

    def error(self, message: str, ex: Exception | None = None):
        try:
            from jsonargparse._common import debug_mode_active
        except ImportError:  # a jsonargparse without it
            def debug_mode_active() -> bool:
                return False

        parser = getattr(ex, "subcommand_parser", None) or self
        message = one_line(_explain(message, parser))
        if not self.exit_on_error or debug_mode_active():  # a nested parser: the outer one reports
            super().error(message, ex)
        sub = parser.prog.split()[-1] if parser.prog and len(parser.prog.split()) > 1 else ""
        sys.stderr.write(f"lightning_vae: error: {message}\n"
                         f"tip: {' '.join(filter(None, [PROG, sub]))} --help lists every key and its type\n")
        self.exit(2)


DEFAULT_STEPS_PER_BATCH = 32


class VAECLI(LightningCLI):
    """LightningCLI over ``VAE`` and ``ManifoldDataModule`` with the monitoring callbacks.

    Each callback is its own config group (``decoder_monitor``, ``sample_quality``,
    ``sample_figure``, ``divergence_guard``, ``hparams_summary``, ``prediction_writer``,
    ``checkpoint``), always
    present and configurable. The data's dimension reaches the model by a link.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dim", "model.data_dim", apply_on="instantiate")
        parser.link_arguments("data.steps_per_batch", "model.steps_per_batch")
        parser.add_lightning_class_args(DecoderVarianceMonitor, "decoder_monitor")
        parser.add_lightning_class_args(SampleQuality, "sample_quality")
        parser.add_lightning_class_args(SampleFigure, "sample_figure")
        parser.add_lightning_class_args(DivergenceGuard, "divergence_guard")
        parser.add_lightning_class_args(HParamsSummary, "hparams_summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # A checkpoint every epoch, reachable as last.ckpt (what a killed run resumes from). In
        # Lightning 2.6 last.ckpt is only refreshed when a top-k checkpoint is saved, so
        # save_top_k 1 (the newest epoch-named file, replaced each epoch) is needed: with 0,
        # last.ckpt was written at the end of training only. save_last "link": last.ckpt is a
        # relative symlink to that file, one write per epoch instead of two.
        # 32 optimizer steps per Lightning step: the same run as 1 (same batches, weights,
        # logged scalars, collapse and divergence steps), with Lightning's per-step overhead
        # paid once per 32 (see lightning_vae/steps.py).
        parser.set_defaults({"checkpoint.save_last": "link", "checkpoint.save_top_k": 1,
                             "data.steps_per_batch": DEFAULT_STEPS_PER_BATCH, **LOGGER_DEFAULT})

    # --- bad input: one line that names the key, before anything is written --------------

    def _parse_ckpt_path(self) -> None:
        """Lightning's: the checkpoint's model hyperparameters replace the config's. Here a
        missing or unreadable checkpoint, or one whose model settings differ from what the
        config asks for (Lightning would silently take the checkpoint's), is a one-line error."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT or str(ckpt_path).startswith("registry"):
            return
        import torch

        if not Path(ckpt_path).is_file():
            raise _bad(FileNotFoundError, f"ckpt_path: checkpoint file not found: {ckpt_path}; expected an "
                                          f"existing .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
        try:
            if not zipfile.is_zipfile(ckpt_path):  # torch.save writes a zip archive
                raise ValueError("not a torch.save zip archive")
            ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - bad bytes raise pickle, zip or runtime errors
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {_short(err)}"
            raise _bad(ValueError, f"ckpt_path: {ckpt_path} is not a readable checkpoint ({reason}); "
                                   f"expected a .ckpt file written by {PROG} fit") from err
        if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise _bad(ValueError, f"ckpt_path: {ckpt_path} holds no state_dict; expected a .ckpt file "
                                   f"written by {PROG} fit")
        self._ckpt_shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if hasattr(v, "shape")}
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        model = self.config[sub].get("model")
        before = _flat(model.clone() if model is not None else None)
        parsers = [self.parser, self._parser(sub)]
        saved = [p.exit_on_error for p in parsers]
        try:
            for p in parsers:
                p.exit_on_error = False
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError
            raise _bad(ValueError, f"ckpt_path: {ckpt_path} holds a model this CLI cannot build "
                                   f"({one_line(str(err))}); expected a checkpoint of a "
                                   f"{self._model_class.__name__} run") from err
        finally:
            for p, value in zip(parsers, saved):
                p.exit_on_error = value
        after = _flat(self.config[sub].get("model"))
        try:
            defaults = _flat(self._parser(sub).get_defaults().get("model"))
        except Exception:  # noqa: BLE001 - without defaults, every difference counts
            defaults = {}
        # A setting left at its default takes the checkpoint's value (Lightning's rule); one
        # the config or the command line sets to something else is a contradiction.
        diffs = [k for k in after if k in before and after[k] != before[k]
                 and (k not in defaults or before[k] != defaults[k])]
        if diffs:
            names = [LINKED_FROM.get(k, f"model.{k}") for k in diffs[:3]]
            shown = "; ".join(f"{n} is {after[k]!r} in the checkpoint, {before[k]!r} in the config"
                              for n, k in zip(names, diffs)) + ("; ..." if len(diffs) > 3 else "")
            raise _bad(ValueError, f"ckpt_path: {ckpt_path} does not match the config: {shown}; expected "
                                   f"the checkpoint's model settings (drop or change {', '.join(names)})")

    def before_instantiate_classes(self) -> None:
        """Checks of the parsed config that Lightning (or the model) would report late, with a
        traceback, or not at all."""
        super().before_instantiate_classes()
        cfg = self._get(self.config, "trainer") or {}
        model = self._get(self.config, "model")
        for key, minimum in (("hidden", 1), ("depth", 0)):
            value = model.get(key) if model is not None else None
            if isinstance(value, int) and value < minimum:
                raise _bad(ValueError, f"model.{key} must be an integer >= {minimum}, got {value}")
        _check_devices(cfg.get("accelerator"), cfg.get("devices"))
        if self.subcommand == "fit":
            for key in ("max_epochs", "max_steps"):
                value = cfg.get(key)
                if isinstance(value, int) and (value == 0 or value < -1):
                    raise _bad(ValueError, f"trainer.{key} must be -1 (no limit) or an integer >= 1, "
                                           f"got {value}")

    def instantiate_classes(self) -> None:
        """Lightning's, with an error raised by a class's ``__init__`` naming its config key
        (``data.batch_size must be >= 1, got 0``), and the output directories checked."""
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
            self._check_instantiated()
        except (ValueError, TypeError, FileNotFoundError, FileExistsError, MisconfigurationException) as err:
            try:
                classes = self._classes_by_key()
            except Exception:  # noqa: BLE001 - the error without its key beats a second error
                classes = []
            raise _keyed(err, classes) from err

    def _classes_by_key(self) -> list[tuple[type, str, bool, object]]:
        """(class, config key, is a class_path key, its init args) of every class the config
        builds: the groups (model, data, trainer, callbacks) and each ``class_path``."""
        import importlib

        cfg = self.config.get(str(self.subcommand), self.config) if self.subcommand else self.config
        found: list[tuple[type, str, bool, object]] = []

        def walk(node, path: str) -> None:
            items = vars(node) if isinstance(node, Namespace) else node
            if isinstance(items, dict):
                class_path = items.get("class_path")
                if isinstance(class_path, str):
                    module, _, name = class_path.rpartition(".")
                    try:
                        found.append((getattr(importlib.import_module(module), name), path, True,
                                      items.get("init_args")))
                    except (ImportError, AttributeError, ValueError):
                        pass
                for k, v in items.items():
                    walk(v, f"{path}.{k}" if path else k)
            elif isinstance(items, list):
                for i, v in enumerate(items):
                    walk(v, f"{path}[{i}]")

        walk(cfg, "")
        for group in getattr(self._parser(self.subcommand), "groups", {}).values():
            cls, dest = getattr(group, "group_class", None), getattr(group, "dest", None)
            if isinstance(cls, type) and dest:
                found.append((cls, dest, False, cfg.get(dest)))
        if isinstance(self.trainer_class, type):  # its group is not instantiated by jsonargparse
            found.append((self.trainer_class, "trainer", False, cfg.get("trainer")))
        return found

    def _check_instantiated(self) -> None:
        """What needs the built objects: the data's size, the checkpoint's tensor shapes, and
        the run directory (writable, and not a previous run's)."""
        check = getattr(self.datamodule, "check_size", None)
        if callable(check):
            check()
        shapes = getattr(self, "_ckpt_shapes", None)
        if shapes is not None and self.model is not None:
            ckpt_path = self._get(self.config, "ckpt_path")
            model = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
            bad = [f"{k} is {shapes[k]} in the checkpoint, {model[k]} in the model"
                   for k in model if k in shapes and shapes[k] != model[k]]
            bad += [f"{k} is missing from the checkpoint" for k in model if k not in shapes][:1]
            bad += [f"the checkpoint has {k}, the model does not" for k in shapes if k not in model][:1]
            if bad:
                raise _bad(ValueError, f"ckpt_path: {ckpt_path} does not fit the model the config builds: "
                                       f"{bad[0]}; expected a checkpoint of a run with the same data.* and "
                                       f"model.* settings")
        if self.subcommand is None or int(os.environ.get("LOCAL_RANK") or 0) > 0 \
                or int(os.environ.get("NODE_RANK") or 0) > 0:  # DDP children: rank 0 checked
            return
        self._check_run_dir()

    def _check_run_dir(self) -> None:
        logger = self.trainer.logger
        if logger is not None:
            key = "trainer.logger.init_args.save_dir"
            base = getattr(logger, "save_dir", None) or getattr(logger, "root_dir", None)
        else:
            key, base = "trainer.default_root_dir", self.trainer.default_root_dir
        if base is None or "://" in str(base):
            return
        _check_writable(key, Path(base))
        log_dir = getattr(logger, "log_dir", None) if logger is not None else None
        if log_dir is not None and _holds_files(Path(log_dir)):
            explicit = getattr(logger, "_version", None) is not None
            vkey = "trainer.logger.init_args.version" if explicit else key
            raise _bad(FileExistsError, f"{vkey}: the run directory {log_dir} already exists and holds "
                                        f"files; expected a new one: another version, or none for the next "
                                        f"free version_N (to continue that run: --ckpt_path="
                                        f"{Path(log_dir) / 'checkpoints' / 'last.ckpt'}, no version)")
        callback = self._get(self.config_init, "checkpoint")
        dirpath = getattr(callback, "dirpath", None)
        if self.subcommand == "fit" and dirpath and "://" not in str(dirpath):
            _check_writable("checkpoint.dirpath", Path(dirpath))
            if _holds_files(Path(dirpath)):
                raise _bad(FileExistsError, f"checkpoint.dirpath: {dirpath} already holds files; expected a "
                                            f"new or empty directory (or leave checkpoint.dirpath unset: "
                                            f"checkpoints go to the run directory)")


SPECIAL_CKPT = ("last", "best", "hpc")  # Lightning's ckpt_path words, not files
LINKED_FROM = {"steps_per_batch": "data.steps_per_batch"}  # model keys the config sets by a link


def _bad(kind: type[Exception], message: str) -> Exception:
    """A bad-input error whose message already names its key."""
    err = kind(message)
    err.names_key = True
    return err


def _short(err: BaseException, limit: int = 80) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flat(node, prefix: str = "") -> dict:
    """A config Namespace as {"objective.init_args.noise_std": 0.3, ...}."""
    if node is None:
        return {}
    items = node.as_dict() if hasattr(node, "as_dict") else node
    if not isinstance(items, dict):
        return {prefix.rstrip("."): items}
    out = {}
    for k, v in items.items():
        if isinstance(v, dict) or hasattr(v, "as_dict"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _holds_files(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _check_writable(key: str, path: Path) -> None:
    """``path`` exists as a writable directory or can be created (its nearest existing
    ancestor is a writable directory)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise _bad(ValueError, f"{key}: cannot create {path}: {existing} is a file, not a directory; "
                               f"expected a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _bad(ValueError, f"{key}: cannot write to {path}: {existing} is not writable; expected a "
                               f"writable directory")


def _check_devices(accelerator, devices) -> None:
    """A GPU asked for where there is none, or more devices than there are."""
    if not isinstance(accelerator, str):
        return
    import torch

    acc = accelerator.lower()
    cuda = torch.cuda.is_available()
    if acc in ("gpu", "cuda") and not cuda:
        mps = getattr(torch.backends, "mps", None)
        mps = acc == "gpu" and mps is not None and mps.is_available()
        if not mps:
            raise _bad(ValueError, f"trainer.accelerator: {accelerator!r} needs a GPU, but there is none "
                                   f"here (torch.cuda.is_available() is False); expected 'cpu' or 'auto'")
        return
    if acc in ("gpu", "cuda") or (acc == "auto" and cuda):
        kind, available = "GPUs", torch.cuda.device_count()
    elif acc in ("cpu", "auto"):
        kind, available = "CPU cores", os.cpu_count() or 1
    else:
        return
    if isinstance(devices, str) and re.fullmatch(r"\s*-?\d+\s*", devices):
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and (devices == 0 or devices < -1):
        raise _bad(ValueError, f"trainer.devices must be an integer >= 1, -1 (all) or 'auto', got {devices}")
    if isinstance(devices, str) and re.fullmatch(r"[\d,\s]+", devices) and kind == "GPUs":
        devices = [int(d) for d in devices.split(",") if d.strip()]
    wanted = devices if isinstance(devices, int) and not isinstance(devices, bool) else (
        max(devices) + 1 if isinstance(devices, list) and devices and kind == "GPUs" else None)
    if wanted is not None and wanted > available:
        raise _bad(ValueError, f"trainer.devices asks for {devices!r} but there are {available} {kind} here; "
                               f"expected at most {available} (or 'auto')")


def _params(cls: type) -> list[str]:
    """The keyword arguments of a class's ``__init__`` (and its bases')."""
    import inspect

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


def _culprit(err: BaseException, classes) -> tuple[str, bool, object, list[str]] | None:
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


def _keyed(err: BaseException, classes) -> BaseException:
    """``err`` as a bad-input error whose one-line message starts with its config key."""
    if getattr(err, "names_key", False):
        return err
    message = one_line(str(err))
    found = _culprit(err, classes)
    if found:
        message = _name_the_key(message, *found)
    user_errors = (ValueError, TypeError, FileNotFoundError, FileExistsError)
    kind = type(err) if isinstance(err, user_errors) else ValueError
    try:
        return _bad(kind, message)
    except Exception:  # noqa: BLE001 - an exception class that takes other arguments
        return _bad(ValueError, message)


def _name_the_key(message: str, key: str, class_path: bool, values, params: list[str]) -> str:
    """``noise_std must be >= 0`` raised by ``model.objective`` ->
    ``model.objective.init_args.noise_std must be >= 0``."""
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


def _setup_logging() -> None:
    log = logging.getLogger("lightning_vae")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("lightning_vae: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def build_cli(args: list[str] | None = None, run: bool = True, cli_class=None, model_class=None):
    """The CLI object; with ``run=False`` it only parses and instantiates (no subcommand)."""
    return (cli_class or VAECLI)(
        model_class or VAE,
        ManifoldDataModule,
        args=args,
        run=run,
        parser_class=_Parser,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        parser_kwargs={"parser_mode": "omegaconf"},
        auto_configure_optimizers=False,
    )


def _save_traceback() -> str:
    """Write the current exception's traceback to a file; return its path."""
    import tempfile
    import time
    import traceback

    text = traceback.format_exc()
    for folder in (Path(LOG_ROOT), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return "(could not be written)"


def main(args: list[str] | None = None):
    """Run the CLI (see ``run_cli``)."""
    return run_cli(VAECLI, VAE, args)


def run_cli(cli_class, model_class, args: list[str] | None = None):
    """Run a CLI. Errors end with one line on stderr, never a raw traceback (unless
    LVAE_TRACEBACK=1): bad input exits 2; an unexpected error exits 1 and its traceback is
    saved to a file named in the message."""
    global PROG
    module = cli_class.__module__
    PROG = f"python -m {'lightning_vae' if module == __name__ else module}"
    _setup_logging()
    try:
        return build_cli(args, cli_class=cli_class, model_class=model_class)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"lightning_vae: error: {type(err).__name__}: {one_line(str(err))} "
              f"(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last line of defence, reported in full
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"lightning_vae: internal error: {type(err).__name__}: {one_line(str(err))}; "
              f"traceback saved to {_save_traceback()}", file=sys.stderr)
        sys.exit(1)
