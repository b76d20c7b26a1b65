"""The one place that reads or writes a private attribute of a library (argparse, Lightning,
torch and its TensorBoard writer).

Each function wraps one private access that no public API replaces (its comment says why),
so that an upgrade that changes it breaks here, and ``tests/test_compat.py`` says so by
name and version, rather than deep inside a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: errors.py needs only parser_actions
    import torch


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option of ``parser`` (a jsonargparse ``ArgumentParser`` is an argparse one)."""
    # argparse keeps a parser's actions in ``_actions`` and offers no public way to list
    # them (``format_help`` only renders them); jsonargparse adds none. Used to suggest the
    # nearest key for an unknown one.
    return list(parser._actions)


# --- for callbacks.py, steps.py and scalars.py (where their call sites read the attributes
# directly still, these are the replacements) ---------------------------------------------


def file_writer(writer: Any) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter``'s ``FileWriter``, reopened if closed."""
    # The public ``writer.file_writer`` is None after ``close()``; only ``_get_file_writer``
    # reopens it, and only a FileWriter takes a whole ``Summary`` (many tags, one event).
    return writer._get_file_writer()


def set_last_lr(scheduler: Any, lrs: list[float]) -> None:
    """Make a torch LR scheduler's ``get_last_lr()`` return ``lrs``."""
    # torch's schedulers have a public getter (``get_last_lr``) and no setter; a rollback
    # that rescales the learning rates in place must keep the two in step.
    scheduler._last_lr = list(lrs)


def foreach_norm(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The 2-norm of each tensor, fused into one kernel launch per device and dtype."""
    # The public fused form, ``torch.nn.utils.get_total_norm``, is torch 2.6+; this project
    # supports torch 2.2+.
    import torch

    return list(torch._foreach_norm(tensors))


def set_logging_step(trainer: Any, step: int) -> None:
    """Lightning's logging step (the x of ``self.log`` and of LearningRateMonitor, and what
    ``log_every_n_steps`` counts) set to ``step``."""
    # Lightning keeps it in its training epoch loop's ``_batches_that_stepped`` (restored
    # from checkpoints with the loop's state) and has no public setter. Checked first: a
    # rename would otherwise create a new attribute that Lightning never reads.
    loop = trainer.fit_loop.epoch_loop
    if not hasattr(loop, "_batches_that_stepped"):
        raise AttributeError("Lightning's training epoch loop has no _batches_that_stepped any more; "
                             "lightning_vae.compat.set_logging_step needs updating")
    loop._batches_that_stepped = step


def optimizer_step_counters(optimizer: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A ``LightningOptimizer``'s (before, after) callbacks of an optimizer step under manual
    optimization: they count the step in Lightning's progress (``global_step``) and time it
    in Lightning's profiler."""
    # Lightning's manual-optimization loop installs them as ``_on_before_step`` and
    # ``_on_after_step`` for the duration of a training step; ``LightningOptimizer.step``
    # calls them around the step, and there is no public way to count a step that does not
    # go through it (steps.py does so to skip a dispatch of on_before_optimizer_step to every
    # callback through a profiler context, ~25 us a step, when no callback but a few use it).
    for name in ("_on_before_step", "_on_after_step"):
        if not callable(getattr(optimizer, name, None)):
            raise AttributeError(f"Lightning's LightningOptimizer has no {name} any more; "
                                 "lightning_vae.compat.optimizer_step_counters needs updating")
    return optimizer._on_before_step, optimizer._on_after_step


def publish_metric(trainer: Any, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
    """``value`` as ``trainer.callback_metrics[name]`` (what EarlyStopping and
    ModelCheckpoint monitor) and, with ``prog_bar``, in ``trainer.progress_bar_metrics``:
    where ``self.log(name, value, on_step=True, prog_bar=prog_bar, logger=False)`` puts it."""
    # Both public properties return the logger connector's own dicts, which persist across
    # batches (Lightning only updates them, from self.log's results, and clears them when a
    # stage starts); writing into them is how Lightning's own callbacks are fed in its
    # tests. self.log instead creates and walks a torchmetrics-based result object: 0.5-2 ms
    # a call, paid at every epoch's end (each epoch is 2 steps at batch 4096). Checked:
    # should the properties ever return copies, the write would be lost silently.
    value = value.detach()
    metrics = trainer.callback_metrics
    metrics[name] = value
    if trainer.callback_metrics.get(name) is not value:
        raise RuntimeError("Lightning's trainer.callback_metrics no longer returns a persistent dict; "
                           "lightning_vae.compat.publish_metric needs updating")
    if prog_bar:
        trainer.progress_bar_metrics[name] = float(value)


def forget_logger_version(logger: Any) -> None:
    """Make a TensorBoard or CSV logger choose its version again (the next free
    ``version_N``) the next time ``logger.version`` is read."""
    # Both loggers cache the chosen version in ``_version`` (None until first read) and have
    # no public way to choose again; the CLI needs it to reserve a run directory atomically
    # (another run created the one chosen first). Checked: a rename would otherwise leave
    # the old version in place and the reservation would retry the same directory.
    if not hasattr(logger, "_version"):
        raise AttributeError(f"{type(logger).__name__} has no _version any more; "
                             "lightning_vae.compat.forget_logger_version needs updating")
    logger._version = None
