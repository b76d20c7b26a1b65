"""The one training loop: K optimizer steps per Lightning step, for any module (K = 1 too).

Lightning's fixed cost per training step (~0.8 ms on a 2-core CPU: hooks over every
callback, progress and logging bookkeeping) is as large as a whole step of these small
models. ``KStepTraining`` runs the optimizer steps of a group of K batches inside one
``training_step`` (manual optimization), so that cost is paid once per K steps. The
datamodule serves the group as one ``(K, B, ...)`` tensor (``steps_per_batch``); K = 1 is
the same loop with groups of one. This module is the only one that knows K: it keeps
Lightning's conventions at any K, and ``align_steps_per_batch`` / ``trainer_overrides``
say what the CLI must set for that:

- ``global_step`` counts optimizer steps; ``max_steps`` stops at the same step; the
  learning-rate schedule is stepped every step; ``log_every_n_steps`` logs the training
  terms at the same steps (straight to the loggers) and ``train/loss`` of a group's last
  step reaches ``trainer.callback_metrics`` (EarlyStopping, ModelCheckpoint(monitor));
- ``on_before_backward`` / ``on_after_backward`` / ``on_before_optimizer_step`` run for
  every step (``manual_backward`` and Lightning's optimizer step); a callback that asks
  to stop (the divergence guard) ends the group at that step;
- the trainer's ``gradient_clip_val`` / ``gradient_clip_algorithm`` and
  ``accumulate_grad_batches`` are applied here (Lightning refuses them under manual
  optimization, so the CLI hands them to ``configure_loop``);
- step cadences that Lightning checks at the end of a Lightning step
  (``ModelCheckpoint(every_n_train_steps)``, an integer ``val_check_interval``,
  ``limit_train_batches``) fall on group ends: K is lowered to divide them
  (``align_steps_per_batch``) and the trainer counts them in groups;
- a second optimizer (``configure_optimizers`` returning two) is an adversary's, the
  learned spread's: one backward of ``terms.loss + terms.adversary``, its gradients
  negated (``reverse_adversary_gradients``), its torch optimizer stepped after the
  model's step (so ``global_step`` counts the model's steps only), both schedules
  stepped every step;
- per-step callbacks that act between steps (``LearningRateMonitor``,
  ``WeightAveraging``) get their hook for every inner step, with Lightning's logging
  step kept equal to the optimizer step (``compat.set_logging_step``).
"""

from __future__ import annotations

import functools
import math
import warnings
from functools import reduce
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, WeightAveraging
from pytorch_lightning.plugins.precision import Precision
from pytorch_lightning.profilers import PassThroughProfiler
from pytorch_lightning.strategies import SingleDeviceStrategy
from torch import Tensor

from lightning_vae.compat import optimizer_step_counters, publish_metric, set_logging_step
from lightning_vae.scalars import log_scalars



CLIP_ALGORITHMS = ("norm", "value")
# Callbacks whose per-step hooks act between optimizer steps, called by the loop for every
# inner step (Lightning calls them once per group): before a step, and after one.
BEFORE_STEP_CALLBACKS = (LearningRateMonitor,)
AFTER_STEP_CALLBACKS = (WeightAveraging,)


def align_steps_per_batch(k: int, cadences: list[int]) -> int:
    """The largest group size <= ``k`` that divides every step cadence (> 0), so that
    each falls on a group end: gcd(k, *cadences)."""
    return reduce(math.gcd, [c for c in cadences if c and c > 0], k)


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def trainer_overrides(trainer_args: dict[str, Any], k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the trainer arguments the K-step loop takes over from those Lightning keeps.

    Returns (arguments for ``configure_loop``, overrides for the Trainer): clipping and
    accumulation move to the loop; an integer ``val_check_interval`` or
    ``limit_train_batches`` (in optimizer steps, as at K = 1) is counted in groups of
    ``k`` (``align_steps_per_batch`` made ``k`` divide them)."""
    loop = {"gradient_clip_val": trainer_args.get("gradient_clip_val"),
            "gradient_clip_algorithm": trainer_args.get("gradient_clip_algorithm") or "norm",
            "accumulate_grad_batches": trainer_args.get("accumulate_grad_batches") or 1}
    overrides: dict[str, Any] = {"gradient_clip_val": None, "gradient_clip_algorithm": None,
                                 "accumulate_grad_batches": 1}
    for key in ("val_check_interval", "limit_train_batches"):
        value = _int(trainer_args.get(key))
        if value is not None:
            overrides[key] = max(1, value // k)
    return loop, overrides


def _get(node, key):
    return node.get(key) if hasattr(node, "get") else getattr(node, key, None)


def step_cadences(config) -> list[int]:
    """The step cadences of a parsed run config that must fall on group ends: every
    ModelCheckpoint's ``every_n_train_steps`` (the ``checkpoint`` group and any in
    ``trainer.callbacks``), an integer ``trainer.val_check_interval`` and
    ``limit_train_batches``; and, where a cadence counts steps across epochs
    (``every_n_train_steps``, ``check_val_every_n_epoch: null``), the epoch's length."""
    trainer = _get(config, "trainer") or {}
    global_steps = [_get(_get(config, "checkpoint") or {}, "every_n_train_steps")]
    for cb in _get(trainer, "callbacks") or []:
        if "ModelCheckpoint" in str(_get(cb, "class_path")):
            global_steps.append(_get(_get(cb, "init_args") or {}, "every_n_train_steps"))
    in_epoch = [_get(trainer, "val_check_interval"), _get(trainer, "limit_train_batches")]
    if _get(trainer, "check_val_every_n_epoch") is None:
        global_steps.append(in_epoch.pop(0))
    out = [v for v in map(_int, global_steps + in_epoch) if v is not None]
    data = _get(config, "data") or {}
    if any(map(_int, global_steps)) and _int(_get(data, "n_train")) and _int(_get(data, "batch_size")):
        out.append(_get(data, "n_train") // _get(data, "batch_size"))
    return out


def plan_run(config) -> list[str]:
    """Set, in a parsed ``fit`` config, what the loop needs; return a note per change.

    - ``eval_every_n_steps`` (> 0, the CLI's default 512): where validation and checkpoints
      are left at Lightning's every epoch, they run every n epochs instead, n the smallest
      divisor of ``max_epochs`` spanning at least that many steps (``evaluation_epochs``):
      an epoch of 2 steps at batch 4096 no longer pays a validation every 2 steps.
    - ``data.steps_per_batch``: lowered to divide every step cadence (``align_steps_per_batch``).
    """
    notes = []
    data, trainer = _get(config, "data"), _get(config, "trainer")
    every = _get(config, "eval_every_n_steps")
    n_train, batch_size = _int(_get(data, "n_train")), _int(_get(data, "batch_size"))
    if every and n_train and batch_size and _get(trainer, "check_val_every_n_epoch") == 1 \
            and _get(trainer, "val_check_interval") in (None, 1, 1.0):
        n = evaluation_epochs(every, n_train // batch_size, _get(trainer, "max_epochs"))
        if n > 1:
            trainer.check_val_every_n_epoch = n
            checkpoint = _get(config, "checkpoint")
            if checkpoint is not None and _get(checkpoint, "every_n_epochs") in (None, 1) \
                    and not _get(checkpoint, "every_n_train_steps") and not _get(checkpoint, "train_time_interval"):
                checkpoint.every_n_epochs = n
    k = _get(data, "steps_per_batch")
    if _int(k):
        aligned = align_steps_per_batch(k, step_cadences(config))
        if aligned != k:
            data.steps_per_batch = aligned
            model = _get(config, "model")
            if model is not None and _get(model, "steps_per_batch") is not None:
                model.steps_per_batch = aligned
            notes.append(f"data.steps_per_batch {k} -> {aligned}, so that every step cadence "
                         f"({', '.join(map(str, step_cadences(config)))} steps) falls on the end of "
                         f"a group of steps; the run is the same")
    return notes


def evaluation_epochs(every_n_steps: int, steps_per_epoch: int, max_epochs: int) -> int:
    """Validate (and checkpoint) every n epochs, n the smallest divisor of ``max_epochs``
    with n * steps_per_epoch >= every_n_steps (so the run's last epoch is validated), or
    ``max_epochs`` if there is none; without a ``max_epochs``, the smallest such n."""
    n = max(1, -(-every_n_steps // max(1, steps_per_epoch)))
    if max_epochs is None or max_epochs < 1:
        return n
    return next((d for d in range(n, max_epochs + 1) if max_epochs % d == 0), max_epochs)


def planned_steps(batches_per_epoch: int, accumulate_grad_batches: int, max_epochs: int | None,
                  max_steps: int | None) -> float:
    """Optimizer steps of a whole run, ``inf`` where neither bound is set: one step per
    ``accumulate_grad_batches`` batches, a short last one at an epoch's end (Lightning's
    rule), over ``max_epochs`` epochs, at most ``max_steps`` (-1 or None: no bound)."""
    per_epoch = -(-batches_per_epoch // max(1, accumulate_grad_batches))
    total = per_epoch * max_epochs if max_epochs is not None and max_epochs > 0 else math.inf
    if max_steps not in (None, -1):
        total = min(total, max_steps)
    return total


def _overriding(trainer: pl.Trainer, module: pl.LightningModule, name: str) -> list:
    """The bound ``name`` hooks of the callbacks that override it, then the module's if it
    does (Lightning's order), with the callbacks' (trainer, module) arguments bound."""
    base = getattr(pl.Callback, name)
    hooks = [functools.partial(getattr(cb, name), trainer, module)
             for cb in trainer.callbacks if getattr(type(cb), name) is not base]
    if getattr(type(module), name) is not getattr(pl.LightningModule, name):
        hooks.append(getattr(module, name))
    return hooks


class SeededNoise:
    """Mixin for a ``LightningModule``: the training noise's own generator. It is seeded by
    ``noise_seed`` (the run's seed; set it in ``__init__``), created on first use on the
    data's device, saved in checkpoints and restored from them (``save_noise_state`` and
    ``load_noise_state``, called from the module's checkpoint hooks), so that its stream
    does not depend on what else draws from torch's global RNG and a resumed run draws what
    the whole run would have."""

    noise_seed: int = 0
    _noise: torch.Generator | None = None
    _noise_state: Tensor | None = None  # restored from a checkpoint, applied lazily

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """The training-noise generator (created on first use on the data's device)."""
        if self._noise is None or self._noise.device != device:
            self._noise = torch.Generator(device=device).manual_seed(self.noise_seed)
            if self._noise_state is not None:
                self._noise.set_state(self._noise_state)
        return self._noise

    def save_noise_state(self, checkpoint: dict) -> None:
        if self._noise is not None:
            checkpoint["noise_generator_state"] = self._noise.get_state()

    def load_noise_state(self, checkpoint: dict) -> None:
        self._noise_state = checkpoint.get("noise_generator_state")
        self._noise = None


class KStepTraining:
    """Mixin for a ``LightningModule`` (listed before it): the training loop. The module
    provides ``step_terms(x, step, values)``, the objective's ``Terms`` of one batch at
    optimizer step ``step`` (``terms.loss`` may have a leading members dim: its sum is
    minimised; ``values``: whether the logged terms are needed), and may override
    ``log_train(terms, step)``."""

    def _configure_steps(self, lr_schedule: str, steps_per_batch: int) -> None:
        """Check and set the training-loop arguments shared by every model that uses this."""
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        if steps_per_batch < 1:
            raise ValueError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
        self.lr_schedule, self.steps_per_batch = lr_schedule, steps_per_batch
        self.automatic_optimization = False
        self.configure_loop()

    def configure_loop(self, gradient_clip_val: float | None = None, gradient_clip_algorithm: str = "norm",
                       accumulate_grad_batches: int = 1) -> None:
        """What ``Trainer(gradient_clip_val=..., gradient_clip_algorithm=...,
        accumulate_grad_batches=...)`` means, applied by the loop (the CLI passes the
        trainer's values here; in Python, call it before ``fit``)."""
        if gradient_clip_val is not None and not (gradient_clip_val >= 0 and math.isfinite(gradient_clip_val)):
            raise ValueError(f"gradient_clip_val must be a number >= 0 or null, got {gradient_clip_val}")
        if gradient_clip_algorithm not in CLIP_ALGORITHMS:
            raise ValueError(f"gradient_clip_algorithm must be one of {', '.join(CLIP_ALGORITHMS)}, "
                             f"got {gradient_clip_algorithm!r}")
        if isinstance(accumulate_grad_batches, bool) or not isinstance(accumulate_grad_batches, int) \
                or accumulate_grad_batches < 1:
            raise ValueError(f"accumulate_grad_batches must be an integer >= 1, got {accumulate_grad_batches!r}")
        self.gradient_clip_val = gradient_clip_val or None  # 0 means off, as in Lightning
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.accumulate_grad_batches = accumulate_grad_batches

    def setup(self, stage: str) -> None:
        # Lightning counts a group as one step and so warns that an epoch of few groups is
        # shorter than the logging interval; the loop logs every log_every_n_steps optimizer
        # steps itself, so the warning does not apply.
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) "
                                r"is smaller than the logging interval")

    def on_train_start(self) -> None:
        trainer = self.trainer
        # A run resumed mid-epoch (from an interrupted run's checkpoint) skips
        # on_train_epoch_start: a group always ends on a completed step, so none is pending.
        self._micro = 0
        cbs = trainer.callbacks
        self._before_step = [cb for cb in cbs if isinstance(cb, BEFORE_STEP_CALLBACKS)]
        self._after_step = [cb for cb in cbs if isinstance(cb, AFTER_STEP_CALLBACKS)]
        # In full precision on one device without a profiler, Lightning's backward and
        # optimizer step add nothing but the dispatch of their hooks to every callback
        # (through profiler contexts: ~0.1-0.2 ms a step with ten callbacks, most of which do
        # not override them). There the loop calls the hooks that exist, in Lightning's
        # order (callbacks, then the module), itself; elsewhere (DDP, mixed precision, a
        # profiler) Lightning's own manual_backward and optimizer step run.
        self._direct = (type(trainer.precision_plugin) is Precision
                        and type(trainer.strategy) is SingleDeviceStrategy
                        and isinstance(trainer.profiler, PassThroughProfiler))
        self._hooks = {name: _overriding(trainer, self, name) for name in
                       ("on_before_backward", "on_after_backward", "on_before_optimizer_step")}

    def _backward(self, loss: Tensor) -> None:
        """``manual_backward``, with its hooks called directly where that is the same."""
        if not self._direct:
            self.manual_backward(loss)
            return
        for hook in self._hooks["on_before_backward"]:
            hook(loss)
        self.backward(loss)
        for hook in self._hooks["on_after_backward"]:
            hook()

    def _optimizer_step(self, optimizer) -> None:
        """Lightning's optimizer step (its on_before_optimizer_step hooks, the step, the
        step count), with the hooks called directly where that is the same."""
        if not self._direct:
            optimizer.step()
            return
        before, after = optimizer_step_counters(optimizer)
        before()
        for hook in self._hooks["on_before_optimizer_step"]:
            hook(optimizer.optimizer)
        optimizer.optimizer.step()
        after()

    def on_train_epoch_start(self) -> None:
        self._micro = 0  # batches accumulated towards the next optimizer step

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        """One optimizer step per batch of the group ``x`` ``(K, ...)`` (the last group of
        an epoch may be shorter; with ``accumulate_grad_batches`` N, one step per N
        batches). Returns the losses, ``(K,)`` or ``(K, M)``."""
        trainer = self.trainer
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        # A second optimizer is an adversary's (the learned spread's): it ascends, by
        # ``reverse_adversary_gradients``, and steps after the model (``after_adversary_step``).
        optimizer, adversary = (optimizer[0], optimizer[1]) if isinstance(optimizer, list) else (optimizer, None)
        every, n_acc = trainer.log_every_n_steps, self.accumulate_grad_batches
        last_group = batch_idx + 1 == trainer.num_training_batches
        max_steps = trainer.max_steps if trainer.max_steps != -1 else math.inf
        step = self.global_step  # counted here: Lightning's property walks its loop objects
        losses: list[Tensor] = []
        for i, xb in enumerate(x):
            # Stop where K = 1 would: at max_steps, or when a callback asked to stop (the
            # divergence guard, after skipping a non-finite step).
            if self._micro == 0 and (step >= max_steps or (losses and trainer.should_stop)):
                break
            if i > 0 and self._micro == 0:
                set_logging_step(trainer, step)
                for cb in self._before_step:
                    cb.on_train_batch_start(trainer, self, xb, batch_idx)
            self._micro += 1
            # The step completes here: N batches accumulated, or the epoch's last batch
            # (Lightning's rule for accumulate_grad_batches).
            completes = self._micro == n_acc or (last_group and i == len(x) - 1)
            log_now = completes and bool(every) and (step + 1) % every == 0
            terms = self.step_terms(xb, step, values=log_now)
            # An ensemble's members, (M,): summed, each gets its own gradient.
            loss = terms.loss if terms.loss.dim() == 0 else terms.loss.sum()
            if terms.adversary is not None:
                loss = loss + terms.adversary
            if self._micro == 1:
                optimizer.zero_grad(set_to_none=True)
                if adversary is not None:
                    adversary.optimizer.zero_grad(set_to_none=True)
            self._backward(loss / n_acc if n_acc > 1 else loss)
            losses.append(terms.loss.detach())
            if not completes:
                continue
            if adversary is not None:
                self.reverse_adversary_gradients()
            if self.gradient_clip_val is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val,
                                    gradient_clip_algorithm=self.gradient_clip_algorithm)
            self._optimizer_step(optimizer)  # on_before_optimizer_step hooks, global_step + 1
            if adversary is not None:
                # After the model's step and its hooks: the divergence guard has dropped every
                # gradient of a non-finite step, so this one is a no-op then too. The torch
                # optimizer itself: Lightning would count its step in global_step.
                adversary.optimizer.step()
                self.after_adversary_step()
            self.on_after_optimizer_step(step)
            if log_now:  # before the schedule moves on: train/lr is the rate this step used
                self.log_train(terms, step)
            for sched in (scheduler if isinstance(scheduler, list) else [scheduler] if scheduler else []):
                sched.step()  # the model's, and the adversary's where it has one
            self._micro = 0
            step += 1
            if i < len(x) - 1:
                set_logging_step(trainer, step - 1)
                for cb in self._after_step:
                    cb.on_train_batch_end(trainer, self, None, xb, batch_idx)
        # Lightning adds one to its logging step after this group: keep it = global_step.
        set_logging_step(trainer, step - 1)
        if losses:
            # The loss of the group's last step, for callbacks that monitor it (EarlyStopping,
            # ModelCheckpoint: at the epoch's end it is the epoch's last step, at any K) and
            # the progress bar, where self.log(on_step=True) puts it; the logger got it at
            # its own steps (log_train).
            publish_metric(trainer, "train/loss", losses[-1].mean(),
                           prog_bar=trainer.progress_bar_callback is not None)
        return torch.stack(losses) if losses else x.new_zeros(0)

    def on_after_optimizer_step(self, step: int) -> None:
        """Called after optimizer step ``step`` (the loop's hook; none in Lightning)."""

    def reverse_adversary_gradients(self) -> None:
        """With a second optimizer (an adversary that ascends what the first descends):
        negate its parameters' gradients before the steps (gradient reversal)."""

    def after_adversary_step(self) -> None:
        """Called after the adversary's optimizer step (e.g. to re-impose a constraint)."""

    def log_train(self, terms, step: int) -> None:
        """Write a step's loss and terms to the loggers at x = ``step`` (rank zero). Under
        DDP each value is the mean over the ranks (one all-reduce), so it is the value of
        the global batch, as one process at that batch logs it (every rank's batch has the
        same size)."""
        values = {"train/loss": terms.loss.detach(), **{f"train/{k}": v for k, v in terms.values.items()}}
        device = terms.loss.device
        stacked = torch.stack([v.detach().float().reshape(()) if isinstance(v, Tensor)
                               else torch.tensor(float(v), device=device) for v in values.values()])
        if self.trainer.world_size > 1:
            stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
        values = dict(zip(values, stacked.tolist()))  # one host read
        optimizer = self.optimizers()
        optimizer = optimizer[0] if isinstance(optimizer, list) else optimizer  # the model's
        values["train/lr"] = float(optimizer.param_groups[0]["lr"])
        log_scalars(self.trainer, values, step)

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run (what the cosine schedule spans)."""
        trainer = self.trainer
        total = planned_steps(trainer.datamodule.steps_per_epoch(trainer.world_size),
                              self.accumulate_grad_batches, trainer.max_epochs, trainer.max_steps)
        if not math.isfinite(total):
            raise ValueError("lr_schedule 'cosine' needs a finite run: set trainer.max_epochs "
                             "or trainer.max_steps, or use lr_schedule 'constant'")
        return max(1, int(total))
