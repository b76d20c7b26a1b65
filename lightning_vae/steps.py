"""Several optimizer steps per Lightning step (``steps_per_batch``), for any module.

Lightning's fixed cost per training step (~0.8 ms on a 2-core CPU: hooks over every
callback, the optimizer closure, progress and logging bookkeeping) is as large as a whole
step of these small models. ``KStepTraining`` runs K optimizer steps inside one
``training_step`` (manual optimization), one per batch of a ``(K, ...)`` group the
datamodule serves, so that cost is paid once per K steps, and it keeps everything else as
K = 1 has it: ``global_step`` counts optimizer steps, the learning-rate schedule is stepped
every step, terms are logged at the same steps, ``on_before_optimizer_step`` runs before
every step, and a run stops at ``max_steps`` or at a callback's request at the same step.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import Precision
from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor


class KStepTraining:
    """Mixin for a ``LightningModule`` with ``steps_per_batch`` and ``gradient_clip``
    attributes, ``automatic_optimization`` off when either is in use, and:

    - ``_train_terms(x, step, values)``: the objective's ``Terms`` of one batch at optimizer
      step ``step`` (``terms.loss`` may have a leading members dim: its sum is minimised;
      ``values``: whether the logged terms are needed);
    - ``_log_train(terms, step)``: write them to the loggers at x = ``step`` (``step``
      None: the automatic path's logging step).

    It provides ``training_step`` (K = 1 without gradient clipping: Lightning's automatic
    optimization), ``_total_steps`` for the learning-rate schedule, and the K-step loop.
    """

    _step_hooks: list | None = None

    def _configure_steps(self, lr_schedule: str, steps_per_batch: int, gradient_clip: float | None) -> None:
        """Check and set the training-loop arguments shared by every model that uses this."""
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
        if gradient_clip is not None and not gradient_clip > 0:
            raise ValueError(f"gradient_clip must be > 0 or null, got {gradient_clip}")
        self.lr_schedule, self.steps_per_batch, self.gradient_clip = lr_schedule, steps_per_batch, gradient_clip
        self.automatic_optimization = steps_per_batch == 1 and gradient_clip is None

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        if not self.automatic_optimization:
            return self._k_steps(x)
        log_now = self.trainer._logger_connector.should_update_logs
        terms = self._train_terms(x, self.global_step, values=log_now)
        if log_now:
            self._log_train(terms)
        return terms.loss if terms.loss.dim() == 0 else terms.loss.sum()

    def setup(self, stage: str) -> None:
        if self.steps_per_batch > 1:
            # Lightning counts a K-step batch as one step and so warns that an epoch of few
            # batches is shorter than the logging interval; the K-step loop logs every
            # log_every_n_steps optimizer steps itself, so the warning does not apply.
            warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) "
                                    r"is smaller than the logging interval")

    def on_train_start(self) -> None:
        self._step_hooks = self._direct_step_hooks()

    def _direct_step_hooks(self) -> list | None:
        """The ``on_before_optimizer_step`` hooks to call around a direct optimizer step,
        or None where Lightning's own optimizer step must run.

        Lightning's ``LightningOptimizer.step`` dispatches ``on_before_optimizer_step`` to
        every callback (each through a profiler context; ~25 us a step for eight callbacks,
        most of which do not override it) and the module, then steps the optimizer. In full
        precision, with a strategy whose optimizer step adds nothing (single device, DDP
        without model averaging), the loop does the same work directly: it counts the step
        in Lightning's progress (so ``global_step``, ``max_steps``, checkpoints and resume
        are unchanged), calls the hook of each callback and of the module that overrides
        it, in Lightning's order, and steps the optimizer.
        """
        trainer, strategy = self.trainer, self.trainer.strategy
        if (type(trainer.precision_plugin) is not Precision
                or type(strategy) not in (SingleDeviceStrategy, DDPStrategy)
                or getattr(strategy, "_model_averager", None) is not None):
            return None
        base = pl.Callback.on_before_optimizer_step
        hooks = [partial(cb.on_before_optimizer_step, trainer, self)
                 for cb in trainer.callbacks if type(cb).on_before_optimizer_step is not base]
        if type(self).on_before_optimizer_step is not pl.LightningModule.on_before_optimizer_step:
            hooks.append(self.on_before_optimizer_step)
        return hooks

    def _k_steps(self, x: Tensor) -> Tensor:
        """One optimizer step per batch of ``x``: ``(K, ...)`` batches when
        ``steps_per_batch > 1`` (the last group of an epoch may be shorter), else one batch.
        Returns the losses, ``(K,)`` or ``(K, M)``."""
        trainer = self.trainer
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        every = trainer.log_every_n_steps
        # In full precision on one device, backward needs none of what manual_backward adds
        # (loss scaling), only two more rounds of hooks over every callback: with K > 1
        # callbacks' on_before/after_backward are not called. Under DDP manual_backward is
        # what prepares DDP's reducer for each backward, so that every step's gradients are
        # averaged over the ranks (a bare backward would leave each rank its own).
        plain_backward = type(trainer.precision_plugin) is Precision and trainer.world_size == 1
        hooks = self._step_hooks
        # Bound once: attribute lookups on Lightning's wrappers cost ~1 us each, per step.
        zero_grad, torch_step = optimizer.zero_grad, optimizer.optimizer.step
        before, after = optimizer._on_before_step, optimizer._on_after_step  # step count, profiler
        schedule = scheduler.step if scheduler is not None else None
        losses, logged = [], None
        step = self.global_step  # counted here: Lightning's property walks its loop objects
        max_steps = trainer.max_steps if trainer.max_steps != -1 else math.inf
        for xb in x if self.steps_per_batch > 1 else x[None]:
            # Stop where K = 1 would: at max_steps, or when a callback asked to stop (the
            # divergence guard, after skipping a non-finite step).
            if step >= max_steps or (losses and trainer.should_stop):
                break
            # The automatic path's convention: step t's terms at x = t, every n-th step.
            log_now = bool(every) and (step + 1) % every == 0
            terms = self._train_terms(xb, step, values=log_now)
            # An ensemble's members, (M,): summed, each gets its own gradient.
            loss = terms.loss if terms.loss.dim() == 0 else terms.loss.sum()
            zero_grad(set_to_none=True)
            if plain_backward:
                loss.backward()
            else:
                self.manual_backward(loss)
            if self.gradient_clip is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip,
                                    gradient_clip_algorithm="norm")
            if hooks is None:
                optimizer.step()
            else:
                before()
                for hook in hooks:
                    hook(optimizer.optimizer)
                torch_step()
                after()
            if schedule is not None:
                schedule()
            losses.append(terms.loss.detach())
            if log_now:
                self._log_train(terms, step=step)
                logged = terms
            step += 1
        if logged is not None and trainer.progress_bar_callback is not None:
            # Once per Lightning step (what the bar shows): ~0.4 ms a self.log call.
            self.log("train/loss", logged.loss.detach().mean(), prog_bar=True, logger=False)
        return torch.stack(losses)

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run (what the cosine schedule spans)."""
        trainer = self.trainer
        if self.automatic_optimization:
            total = trainer.estimated_stepping_batches
        else:  # Lightning counts K-step batches; count the optimizer steps
            per_epoch = trainer.datamodule.steps_per_epoch(trainer.world_size)
            total = per_epoch * trainer.max_epochs if trainer.max_epochs > 0 else math.inf
            if trainer.max_steps != -1:
                total = min(total, trainer.max_steps)
        if not math.isfinite(total):
            raise ValueError("lr_schedule 'cosine' needs a finite run: set trainer.max_epochs "
                             "or trainer.max_steps, or use lr_schedule 'constant'")
        return max(1, int(total))
