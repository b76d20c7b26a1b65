"""The Lightning CLI: ``python -m lightning_vae {fit,validate,test,predict} --config ...``."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

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


def one_line(message: str) -> str:
    """The useful line of a parser error.

    jsonargparse reports a bad value inside a ``class_path`` group as a multi-line Union
    report; the cause (e.g. ``noise_std must be >= 0, got -1.0``) is one of its bullets. A
    class_path that does not import becomes "unknown class X; expected a subclass of B".
    """
    text = re.sub(r"Expected a path but (\S+) either not accessible or invalid",
                  r"unknown class (or config file) \1", str(message))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    key = lines[0].split(":")[0] if lines and lines[0].startswith("Parser key") else ""
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", text)
    if problem:
        cls, cause = problem.groups()
        if "has no attribute" in cause or "No module named" in cause:
            base = re.search(r"Subtypes: \[<class '([^']+)'>", text)
            expected = f"; expected a subclass of {base.group(1)}" if base else ""
            return f"{key}: unknown class {cls}{expected}"
        return f"{key}: {cls}: {cause}"
    causes = [ln[2:] for ln in lines if ln.startswith("- ") and "NoneType" not in ln]
    if causes:
        return f"{key}: {causes[0]}" if key else causes[0]
    return " ".join(lines)


class _Parser(LightningArgumentParser):
    """Parse errors are one line (plus jsonargparse's ``--help`` tip), not the full usage."""

    def print_usage(self, file=None) -> None:
        pass

    def error(self, message: str, ex: Exception | None = None):
        super().error(one_line(message), ex)


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
        # last.ckpt every epoch; no second, epoch-named copy (save_top_k 0): half the writes.
        # 32 optimizer steps per Lightning step: the same run as 1 (same batches, weights,
        # logged scalars, collapse and divergence steps), with Lightning's per-step overhead
        # paid once per 32 (see lightning_vae/steps.py).
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "data.steps_per_batch": DEFAULT_STEPS_PER_BATCH, **LOGGER_DEFAULT})


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
