"""Checks run before anything is written: each bad setting is a one-line error that names
its key (``lightning_vae.errors.bad_input``) instead of a late traceback, a half-created run
directory, or a silent surprise.

- ``check_config``: the parsed config (sizes, step limits, devices);
- ``check_training``: the trainer's cadences, strategy and learning-rate horizon, and the
  optimizer's settings (a trial build on one parameter);
- ``check_model_memory``: the model's weights and largest batches against the memory here
  (``check_memory``; the data's is checked by ``ManifoldDataModule.check_size``);
- ``check_seed``: a seed within what ``seed_everything`` accepts;
- ``read_checkpoint`` and ``check_settings_match``: a ``ckpt_path`` before it is used;
- ``check_shapes``: the checkpoint's tensors against the model the config builds;
- ``check_run_dir``: the output directories (writable, and not a previous run's).

Plain functions of what they check; ``lightning_vae.cli`` calls them from its hooks.
"""

from __future__ import annotations

import math
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


# --- the trainer, the optimizer and the seeds ----------------------------------------------

SEED_MAX = 2**32 - 1  # what seed_everything (numpy's bound) accepts


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_seed(value: object, key: str = "seed_everything") -> None:
    """A seed that ``seed_everything`` takes: an integer in 0 .. 2**32 - 1 (or true, a
    random one, or false, none)."""
    if _is_int(value) and not 0 <= value <= SEED_MAX:
        raise bad_input(ValueError, f"{key} must be an integer in 0 .. {SEED_MAX} (2**32 - 1), or true (a "
                                    f"random seed) or false (none), got {value}")


def check_member_seeds(seeds: object, key: str = "model.seeds") -> None:
    """An ensemble's seeds: each one a seed its single run's ``seed_everything`` takes."""
    for i, s in enumerate(seeds if isinstance(seeds, (list, tuple)) else []):
        if _is_int(s) and not 0 <= s <= SEED_MAX:
            raise bad_input(ValueError, f"{key}[{i}] must be an integer in 0 .. {SEED_MAX} (2**32 - 1, what a "
                                        f"single run's seed_everything takes), got {s}")


def check_strategy(strategy: object) -> None:
    """A strategy named by a string is one Lightning has registered (or "auto")."""
    if not isinstance(strategy, str):
        return
    from pytorch_lightning.strategies import StrategyRegistry

    known = sorted(StrategyRegistry.available_strategies())
    if strategy.lower() == "auto" or strategy.lower() in known:
        return
    import difflib

    close = difflib.get_close_matches(strategy.lower(), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise bad_input(ValueError, f"trainer.strategy: unknown strategy {strategy!r}; {hint}expected 'auto' or one of "
                                f"{', '.join(known)} (or a class_path of a Strategy)")


def check_training(model: Mapping | None, trainer: Mapping | None, data: Mapping | None = None) -> None:
    """What ``fit`` would do wrong or not at all: a cadence of 0 (Lightning divides by it),
    ``limit_train_batches`` 0 (trains nothing, silently) or below one batch, no horizon for
    the cosine schedule, and the optimizer's settings (``check_optimizer``)."""
    model, trainer, data = model or {}, trainer or {}, data or {}
    value = trainer.get("check_val_every_n_epoch")
    if _is_int(value) and value < 1:
        raise bad_input(ValueError, f"trainer.check_val_every_n_epoch must be an integer >= 1, or null (validate by "
                                    f"trainer.val_check_interval alone), got {value}")
    value = trainer.get("val_check_interval")
    if _is_number(value) and not value > 0:
        raise bad_input(ValueError, f"trainer.val_check_interval must be > 0 (a fraction of an epoch in (0, 1], or "
                                    f"a number of optimizer steps >= 1), got {value}")
    value = trainer.get("accumulate_grad_batches")
    if _is_int(value) and value < 1:
        raise bad_input(ValueError, f"trainer.accumulate_grad_batches must be an integer >= 1, got {value}")
    value = trainer.get("limit_train_batches")
    if _is_number(value) and not value > 0:
        raise bad_input(ValueError, f"trainer.limit_train_batches must be > 0 (a fraction of each epoch's batches in "
                                    f"(0, 1], or a number of batches >= 1), got {value}: it would train nothing")
    n_train, batch_size = data.get("n_train"), data.get("batch_size")
    if isinstance(value, float) and value < 1 and _is_int(n_train) and _is_int(batch_size) and batch_size > 0:
        batches = n_train // batch_size
        if batches > 0 and int(batches * value) < 1:
            raise bad_input(ValueError, f"trainer.limit_train_batches: {value} of the {batches} training batches "
                                        f"of an epoch is less than one batch; expected at least {1 / batches:.3g} "
                                        f"(or a number of batches >= 1)")
    check_horizon(model, trainer)
    check_optimizer(model.get("optimizer"))


def check_horizon(model: Mapping | None, trainer: Mapping | None) -> None:
    """The cosine schedule decays over the run's steps: a run without an end (max_epochs
    -1 and no max_steps) has none."""
    if (model or {}).get("lr_schedule") != "cosine":
        return
    trainer = trainer or {}
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    # Lightning: max_epochs None means 1000 epochs, unless max_time is set (then no bound).
    endless = epochs == -1 or (epochs is None and trainer.get("max_time") is not None)
    if endless and steps in (None, -1):
        raise bad_input(ValueError, f"trainer.max_epochs: {epochs} (no limit), with trainer.max_steps unset, leaves "
                                    f"model.lr_schedule 'cosine' no horizon to decay over; expected a finite "
                                    f"trainer.max_epochs (>= 1) or trainer.max_steps, or model.lr_schedule "
                                    f"'constant'")


# What torch's optimizers check, by the word their messages use: (the argument, what it takes).
_OPTIMIZER_ARGS = (("learning rate", "lr", "a finite number > 0"), ("epsilon", "eps", "a number >= 0"),
                   ("beta", "betas", "two numbers in [0, 1)"), ("weight_decay", "weight_decay", "a number >= 0"),
                   ("momentum", "momentum", "a number >= 0"))


def check_optimizer(optimizer: object, key: str = "model.optimizer") -> None:
    """The optimizer's settings: ``lr`` a finite number > 0 (torch takes 0, which trains
    nothing), and whatever its class checks, found by building it on one parameter (torch
    would report it, without the key, once the run directory exists)."""
    items = optimizer.as_dict() if hasattr(optimizer, "as_dict") else optimizer
    if not isinstance(items, dict):
        return
    init = dict(items.get("init_args") or {})
    lr = init.get("lr")
    if _is_number(lr) and not (math.isfinite(lr) and lr > 0):
        why = " (a learning rate of 0 trains nothing)" if lr == 0 else ""
        raise bad_input(ValueError, f"{key}.init_args.lr must be a finite number > 0, got {lr}{why}")
    class_path = items.get("class_path")
    if not isinstance(class_path, str):
        return
    import importlib

    import torch

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return  # the parser reports a class_path that does not import
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        return
    try:
        cls([torch.nn.Parameter(torch.zeros(1))], **init)
    except ValueError as err:
        message = shorten(err, 160)
        for word, arg, expected in _OPTIMIZER_ARGS:
            if word in message.lower() and arg in init:
                raise bad_input(ValueError, f"{key}.init_args.{arg}: {message}; expected {expected}") from err
        named = next((a for a in init if a in message), None)
        where = f"{key}.init_args.{named}" if named else key
        raise bad_input(ValueError, f"{where}: {message}; expected settings {cls.__name__} accepts") from err
    except Exception:  # noqa: BLE001 - anything else is the optimizer's to report, as it would
        return


# --- memory ------------------------------------------------------------------------------

MEMORY_SHARE = 0.5  # the most of the memory available here that one run may plan to take


def available_memory() -> int | None:
    """Bytes of memory available to this process now: psutil's figure where it is installed,
    else /proc/meminfo's MemAvailable, else the free pages (``os.sysconf``); and no more
    than a cgroup (container) limit leaves. None where none of these is known."""
    found: list[int] = []
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:  # noqa: BLE001 - not installed, or no answer: the next source
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        found.append(int(line.split()[1]) * 1024)
                        break
        except (OSError, ValueError, IndexError):
            pass
        if not found:
            try:
                found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                found.append(max(0, int(limit) - int(Path(usage_file).read_text().strip())))
                break
        except (OSError, ValueError):
            continue
    return min(found) if found else None


def size_text(n: float) -> str:
    """Bytes as "16.0 GB" (decimal units)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def memory_limit() -> tuple[int, int] | None:
    """(the most a run may plan to take, the memory available), or None where unknown."""
    available = available_memory()
    return None if available is None else (int(available * MEMORY_SHARE), available)


def memory_problem(needed: float) -> str | None:
    """Why ``needed`` bytes are too many here ("more than half of the 22.6 GB available"),
    or None where they fit (or the memory here is unknown)."""
    bound = memory_limit()
    if bound is None or needed <= bound[0]:
        return None
    return (f"more than {MEMORY_SHARE:.0%} of the {size_text(bound[1])} of memory available here "
            f"({size_text(bound[0])})")


def _mlp_params(n_in: int, hidden: int, depth: int, n_out: int) -> int:
    """Weights of ``nets.mlp(n_in, hidden, depth, n_out)``."""
    if depth <= 0:
        return n_in * n_out + n_out
    return n_in * hidden + hidden + (depth - 1) * (hidden * hidden + hidden) + hidden * n_out + n_out


def _get(node: object, key: str) -> object:
    if node is None:
        return None
    return node.get(key) if hasattr(node, "get") else getattr(node, key, None)


def _class_of(node: object) -> type | None:
    class_path = _get(node, "class_path")
    if not isinstance(class_path, str):
        return None
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _int_or(value: object, default: int) -> int:
    return value if _is_int(value) and value > 0 else default


def model_sizes(cfg: Mapping) -> tuple[dict[str, int], dict[str, int], str] | None:
    """The sizes of a parsed config that set the model's memory: {key: value} for the keys
    a user can lower (``model.hidden``, ``data.batch_size``...), their defaults, and the
    latent's kind ("discrete", "categorical", "gaussian"). None for a model this does not
    know (not the package's VAE or ensemble)."""
    from lightning_vae import latents

    model, data, quality = _get(cfg, "model"), _get(cfg, "data") or {}, _get(cfg, "sample_quality") or {}
    if model is None or not _is_int(_get(model, "hidden")) or not _is_int(_get(model, "depth")):
        return None
    manifold_args = _get(_get(data, "manifold"), "init_args") or {}
    # The data's dimension as far as the config says (a point cloud's: at least 2).
    dim_key = next((f"data.manifold.init_args.{k}" for k in ("ambient_dim", "dim")
                    if _is_int(_get(manifold_args, k))), None)
    dim = _int_or(_get(manifold_args, dim_key.rpartition(".")[2]), 2) if dim_key else 2
    latent = _get(model, "latent")
    latent_args = _get(latent, "init_args") or {}
    cls = _class_of(latent) or latents.BernoulliLatent
    n_train, n_eval = _int_or(_get(data, "n_train"), 10_000), max(_int_or(_get(data, "n_val"), 1),
                                                                  _int_or(_get(data, "n_test"), 1))
    seeds = _get(model, "seeds")
    sizes = {"model.hidden": model.get("hidden"), "model.depth": model.get("depth"), "data dim": dim,
             "model.seeds": len(seeds) if isinstance(seeds, list) and seeds else 1,
             "data.batch_size": min(_int_or(_get(data, "batch_size"), 256), n_train),
             "data.eval_batch_size": min(_int_or(_get(data, "eval_batch_size"), 4096), n_eval),
             "sample_quality.n_samples": _int_or(_get(quality, "n_samples"), 2000),
             "sample_quality.n_projections": _int_or(_get(quality, "n_projections"), 128)}
    defaults = {"model.hidden": 64, "model.depth": 2, "model.seeds": 1, "data.batch_size": 256,
                "data.eval_batch_size": 4096, "sample_quality.n_samples": 2000, "sample_quality.n_projections": 128}
    if dim_key is not None:
        defaults["data dim"] = 2
        sizes["data dim key"] = dim_key  # type: ignore[assignment] - the name it is shown by
    if isinstance(cls, type) and issubclass(cls, latents.SampledLatent):
        kind = "gaussian"
        for arg, default in (("dim", 2), ("n_samples", 1), ("iwae_samples", 64)):
            sizes[f"model.latent.init_args.{arg}"] = _int_or(_get(latent_args, arg), default)
            defaults[f"model.latent.init_args.{arg}"] = default
    elif isinstance(cls, type) and issubclass(cls, latents.CategoricalLatent):
        kind = "categorical"
        sizes["model.latent.init_args.n_states"] = _int_or(_get(latent_args, "n_states"), 4)
        defaults["model.latent.init_args.n_states"] = 4
    else:  # Bernoulli, or a latent of the user's: its widths as built (a cheap config object)
        kind = "discrete"
        try:
            built = cls(**dict(latent_args)) if latent_args else cls()
            sizes["latent encoder_dim"] = int(built.encoder_dim)
            sizes["latent state_dim"] = int(built.state_dim)
            sizes["latent n_states"] = int(getattr(built, "n_states", 1))
        except Exception:  # noqa: BLE001 - the real build reports it
            return None
    return sizes, defaults, kind


def model_bytes(s: Mapping[str, int], kind: str) -> tuple[float, float]:
    """(weights, activations): an estimate of the bytes the model's weights take while it
    trains (with their gradients and Adam's two moments, float32) and of its largest
    batch's activations (training, evaluation or sample quality), from ``model_sizes``."""
    h, depth, dim, members = s["model.hidden"], s["model.depth"], s["data dim"], s["model.seeds"]
    if kind == "gaussian":
        z = s["model.latent.init_args.dim"]
        enc, state, states = 2 * z, z, 0
        train_rows, eval_rows = s["model.latent.init_args.n_samples"], s["model.latent.init_args.iwae_samples"]
    elif kind == "categorical":
        k = s["model.latent.init_args.n_states"]
        enc, state, states, train_rows, eval_rows = k, k, k, 0, 0
    else:
        enc, state, states = s["latent encoder_dim"], s["latent state_dim"], s["latent n_states"]
        train_rows = eval_rows = 0
    params = _mlp_params(dim, h, depth, enc) + _mlp_params(state, h, depth, 2 * dim)
    weights = 4.0 * 4 * params * members + 4.0 * states * state  # + the enumerated states (one-hot)
    width, layers = max(h, dim, enc), 2 * depth + 2

    def batch(n: int, draws: int, kept: int) -> float:
        # The encoder on n points, the decoder on the states (enumerated) or on n x draws
        # draws (sampled), the likelihood's (n, states or draws, D) terms.
        decoded = n * draws if draws else states
        return 4.0 * members * ((n + decoded) * width * kept + 3 * n * max(draws, states) * dim)

    q, projections = s["sample_quality.n_samples"], s["sample_quality.n_projections"]
    quality = 4.0 * members * (q * width * 2 + 4 * q * projections + 4 * q * dim)
    activations = max(batch(s["data.batch_size"], train_rows, layers),
                      batch(s["data.eval_batch_size"], eval_rows, 2), quality)
    return weights, activations


def check_model_memory(cfg: Mapping | None) -> None:
    """The model's weights (with gradients and Adam's moments) and its largest batch fit in
    the memory here (``MEMORY_SHARE`` of what is available): else an error naming the key
    whose value asks for most, and the largest value of it that fits. Checked before the
    model is built (a width of 10**9 would ask the allocator for exabytes, or start
    swapping)."""
    found = model_sizes(cfg) if cfg is not None else None
    if found is None:
        return
    sizes, defaults, kind = found

    def total(s: Mapping[str, int]) -> float:
        return sum(model_bytes(s, kind))

    needed = total(sizes)
    problem = memory_problem(needed)
    if problem is None:
        return
    lowered = {k: total({**sizes, k: d}) for k, d in defaults.items() if sizes.get(k, d) > d}
    if not lowered:  # nothing above its default: too little memory here for any model
        raise bad_input(ValueError, f"model: the model would need about {size_text(needed)} of memory, "
                                    f"{problem}; expected more free memory")
    key = min(lowered, key=lowered.get)
    value = sizes[key]
    low, high = defaults[key], value
    while low < high:  # the largest value of the key that fits, the others as given
        mid = (low + high + 1) // 2
        if memory_problem(total({**sizes, key: mid})) is None:
            low = mid
        else:
            high = mid - 1
    best = low
    weights, activations = model_bytes(sizes, kind)
    if key == "data dim":
        key = str(sizes["data dim key"])
    shown = f"{value} seeds" if key == "model.seeds" else f"{value}"
    fix = f"at most {best} seeds" if key == "model.seeds" else f"{key} <= {best}"
    raise bad_input(ValueError, f"{key}: {shown} would need about {size_text(needed)} of memory (weights with "
                                f"their gradients and Adam's moments {size_text(weights)}, the largest batch's "
                                f"activations {size_text(activations)}), {problem}; expected {fix}")


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

