"""The LightningModule: wiring of data, VAE core and objective; no maths of its own."""

from __future__ import annotations

import math
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor

from lightning_vae.latents import BernoulliLatent, Latent
from lightning_vae.checkpoints import SafeLoading
from lightning_vae.nets import Decoder, GaussianDecoder, Network, build_core
from lightning_vae.objectives import DETERMINISTIC_NEEDS_SPREAD, ELBO, ONE_PROCESS, Objective, SpreadELBO, Terms
from lightning_vae.scalars import flush_event_files, log_scalars
from lightning_vae.steps import KStepTraining, SeededNoise

EVAL_NOISE_SEED = 0  # fixed spread noise in val/test, so epochs are comparable


def cosine_schedule(optimizer: torch.optim.Optimizer, total: int):
    """Learning rate x 0.5 (1 + cos(pi t / total)), stepped every optimizer step.

    Cosine to 0 over the run: late steps are small, so the clean model settles (the spread
    objective's fresh noise otherwise keeps the x-std jittering).
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def optimizer_config(params, optimizer: OptimizerCallable | None, lr_schedule: str, total_steps):
    """``configure_optimizers``' answer: the optimizer (default Adam, lr 1e-3) and, for
    "cosine", the schedule over ``total_steps()`` optimizer steps, stepped every step."""
    optimizer = optimizer(params) if optimizer else torch.optim.Adam(params, lr=1e-3)
    if lr_schedule == "constant":
        return optimizer
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": cosine_schedule(optimizer, total_steps()), "interval": "step"}}


INIT_POINTS = 4096  # training points a data-dependent initialisation reads (the first ones)
ALIGNMENT_POINTS = 512  # training points at which the learned spread's alignment is measured


def learned_kernel(objective: Objective):
    """The objective's learned spread kernel (``LearnedGaussianKernel``), or None. Only the
    spread ELBO (alone or after ``VAEWarmStart``) can train one: one-line error otherwise."""
    kernel = getattr(objective, "kernel", None)
    if not getattr(kernel, "learned", False):
        return None
    if not isinstance(getattr(objective, "objective", objective), SpreadELBO):
        raise ValueError(f"a learned spread kernel ({kernel!r}) needs the spread ELBO "
                         f"(lightning_vae.objectives.SpreadELBO), got {objective!r}")
    return kernel


def data_for_init(trainer: pl.Trainer, net) -> Tensor | None:
    """The training points for ``net``'s data-dependent initialisation (the hyperspherical
    latent's ``pca_init``, the categorical latent's ``data_init``): the first
    ``INIT_POINTS`` of the training split, the same on every rank; None when there is none
    to do or the fit resumes from a checkpoint (whose weights are restored before)."""
    if not getattr(net, "needs_data_init", False) or trainer.ckpt_path is not None:
        return None
    x = getattr(trainer.datamodule, "train_x", None)
    return None if x is None else x[:INIT_POINTS]


class VAE(SafeLoading, SeededNoise, KStepTraining, pl.LightningModule):
    """A VAE (the seed's Bernoulli latent by default), trained with the objective given in config.

    Args:
        data_dim: ambient dimension D of the data (linked from the datamodule by the CLI).
        objective: what to minimise, e.g. ``ELBO()`` or ``SpreadELBO(noise_std=0.3)``;
            default ``ELBO()``.
        latent: ``BernoulliLatent(prior_prob=0.5)`` (default, the seed) or
            ``CategoricalLatent(n_states=K)``, enumerated exactly; or
            ``GaussianLatent(dim, n_samples, iwae_samples)``, sampled (IWAE in evaluation).
        decoder: ``GaussianDecoder(variance="per_axis")`` (default, the seed; also
            "shared", "fixed", and a ``min_std`` floor) or ``DeterministicDecoder()``
            (no variance; only with ``SpreadELBO``).
        hidden: width of the hidden layers of encoder and decoder MLPs (when no ``network``
            is given).
        depth: number of hidden layers of encoder and decoder MLPs (when no ``network``
            is given).
        network: the architecture of encoder and decoder: ``MLP(hidden, depth)`` (the
            default, from ``hidden`` and ``depth``) or ``ConvNet(width, depth)`` for images
            (``lightning_vae.nets``).
        image_shape: (C, H, W) of image data (linked from the datamodule; None for points):
            the data are flat vectors of C*H*W pixels, a ``ConvNet`` reshapes them.
        optimizer: optimizer factory (``class_path`` in YAML); default Adam with its
            default learning rate, 1e-3.
        spread_optimizer: the learned spread's optimizer factory, configured like
            ``optimizer`` (default Adam, lr 1e-3, constant rate), used only when the
            objective's kernel is learned (``LearnedGaussianKernel``): it ascends the
            divergence while ``optimizer`` descends it (docs/learned_spread.md).
        spread_lr_schedule: the learned spread's rate: "constant" (default) or "cosine"
            (to 0 over the run, as the model's "cosine": the adversary then cannot keep
            moving while the model's rate has run out).
        lr_schedule: "cosine" decays the learning rate to 0 over the run's steps (every
            step); "constant" keeps it.
        steps_per_batch: optimizer steps per Lightning step (linked from the datamodule,
            which serves ``(K, B, D)`` groups of batches): Lightning's per-step overhead
            is paid once per K steps; the run is the same at any K (``steps.py``).
    """

    members = None  # no member axis (see ``callbacks.members``; an ensemble has one)

    def __init__(
        self,
        data_dim: int = 2,
        objective: Objective | None = None,
        latent: Latent | None = None,
        decoder: Decoder | None = None,
        hidden: int = 64,
        depth: int = 2,
        network: Network | None = None,
        image_shape: list[int] | None = None,
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        steps_per_batch: int = 1,
        spread_optimizer: OptimizerCallable | None = None,
        spread_lr_schedule: Literal["constant", "cosine"] = "constant",
    ) -> None:
        super().__init__()
        if data_dim < 1:
            raise ValueError(f"data_dim must be >= 1, got {data_dim}")
        self._configure_steps(lr_schedule, steps_per_batch)
        self.save_hyperparameters()
        self.objective = objective if objective is not None else ELBO()
        decoder = decoder if decoder is not None else GaussianDecoder()
        if decoder.deterministic and not self.objective.trains_deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        latent = latent if latent is not None else BernoulliLatent()
        self.net = build_core(data_dim, latent, hidden=hidden, depth=depth, decoder=decoder, network=network,
                              image_shape=image_shape)
        self.network = network
        self._optimizer = optimizer
        # The learned spread (a module: its parameters are checkpointed, moved, DDP-synced).
        self.spread = learned_kernel(self.objective)
        if self.spread is not None:
            self.spread.build(data_dim)
            if getattr(self.spread, "transforms", False):
                if not decoder.deterministic:
                    raise ValueError(f"{self.spread!r} needs a deterministic decoder (model.decoder: "
                                     f"lightning_vae.nets.DeterministicDecoder), got {decoder!r}")
                self.net.loc_transform = self.spread.transform  # the decoder means go through f too
        self._spread_optimizer = spread_optimizer
        if spread_lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"spread_lr_schedule must be 'constant' or 'cosine', got {spread_lr_schedule!r}")
        self.spread_lr_schedule = spread_lr_schedule
        self._spread_values: dict[str, Tensor] = {}  # the step's divergence terms, to log
        self._tangent: Tensor | None = None  # tangent bases at training points (alignment)
        # The training noise (spread) has its own generator, seeded by the run's seed: its
        # stream does not depend on what else draws from torch's global RNG (data loaders,
        # Lightning), it is saved in checkpoints, and an ensemble member with the same seed
        # draws exactly the same noise.
        self.noise_seed = int(torch.initial_seed())
        self._noise, self._noise_state = None, None  # SeededNoise's
        self._share = ONE_PROCESS  # (world size, rank), set at the start of fit
        # The Terms of the current training step, scored at the weights before its
        # optimizer step (None before the first): callbacks read ``last_terms.scale``, the
        # likelihood std, instead of a second decoder pass.
        self.last_terms: Terms | None = None
        # The M-step's statistic of the current optimizer step: the sum of its batches'
        # aggregate posteriors, and how many batches (prior_update "em").
        self._posterior_sum: Tensor | None = None
        self._posterior_batches = 0

    # --- public API -------------------------------------------------------------------

    def encode(self, x: Tensor):
        """q(z | x) as a ``torch.distributions`` object."""
        return self.net.encode(x)

    def decode(self, z: Tensor):
        """p(x | z) as a ``torch.distributions`` object."""
        return self.net.decode(z)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log-likelihood of the clean model per point, ``(B,)``."""
        return self.net.log_px(x)

    def sample(self, n: int, generator: torch.Generator | None = None,
               return_latent: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples of the clean model (no spread noise), ``(n, D)``; with
        ``return_latent``, ``(x, z)``: also the latent of each sample (the state index
        ``(n,)`` for a discrete latent, the value ``(n, d)`` for a continuous one)."""
        return self.net.sample(n, generator=generator, return_latent=return_latent)

    @torch.no_grad()
    def aggregate_posterior(self, x: Tensor) -> Tensor | None:
        """mean_x q(k | x) over the rows of ``x``, ``(K,)``, for a discrete latent (None for
        a continuous one): how much of the data the encoder sends to each state."""
        return self.net.aggregate_posterior(x) if self.net.enumerable else None

    def prior(self):
        """The prior p(z) as a ``torch.distributions`` object (the learned mixture weights
        of ``CategoricalLatent(learn_prior=true)`` included)."""
        return self.net.prior()

    def decoder_params(self) -> tuple[Tensor, Tensor]:
        """Decoder mean and std per latent state, ``(K, D)`` each."""
        return self.net.decoder_params()

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        """The std of the likelihood the objective trains, given the decoder std."""
        return self.objective.likelihood_scale(scale)

    def prior_logits(self) -> Tensor | None:
        """The learned prior's logits, ``(K,)``, or None (a fixed prior)."""
        return getattr(self.net, "prior_logits", None)

    # --- Lightning hooks --------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.save_noise_state(checkpoint)
        flush_event_files(self.trainer)  # the events up to this checkpoint survive a kill

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.load_noise_state(checkpoint)

    def on_fit_start(self) -> None:
        # DDP: each rank takes its rows of the global batch's noise (Objective.draw).
        self._share = (self.trainer.world_size, self.trainer.global_rank)
        x = data_for_init(self.trainer, self.net)
        if x is not None:  # a fresh fit (a resumed one has its weights): the same on every rank
            self.net.init_from_data(x.to(self.device))
        if self.device.type == "cuda" and getattr(self.network, "channels_last", False):
            self.net.to(memory_format=torch.channels_last)  # the 4-D (convolution) weights
        self._tangent = None
        manifold = getattr(self.trainer.datamodule, "manifold", None)
        train_x = getattr(self.trainer.datamodule, "train_x", None)
        if self.spread is not None and getattr(manifold, "has_tangent", False) and train_x is not None:
            self._tangent = manifold.tangent(train_x[:ALIGNMENT_POINTS].cpu())

    def step_terms(self, x: Tensor, step: int, values: bool = True) -> Terms:
        """The objective's terms of one training batch ``x`` ``(B, D)`` at optimizer step
        ``step``, its noise from the run's generator."""
        if not self._em_prior and self.spread is None:
            terms = self.objective(x, self.net, self.noise_generator(x.device), step, values, self._share)
            self.last_terms = terms
            return terms
        # What Objective.__call__ does, keeping y for the M-step and the learned spread.
        if self.net.deterministic and not self.objective.trains_deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        y, eps = self.objective.draw(x, self.net, self.noise_generator(x.device), step, self._share)
        terms = self.objective.terms(y, self.net, step, values, eps)
        if self._em_prior:
            with torch.no_grad():  # the aggregate posterior at the weights that scored the batch
                mean = self.net.aggregate_posterior(y)
                # Summed over the batches of one optimizer step (accumulate_grad_batches).
                self._posterior_sum = mean if self._posterior_sum is None else self._posterior_sum + mean
                self._posterior_batches += 1
        if self.spread is not None:
            terms = self._spread_terms(x, y, terms, step, values)
        self.last_terms = terms
        return terms

    def _spread_terms(self, x: Tensor, y: Tensor, terms: Terms, step: int, values: bool) -> Terms:
        """The learned spread's part of a step: with ``ascent="divergence"`` the spread data's
        own log-density (the mixture over the global batch's clean points) joins the loss
        as ``terms.adversary``, which only the noise sees (docs/learned_spread.md)."""
        self._spread_values = {}
        warm = getattr(self.objective, "warm", None)
        if warm is not None and warm(step):  # VAEWarmStart's standard VAE: no spread yet
            return terms
        if self.spread.ascent == "loss":
            return terms
        reference = x
        if self.trainer.world_size > 1:  # every rank's clean points: the global batch's mixture
            reference = self.all_gather(x).reshape(-1, *x.shape[1:])
        data_log_density = self.spread.spread_log_density(
            y, reference.detach(), self.objective.step_noise_std(step)).mean()
        if values:
            self._spread_values = {"spread/data_log_density": data_log_density.detach(),
                                   "spread/divergence": (terms.loss + data_log_density).detach()}
        return terms._replace(adversary=data_log_density)

    def reverse_adversary_gradients(self) -> None:
        """The noise ascends: its gradients are negated before its optimizer's step."""
        for p in self.spread.parameters():
            if p.grad is not None:
                p.grad.neg_()

    def after_adversary_step(self) -> None:
        self.spread.renormalise()  # the constraint's parameter back to unit norm (L unchanged)

    def log_train(self, terms, step: int) -> None:
        super().log_train(terms, step)
        if self.spread is not None:
            log_scalars(self.trainer, self.spread_scalars(step), step)

    def final_hp_values(self) -> dict[str, float]:
        """The run's own final metrics for ``HParamsSummary``: the learned spread's
        alignment (``hp/spread_tangent_fraction``, ``hp/spread_angle_mean``, ...)."""
        if self.spread is None or self._tangent is None or not hasattr(self.spread, "alignment"):
            return {}
        return {f"hp/spread_{k}": v for k, v in self.spread.alignment(self._tangent).items()}

    def spread_scalars(self, step: int) -> dict[str, float]:
        """The learned spread's ``spread/*`` scalars: the kernel's own (``scalars``: for the
        Gaussian, its spectrum ``eigen_<r>``, ``total_variance`` = D sigma^2 + tr L L^T,
        ``budget_error``; for the transform, ``lipschitz`` and ``displacement``), the alignment with the data
        manifold where it has an exact tangent space (``tangent_fraction``, ``angle_mean``,
        ``angle_max``, degrees), and the step's ``divergence`` and ``data_log_density``
        (ascent "divergence"; under DDP the means over the ranks), at optimizer step ``step``
        (its noise level: the loop logs after the step, when ``global_step`` is step + 1)."""
        kernel = self.spread
        noise_std = self.objective.step_noise_std(step)
        train_x = getattr(self.trainer.datamodule, "train_x", None)
        points = None if train_x is None else train_x[:ALIGNMENT_POINTS].to(self.device)
        out = kernel.scalars(noise_std, self.hparams.data_dim, points)
        if self._tangent is not None and hasattr(kernel, "alignment"):
            out.update({f"spread/{k}": v for k, v in kernel.alignment(self._tangent).items()})
        if self._spread_values:
            stacked = torch.stack(list(self._spread_values.values()))
            if self.trainer.world_size > 1:
                stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
            out.update(zip(self._spread_values, stacked.tolist()))
        return out

    @property
    def _em_prior(self) -> bool:
        return bool(getattr(self.net.latent, "em_prior", False))

    def on_after_optimizer_step(self, step: int) -> None:
        """The M-step of the learned mixture weights (``CategoricalLatent(prior_update="em")``)."""
        if self._em_prior and self._posterior_sum is not None:
            mean = self._posterior_sum / self._posterior_batches
            if self.trainer.world_size > 1:  # the global batch's mean (equal batches per rank)
                mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            self.net.m_step(mean, self.net.latent.prior_rate)
        self._posterior_sum, self._posterior_batches = None, 0

    def _eval_step(self, x: Tensor, stage: str) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)
        terms = self.objective(x, self.net, generator=generator, step=None)
        logged = {f"{stage}/loss": terms.loss, **{f"{stage}/{k}": v for k, v in terms.values.items()}}
        if f"{stage}/log_px" not in logged and not self.net.deterministic:
            logged[f"{stage}/log_px"] = self.net.log_px(x).mean()  # exact, clean model
        if f"{stage}/log_px" in logged:  # a density of continuous data: may be negative
            logged[f"{stage}/bits_per_dim"] = -logged[f"{stage}/log_px"] / (x.shape[-1] * math.log(2))
        if stage == "val":
            # At the index of the last optimizer step (Lightning's x-axis for validation
            # under automatic optimization), at any K.
            logged["step"] = float(self.global_step - 1)
        # Under DDP each rank saw its own shard: average over ranks.
        self.log_dict(logged, on_step=False, on_epoch=True, sync_dist=True)
        return terms.loss

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, "val")

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, "test")

    def predict_step(self, x: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """Per point: the input, q(z=1|x) and the exact log p(x)."""
        q = self.net.log_q(x).exp() if self.net.enumerable else self.net.encode_params(x)[0]
        return {"x": x, "q_z": q, "log_px": self.net.log_px(x)}

    def configure_optimizers(self):
        if self.spread is None:
            return optimizer_config(self.parameters(), self._optimizer, self.lr_schedule, self._total_steps)
        # Two players: the model's parameters descend, the learned spread's ascend (its own
        # optimizer and rate schedule; the loop reverses its gradients).
        model = [p for name, p in self.named_parameters() if not name.startswith("spread.")]
        config = optimizer_config(model, self._optimizer, self.lr_schedule, self._total_steps)
        noise = optimizer_config(self.spread.parameters(), self._spread_optimizer, self.spread_lr_schedule,
                                 self._total_steps)
        return [c if isinstance(c, dict) else {"optimizer": c} for c in (config, noise)]
