"""Callbacks: decoder-variance monitor, sample quality, sample figure, divergence guard,
and the hparams summary. They read the model through its public API and the data through
the datamodule; they add no maths of their own beyond ``metrics``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter, TQDMProgressBar
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor

from lightning_vae import metrics
from lightning_vae.compat import file_writer, foreach_norm, set_last_lr
from lightning_vae.runs import OUTCOME_FILE, write_record
from lightning_vae.scalars import log_scalars, write_scalars
from lightning_vae.steps import planned_steps

log = logging.getLogger(__name__)


def axis_name(i: int, dim: int) -> str:
    """'x', 'y', 'z' for up to three axes, else 'd0', 'd1', ..."""
    return "xyz"[i] if dim <= 3 else f"d{i}"


def final_validation(trainer: pl.Trainer) -> bool:
    """Whether this validation is the run's last: at its last epoch or step, or a stopped
    run's (divergence, early stopping)."""
    return (trainer.should_stop or trainer.current_epoch + 1 == trainer.max_epochs
            or 0 < trainer.max_steps <= trainer.global_step)


class Cadence:
    """When a costly evaluation runs, at a validation: every ``every_n_epochs`` epochs
    (deterministic) or, with it None, once ``every_n_seconds`` of wall time have passed since
    its last run (so its cost stays a fixed share of the run at any batch size); and always
    at the run's final validation. Under DDP rank 0's clock decides for every rank."""

    def __init__(self, every_n_epochs: int | None, every_n_seconds: float) -> None:
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        if not every_n_seconds >= 0:
            raise ValueError(f"every_n_seconds must be >= 0, got {every_n_seconds}")
        self.every_n_epochs, self.every_n_seconds = every_n_epochs, float(every_n_seconds)
        self._last = time.monotonic()

    def start(self) -> None:
        self._last = time.monotonic()

    def due(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:  # validate / test: the user asked for it now
            return True
        if final_validation(trainer):
            due = True
        elif self.every_n_epochs is not None:
            due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        else:
            due = bool(trainer.strategy.broadcast(time.monotonic() - self._last >= self.every_n_seconds))
        if due:
            self._last = time.monotonic()
        return due


# The per-state, per-axis decoder scalars (decoder/std_<axis>_z<k>, decoder/loc_<axis>_z<k>)
# are logged for data with at most this many axes.
MAX_PARAM_AXES = 32
# latent/used_states: a state is used when its aggregate posterior over up to USAGE_POINTS
# training points exceeds USED_SHARE / K (a tenth of a uniform share).
USAGE_POINTS = 2048
USED_SHARE = 0.1


def decoder_scalars(loc: Tensor, scale: Tensor, max_states: int = 16) -> dict[str, float | list[float]]:
    """``decoder/std_<axis>_z<k>`` and ``decoder/loc_<axis>_z<k>`` from ``(K, D)`` decoder
    parameters, as floats (one host read), for the first ``max_states`` states; from an
    ensemble's ``(M, K, D)``, each a list of the M members' values."""
    n_states, dim = loc.shape[-2:]
    n = min(n_states, max_states)
    # (..., n, D) -> (n, D, ...): state and axis first, the members (if any) innermost.
    locs, scales = (t[..., :n, :].detach().movedim((-2, -1), (0, 1)).tolist() for t in (loc, scale))
    values = {}
    for k in range(n):
        for d in range(dim):
            a = axis_name(d, dim)
            values[f"decoder/std_{a}_z{k}"] = scales[k][d]
            values[f"decoder/loc_{a}_z{k}"] = locs[k][d]
    return values


def encoder_diagnostics(q, active_threshold: float = 1e-2) -> dict[str, Tensor]:
    """Collapse detectors from q(z|x) over a set of points (a ``torch.distributions`` object).

    ``encoder/posterior_entropy``: the mean entropy of q(z|x) in nats (discrete latents:
    exact; Gaussian: the differential entropy). At the prior's entropy (log 2 for the seed's
    Bernoulli) the encoder ignores x: posterior collapse.
    ``encoder/active_units`` (Gaussian latents): the number of latent dimensions u with
    Var_x(E_q[z_u]) > ``active_threshold`` (Burda et al. 2016); 0 = posterior collapse.
    """
    values = {"encoder/posterior_entropy": q.entropy().mean()}
    if not hasattr(q, "probs"):  # Independent(Normal): its mean per point, (B, dim)
        values["encoder/active_units"] = (q.mean.var(dim=0) > active_threshold).sum().to(q.mean.dtype)
    return values


def _find(trainer: pl.Trainer, kind: type):
    """The trainer's first callback of type ``kind``, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def _histogram(writer, tag: str, values: Tensor, step: int) -> None:
    """A histogram of the finite values (a diverged model has none: then nothing)."""
    values = values[values.isfinite()].detach().cpu()
    if len(values):
        writer.add_histogram(tag, values, step)


def _tb(trainer: pl.Trainer):
    """The TensorBoard SummaryWriter of the first TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.TensorBoardLogger):
            return logger.experiment
    return None


# --- the member axis: the same callbacks for a single run and an ensemble's members -------

def members(pl_module) -> list[int] | None:
    """The seeds of a module with a member axis (``EnsembleVAE``), None for a single run.

    Such a module has ``decoder_params()`` and ``last_terms.scale`` with a leading ``(M,)``
    dim, and ``member(m)`` (member ``m`` as a plain VAE core), ``member_log(values, step)``
    (``(M,)`` values, one per member's run), ``member_writers()``, ``member_metrics`` (each
    member's latest logged values), ``frozen`` (seed -> step) and ``freeze(m, step)``.
    """
    return getattr(pl_module, "members", None)


def _models(pl_module) -> list:
    """What is evaluated: the module itself, or each member as a plain VAE core."""
    seeds = members(pl_module)
    return [pl_module] if seeds is None else [pl_module.member(m) for m in range(len(seeds))]


def _write(trainer, pl_module, values: dict, step: int) -> None:
    """Scalars at x = ``step``: a single run's to its loggers, an ensemble's ``(M,)`` values
    one per member's run."""
    if members(pl_module) is None:
        log_scalars(trainer, {k: float(v) for k, v in values.items()}, step)
    else:
        pl_module.member_log({k: torch.as_tensor(v) for k, v in values.items()}, step)


def run_dir(trainer: pl.Trainer) -> str | None:
    """``trainer.log_dir`` without its broadcast: that property is a collective (every DDP
    rank must call it), so rank-zero-only code that reads it hangs a multi-process run."""
    if not trainer.loggers:
        return trainer.default_root_dir
    logger = trainer.loggers[0]
    if isinstance(logger, (pl.loggers.TensorBoardLogger, pl.loggers.CSVLogger)):
        return logger.log_dir
    # Other loggers (W&B, MLflow, ...): where Lightning puts the run's checkpoints,
    # <save_dir>/<name>/<version>, so that each run's figures are its own.
    save_dir, name, version = logger.save_dir, logger.name, logger.version
    if save_dir is None or name is None or version is None:
        return save_dir
    return str(Path(save_dir) / str(name) / str(version))


def _run_dirs(trainer, pl_module) -> list[Path] | None:
    """Where each model's files go: the run directory, or each member's (``seed_<s>/``);
    rank zero only, None without a run directory."""
    if not trainer.is_global_zero or run_dir(trainer) is None:
        return None
    seeds, root = members(pl_module), Path(run_dir(trainer))
    return [root] if seeds is None else [root / f"seed_{s}" for s in seeds]


def _other_loggers(trainer, pl_module) -> list:
    """A single run's loggers other than TensorBoard (CSV, W&B, MLflow, ...), which get
    figures (``log_image`` where they have it) and the final ``hp/*`` values through their
    own API; an ensemble's members log to TensorBoard runs of their own only."""
    if members(pl_module) is not None:
        return []
    return [lg for lg in trainer.loggers if not isinstance(lg, pl.loggers.TensorBoardLogger)]


def save_figure(fig, path: Path) -> "numpy.ndarray":
    """Render ``fig`` once: written as a PNG to ``path``, returned as an RGB array (H, W, 3)
    for loggers that take images; the figure is closed."""
    import matplotlib.image
    import matplotlib.pyplot as plt
    import numpy

    fig.canvas.draw()
    image = numpy.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, image)
    return image


def _principal_axes(data: Tensor, k: int = 2) -> tuple[Tensor, Tensor, float]:
    """The mean ``(D,)`` of ``data`` ``(N, D)`` (float64), its top ``k`` principal axes as
    unit rows ``(k, D)``, each signed so that its largest component is positive (the same
    orientation at every step: the seed's first axis points along +x), and the share of
    the data's total variance that lies along them (1 for data with no variance)."""
    data = data.double()
    mean = data.mean(0)
    _, s, vh = torch.linalg.svd(data - mean, full_matrices=False)
    axes = vh[:k]
    sign = axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    axes = axes * torch.where(sign == 0, torch.ones_like(sign), sign)
    var = s.square()
    total = float(var.sum())
    return mean, axes, float(var[:k].sum()) / total if total > 0 else 1.0


def _data_plane(data: Tensor) -> tuple[Tensor, Tensor, tuple[str, str], float]:
    """The plane the figures draw D-dimensional data on: its mean ``(D,)``, two unit axes
    as rows ``(2, D)``, their labels and the share of the data's variance on the plane.
    2-D data: the plane itself (axes x, y; share 1); in R^D: the plane of the data's top
    two principal axes through its mean. A point p is drawn at (p - mean) @ axes.T."""
    dim = data.shape[1]
    if dim < 2:
        raise ValueError(f"a plane needs data with D >= 2 axes, got D = {dim}")
    if dim == 2:
        return data.double().mean(0), torch.eye(2, dtype=torch.float64), ("x", "y"), 1.0
    mean, axes, share = _principal_axes(data, 2)
    return mean, axes, ("principal axis 1", "principal axis 2"), share


def _close(figures: list) -> None:
    """Close figures that are not logged (matplotlib keeps every open one)."""
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


def log_figure(trainer, pl_module, tag: str, figures: list, step: int) -> None:
    """One figure per model (the run, or each member) as ``figures/<tag>_step<step>.png`` in
    its run directory (whatever the logger), into TensorBoard, and to every other logger
    with ``log_image``."""
    dirs = _run_dirs(trainer, pl_module)
    if dirs is None:
        return
    writers = _writers(trainer, pl_module) or [None] * len(dirs)
    for fig, run_dir, writer in zip(figures, dirs, writers):
        path = run_dir / "figures" / f"{tag.replace('/', '_')}_step{step:07d}.png"
        image = save_figure(fig, path)
        if writer is not None:
            writer.add_image(tag, image, step, dataformats="HWC")
        for logger in _other_loggers(trainer, pl_module):
            if callable(getattr(logger, "log_image", None)):
                logger.log_image(key=tag, images=[str(path)], step=step)


def _writers(trainer, pl_module) -> list | None:
    """The TensorBoard writers: the run's, or one per member (rank zero; None without)."""
    if not trainer.is_global_zero:
        return None
    if members(pl_module) is not None:
        return pl_module.member_writers()
    writer = _tb(trainer)
    return None if writer is None else [writer]


_HISTORY_KEYS = ("step", "std_ratio", "likelihood_std_ratio")


def _empty_history() -> dict[str, list]:
    """One model's per-axis history: the steps, and at each the ratios of every axis."""
    return {k: [] for k in _HISTORY_KEYS}


class DecoderVarianceMonitor(pl.Callback):
    """Logs the decoder mean and std per axis and latent state; detects variance collapse.

    Collapse is declared the first time the std of the likelihood being trained falls
    below ``collapse_ratio * data_scale`` (data_scale = the largest per-axis std of the
    training data): far below anything in the data. That std is the decoder's own for the
    ELBO, and the convolved sqrt(std^2 + noise_std^2) for the spread ELBO, which cannot
    collapse (the raw decoder std of a spread run may drift towards 0 harmlessly: its
    gradient vanishes). The step and axis are logged (``decoder/collapse_step``) and
    reported once on stderr.

    With a learned prior (``CategoricalLatent(learn_prior=true)``) it also logs
    ``latent/effective_states`` = exp(entropy of the prior): K for a uniform prior, fewer as
    the mixture's weights concentrate. For a discrete latent it logs
    ``latent/used_states``, the states the encoder uses (aggregate posterior over the
    training points above a tenth of a uniform share, 0.1 / K), and with a learned prior
    ``latent/unused_prior_mass``, the prior weight left on the others.

    Per ambient axis (data with D <= ``max_axes``) it logs ``decoder/std_ratio_<axis>``, the
    smallest decoder std on that axis over the latent states relative to the data scale,
    and ``decoder/likelihood_std_ratio_<axis>``, the same for the likelihood being trained
    (the collapse check's std: the decoder's for the ELBO, sqrt(std^2 + noise_std^2) for
    the spread ELBO). It keeps their history in memory (saved in checkpoints, so a resumed
    run keeps it; at most ``MAX_HISTORY`` points, thinned evenly), and at the end of
    training draws it as the figure ``decoder/std_per_axis`` (``std_figure``): per axis the
    likelihood's std ratio (solid) and the raw decoder's (dashed) against the optimizer
    step on a log axis, with the collapse threshold and the collapse step. On the seed the
    ELBO's y-axis line falls through the threshold; the spread ELBO's stays at its noise
    floor, noise_std / data_scale, far above it, while its raw decoder std may fall.

    On an ensemble (a module with a member axis, ``members``) all of it is per member,
    into each member's run: ``collapses[m]`` is member m's first crossing, ``history[m]``
    its per-axis history and one figure per member.

    Args:
        collapse_ratio: threshold relative to the data scale (1e-2: two orders of
            magnitude below it, ten times below the seed's cluster std of 0.1).
        check_every_n_steps: how often the threshold is checked, in optimizer steps (before
            the step, on the weights after ``global_step`` steps). Scalars are logged every
            ``trainer.log_every_n_steps`` steps from step 0, and at the end of training.
        max_states: per-state scalars (``decoder/*_z<k>``) for the first ``max_states``
            states only; the collapse check and the histograms cover every state.
        max_axes: the per-axis scalars, their history and the ``decoder/std_per_axis``
            figure for data with at most this many axes D (0: none).
    """

    MAX_HISTORY = 500  # points per member; beyond it every other one is dropped

    def __init__(self, collapse_ratio: float = 1e-2, check_every_n_steps: int = 1,
                 max_states: int = 16, max_axes: int = 8) -> None:
        if not collapse_ratio > 0:
            raise ValueError(f"collapse_ratio must be > 0, got {collapse_ratio}")
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if max_states < 0:
            raise ValueError(f"max_states must be >= 0, got {max_states}")
        if max_axes < 0:
            raise ValueError(f"max_axes must be >= 0, got {max_axes}")
        self.collapse_ratio = collapse_ratio
        self.check_every_n_steps = check_every_n_steps
        self.max_states = max_states
        self.max_axes = max_axes
        # Per member (one for a single run): step, axis, state, std of the first crossing.
        self.collapses: list[dict | None] = [None]
        # Per member: the logged steps and, at each, the per-axis ratios (lists of D floats).
        self.history: list[dict[str, list]] = [_empty_history()]
        self._history_spacing = 0  # the least step gap between points kept (grows as thinned)

    def _data_scale(self, trainer) -> float:
        """The datamodule's data scale; NaN where it is not a number > 0 (data without spread,
        which the CLI refuses, or a datamodule of the user's): the ratios are then NaN and
        no collapse is declared (said once)."""
        scale = float(getattr(trainer.datamodule, "data_scale", math.nan))
        if math.isfinite(scale) and scale > 0:
            return scale
        if not getattr(self, "_said_no_scale", False):
            self._said_no_scale = True
            _warn(f"the data scale is {scale:g} (the training data have no spread): the decoder's std ratios "
                  f"are NaN and no variance collapse can be detected")
        return math.nan

    @property
    def collapse(self) -> dict | None:
        """The first collapse: a single run's, or an ensemble's earliest member's."""
        found = [c for c in self.collapses if c is not None]
        return min(found, key=lambda c: c["step"]) if found else None

    def state_dict(self) -> dict:
        state = {"collapse": self.collapses[0]} if len(self.collapses) == 1 else {"collapses": list(self.collapses)}
        # Plain lists (a checkpoint loads with weights_only); the rows are never changed in place.
        state["history"] = [{k: list(v) for k, v in h.items()} for h in self.history]
        state["history_spacing"] = self._history_spacing
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.collapses = list(state_dict["collapses"]) if "collapses" in state_dict else [state_dict.get("collapse")]
        history = state_dict.get("history")  # absent in checkpoints written before it was kept
        if history is not None and len(history) == len(self.collapses):
            self.history = [{k: list(h.get(k, [])) for k in _HISTORY_KEYS} for h in history]
        else:
            self.history = [_empty_history() for _ in self.collapses]
        self._history_spacing = int(state_dict.get("history_spacing", 0))

    def on_fit_start(self, trainer, pl_module) -> None:
        n = len(members(pl_module) or [None])
        if len(self.collapses) != n:  # (a resume's state is restored after this hook)
            self.collapses = [None] * n
        if len(self.history) != n:
            self.history, self._history_spacing = [_empty_history() for _ in range(n)], 0

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Before every optimizer step, also inside a K-step batch (steps_per_batch): the
        # weights after global_step steps, so the collapse step and the logged scalars are
        # the same at any K.
        step, every = trainer.global_step, trainer.log_every_n_steps
        log_now = every > 0 and step % every == 0
        if log_now:
            self._log(trainer, pl_module, step)
        elif None in self.collapses and step % self.check_every_n_steps == 0:
            # The step's own forward pass scored it (a second decoder pass cost ~8% of a step).
            terms = getattr(pl_module, "last_terms", None)
            lik_scale = terms.scale if terms is not None else None
            if lik_scale is None:
                lik_scale = pl_module.likelihood_scale(pl_module.decoder_params()[1])
            self._check(trainer, pl_module, step, lik_scale)

    @torch.no_grad()
    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        self._log(trainer, pl_module, step, final=True)  # the final weights
        if _run_dirs(trainer, pl_module) is None or not self.history[0]["step"]:
            return
        seeds = members(pl_module)
        data_scale = self._data_scale(trainer)
        figures = [self.std_figure(m, step, data_scale, None if seeds is None else seeds[m])
                   for m in range(len(self.history))]
        log_figure(trainer, pl_module, "decoder/std_per_axis", figures, step)

    def _log(self, trainer, pl_module, step: int, final: bool = False) -> None:
        loc, scale = pl_module.decoder_params()  # (K, D), or (M, K, D) for an ensemble
        lik_scale = pl_module.likelihood_scale(scale)
        ratio = self._check(trainer, pl_module, step, lik_scale)
        data_scale = self._data_scale(trainer)
        dim = scale.shape[-1]
        values = {"decoder/min_std_ratio": scale.flatten(-2).amin(-1) / data_scale,
                  "decoder/min_likelihood_std_ratio": ratio}
        if dim <= MAX_PARAM_AXES:  # an image's 1024 pixels x states would be thousands of tags
            values.update(decoder_scalars(loc, scale, self.max_states))
        if dim <= self.max_axes:
            values.update(self._per_axis(pl_module, step, scale, lik_scale, data_scale, final))
        prior_logits = pl_module.prior_logits() if hasattr(pl_module, "prior_logits") else None
        if prior_logits is not None:
            log_p = torch.log_softmax(prior_logits, -1)
            values["latent/effective_states"] = torch.exp(-(log_p.exp() * log_p).sum(-1))
        values.update(self._usage(trainer, pl_module, prior_logits))
        if members(pl_module) is not None:  # NaN: not written (the member has not collapsed)
            values["decoder/collapse_step"] = torch.tensor(
                [math.nan if c is None else c["step"] for c in self.collapses])
        elif self.collapse is not None:
            values["decoder/collapse_step"] = self.collapse["step"]
        _write(trainer, pl_module, values, step)

    def _usage(self, trainer, pl_module, prior_logits: Tensor | None) -> dict[str, Tensor]:
        """``latent/used_states``: the states whose aggregate posterior mean_x q(k | x) over
        (up to ``USAGE_POINTS``) training points is above ``USED_SHARE`` / K, a tenth of a
        uniform share; with a learned prior also ``latent/unused_prior_mass``, the prior
        weight of the other states (what samples from states the encoder never uses get).
        Discrete latents only."""
        x = getattr(trainer.datamodule, "train_x", None)
        if x is None or not hasattr(pl_module, "aggregate_posterior"):
            return {}
        q = pl_module.aggregate_posterior(x[:USAGE_POINTS].to(pl_module.device))  # (K,) or (M, K)
        if q is None:
            return {}
        used = q > USED_SHARE / q.shape[-1]
        out = {"latent/used_states": used.sum(-1).float()}
        if prior_logits is not None:
            out["latent/unused_prior_mass"] = (torch.softmax(prior_logits, -1) * ~used).sum(-1)
        return out

    def _per_axis(self, pl_module, step: int, scale: Tensor, lik_scale: Tensor, data_scale: float,
                  final: bool) -> dict[str, float | list[float]]:
        """``decoder/std_ratio_<axis>`` and ``decoder/likelihood_std_ratio_<axis>``: the min
        over latent states of the decoder's and the likelihood's std on each axis, over the
        data scale; floats, or each member's as a list (one host read). Kept in ``history``."""
        seeds = members(pl_module)
        n, dim = len(seeds or [None]), scale.shape[-1]
        # (2, M, D): [decoder, likelihood] x member x axis.
        ratios = (torch.stack([scale.amin(-2), lik_scale.amin(-2)]).reshape(2, n, dim) / data_scale).tolist()
        values = {}
        for d in range(dim):
            a = axis_name(d, dim)
            for i, name in enumerate(("std_ratio", "likelihood_std_ratio")):
                per_member = [ratios[i][m][d] for m in range(n)]
                values[f"decoder/{name}_{a}"] = per_member[0] if seeds is None else per_member
        self._remember(step, ratios, final)
        return values

    def _remember(self, step: int, ratios: list, final: bool) -> None:
        """Add the ratios of ``step`` to each member's history: every logged step until
        ``MAX_HISTORY`` points, then every other one of those kept (the final step always).
        A step at or before the last one kept (a resume from an earlier checkpoint)
        replaces what followed it."""
        steps = self.history[0]["step"]
        if steps and steps[-1] < step and step - steps[-1] < self._history_spacing and not final:
            return
        for m, h in enumerate(self.history):
            while h["step"] and h["step"][-1] >= step:
                for k in _HISTORY_KEYS:
                    h[k].pop()
            h["step"].append(step)
            h["std_ratio"].append(ratios[0][m])
            h["likelihood_std_ratio"].append(ratios[1][m])
        if len(steps) > self.MAX_HISTORY:
            n = len(steps)
            keep = [*range(0, n - 1, 2), n - 1]  # every other point, the first and the latest
            for h in self.history:
                for k in _HISTORY_KEYS:
                    h[k] = [h[k][i] for i in keep]
            kept = self.history[0]["step"]
            self._history_spacing = max(2 * self._history_spacing, kept[1] - kept[0])

    def std_figure(self, m: int = 0, step: int | None = None, data_scale: float | None = None,
                   seed: int | None = None):
        """Member ``m``'s decoder std per axis against the optimizer step (a single run: 0),
        from ``history``: per axis the smallest std over the latent states, relative to the
        data scale, of the likelihood being trained (solid) and of the raw decoder
        (dashed; the same line for the ELBO), on a log axis; the collapse threshold
        ``collapse_ratio`` as a horizontal line and, if the run collapsed, the collapse step
        as a vertical one. None without a history (D > ``max_axes``, or nothing logged)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D

        h = self.history[m]
        if not h["step"]:
            return None
        steps = h["step"]
        raw, lik = (torch.tensor(h[k], dtype=torch.float64) for k in ("std_ratio", "likelihood_std_ratio"))
        dim = raw.shape[1]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.set_yscale("log")
        drawn = []
        for d in range(dim):
            colour = f"C{d}"
            for values, style, width in ((lik[:, d], "-", 1.6), (raw[:, d], "--", 1.1)):
                shown = values.where(values.isfinite() & (values > 0), torch.tensor(math.nan))
                ax.plot(steps, shown.numpy(), style, color=colour, lw=width)
                drawn.append(shown)
        ax.axhline(self.collapse_ratio, color="tab:red", ls=":", lw=1.2)
        ax.annotate(f"collapse threshold ({self.collapse_ratio:g} x data scale)", (0.99, self.collapse_ratio),
                    xycoords=("axes fraction", "data"), xytext=(0, 3), textcoords="offset points",
                    color="tab:red", fontsize=7, va="bottom", ha="right")
        collapse = self.collapses[m] if m < len(self.collapses) else None
        if collapse is not None:
            ax.axvline(collapse["step"], color="tab:red", lw=1, alpha=0.6)
            ax.annotate(f"collapse, step {collapse['step']} (axis {collapse['axis']})", (collapse["step"], 0.98),
                        xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points",
                        color="tab:red", fontsize=7, va="top")
        values = torch.cat(drawn)
        finite = values[values.isfinite()]
        low = min(float(finite.min()) if len(finite) else self.collapse_ratio, self.collapse_ratio)
        high = max(float(finite.max()) if len(finite) else 1.0, self.collapse_ratio)
        ax.set_ylim(low / 2, high * 2)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("std / data scale (min over states)", fontsize=9)
        handles = [Line2D([], [], color=f"C{d}", lw=1.6, label=f"axis {axis_name(d, dim)}") for d in range(dim)]
        handles += [Line2D([], [], color="0.3", lw=1.6, label="likelihood std"),
                    Line2D([], [], color="0.3", lw=1.1, ls="--", label="decoder std")]
        # Outside the axes, right: the lines may run anywhere inside.
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, borderaxespad=0)
        same = bool(torch.equal(raw.nan_to_num(-1.0), lik.nan_to_num(-1.0)))
        zero = bool((raw == 0).all())
        note = ("; likelihood = decoder std" if same else
                "; decoder std 0 (deterministic), not drawn" if zero else "")
        who = "" if seed is None else f"seed {seed}, "
        scale = "" if data_scale is None else f" (data scale {data_scale:.3g})"
        step = steps[-1] if step is None else step
        ax.set_title(f"decoder std per axis{scale}, {who}step {step}{note}", fontsize=9)
        fig.subplots_adjust(left=0.12, right=0.80, bottom=0.13, top=0.92)
        return fig

    def _check(self, trainer, pl_module, step: int, lik_scale: Tensor) -> Tensor | float:
        """Record each member's first collapse; return min likelihood std / data scale, a
        float (a single run) or ``(M,)``."""
        data_scale = self._data_scale(trainer)
        known = not math.isnan(data_scale)  # no scale: nothing to compare with
        seeds = members(pl_module)
        if seeds is None:  # the every-step path: one reduction, one host read
            ratio = float(lik_scale.min()) / data_scale
            if known and self.collapses[0] is None and not ratio >= self.collapse_ratio:  # NaN counts as collapse
                self._record(trainer, pl_module, 0, step, lik_scale, data_scale)
            return ratio
        ratio = lik_scale.flatten(-2).amin(-1) / data_scale
        for m, r in enumerate(ratio.tolist()):
            if known and self.collapses[m] is None and not r >= self.collapse_ratio:  # NaN counts as collapse
                self._record(trainer, pl_module, m, step, lik_scale[m], data_scale)
        return ratio

    def _record(self, trainer, pl_module, m: int, step: int, lik_scale: Tensor, data_scale: float) -> None:
        k, d = divmod(int(torch.nan_to_num(lik_scale, nan=0.0).argmin()), lik_scale.shape[1])
        axis = axis_name(d, lik_scale.shape[1])
        std = float(lik_scale[k, d])
        seeds = members(pl_module)
        core = getattr(pl_module, "net", None) if seeds is None else pl_module.member(m)
        enumerated = getattr(core, "enumerable", True)
        self.collapses[m] = {"step": step, "axis": axis, "state": k if enumerated else None, "std": std}
        axis_std = float(trainer.datamodule.axis_std[d])
        where = f"z={k}" if enumerated else "at a sampled z"
        who = "" if seeds is None else f"ensemble member seed {seeds[m]}: "
        _warn(f"{who}Decoder variance collapse at step {step}: the likelihood std on axis {axis} "
              f"({where}) fell to {std:.3g}, below {self.collapse_ratio:g} x the data scale "
              f"{data_scale:.3g}; the training data's std on that axis is {axis_std:.3g}.")

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        x = trainer.datamodule.val_x.to(pl_module.device)
        data_scale = self._data_scale(trainer)
        rows, histograms = [], []
        for model in _models(pl_module):
            _, scale = model.decoder_params()
            q = model.encode(x)
            rows.append({"decoder/min_std_ratio_val": scale.min() / data_scale, **encoder_diagnostics(q)})
            histograms.append((scale, q))
        if members(pl_module) is None:
            # The same on every rank (all of them see the whole validation set); sync_dist
            # keeps DDP's epoch-level bookkeeping consistent.
            pl_module.log_dict({k: float(v) for k, v in rows[0].items()}, sync_dist=True)
        else:
            pl_module.member_log({k: torch.stack([r[k] for r in rows]) for k in rows[0]})
        writers = _writers(trainer, pl_module)
        for writer, (scale, q) in zip(writers or [], histograms):
            dim = scale.shape[1]
            for d in range(dim):
                _histogram(writer, f"decoder/log10_std_{axis_name(d, dim)}", scale[:, d].log10(),
                           trainer.global_step)
            if hasattr(q, "probs"):  # discrete: the posterior probabilities
                _histogram(writer, "encoder/q_z1", q.probs, trainer.global_step)
            else:  # sampled: the posterior std (near the prior's everywhere is posterior collapse)
                std = q.base_dist.scale if hasattr(q, "base_dist") else q.sigma  # Gaussian; hyperspherical
                _histogram(writer, "encoder/q_std", std, trainer.global_step)


class SampleQuality(pl.Callback):
    """Quality of clean-model samples against held-out data and the true manifold.

    ``n_samples`` model samples (a fixed-seed generator) against the first ``n_samples``
    validation points, through the torchmetrics classes of ``lightning_vae.sample_metrics``:

    - ``quality/mmd``: unbiased RBF MMD^2, bandwidth fixed once to the median pairwise
      distance of the validation data (comparable across epochs; not across data sets);
    - ``quality/energy``: energy distance (U-statistic);
    - ``quality/sliced_w2``: sliced 2-Wasserstein, ``n_projections`` fixed directions;
    - ``quality/w1_<axis>``: 1-D Wasserstein-1 per coordinate (data with D <= ``max_marginal_dim``);
    - ``quality/dist_mean``, ``quality/dist_p95``: distance of samples to the manifold;
    - for data with modes, ``quality/mode_frac_<k>``, ``quality/mode_imbalance`` (0 = even
      split) and ``quality/mode_coverage`` (share of modes holding >= half their fair share).

    MMD and energy use at most ``max_points`` points per side (an order-invariant fixed-seed
    subsample). Under DDP every rank draws the same samples (same weights, same seed) and
    feeds its share of the points (rows ``rank::world_size``); the metrics gather them, so
    every rank logs the value one process would. On an ensemble every member is measured,
    into its own run.

    Args:
        n_samples: number of model samples and of validation points compared.
        every_n_epochs: run at the validation of every n-th epoch (deterministic); null:
            by time, ``every_n_seconds``. Always at the run's final validation.
        every_n_seconds: with ``every_n_epochs`` null, run at the first validation at least
            this long after the last run (one run costs ~0.2-0.4 s on a 2-core CPU).
        seed: seed of the sampling generator (same samples' noise every time).
        max_points: subsample size per side for MMD and energy (None: all points).
        n_projections: directions of the sliced Wasserstein distance.
        max_marginal_dim: per-coordinate Wasserstein only up to this data dimension.
    """

    def __init__(self, n_samples: int = 2000, every_n_epochs: int | None = None,
                 every_n_seconds: float = 30.0, seed: int = 0, max_points: int | None = 2000,
                 n_projections: int = 128, max_marginal_dim: int = 5) -> None:
        if n_samples < 2:
            raise ValueError(f"n_samples must be >= 2, got {n_samples}")
        if max_marginal_dim < 0:
            raise ValueError(f"max_marginal_dim must be >= 0, got {max_marginal_dim}")
        self.cadence = Cadence(every_n_epochs, every_n_seconds)
        self.n_samples, self.seed = n_samples, seed
        self.max_points, self.n_projections, self.max_marginal_dim = max_points, n_projections, max_marginal_dim
        self._metrics: dict | None = None
        self._said_no_geometry = False

    def _build(self, datamodule, device: torch.device) -> dict:
        """The metric objects, once per run (the bandwidth is fixed by the data)."""
        from lightning_vae import sample_metrics as sm

        data = datamodule.val_x[: self.n_samples]
        bandwidth = float(metrics.median_bandwidth(data[: len(data) // 2], data[len(data) // 2 :]))
        two_sample = {
            "mmd": sm.MMD(bandwidth=max(bandwidth, metrics.MIN_BANDWIDTH), max_points=self.max_points,
                          seed=self.seed),
            "energy": sm.EnergyDistance(max_points=self.max_points, seed=self.seed),
            "sliced_w2": sm.SlicedWasserstein(n_projections=self.n_projections, p=2, seed=self.seed),
        }
        if data.shape[1] <= self.max_marginal_dim:
            two_sample["w1"] = sm.MarginalWasserstein(p=1)
        geometry = {}
        manifold = datamodule.manifold
        if getattr(manifold, "has_geometry", True):
            geometry["dist"] = sm.ManifoldDistance(manifold)
            if manifold.n_components:
                geometry["mode"] = sm.ModeBalance(manifold)
        for m in (*two_sample.values(), *geometry.values()):
            m.to(device)
        return {"two_sample": two_sample, "geometry": geometry}

    @torch.no_grad()
    def compute(self, pl_module, datamodule, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """The quality numbers of the current model, as plain floats (the same on every rank)."""
        device = next(pl_module.parameters()).device
        if self._metrics is None:
            self._metrics = self._build(datamodule, device)
        share = slice(rank, None, world_size)
        data = datamodule.val_x[: self.n_samples].to(device)[share]
        g = torch.Generator().manual_seed(self.seed)
        x = pl_module.sample(self.n_samples, generator=g).float()[share]
        values = {}
        for name, m in self._metrics["two_sample"].items():
            m.reset()
            m.update(x.to(device), data)
            value = m.compute()
            if name == "w1":
                value = value.reshape(-1)  # (D,); torchmetrics squeezes D = 1 to a 0-d tensor
                dim = value.shape[0]
                values.update({f"quality/w1_{axis_name(d, dim)}": value[d] for d in range(dim)})
            else:
                values[f"quality/{name}"] = value
        geometry = self._metrics["geometry"]
        if not geometry:
            if not self._said_no_geometry:
                _warn(f"{datamodule.manifold!r} has no known manifold: quality/dist_* and quality/mode_* "
                      f"are skipped (the two-sample metrics are logged)")
                self._said_no_geometry = True
        for m in geometry.values():
            m.reset()
            m.update(x.cpu())  # the geometry in float64 on the CPU; states on the metric's device
        if "dist" in geometry:
            dist = geometry["dist"].compute()
            values.update({"quality/dist_mean": dist["mean"], "quality/dist_p95": dist["p95"]})
        if "mode" in geometry:
            mode = geometry["mode"].compute()
            values.update({f"quality/mode_{k}": v for k, v in mode.items()})
        return {k: float(v) for k, v in values.items()}

    def on_train_start(self, trainer, pl_module) -> None:
        self.cadence.start()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.cadence.due(trainer):
            return
        rows = [self.compute(model, trainer.datamodule, trainer.global_rank, trainer.world_size)
                for model in _models(pl_module)]
        if members(pl_module) is None:
            for k, v in rows[0].items():
                pl_module.log(k, v, sync_dist=True)  # identical on every rank already
        else:
            pl_module.member_log({k: torch.tensor([row[k] for row in rows]) for k in rows[0]})


class SampleFigure(pl.Callback):
    """A scatter of validation data against clean-model samples: a PNG in the run
    directory (``figures/samples_scatter_step<N>.png``), an image in TensorBoard and in any
    logger with ``log_image`` (each member's into its own run, for an ensemble). Data in
    R^D, D > 2, are drawn on the plane of their top two principal axes. Next to it, at the
    same times: the model's log-density (``samples/log_density``) and its posterior q(z|x)
    along the data (``samples/posterior``).

    Args:
        every_n_epochs: draw at the validation of every n-th epoch (deterministic); null: by
            time, ``every_n_seconds``. Always at the run's final validation.
        every_n_seconds: with ``every_n_epochs`` null, draw at the first validation at least
            this long after the last figure (one costs ~0.1-0.3 s).
        n_points: points drawn of each.
        seed: seed of the sampling generator.
        density: also the model's log-density heatmap (``samples/log_density``,
            ``density_figure``), for models with a density.
        grid: the heatmap's lattice points per side (grid^2 evaluations of log p(x)).
        clip: the heatmap's colour range, in nats below its maximum.
        posterior: also the encoder's q(z|x) along the held-out data's first principal
            coordinate (``samples/posterior``, ``posterior_figure``), for models with an
            encoder.
    """

    def __init__(self, every_n_epochs: int | None = None, every_n_seconds: float = 60.0,
                 n_points: int = 1000, seed: int = 0, density: bool = True, grid: int = 80,
                 clip: float = 20.0, posterior: bool = True) -> None:
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        self.cadence = Cadence(every_n_epochs, every_n_seconds)
        self.n_points, self.seed = n_points, seed
        self.density, self.grid, self.clip = density, grid, float(clip)
        self.posterior = posterior

    @torch.no_grad()
    def figure(self, pl_module, datamodule, step: int | None = None):
        """Clean-model samples over the held-out data, titled with ``step`` (default: the
        module's global step) and the number of non-finite samples left out. 2-D data: on
        the axes x, y; in R^D (D > 2): both projected on the plane of the data's top two
        principal axes through its mean (``_data_plane``, as ``density_figure``), the
        share of the data's variance on that plane in the title; 1-D data: x against x."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = datamodule.val_x[: self.n_points]
        x = pl_module.sample(self.n_points, generator=torch.Generator().manual_seed(self.seed)).cpu()
        finite = x.isfinite().all(dim=1)
        n_bad = int((~finite).sum())
        x = x[finite]
        plane = ""
        if data.shape[1] > 2:
            mean, axes, labels, share = _data_plane(data)
            x, data = (((p.double() - mean) @ axes.T).float() for p in (x, data))
            plane = f"; PCA plane, {share:.0%} of the data's variance"
        else:
            labels = ("x", "y") if data.shape[1] == 2 else ("x", "x")
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        j = 1 if data.shape[1] > 1 else 0
        ax.scatter(x[:, 0], x[:, j], s=4, alpha=0.5, color="tab:orange", label="clean-model samples")
        ax.scatter(data[:, 0], data[:, j], s=2, alpha=0.6, color="tab:blue", label="held-out data")
        # Equal scales on both axes: off-manifold spread is shown at its true size.
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        note = f" ({n_bad} non-finite samples not shown)" if n_bad else ""
        step = pl_module.global_step if step is None else step
        ax.set_title(f"step {step}{note}{plane}", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
        # Fixed margins: tight_layout measured every text box, ~90 ms of a ~200 ms figure.
        fig.subplots_adjust(left=0.11, right=0.98, bottom=0.13, top=0.92)
        return fig

    @torch.no_grad()
    def density_figure(self, model, datamodule, step: int):
        """The model's log p(x) over the data's plane, the held-out data on top: a heatmap
        on a ``grid`` x ``grid`` lattice (2-D data: the plane itself; in R^D: the plane of
        the data's top two principal axes through its mean), clipped ``clip`` nats below its
        maximum. On manifold data it shows the failure: the ELBO's density is a spike on the
        line, the spread model's a band of the data's own width. None for a model without
        a density (the deterministic decoder), and for 1-D data (no plane)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if getattr(model, "deterministic", False) or getattr(getattr(model, "net", None), "deterministic", False):
            return None
        data = datamodule.val_x[: self.n_points].double()
        if data.shape[1] < 2:
            return None
        mean, axes, labels, _ = _data_plane(data)
        uv = (data - mean) @ axes.T  # (N, 2) coordinates in the plane
        lo, hi = uv.min(0).values, uv.max(0).values
        half = torch.maximum((hi - lo) / 2, ((hi - lo).max() / 4).expand(2)) * 1.25  # a flat axis gets room
        centre = (lo + hi) / 2
        u = torch.linspace(float(centre[0] - half[0]), float(centre[0] + half[0]), self.grid, dtype=data.dtype)
        v = torch.linspace(float(centre[1] - half[1]), float(centre[1] + half[1]), self.grid, dtype=data.dtype)
        uu, vv = torch.meshgrid(u, v, indexing="xy")
        points = mean + torch.stack([uu.reshape(-1), vv.reshape(-1)], 1) @ axes
        device = next(model.parameters()).device
        log_p = model.log_px(points.float().to(device)).double().cpu().reshape(self.grid, self.grid)
        top = float(log_p[log_p.isfinite()].max()) if bool(log_p.isfinite().any()) else 0.0
        shown = log_p.nan_to_num(nan=top - self.clip, neginf=top - self.clip).clamp(top - self.clip, top)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        image = ax.imshow(shown.numpy(), origin="lower", aspect="equal", cmap="magma",
                          extent=(float(u[0]), float(u[-1]), float(v[0]), float(v[-1])))
        ax.scatter(uv[:, 0], uv[:, 1], s=1, alpha=0.5, color="tab:cyan", label="held-out data")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02).set_label("log p(x)", fontsize=8)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.set_title(f"model log-density, step {step} (grid max {top:.3g}; {self.clip:g} nats shown)", fontsize=9)
        ax.legend(loc="upper right", fontsize=7, markerscale=4)
        fig.subplots_adjust(left=0.13, right=0.95, bottom=0.13, top=0.92)
        return fig

    @torch.no_grad()
    def posterior_figure(self, model, datamodule, step: int):
        """The encoder's q(z|x) along the data: for each held-out point, against its first
        principal coordinate (the held-out data's, through their mean; for the seed's 2-D
        data that is x), the posterior of a discrete latent, q(z=k|x) for each state
        (K <= 8 states; more: the most probable state with its probability as colour), or
        a Gaussian latent's posterior mean per dimension (the first 4) with a +-1 std bar.
        On the seed it shows whether the latent splits the two clusters (a sharp step from
        one state to the other between them) or ignores x (posterior collapse: flat at the
        prior). None for a model without an encoder."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy

        core = getattr(model, "net", model)  # a VAE's core, or an ensemble member (a core)
        if getattr(core, "encoder", None) is None:
            return None
        data = datamodule.val_x[: self.n_points]
        if data.shape[1] > 1:
            mean, axis, share = _principal_axes(data, 1)
            u = ((data.double() - mean) @ axis[0]).float()
            along = next((axis_name(d, data.shape[1]) for d in range(data.shape[1])
                          if float(axis[0, d].abs()) > 0.999), None)  # along an ambient axis
            xlabel = (f"first principal coordinate of the data{f' (= {along})' if along else ''}, "
                      f"{share:.0%} of its variance")
        else:
            u, xlabel = data[:, 0], "x"
        order = u.argsort()
        u, x = u[order].numpy(), data[order].to(next(core.parameters()).device)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        colourbar = False
        if getattr(core, "enumerable", False):
            probs = core.log_q(x).exp().float().cpu()  # (N, K)
            n_states = probs.shape[1]
            if n_states <= 8:
                for k in range(n_states):
                    ax.scatter(u, probs[:, k].numpy(), s=3, alpha=0.6, label=f"q(z={k} | x)")
                ax.set_ylim(-0.04, 1.04)
                ax.set_ylabel("posterior probability")
                ax.legend(loc="center right", fontsize=7, markerscale=3)
                what = f"q(z|x) of the {n_states} latent states"
            else:
                top, state = probs.max(1)
                colourbar = True
                points = ax.scatter(u, state.numpy(), c=top.numpy(), s=4, cmap="viridis", vmin=0, vmax=1)
                fig.colorbar(points, ax=ax, fraction=0.046, pad=0.02).set_label("q(z|x) of that state", fontsize=8)
                ax.set_ylim(-0.5, n_states - 0.5)
                ax.set_ylabel("most probable state z")
                used = len(state.unique())
                what = f"most probable of {n_states} states ({used} used)"
        else:
            loc, scale = (t.float().cpu().numpy() for t in core.encode_params(x))  # (N, d)
            scale = numpy.broadcast_to(scale, loc.shape)  # a hyperspherical latent's one tangent std
            n_dims = min(loc.shape[1], 4)
            for i in range(n_dims):
                colour = f"C{i}"
                ax.vlines(u, loc[:, i] - scale[:, i], loc[:, i] + scale[:, i], color=colour, alpha=0.12,
                          lw=0.6)
                ax.scatter(u, loc[:, i], s=3, color=colour, label=f"z{i}: mean +- 1 std")
            ax.set_ylabel("posterior mean of z")
            ax.legend(loc="upper right", fontsize=7, markerscale=3)
            shown = f" (first {n_dims} of {loc.shape[1]})" if n_dims < loc.shape[1] else ""
            what = f"q(z|x) of the {type(core.latent).__name__}{shown}"
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_title(f"posterior along the data, step {step}: {what}", fontsize=9)
        fig.subplots_adjust(left=0.11, right=0.92 if colourbar else 0.97, bottom=0.14, top=0.92)
        return fig

    def _draw(self, trainer, pl_module) -> None:
        if _run_dirs(trainer, pl_module) is None:
            return
        step = trainer.global_step
        models = _models(pl_module)
        figures = [self.figure(model, trainer.datamodule, step=step) for model in models]
        log_figure(trainer, pl_module, "samples/scatter", figures, step)
        # Figures some models have no content for (None: no density, no encoder): all or none.
        for wanted, draw, tag in ((self.density, self.density_figure, "samples/log_density"),
                                  (self.posterior, self.posterior_figure, "samples/posterior")):
            if not wanted:
                continue
            drawn = [draw(model, trainer.datamodule, step) for model in models]
            if all(f is not None for f in drawn):
                log_figure(trainer, pl_module, tag, drawn, step)
            else:
                _close([f for f in drawn if f is not None])

    def on_train_start(self, trainer, pl_module) -> None:
        self.cadence.start()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.cadence.due(trainer):
            self._draw(trainer, pl_module)


_POLICIES = ("stop", "skip", "rollback")


def _clone_state(state: dict) -> dict:
    """A copy of one parameter's optimizer state (tensors cloned, nothing shared)."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in state.items()}


def _all_finite(tensors) -> bool:
    """Whether every floating tensor of ``tensors`` is finite (one host read)."""
    flags = [torch.isfinite(t).all() for t in tensors if isinstance(t, Tensor) and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


class DivergenceGuard(pl.Callback):
    """Ends a diverging run cleanly, or recovers from non-finite steps, by ``policy``.

    Before each optimizer step the gradient norm is computed (and logged as
    ``train/grad_norm``). That check is the single source of truth: a NaN/inf loss gives a
    NaN/inf gradient through backward (the non-finite value reaches the gradient of the op
    that produced it), so a non-finite step is caught before it can touch the weights: its
    gradients are dropped (the optimizer skips parameters without a gradient, so the step
    is a no-op) and the policy acts:

    - ``"stop"`` (default): training stops; the last usable weights (finite, and so are
      the decoder's means, stds and samples) are saved as ``checkpoints/last-finite.ckpt``,
      a one-paragraph diagnosis goes to stderr, and the process exits normally
      (``hp/diverged`` 1).
    - ``"skip"``: the step is skipped and training goes on; ``train/skipped_steps`` (the
      total so far) is logged at each skipped step. The guard gives up, with the stop
      diagnosis, after ``max_skips`` skipped steps *in a row* (a finite step resets the
      count: a run with rare spikes goes on, one stuck on every step stops), or at once when
      the weights themselves are non-finite (skipping cannot help then).
    - ``"rollback"``: the weights and the optimizer state (Adam's moments, momentum
      buffers, step counts) are restored bit-exactly from an in-memory snapshot of the last
      finite state, and the learning rate of every parameter group is multiplied by
      ``lr_factor`` for the rest of the run (a schedule's ``base_lrs`` and the groups'
      ``initial_lr`` too, so a cosine schedule keeps the lower rate); training goes on, and
      ``train/rollbacks`` and ``train/lr_scale`` (the product of the factors) are logged and
      one line goes to stderr. The snapshot is taken at the start of training and then every
      ``snapshot_every_n_steps`` optimizer steps (before a step whose gradient is finite, if
      the weights and optimizer state are). After ``max_rollbacks`` rollbacks the next
      non-finite step stops the run with the diagnosis (on the snapshot's weights if the
      current ones are not finite). The schedule is not rewound and ``global_step`` keeps
      counting: the rolled-back steps count as steps, data order and noise go on from where
      they were, and ``max_steps`` ends the run at the same step as without a rollback.

    A step whose loss is non-finite while its gradient is finite (the check above missed
    it; not seen with this package's objectives) has already been taken: every policy then
    stops with the diagnosis. ``diverged`` is set only when the run stopped on divergence
    (``hp/diverged`` 1); ``skipped`` and ``rollbacks`` count what a recovering policy did.
    It all works the same at any ``steps_per_batch``.

    On an ensemble (a module with a member axis, ``members``) the check is per member: a
    member whose gradient is non-finite is frozen at its weights before that step (its
    last finite ones; ``freeze``) and reported, and the others train on; the run stops,
    with the diagnosis, when every member is frozen. ``train/grad_norm`` is each member's.
    Only policy "stop" applies there (skipping or rolling back one member of a shared
    optimizer step is not its single run's).

    Args:
        policy: "stop", "skip" or "rollback".
        max_skips: ``skip``: stop after this many non-finite steps skipped in a row.
        lr_factor: ``rollback``: the learning rate is multiplied by this at each rollback,
            in (0, 1].
        max_rollbacks: ``rollback``: stop at the non-finite step after this many rollbacks.
        snapshot_every_n_steps: refresh the in-memory snapshot every n optimizer steps
            (``rollback``: weights and optimizer state; ``stop`` and ``skip``: the weights),
            taken only while the model is usable, so that ``last-finite.ckpt`` holds a model
            whose weights and derived distributions are finite: where the weights at the
            stop are not (non-finite, or a decoder std that under- or overflowed), the run
            ends on the snapshot's weights instead, and the diagnosis says of which step.
    """

    def __init__(self, policy: Literal["stop", "skip", "rollback"] = "stop", max_skips: int = 100,
                 lr_factor: float = 0.1, max_rollbacks: int = 3, snapshot_every_n_steps: int = 50) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"policy must be 'stop', 'skip' or 'rollback', got {policy!r}")
        if not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f"max_skips must be an integer >= 0, got {max_skips!r}")
        if not 0 < lr_factor <= 1:
            raise ValueError(f"lr_factor must be in (0, 1], got {lr_factor!r}")
        if not isinstance(max_rollbacks, int) or max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be an integer >= 0, got {max_rollbacks!r}")
        if not isinstance(snapshot_every_n_steps, int) or snapshot_every_n_steps < 1:
            raise ValueError(f"snapshot_every_n_steps must be an integer >= 1, "
                             f"got {snapshot_every_n_steps!r}")
        self.policy, self.max_skips, self.lr_factor = policy, max_skips, lr_factor
        self.max_rollbacks, self.snapshot_every_n_steps = max_rollbacks, snapshot_every_n_steps
        self.diverged: dict | None = None  # set when the run stopped on divergence
        self.skipped = 0  # non-finite steps skipped (policy "skip"), in total
        self.rollbacks = 0  # rollbacks done (policy "rollback")
        self.lr_scale = 1.0  # lr_factor ** rollbacks
        self._skips_in_a_row = 0
        self._first_in_a_row: int | None = None  # the first step of the current run of skips
        self._grad_norm: float | None = None
        self._stop_at: int | None = None  # the optimizer step at which the guard gave up
        self._reason: str | None = None  # why a recovering policy gave up
        self._recovered: set[int] = set()  # steps of this Lightning step skipped or rolled back
        self._snapshot: dict | None = None  # rollback: step, model state, optimizer states
        self._params: list[Tensor] = []

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "rollbacks": self.rollbacks, "lr_scale": self.lr_scale}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
        self.rollbacks = state_dict.get("rollbacks", 0)
        self.lr_scale = state_dict.get("lr_scale", 1.0)

    def on_fit_start(self, trainer, pl_module) -> None:
        if members(pl_module) is not None and self.policy != "stop":
            raise ValueError(f"divergence_guard.policy must be 'stop' for an ensemble (a diverged member "
                             f"is frozen, the others train on), got {self.policy!r}")
        # Walking the module tree for its parameters costs ~60 us, a tenth of a step: once.
        self._params = list(pl_module.parameters())

    def _snapshots(self, pl_module) -> bool:
        """Whether snapshots are kept: for a rollback, and for the other policies the last
        usable weights (what last-finite.ckpt holds when the weights at the stop are not
        usable); an ensemble's members freeze themselves instead."""
        return self.policy == "rollback" or members(pl_module) is None

    def on_train_start(self, trainer, pl_module) -> None:
        if self._snapshots(pl_module):  # after a resume's restore: the state training starts from
            self._take_snapshot(trainer, pl_module, trainer.global_step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        params = self._params or list(pl_module.parameters())
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        if members(pl_module) is not None:
            self._member_step(trainer, pl_module, grads)
            return
        # One float: the per-tensor norms fused, then a single host read (~11 us a step).
        self._grad_norm = float(torch.linalg.vector_norm(torch.stack(foreach_norm(grads))))
        step, every = trainer.global_step, trainer.log_every_n_steps
        if every and (step + 1) % every == 0:  # at x = step, like the step's train/loss
            log_scalars(trainer, {"train/grad_norm": self._grad_norm}, step)
        if math.isfinite(self._grad_norm):
            self._skips_in_a_row = 0
            if (step % self.snapshot_every_n_steps == 0 and self._snapshots(pl_module)
                    and (self._snapshot is None or self._snapshot["step"] != step)):
                self._take_snapshot(trainer, pl_module, step)
            return
        for p in params:
            p.grad = None  # Adam and SGD skip parameters without a gradient: the step is a no-op
        if self._stop_at is not None:
            return
        if self.policy == "skip":
            self._skip(trainer, pl_module, step)
        elif self.policy == "rollback":
            self._rollback(trainer, pl_module, step)
        else:
            self._give_up(trainer, step)

    def _member_step(self, trainer, pl_module, grads: list[Tensor]) -> None:
        """An ensemble's step: freeze each member whose gradient norm is non-finite."""
        seeds = members(pl_module)
        n = len(seeds)
        norms = torch.linalg.vector_norm(torch.stack([g.reshape(n, -1).norm(dim=1) for g in grads]), dim=0)
        step, every = trainer.global_step, trainer.log_every_n_steps
        if every and (step + 1) % every == 0:
            pl_module.member_log({"train/grad_norm": norms}, step)
        host = norms.tolist()
        for m, (seed, norm) in enumerate(zip(seeds, host)):
            if not math.isfinite(norm) and seed not in pl_module.frozen:
                pl_module.freeze(m, step)
                _warn(f"Divergence guard: ensemble member seed {seed} diverged at step {step} (gradient "
                      f"norm {norm:.4g}): frozen at its last finite weights; the other members train on.")
        if len(pl_module.frozen) == n and self._stop_at is None:
            self._grad_norm = host[-1]
            self._give_up(trainer, step, "every member of the ensemble had diverged and was frozen")

    def _give_up(self, trainer, step: int, reason: str | None = None) -> None:
        """Stop at ``step`` (the diagnosis follows at the end of the Lightning step)."""
        self._stop_at, self._reason = step, reason
        trainer.should_stop = True  # also ends a K-step batch here, on finite weights

    def _skip(self, trainer, pl_module, step: int) -> None:
        if not _all_finite(self._params or pl_module.parameters()):
            self._give_up(trainer, step, "the weights themselves were non-finite, so skipping "
                                         "the step could not help")
            return
        if self._skips_in_a_row >= self.max_skips:
            self._give_up(trainer, step, f"{self._skips_in_a_row} non-finite steps in a row, from "
                                         f"step {self._first_in_a_row}, had been skipped (max_skips "
                                         f"{self.max_skips}; {self.skipped} in all)")
            return
        if self._skips_in_a_row == 0:
            self._first_in_a_row = step
        self.skipped += 1
        self._skips_in_a_row += 1
        self._recovered.add(step)
        log_scalars(trainer, {"train/skipped_steps": self.skipped}, step)
        if self.skipped == 1:
            _warn(f"Divergence guard (policy 'skip'): non-finite gradient at step {step} (norm "
                  f"{self._grad_norm:.4g}); the step was skipped and training goes on (later skips "
                  f"are counted in train/skipped_steps).")

    @torch.no_grad()
    def _take_snapshot(self, trainer, pl_module, step: int) -> None:
        """Keep the current weights and optimizer states in memory, if they are all finite
        and the model is usable (``unusable``); for ``stop``, the weights only."""
        if unusable(pl_module) is not None:
            return
        model = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        optimizers = ([{p: _clone_state(s) for p, s in opt.state.items()} for opt in trainer.optimizers]
                      if self.policy == "rollback" else [])
        tensors = [*model.values(), *(v for o in optimizers for s in o.values() for v in s.values())]
        if _all_finite(tensors):
            self._snapshot = {"step": step, "model": model, "optimizers": optimizers}

    @torch.no_grad()
    def _restore_snapshot(self, trainer, pl_module) -> None:
        """The snapshot's weights and optimizer states, in place (the optimizers, schedulers
        and Lightning's wrappers keep their references), bit-exact; the snapshot is kept."""
        snap = self._snapshot
        pl_module.load_state_dict(snap["model"])  # copies into the existing tensors
        for opt, saved in zip(trainer.optimizers, snap["optimizers"]):
            opt.state.clear()
            opt.state.update({p: _clone_state(s) for p, s in saved.items()})

    def _rollback(self, trainer, pl_module, step: int) -> None:
        if self._snapshot is None:
            self._give_up(trainer, step, "there was no finite snapshot to roll back to")
            return
        if self.rollbacks >= self.max_rollbacks:
            if not _all_finite(self._params or pl_module.parameters()):
                self._restore_snapshot(trainer, pl_module)  # so the saved weights are finite
            n = self.rollbacks
            self._give_up(trainer, step, f"it had rolled back {n} time{'s' * (n != 1)} already "
                                         f"(max_rollbacks {self.max_rollbacks}; learning rate "
                                         f"x{self.lr_scale:g} of the configured one)")
            return
        self._restore_snapshot(trainer, pl_module)
        self.rollbacks += 1
        self.lr_scale *= self.lr_factor
        self._recovered.add(step)
        f = self.lr_factor
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] *= f
                if "initial_lr" in group:  # what a schedule built on this optimizer starts from
                    group["initial_lr"] *= f
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if hasattr(scheduler, "base_lrs"):  # LambdaLR & co. set lr = base_lr * factor(step)
                scheduler.base_lrs = [lr * f for lr in scheduler.base_lrs]
            if hasattr(scheduler, "get_last_lr"):  # what LearningRateMonitor & co. read
                set_last_lr(scheduler, [group["lr"] for group in scheduler.optimizer.param_groups])
        log_scalars(trainer, {"train/rollbacks": self.rollbacks, "train/lr_scale": self.lr_scale}, step)
        lr = float(trainer.optimizers[0].param_groups[0]["lr"])
        _warn(f"Divergence guard (policy 'rollback'): non-finite gradient at step {step}; rolled "
              f"back to the weights and optimizer state of step {self._snapshot['step']}, learning "
              f"rate x{f:g} (now {lr:.4g}, x{self.lr_scale:g} of the configured schedule); rollback "
              f"{self.rollbacks} of {self.max_rollbacks}.")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.diverged is not None:
            return
        if members(pl_module) is not None:  # members are frozen before their step
            if self._stop_at is not None:
                self._stop(trainer, pl_module, None, self._grad_norm)
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs  # (K,) with K steps
        recovered, self._recovered = self._recovered, set()
        if self._stop_at is None and (loss is None or bool(torch.isfinite(loss).all())):
            return
        rows = first = None
        if loss is not None:  # (K,), (K, M) for an ensemble, or () for Lightning's automatic step
            rows = loss.reshape(1, -1) if loss.dim() == 0 else loss.reshape(len(loss), -1)
            first = trainer.global_step - len(rows)  # the optimizer step of rows[0]
        if self._stop_at is None:
            # A non-finite loss whose gradient was finite (not skipped or rolled back here):
            # its step was taken, which no policy can undo.
            bad = (~torch.isfinite(rows)).any(-1).nonzero().flatten().tolist()
            missed = [first + i for i in bad if first + i not in recovered]
            if not missed:
                return
            self._give_up(trainer, missed[0], None if self.policy == "stop" else
                          "the loss was non-finite though its gradient was finite, so the step "
                          "had been taken")
        if rows is not None:  # the loss of the step it stopped at
            i = self._stop_at - first
            loss = rows[i if 0 <= i < len(rows) else -1].sum()
        self._stop(trainer, pl_module, loss, self._grad_norm)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.diverged is None and (self.skipped or self.rollbacks):
            n = self.skipped if self.policy == "skip" else self.rollbacks
            done = (f"{n} non-finite step{'s' * (n != 1)} skipped" if self.policy == "skip" else
                    f"{n} rollback{'s' * (n != 1)}, learning rate x{self.lr_scale:g}")
            _warn(f"Divergence guard (policy '{self.policy}'): {done}; training finished on finite "
                  f"weights at step {trainer.global_step}.")

    def _stop(self, trainer, pl_module, loss, grad_norm) -> None:
        self._unusable = unusable(pl_module)
        self._usable_step = None
        if self._unusable is not None and self._snapshot is not None and members(pl_module) is None:
            # Finite weights whose distributions are not (a decoder std of 0 or inf): the
            # run ends on the last usable weights instead, the snapshot's.
            self._why_not = self._unusable
            with torch.no_grad():
                pl_module.load_state_dict(self._snapshot["model"])
            self._usable_step, self._unusable = self._snapshot["step"], unusable(pl_module)
        ckpt = None
        log_dir = trainer.log_dir  # a collective: every rank reads it
        if self._unusable is None and log_dir is not None:
            ckpt = Path(log_dir) / "checkpoints" / "last-finite.ckpt"
            trainer.save_checkpoint(ckpt, weights_only=False)
        trainer.should_stop = True
        self.diverged = {"step": self._stop_at, "loss": float(loss) if loss is not None else math.nan,
                         "grad_norm": float(grad_norm) if grad_norm is not None else math.nan,
                         "checkpoint": str(ckpt) if ckpt else None, "policy": self.policy,
                         "reason": self._reason}
        _warn(self.diagnosis(trainer, pl_module))

    def _policy_text(self) -> str:
        """What the policy did, and why it stopped (the diagnosis' last sentences)."""
        reason = self.diverged.get("reason")
        if reason is None:
            return (f"Divergence policy '{self.policy}': the step was skipped and training "
                    f"stopped cleanly")
        return (f"Divergence policy '{self.policy}' gave up: {reason}. The step was skipped and "
                f"training stopped cleanly")

    @torch.no_grad()
    def diagnosis(self, trainer, pl_module) -> str:
        """One paragraph: what diverged, when, the decoder stds per axis, and why."""
        d = self.diverged
        seeds = members(pl_module)
        if seeds is not None:
            when = ", ".join(f"seed {s} at step {pl_module.frozen[s]}" for s in seeds)
            kept = f"saved in {d['checkpoint']}" if d["checkpoint"] else "not saved"
            return (f"Training stopped at step {d['step']}: every member of the ensemble diverged "
                    f"(non-finite gradient; {when}) and was frozen at its last finite weights, "
                    f"{kept}; TensorBoard logs are in {run_dir(trainer)}.")
        dm = trainer.datamodule
        _, scale = pl_module.decoder_params()  # (K, D) at the last finite weights
        dim = scale.shape[1]
        axis_std = dm.axis_std
        stds = "; ".join(f"{axis_name(i, dim)} " + ", ".join(f"{float(v):.3g}" for v in scale[:, i])
                         for i in range(dim))
        data = ", ".join(f"{axis_name(i, dim)} {float(axis_std[i]):.3g}" for i in range(dim))
        monitor = _find(trainer, DecoderVarianceMonitor)
        crossed = ""
        if monitor is not None and monitor.collapse is not None:
            c = monitor.collapse
            crossed = (f" The likelihood std on axis {c['axis']} had fallen below "
                       f"{monitor.collapse_ratio:g} x the data scale at step {c['step']}.")
        flat = [axis_name(i, dim) for i in range(dim) if float(axis_std[i]) == 0]
        if flat:
            why = (f"The training data have zero variance on axis {', '.join(flat)}, so the "
                   f"Gaussian likelihood is unbounded there: -log(std) grows without limit as "
                   f"the decoder std shrinks, and the mean's gradient (~1/std^2) becomes so "
                   f"stiff that the updates overflow. A spread objective (SpreadELBO) bounds "
                   f"the loss.")
        else:
            why = "No axis of the training data has zero variance; try a smaller learning rate."
        at = ("the last finite weights" if getattr(self, "_usable_step", None) is None
              else f"the last usable weights (step {self._usable_step})")
        kept = (f"the last usable weights, of step {self._usable_step} (at the stop {self._why_not}), "
                f"are saved in {d['checkpoint']}" if d["checkpoint"]
                and getattr(self, "_usable_step", None) is not None else f"the last finite weights are saved in {d['checkpoint']}" if d["checkpoint"]
                else f"no checkpoint was written, as the model is not usable ({self._unusable}); "
                     f"divergence_guard.policy 'rollback' keeps the last usable weights"
                if getattr(self, "_unusable", None) else "no finite checkpoint could be written")
        return (f"Training diverged at step {d['step']}: the loss was {d['loss']:.4g} and its "
                f"gradient norm {d['grad_norm']:.4g}. Decoder std per axis and latent state at "
                f"{at}: {stds} (training-data std per axis: {data}).{crossed} "
                f"{why} {self._policy_text()}; {kept}; TensorBoard logs are in "
                f"{run_dir(trainer)}.")


@torch.no_grad()
def unusable(pl_module) -> str | None:
    """Why the model is not usable, or None: a parameter that is not finite, or finite
    weights whose derived distributions are not (a decoder std that overflows to inf, a
    mean or std that is NaN, samples that are not finite). What ``last-finite.ckpt`` must
    not hold: "finite" there means a model that samples and evaluates."""
    bad = [name for name, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        return f"parameter {bad[0]} is not finite"
    params = getattr(pl_module, "decoder_params", None)
    if callable(params):
        loc, scale = params()
        if not bool(torch.isfinite(loc).all()):
            return "a decoder mean is not finite"
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            worst = float(scale.abs().max()) if scale.numel() else math.nan
            return f"the decoder std is not finite (largest {worst:.3g}) for some latent state"
        net = getattr(pl_module, "net", None)
        if not getattr(net, "deterministic", False) and bool((scale == 0).any()):
            return "the decoder std has underflowed to 0 for some latent state (its density is not finite)"
    sample = getattr(pl_module, "sample", None)
    if callable(sample) and members(pl_module) is None:
        device = next(pl_module.parameters()).device
        draws = sample(256, generator=torch.Generator(device).manual_seed(0))
        if not bool(torch.isfinite(draws).all()):
            return "samples of the model are not finite"
    return None


class StepProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting optimizer steps: with ``steps_per_batch`` K one
    Lightning step is a group of K optimizer steps, so Lightning's own bar read "2/2" for a
    39-step epoch; this one reads 39/39 (``max_steps`` runs: the steps left). The CLI puts it
    in place of Lightning's default bar, with that bar's settings."""

    _epoch_start = 0

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        per_epoch = getattr(trainer.datamodule, "steps_per_epoch", None)
        if per_epoch is None:
            return super().total_train_batches
        accumulate = getattr(trainer.lightning_module, "accumulate_grad_batches", 1)
        left = None if trainer.max_steps in (None, -1) else trainer.max_steps - self._epoch_start
        return planned_steps(per_epoch(trainer.world_size), accumulate, 1, left)

    def on_train_epoch_start(self, trainer, *args) -> None:
        self._epoch_start = trainer.global_step
        super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and self.is_enabled:  # every group: there are few
            bar.n = trainer.global_step - self._epoch_start
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))


class PredictionWriter(BasePredictionWriter):
    """Saves ``predict``'s outputs (x, q(z|x), log p(x) per point) to ``predictions.pt``
    in the run directory, as one dict of concatenated tensors.

    Args:
        filename: file name inside the run directory.
    """

    def __init__(self, filename: str = "predictions.pt") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if not predictions or trainer.log_dir is None:
            return
        batches = predictions[0] if isinstance(predictions[0], list) else predictions
        merged = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        path = Path(trainer.log_dir) / f"{self.filename}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(merged, path)
        _warn(f"predictions of {len(merged['x'])} points written to {path}")


class HParamsSummary(pl.Callback):
    """Writes the run's hyperparameters with its final metrics to TensorBoard's HPARAMS tab.

    Use with ``TensorBoardLogger(default_hp_metric=False)``; other loggers (CSV, W&B, MLflow)
    get the same settings and ``hp/*`` values through ``log_hyperparams`` / ``log_metrics``.
    The metrics are logged as
    ``hp/<name>`` at the last step; ``hp/collapse_step`` is -1 when the decoder variance
    never collapsed, and ``hp/diverged`` is 1 when the run stopped on a non-finite loss.
    An ensemble writes one session per member, into its run: its settings with its own
    seed, its own final metrics (``hp/diverged`` 1 for a frozen member).
    """

    KEYS = ("val/loss", "val/log_px", "quality/mmd", "quality/energy", "quality/sliced_w2",
            "quality/dist_mean", "quality/dist_p95", "quality/mode_imbalance", "decoder/min_std_ratio_val",
            "encoder/posterior_entropy")

    @classmethod
    def hp_values(cls, metrics) -> dict[str, float]:
        """``hp/<name>`` of the ``KEYS`` that ``metrics`` holds (``val/loss`` -> ``hp/val_loss``)."""
        return {f"hp/{k.replace('/', '_')}": float(metrics[k]) for k in cls.KEYS if k in metrics}

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        dirs = _run_dirs(trainer, pl_module)
        if dirs is None:
            return
        writers = _writers(trainer, pl_module) or [None] * len(dirs)
        monitor, guard = _find(trainer, DecoderVarianceMonitor), _find(trainer, DivergenceGuard)
        params = plain_params(pl_module.hparams)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            params.update(plain_params(datamodule.hparams, prefix="data/"))
        seeds = members(pl_module)
        if seeds is None:
            # The run's seed (set by seed_everything), so seed loops compare in the HPARAMS tab.
            runs = [(int(os.environ.get("PL_GLOBAL_SEED", -1)), trainer.callback_metrics,
                     guard is not None and guard.diverged is not None)]
        else:  # each member's session is its single run's: no member seeds, its own seed
            params = {k: v for k, v in params.items() if k not in ("seeds", "data/member_seeds")}
            runs = [(s, pl_module.member_metrics[m], s in pl_module.frozen) for m, s in enumerate(seeds)]
        for m, (writer, (seed, metrics, diverged)) in enumerate(zip(writers, runs)):
            values = self.hp_values(metrics)
            if seeds is None and hasattr(pl_module, "final_hp_values"):  # the module's own finals
                values.update(pl_module.final_hp_values())
            collapse = monitor.collapses[m] if monitor is not None and m < len(monitor.collapses) else None
            values["hp/collapse_step"] = float(collapse["step"]) if collapse else -1.0
            values["hp/diverged"] = float(diverged)
            if writer is not None:
                write_hparams(writer, {**params, "seed": seed}, values, trainer.global_step)
            for logger in _other_loggers(trainer, pl_module):  # CSV, W&B, MLflow: their own API
                logger.log_hyperparams({**params, "seed": seed})
                logger.log_metrics(values, step=trainer.global_step)


def write_hparams(writer, params: dict, values: dict[str, float], step: int) -> None:
    """One run's HPARAMS session (its settings ``params``, final metrics ``values``), and
    the metrics as scalars at ``step``."""
    from torch.utils.tensorboard.summary import hparams

    # Only the session's start and end: a run that writes its own experiment summary
    # (torch's ``exp``) makes TensorBoard show the columns of whichever run it reads
    # first, so a setting only some runs have (spread's noise_std next to an ELBO run) got
    # no column. Without one, TensorBoard builds the experiment from every run's session:
    # the union of their hyperparameters, marked where they differ (the metric columns
    # are then every scalar tag; the hp/* ones hold the final values).
    _, ssi, sei = hparams(params, values)
    fw = file_writer(writer)
    for summary in (ssi, sei):
        fw.add_summary(summary)
    write_scalars(writer, values, step)
    writer.flush()


def plain_params(hparams, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested hyperparameters as flat ``a/b/c`` keys with values TensorBoard accepts;
    private keys (``_instantiator``) left out."""
    out = {}
    for k, v in dict(hparams).items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            out.update(plain_params(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


@rank_zero_only
def _warn(message: str) -> None:
    log.warning(message)


# --- how a fit ended: the run's own record, and a checkpoint when it was interrupted --------

_INTERRUPTED: dict[str, object] = {}  # {"signal": "SIGTERM", "signum": 15} once a fit was interrupted


def interrupted_by() -> tuple[str, int] | None:
    """(name, number) of the signal that interrupted a fit in this process, or None: the CLI
    exits with 128 + number (143 for SIGTERM, 130 for SIGINT), the shell's convention."""
    if not _INTERRUPTED:
        return None
    return str(_INTERRUPTED["signal"]), int(_INTERRUPTED["signum"])  # type: ignore[call-overload]


class RunOutcome(pl.Callback):
    """How a fit ended, written by the run itself, and a resumable checkpoint when it was cut off.

    The record is ``<run dir>/outcome.json`` (rank zero, written atomically), read by the
    sweep runner (``lightning_vae.runs.outcome_of``): ``outcome`` is ``finished`` (training
    ended under its own control, a divergence stop included), ``interrupted`` (SIGTERM, as
    a scheduler, ``timeout`` or a pre-empted node sends, or SIGINT, Ctrl-C) or ``failed``
    (an error), with ``signal``, ``global_step``, ``checkpoint`` (the file to resume from)
    and ``error``. A run killed outright (SIGKILL, out of memory) writes none: no record
    means it did not end under its own control.

    On SIGTERM or SIGINT, Lightning stops after the optimizer step in progress (its own
    signal handling: every DDP rank stops at the same step); then, with ``save_on_interrupt``,
    the full training state is saved as ``checkpoints/interrupted-step=<N>.ckpt`` and
    ``last.ckpt`` is re-pointed at it atomically, so the README's resume command continues
    from that very step (not the last epoch end), bit-exactly. A ``run/interrupted`` scalar
    (1 at that step) and one line on stderr say what happened and how to resume; the CLI
    exits 143 (SIGTERM) or 130 (SIGINT). Lightning's SLURM auto-requeue (SIGUSR1: an
    ``hpc_ckpt`` checkpoint and ``scontrol requeue``) is untouched.

    The interrupted run's directory keeps that checkpoint (its ``last.ckpt``); a resumed
    run writes to a new run directory, as every resume does.
    """

    def __init__(self, save_on_interrupt: bool = True) -> None:
        self.save_on_interrupt = save_on_interrupt

    def on_train_start(self, trainer, pl_module) -> None:
        """Ctrl-C is handled as SIGTERM is (Lightning's own path: the step in progress ends,
        then the run stops), not as a KeyboardInterrupt raised mid-step, so that the saved
        step is a consistent one; a second Ctrl-C interrupts at once."""
        import signal as signals
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        previous = signals.getsignal(signals.SIGINT)

        def on_sigint(signum, frame) -> None:
            _INTERRUPTED.update(signal="SIGINT", signum=int(signals.SIGINT))
            signals.signal(signals.SIGINT, previous if callable(previous) else signals.default_int_handler)
            os.kill(os.getpid(), signals.SIGTERM)

        signals.signal(signals.SIGINT, on_sigint)
        self._previous_sigint = previous

    def teardown(self, trainer, pl_module, stage: str) -> None:
        import signal as signals

        previous = getattr(self, "_previous_sigint", None)
        if previous is not None:
            signals.signal(signals.SIGINT, previous)
            self._previous_sigint = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, "finished", None, None, None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if trainer.state.fn != TrainerFn.FITTING:
            return
        import signal as signals

        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            sig = signals.SIGTERM if isinstance(exception, SIGTERMException) else signals.SIGINT
            if _INTERRUPTED.get("signal") == "SIGINT":  # Ctrl-C, handled as SIGTERM (on_train_start)
                sig = signals.SIGINT
            _INTERRUPTED.update(signal=sig.name, signum=int(sig))
            ckpt = self._save(trainer) if self.save_on_interrupt else None
            log_scalars(trainer, {"run/interrupted": 1.0}, trainer.global_step)
            self._write(trainer, "interrupted", sig.name, ckpt, None)
            where = run_dir(trainer)
            if ckpt is not None:
                from lightning_vae.cli import PROG  # how this CLI was run (lightning_vae, .ensemble)

                resume = (f"checkpoint {ckpt} (last.ckpt points at it); resume: {PROG} fit "
                          f"--config {Path(where) / 'config.yaml'} --ckpt_path {Path(ckpt).parent / 'last.ckpt'}")
            else:
                resume = "no checkpoint saved (no step taken yet)" if self.save_on_interrupt else \
                    "no checkpoint saved (run_outcome.save_on_interrupt is false)"
            _warn(f"run interrupted by {sig.name} at step {trainer.global_step}; {resume}")
        else:
            self._write(trainer, "failed", None, None, f"{type(exception).__name__}: {exception}".splitlines()[0])

    def _ckpt_dir(self, trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None)
        if folder is None:
            where = run_dir(trainer)
            folder = Path(where) / "checkpoints" if where is not None else None
        return Path(folder) if folder is not None else None

    def _save(self, trainer) -> str | None:
        from lightning_vae import checkpoints

        folder = self._ckpt_dir(trainer)
        if folder is None or trainer.global_step == 0:
            return None
        path = folder / f"interrupted-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank zero writes
        if trainer.is_global_zero:
            checkpoints.link(path, folder / checkpoints.LAST)
        return str(path)

    @rank_zero_only
    def _write(self, trainer, outcome: str, sig: str | None, ckpt: str | None, error: str | None) -> None:
        where = run_dir(trainer)
        if where is None:
            return
        write_record(Path(where) / OUTCOME_FILE, {
            "outcome": outcome, "signal": sig, "global_step": int(trainer.global_step), "checkpoint": ckpt,
            "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
