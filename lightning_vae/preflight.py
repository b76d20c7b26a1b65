"""Checks run before anything is written: each bad setting is a one-line error that names
its key (``lightning_vae.errors.bad_input``) instead of a late traceback, a half-created run
directory, or a silent surprise.

- ``check_config``: the parsed config (sizes, step limits, devices);
- ``read_checkpoint`` and ``check_settings_match``: a ``ckpt_path`` before it is used;
- ``check_shapes``: the checkpoint's tensors against the model the config builds;
- ``check_run_dir``: the output directories (writable, and not a previous run's).

Plain functions of what they check; ``lightning_vae.cli`` calls them from its hooks.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from lightning_vae.errors import bad_input, shorten

SPECIAL_CKPT = ("last", "best", "hpc")  # Lightning's ckpt_path words, not files
LINKED_FROM = {"steps_per_batch": "data.steps_per_batch"}  # model keys the config sets by a link

Shapes = dict[str, tuple[int, ...]]


# --- the parsed config -----------------------------------------------------------------


def check_config(model: Mapping | None, trainer: Mapping | None, subcommand: str | None) -> None:
    """What Lightning (or the model) would report late, with a traceback, or not at all."""
    for key, minimum in (("hidden", 1), ("depth", 0)):
        value = model.get(key) if model is not None else None
        if isinstance(value, int) and value < minimum:
            raise bad_input(ValueError, f"model.{key} must be an integer >= {minimum}, got {value}")
    trainer = trainer or {}
    check_devices(trainer.get("accelerator"), trainer.get("devices"))
    if subcommand == "fit":
        for key in ("max_epochs", "max_steps"):
            value = trainer.get(key)
            if isinstance(value, int) and (value == 0 or value < -1):
                raise bad_input(ValueError, f"trainer.{key} must be -1 (no limit) or an integer >= 1, "
                                            f"got {value}")


def check_devices(accelerator: object, devices: object) -> None:
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
            raise bad_input(ValueError, f"trainer.accelerator: {accelerator!r} needs a GPU, but there is none "
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
        raise bad_input(ValueError, f"trainer.devices must be an integer >= 1, -1 (all) or 'auto', got {devices}")
    if isinstance(devices, str) and re.fullmatch(r"[\d,\s]+", devices) and kind == "GPUs":
        devices = [int(d) for d in devices.split(",") if d.strip()]
    wanted = devices if isinstance(devices, int) and not isinstance(devices, bool) else (
        max(devices) + 1 if isinstance(devices, list) and devices and kind == "GPUs" else None)
    if wanted is not None and wanted > available:
        raise bad_input(ValueError, f"trainer.devices asks for {devices!r} but there are {available} {kind} "
                                    f"here; expected at most {available} (or 'auto')")


# --- a checkpoint to resume from, validate or test ---------------------------------------


def tensor_shapes(state_dict: Mapping[str, Any]) -> Shapes:
    """``{name: shape}`` of a state dict's tensors."""
    return {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}


class CheckpointInfo(NamedTuple):
    """What the CLI checks in a ``ckpt_path`` file before Lightning reads it."""

    shapes: Shapes  # its tensors' shapes
    hparams: dict | None  # its model hyperparameters as a model config (None: it holds none)
    global_step: int | None  # the optimizer steps its run had taken


def read_checkpoint(ckpt_path: object, prog: str) -> CheckpointInfo | None:
    """A ``ckpt_path`` file's tensor shapes, model hyperparameters and global step; None
    where ``ckpt_path`` names no file (unset, or one of Lightning's words: ``last``,
    ``best``, ``hpc``, ``registry...``). A missing or unreadable file is an error; ``prog``
    is how the user runs the CLI, for the message."""
    if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT or str(ckpt_path).startswith("registry"):
        return None
    import torch

    if not Path(ckpt_path).is_file():
        raise bad_input(FileNotFoundError, f"ckpt_path: checkpoint file not found: {ckpt_path}; expected an "
                                           f"existing .ckpt file, e.g. <run dir>/checkpoints/last.ckpt")
    try:
        if not zipfile.is_zipfile(ckpt_path):  # torch.save writes a zip archive
            raise ValueError("not a torch.save zip archive")
        ckpt = torch.load(ckpt_path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - bad bytes raise pickle, zip or runtime errors
        reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {shorten(err)}"
        raise bad_input(ValueError, f"ckpt_path: {ckpt_path} is not a readable checkpoint ({reason}); "
                                    f"expected a .ckpt file written by {prog} fit") from err
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise bad_input(ValueError, f"ckpt_path: {ckpt_path} holds no state_dict; expected a .ckpt file "
                                    f"written by {prog} fit")
    # As Lightning reads them back into the config (LightningCLI's ckpt_path handling).
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    step = ckpt.get("global_step")
    return CheckpointInfo(tensor_shapes(ckpt["state_dict"]), hparams or None,
                          int(step) if isinstance(step, int) else None)


def check_settings_match(ckpt_path: object, before: Mapping, after: Mapping, defaults: Mapping) -> None:
    """The model settings of the config (``before``, flat) against those with the
    checkpoint's read in (``after``): a setting left at its default (``defaults``) takes the
    checkpoint's value (Lightning's rule); one the config or the command line sets to
    something else is a contradiction, which Lightning would silently resolve."""
    diffs = [k for k in after if k in before and after[k] != before[k]
             and (k not in defaults or before[k] != defaults[k])]
    if diffs:
        names = [LINKED_FROM.get(k, f"model.{k}") for k in diffs[:3]]
        shown = "; ".join(f"{n} is {after[k]!r} in the checkpoint, {before[k]!r} in the config"
                          for n, k in zip(names, diffs)) + ("; ..." if len(diffs) > 3 else "")
        raise bad_input(ValueError, f"ckpt_path: {ckpt_path} does not match the config: {shown}; expected "
                                    f"the checkpoint's model settings (drop or change {', '.join(names)})")


def check_shapes(ckpt_path: object, ckpt: Shapes, model: Shapes) -> None:
    """The checkpoint's tensor shapes (``ckpt``) fit the model the config builds."""
    bad = [f"{k} is {ckpt[k]} in the checkpoint, {model[k]} in the model"
           for k in model if k in ckpt and ckpt[k] != model[k]]
    bad += [f"{k} is missing from the checkpoint" for k in model if k not in ckpt][:1]
    bad += [f"the checkpoint has {k}, the model does not" for k in ckpt if k not in model][:1]
    if bad:
        raise bad_input(ValueError, f"ckpt_path: {ckpt_path} does not fit the model the config builds: "
                                    f"{bad[0]}; expected a checkpoint of a run with the same data.* and "
                                    f"model.* settings")


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config Namespace as {"objective.init_args.noise_std": 0.3, ...}."""
    if node is None:
        return {}
    items = node.as_dict() if hasattr(node, "as_dict") else node
    if not isinstance(items, dict):
        return {prefix.rstrip("."): items}
    out = {}
    for k, v in items.items():
        if isinstance(v, dict) or hasattr(v, "as_dict"):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- the output directories --------------------------------------------------------------


def holds_files(path: Path) -> bool:
    """``path`` is a directory with something in it."""
    return path.is_dir() and any(path.iterdir())


def check_writable(key: str, path: Path) -> None:
    """``path`` exists as a writable directory or can be created (its nearest existing
    ancestor is a writable directory); else an error naming ``key``."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise bad_input(ValueError, f"{key}: cannot create {path}: {existing} is a file, not a directory; "
                                    f"expected a writable directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise bad_input(ValueError, f"{key}: cannot write to {path}: {existing} is not writable; expected a "
                                    f"writable directory")


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK")


def is_child_process() -> bool:
    """A process of a multi-process run other than the global rank 0 (rank 0 checks the
    directories): by the variables Lightning's launcher, torchrun (RANK, LOCAL_RANK,
    GROUP_RANK) and SLURM's srun (SLURM_PROCID) set."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return True
    return False


def logger_version_given(trainer: Mapping | None) -> bool:
    """Whether the config (its ``trainer`` section) sets the logger's version: the key to
    change where that run directory exists."""
    logger = (trainer or {}).get("logger")
    if isinstance(logger, list):  # several loggers: the trainer's logger is the first
        logger = logger[0] if logger else None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    return hasattr(init, "get") and init.get("version") is not None

def check_run_dir(logger: Any, default_root_dir: str | Path | None, *, version_given: bool = False,
                  checkpoint_dirpath: str | Path | None = None) -> None:
    """The run's directories: where the logger writes (or ``default_root_dir`` without one)
    is writable, and its run directory is new; ``checkpoint_dirpath`` (fit's, where set) is
    writable and empty. ``version_given``: the config sets the logger's version (the key
    to change then). Remote paths (``s3://...``) are not checked."""
    if logger is not None:
        key = "trainer.logger.init_args.save_dir"
        base = getattr(logger, "save_dir", None) or getattr(logger, "root_dir", None)
    else:
        key, base = "trainer.default_root_dir", default_root_dir
    if base is None or "://" in str(base):
        return
    check_writable(key, Path(base))
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    if log_dir is not None and holds_files(Path(log_dir)):
        vkey = "trainer.logger.init_args.version" if version_given else key
        raise bad_input(FileExistsError, f"{vkey}: the run directory {log_dir} already exists and holds "
                                         f"files; expected a new one: another version, or none for the next "
                                         f"free version_N (to continue that run: --ckpt_path="
                                         f"{Path(log_dir) / 'checkpoints' / 'last.ckpt'}, no version)")
    if checkpoint_dirpath and "://" not in str(checkpoint_dirpath):
        check_writable("checkpoint.dirpath", Path(checkpoint_dirpath))
        if holds_files(Path(checkpoint_dirpath)):
            raise bad_input(FileExistsError, f"checkpoint.dirpath: {checkpoint_dirpath} already holds files; "
                                             f"expected a new or empty directory (or leave checkpoint.dirpath "
                                             f"unset: checkpoints go to the run directory)")

