"""The Lightning CLI: ``python -m lightning_vae {fit,validate,test,predict} --config ...``.

Bad input ends with one line naming the key and the value expected there: the parser's
errors are translated by ``lightning_vae.errors``; the checks run before anything is written
are ``lightning_vae.preflight``'s, called from the hooks here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lightning_vae import checkpoints, config_files, preflight
from lightning_vae.callbacks import (
    DecoderVarianceMonitor,
    DivergenceGuard,
    HParamsSummary,
    PredictionWriter,
    RunOutcome,
    SampleFigure,
    SampleQuality,
    StepProgressBar,
    interrupted_by,
    run_dir,
)
from lightning_vae.data import ManifoldDataModule
from lightning_vae.image_callbacks import ImageQuality
from lightning_vae.errors import USER_ERRORS, BuiltClass, bad_input, keyed_error, one_line, translate
from lightning_vae import steps
from lightning_vae.model import VAE
from lightning_vae.runs import EVAL_STAGES

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
    # One device unless asked for more: Lightning's "auto" makes a plain fit on a multi-GPU
    # node an N-process DDP run with N times the global batch, a different run
    # (configs/trainer/ddp_*.yaml and --trainer.devices=N ask for more).
    "devices": 1,
    "log_every_n_steps": 10,
    "default_root_dir": LOG_ROOT,
    # The datamodule's sampler shards batches across ranks itself (and resumes exactly).
    "use_distributed_sampler": False,
}

# The classes the model and data build where the config names none, as the defaults the
# parser shows: --print_config and the saved config.yaml say what ran (not "latent: null").
EFFECTIVE_DEFAULTS = {
    "model.objective": {"class_path": "lightning_vae.objectives.ELBO"},
    "model.latent": {"class_path": "lightning_vae.latents.BernoulliLatent"},
    "model.decoder": {"class_path": "lightning_vae.nets.GaussianDecoder"},
    "data.manifold": {"class_path": "lightning_vae.data.TwoClusters"},
}

DEFAULT_STEPS_PER_BATCH = 32
EVAL_EVERY_N_STEPS = 512  # validation and checkpoints at least this many steps apart (steps.plan_run)


def add_eval_cadence(parser) -> None:
    """The ``eval_every_n_steps`` option (see ``steps.plan_run``)."""
    parser.add_argument("--eval_every_n_steps", type=int, default=EVAL_EVERY_N_STEPS,
                        help="Validate and checkpoint every n epochs, n spanning at least this many "
                             "optimizer steps and dividing max_epochs (so the last epoch is validated), "
                             "where trainer.check_val_every_n_epoch and checkpoint.every_n_epochs are "
                             "left at 1; 0: every epoch.")

PROG = "python -m lightning_vae"  # how the user ran the CLI, for the --help tip (set by run_cli)


def _debug_mode() -> bool:
    """jsonargparse's debug mode (errors raise instead of exiting), read as jsonargparse
    reads its documented JSONARGPARSE_DEBUG variable: on where set to anything but "",
    false, no or 0 (newer versions take only true and false)."""
    return os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "false", "no", "0")


class _Parser(LightningArgumentParser):
    """Parse errors are one line, ``lightning_vae: error: <key>: <problem>; expected ...``
    (plus a ``--help`` tip), not the full usage."""

    def print_usage(self, file=None) -> None:
        pass

    def parse_path(self, path, *args, **kwargs):
        """jsonargparse's, after ``config_files.check_file``: a config file that is not one
        (a directory, not UTF-8, not a mapping, ``model: [1, 2]``, a ``!!python`` tag...) is a
        one-line error naming the file."""
        try:
            config_files.check_file(path, self._sections())
        except config_files.BadConfigFile as err:
            self.error(str(err))
        return super().parse_path(path, *args, **kwargs)

    def parse_string(self, content, *args, **kwargs):
        """jsonargparse's; a config given inline (``--config '{model: [1, 2]}'``: no path)
        is checked as ``parse_path`` checks a file's text."""
        if not (args or kwargs.get("path")) and isinstance(content, str):
            try:
                config_files.check_text(content, self._sections())
            except config_files.BadConfigFile as err:
                self.error(str(err))
        return super().parse_string(content, *args, **kwargs)

    def _sections(self) -> set[str]:
        """The groups a config's top level may set (``model``, ``data``, ``trainer``, the
        callbacks'), from the keys this parser and its subcommands' accept."""
        if getattr(self, "_section_names", None) is None:
            from lightning_vae.errors import _parser_keys

            self._section_names = {k.split(".", 1)[0] for k in _parser_keys(self) if "." in k}
        return self._section_names

    def parse_args(self, *args, **kwargs):
        return self._checked(super().parse_args(*args, **kwargs))

    def parse_object(self, *args, **kwargs):
        return self._checked(super().parse_object(*args, **kwargs))

    def _checked(self, cfg):
        """The parsed config's seeds, checked before LightningCLI seeds with them (numpy's
        message names no key)."""
        sub = cfg.get("subcommand") if hasattr(cfg, "get") else None
        section = cfg.get(sub) if sub and cfg.get(sub) is not None else cfg
        try:
            preflight.check_seed(section.get("seed_everything"))
            model = section.get("model")
            preflight.check_member_seeds(model.get("seeds") if hasattr(model, "get") else None)
        except ValueError as err:
            self.error(str(err))
        return cfg

    def error(self, message: str, ex: Exception | None = None):
        # jsonargparse names the subcommand's parser on an error of a subcommand's key.
        parser = getattr(ex, "subcommand_parser", None) or self
        message = translate(message, parser)
        if not self.exit_on_error or _debug_mode():  # a nested parser: the outer one reports
            super().error(message, ex)
        sub = parser.prog.split()[-1] if parser.prog and len(parser.prog.split()) > 1 else ""
        sys.stderr.write(f"lightning_vae: error: {message}\n"
                         f"tip: {' '.join(filter(None, [PROG, sub]))} --help lists every key and its type\n")
        self.exit(2)


def _section(config: Namespace, subcommand: str | None) -> Namespace:
    """The part of a (possibly per-subcommand) config that holds ``model``, ``trainer``..."""
    return config.get(str(subcommand), config)


class VAECLI(LightningCLI):
    """LightningCLI over ``VAE`` and ``ManifoldDataModule`` with the monitoring callbacks.

    Each callback is its own config group (``decoder_monitor``, ``sample_quality``,
    ``sample_figure``, ``divergence_guard``, ``hparams_summary``, ``prediction_writer``,
    ``checkpoint``), always present and configurable. The data's dimension reaches the model
    by a link.
    """

    def __init__(self, *args, **kwargs) -> None:
        self.all_parsers: list[LightningArgumentParser] = []  # the main one, then each subcommand's
        self.ckpt_shapes: preflight.Shapes | None = None  # of ckpt_path's tensors, where one is given
        self.ckpt_steps: int | None = None  # the optimizer steps ckpt_path's run had taken
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_dim", "model.data_dim", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
        parser.link_arguments("data.steps_per_batch", "model.steps_per_batch")
        parser.add_lightning_class_args(DecoderVarianceMonitor, "decoder_monitor")
        parser.add_lightning_class_args(SampleQuality, "sample_quality")
        parser.add_lightning_class_args(SampleFigure, "sample_figure")
        parser.add_lightning_class_args(ImageQuality, "image_quality")
        parser.add_lightning_class_args(DivergenceGuard, "divergence_guard")
        parser.add_lightning_class_args(HParamsSummary, "hparams_summary")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(RunOutcome, "run_outcome")
        # A checkpoint every epoch, reachable as last.ckpt (what a killed run resumes from). In
        # Lightning 2.6 last.ckpt is only refreshed when a top-k checkpoint is saved, so
        # save_top_k 1 (the newest epoch-named file, replaced each epoch) is needed: with 0,
        # last.ckpt was written at the end of training only. save_last "link": last.ckpt is a
        # relative symlink to that file, one write per epoch instead of two.
        # 32 optimizer steps per Lightning step: the same run as 1 (same batches, weights,
        # logged scalars, collapse and divergence steps), with Lightning's per-step overhead
        # paid once per 32 (see lightning_vae/steps.py).
        parser.set_defaults({"checkpoint.save_last": "link", "checkpoint.save_top_k": 1,
                             "data.steps_per_batch": DEFAULT_STEPS_PER_BATCH, **LOGGER_DEFAULT,
                             **EFFECTIVE_DEFAULTS})
        add_eval_cadence(parser)

    # --- the parsers: the main one and one per subcommand ---------------------------------

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Lightning's; each parser made is kept in ``all_parsers``, as LightningCLI has no
        public handle on a subcommand's."""
        parser = super().init_parser(**kwargs)
        self.all_parsers.append(parser)
        return parser

    def subcommand_parser(self, subcommand: str | None) -> LightningArgumentParser:
        """The parser of ``subcommand`` (the main one where None): jsonargparse names a
        subcommand's parser ``<prog> [options] <subcommand>``."""
        for parser in self.all_parsers if subcommand else []:
            if parser is not self.parser and (parser.prog or "").split()[-1:] == [subcommand]:
                return parser
        return self.parser

    # --- bad input: one line that names the key, before anything is written --------------

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """Lightning's, then ``ckpt_path`` checked before Lightning reads it: a missing or
        unreadable checkpoint, or one whose model settings differ from what the config asks
        for (Lightning would silently take the checkpoint's), is a one-line error. The
        checkpoint's model settings are read into the config here, as Lightning then does
        again (the same settings: no change)."""
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path is not None and (Path(str(ckpt_path)).exists() or Path(str(ckpt_path)).is_symlink()):
            try:  # every member's CRC checked; a broken last.ckpt falls back to an intact file
                path, note = checkpoints.resolve(str(ckpt_path))
            except checkpoints.CorruptCheckpoint as err:
                raise bad_input(ValueError, f"ckpt_path: {err}; expected an intact checkpoint (a run keeps "
                                            f"its others in <run dir>/checkpoints)") from err
            if note is not None:
                logging.getLogger("lightning_vae").warning(note)
                self.config[sub]["ckpt_path"] = ckpt_path = str(path)
        found = preflight.read_checkpoint(ckpt_path, PROG)
        if found is None:
            return
        self.ckpt_shapes, hparams, self.ckpt_steps = found
        if hparams is None:
            return
        model = self.config[sub].get("model")
        before = preflight.flat(model.clone() if model is not None else None)
        parsers = self.all_parsers
        saved = [p.exit_on_error for p in parsers]
        try:
            for p in parsers:  # raise, so that the error below names ckpt_path
                p.exit_on_error = False
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError
            model_class = getattr(self.model_class, "__name__", "LightningModule")
            raise bad_input(ValueError, f"ckpt_path: {ckpt_path} holds a model this CLI cannot build "
                                        f"({one_line(str(err))}); expected a checkpoint of a "
                                        f"{model_class} run") from err
        finally:
            for p, value in zip(parsers, saved):
                p.exit_on_error = value
        after = preflight.flat(self.config[sub].get("model"))
        try:
            defaults = preflight.flat(self.subcommand_parser(sub).get_defaults().get("model"))
        except Exception:  # noqa: BLE001 - without defaults, every difference counts
            defaults = {}
        preflight.check_settings_match(ckpt_path, before, after, defaults)

    def before_instantiate_classes(self) -> None:
        """Checks of the parsed config that Lightning (or the model) would report late, with a
        traceback, or not at all."""
        super().before_instantiate_classes()
        cfg = _section(self.config, self.subcommand)
        preflight.check_config(cfg.get("model"), cfg.get("trainer"), self.subcommand)
        preflight.check_strategy((cfg.get("trainer") or {}).get("strategy"))
        if self.subcommand == "fit":
            preflight.check_training(cfg.get("model"), cfg.get("trainer"), cfg.get("data"))
        preflight.check_model_memory(cfg)  # before the model is built
        if self.subcommand in EVAL_STAGES:
            eval_logger_dir(cfg, self.subcommand)
        if self.subcommand in ("fit", None):  # None: built with run=False, to fit in Python
            for note in steps.plan_run(cfg):
                logging.getLogger("lightning_vae").info(note)

    def instantiate_trainer(self, **kwargs):
        """Lightning's, with the trainer settings that the K-step loop applies itself
        (clipping, accumulation: Lightning refuses them under manual optimization) handed to
        the model, and step counts (``val_check_interval``, ``limit_train_batches``)
        counted in groups of K steps, so that they mean what they mean at K = 1."""
        trainer_args = _section(self.config_init, self.subcommand).get("trainer") or {}
        k = getattr(self.model, "steps_per_batch", 1)
        loop, overrides = steps.trainer_overrides(trainer_args, k)
        if hasattr(self.model, "configure_loop"):
            try:
                self.model.configure_loop(**loop)
            except ValueError as err:
                raise bad_input(ValueError, f"trainer.{err}") from err
        trainer = super().instantiate_trainer(**{**overrides, **kwargs})
        for callback in trainer.callbacks:  # Lightning's bar counts groups of K steps
            if type(callback) is TQDMProgressBar:
                callback.__class__ = StepProgressBar  # its settings kept: only the counting differs
        return trainer

    def before_fit(self) -> None:
        """Resuming a run that has finished trains nothing: say so and exit (Lightning would
        restore it, stop at once and add an empty run directory)."""
        ckpt_path = _section(self.config, self.subcommand).get("ckpt_path")
        done = self.ckpt_steps  # read with the rest of the checkpoint (parse_arguments)
        if done is None or not hasattr(self.datamodule, "steps_per_epoch"):
            return
        trainer = self.trainer
        total = steps.planned_steps(self.datamodule.steps_per_epoch(trainer.world_size),
                                    getattr(self.model, "accumulate_grad_batches", 1),
                                    trainer.max_epochs, trainer.max_steps)
        if done >= total:
            logging.getLogger("lightning_vae").info(
                f"{ckpt_path} is of a finished run ({done} of {total} optimizer steps): nothing to "
                f"train. To train on, raise --trainer.max_epochs or --trainer.max_steps.")
            sys.exit(0)

    def after_fit(self) -> None:
        """Say where the run went and how to look at it."""
        trainer = self.trainer
        log_dir = run_dir(trainer)  # not trainer.log_dir: a collective, and DDP is over here
        if trainer.is_global_zero and log_dir is not None:
            tensorboard = any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers)
            hint = f"\n  inspect: {tensorboard_command(log_dir)}" if tensorboard else ""
            logging.getLogger("lightning_vae").info(f"run directory: {log_dir}{hint}")

    def _say_where(self) -> None:
        """An evaluation says where it logged (``eval_logger_dir``)."""
        log_dir = run_dir(self.trainer)
        if self.trainer.is_global_zero and log_dir is not None:
            logging.getLogger("lightning_vae").info(f"{self.subcommand} results logged to: {log_dir}")

    after_validate = after_test = after_predict = _say_where

    def instantiate_classes(self) -> None:
        """Lightning's, with an error raised by a class's ``__init__`` naming its config key
        (``data.batch_size must be >= 1, got 0``), and the output directories checked."""
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        try:
            super().instantiate_classes()
            self._check_instantiated()
        except (*USER_ERRORS, MisconfigurationException) as err:
            try:
                classes = self._classes_by_key()
            except Exception:  # noqa: BLE001 - the error without its key beats a second error
                classes = []
            raise keyed_error(err, classes) from err

    def _classes_by_key(self) -> list[BuiltClass]:
        """(class, config key, is a class_path key, its init args) of every class the config
        builds: the groups (model, data, trainer, callbacks) and each ``class_path``."""
        import importlib

        cfg = _section(self.config, self.subcommand)
        found: list[BuiltClass] = []

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
        for group in getattr(self.subcommand_parser(self.subcommand), "groups", {}).values():
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
        cfg = _section(self.config, self.subcommand)
        if self.ckpt_shapes is not None and self.model is not None:
            preflight.check_shapes(cfg.get("ckpt_path"), self.ckpt_shapes,
                                   preflight.tensor_shapes(self.model.state_dict()))
        if self.subcommand is None or preflight.is_child_process():  # DDP children: rank 0 checked
            return
        callback = _section(self.config_init, self.subcommand).get("checkpoint")
        preflight.check_run_dir(
            self.trainer.logger, self.trainer.default_root_dir,
            version_given=preflight.logger_version_given(cfg.get("trainer")),
            checkpoint_dirpath=getattr(callback, "dirpath", None) if self.subcommand == "fit" else None)
        if not preflight.logger_version_given(cfg.get("trainer")):
            reserve_run_dir(self.trainer.logger)


RESERVED: list[Path] = []  # run directories this process reserved (removed again if left empty)


def reserve_run_dir(logger) -> Path | None:
    """Create the run directory of a TensorBoard or CSV logger that picks the next free
    ``version_N`` itself, with an exclusive ``mkdir``: two runs started at the same moment
    cannot both take ``version_N`` (the second takes the next). The last thing done before
    training: every check has passed."""
    from pytorch_lightning.loggers import CSVLogger

    from lightning_vae.compat import forget_logger_version

    if not isinstance(logger, (TensorBoardLogger, CSVLogger)) or "://" in str(logger.root_dir):
        return None
    for _ in range(1000):
        path = Path(logger.log_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:  # another run took it since this one chose: choose again
            forget_logger_version(logger)
            continue
        RESERVED.append(path)
        return path
    raise bad_input(FileExistsError, f"trainer.logger.init_args.save_dir: no free version_N under "
                                     f"{logger.root_dir} after 1000 tries; expected a directory other runs "
                                     f"are not filling this fast")


def _release_reserved() -> None:
    """Remove the reserved run directories that are still empty (the run wrote nothing)."""
    while RESERVED:
        path = RESERVED.pop()
        try:
            path.rmdir()  # only if empty
        except OSError:
            pass


def eval_logger_dir(cfg: Namespace, stage: str) -> None:
    """Where an evaluation logs: into the checkpoint's run, ``<run>/<stage>/version_N``
    (``--ckpt_path <run>/checkpoints/...``), else ``<save_dir>/<name>/<stage>/version_N``;
    never a new version of a training run (which reports would read as another seed). Set
    on the config of a logger with ``save_dir`` and ``name`` (TensorBoard, CSV)."""
    logger = (cfg.get("trainer") or {}).get("logger")
    init = logger.get("init_args") if isinstance(logger, (Namespace, dict)) else None
    if init is None or "save_dir" not in init or "name" not in init:
        return
    ckpt_path = cfg.get("ckpt_path")
    run = Path(str(ckpt_path)).parent.parent if ckpt_path and Path(str(ckpt_path)).is_file() else None
    if run is not None and Path(str(ckpt_path)).parent.name == "checkpoints" and (run / "config.yaml").is_file():
        init["save_dir"], init["name"] = str(run), stage
    else:
        init["name"] = f"{init['name'] or 'default'}/{stage}"


class RunConfigSaver(SaveConfigCallback):
    """``config.yaml`` into the run's own directory (``callbacks.run_dir``), never over an
    existing one. Lightning's writes it to ``trainer.log_dir``, which is the run directory
    for TensorBoard and CSV but the shared ``save_dir`` for other loggers (W&B, MLflow),
    so there a second run refused to start. Rank zero only (``save_config``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers[:1]:
            logger.experiment  # noqa: B018 - a W&B or MLflow run gets its id (the folder) here
        log_dir = run_dir(trainer)
        if log_dir is None:
            return
        path = Path(log_dir) / self.config_filename
        if path.exists() and not self.overwrite:
            raise bad_input(FileExistsError, f"trainer.logger: {path} exists; expected a new run directory "
                                             f"(another logger version or save_dir)")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=self.overwrite,
                         multifile=self.multifile)


def tensorboard_command(logdir: str | Path) -> str:
    """The command that opens TensorBoard on ``logdir``: the ``tensorboard`` script next to
    this Python (a virtualenv's, which works without activating it), else ``tensorboard``."""
    script = Path(sys.executable).parent / "tensorboard"
    if not script.is_file():
        return f"tensorboard --logdir {logdir}"
    try:  # shorter where it is below the current directory (still a path: it has a "/")
        script = script.relative_to(Path.cwd())
    except ValueError:
        pass
    return f"{script} --logdir {logdir}"


# Third-party messages printed on every command that say nothing about the run: a
# deprecation inside Lightning's own pytree helper (torch 2.13), and Lightning's
# advertisement for its cloud logger.
_NOISE_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",)
_NOISE_LOGS = ("litlogger",)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(word in record.getMessage() for word in _NOISE_LOGS)


def _setup_logging() -> None:
    import warnings

    for pattern in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        lightning_log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in lightning_log.filters):
            lightning_log.addFilter(_DropNoise())
    log = logging.getLogger("lightning_vae")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("lightning_vae: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def build_cli(args: list[str] | None = None, run: bool = True, cli_class=None, model_class=None,
              datamodule_class=None, subclass_mode: bool = False):
    """The CLI object; with ``run=False`` it only parses and instantiates (no subcommand).
    ``subclass_mode``: the model and the data are chosen in the config by ``class_path``
    (subclasses of ``model_class`` and ``datamodule_class``)."""
    return (cli_class or VAECLI)(
        model_class or VAE,
        datamodule_class or ManifoldDataModule,
        subclass_mode_model=subclass_mode,
        subclass_mode_data=subclass_mode,
        args=args,
        run=run,
        parser_class=_Parser,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        parser_kwargs={"parser_mode": "omegaconf"},
        save_config_callback=RunConfigSaver,
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
    """Run the CLI (see ``run_cli``): the VAE's, or, for a config whose ``model.class_path``
    is a ``lightning_vae.ica_em.LinearICA``, linear ICA by EM's (``ica_em.main``)."""
    if config_files.names_model(sys.argv[1:] if args is None else list(args), ICA_MODELS):
        from lightning_vae.ica_em import main as ica_main

        return ica_main(args)
    return run_cli(VAECLI, VAE, args)


ICA_MODELS = ("lightning_vae.ica_em.LinearICA",)


def run_cli(cli_class, model_class, args: list[str] | None = None, datamodule_class=None,
            subclass_mode: bool = False):
    """Run a CLI. Errors end with one line on stderr, never a raw traceback (unless
    LVAE_TRACEBACK=1): bad input exits 2; an unexpected error exits 1 and its traceback is
    saved to a file named in the message."""
    global PROG
    module = cli_class.__module__
    if module == "__main__":  # python -m lightning_vae.ensemble: the module's own name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else module
    PROG = f"python -m {'lightning_vae' if module == __name__ else module}"
    _setup_logging()
    # --config by name (seed_spread) or by its repository path from any directory.
    if args is None:
        sys.argv[1:] = config_files.resolve_argv(sys.argv[1:])
    else:
        args = config_files.resolve_argv(list(args))
    try:
        return build_cli(args, cli_class=cli_class, model_class=model_class, datamodule_class=datamodule_class,
                         subclass_mode=subclass_mode)
    except (SystemExit, KeyboardInterrupt) as stop:
        _release_reserved()  # an exit before anything was written (a finished run's resume)
        # A fit cut off by SIGTERM or SIGINT (RunOutcome saved its checkpoint and said so):
        # 128 + the signal's number, the shell's convention, never 0 (Lightning exits 0 on
        # SIGTERM, 1 on Ctrl-C). A Ctrl-C before training started: one line, 130.
        sig = interrupted_by()
        if sig is not None:
            sys.exit(128 + sig[1])
        if isinstance(stop, KeyboardInterrupt):
            print("lightning_vae: interrupted (SIGINT) before training started; nothing was trained",
                  file=sys.stderr)
            sys.exit(130)
        raise
    except USER_ERRORS as err:
        _release_reserved()
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"lightning_vae: error: {type(err).__name__}: {one_line(str(err))} "
              f"(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last line of defence, reported in full
        _release_reserved()
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"lightning_vae: internal error: {type(err).__name__}: {one_line(str(err))}; "
              f"traceback saved to {_save_traceback()}", file=sys.stderr)
        sys.exit(1)
