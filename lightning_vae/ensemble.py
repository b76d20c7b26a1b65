"""Many seeds for the price of one: M independent VAEs trained as one vmapped model.

    python -m lightning_vae.ensemble fit --config configs/seed_spread.yaml --model.seeds=[0,1,2,3,4,5,6,7,8,9]

Every member is the model a single run with that seed would train, exactly: the same
initial weights (built after ``torch.manual_seed(seed)``), the same batch order (the
datamodule shuffles member m with its seed), the same spread noise (its own generator
seeded with its seed) and the same Adam updates (Adam acts elementwise, so one Adam over
stacked weights is M independent Adams). The members' losses are summed, so each one's
gradient is its own. Numbers differ from single runs only by float rounding of batched
matrix products (``tests/test_ensemble.py`` bounds it).

Each member logs to its own TensorBoard run, ``<run dir>/seed_<s>/``, through the single
run's callbacks, which take the module's member axis (``callbacks.members``): the decoder
variance monitor, sample quality and figures, the divergence guard (per member: a diverged
member is frozen, the others train on) and the HPARAMS session. The run directory gets
``ensemble_summary.json`` at the end (``EnsembleSummary``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from lightning_vae.checkpoints import SafeLoading
from lightning_vae.callbacks import DecoderVarianceMonitor, _find, run_dir
from lightning_vae.callbacks import _warn as _info
from lightning_vae.cli import VAECLI, run_cli
from lightning_vae.errors import bad_input
from lightning_vae.latents import BernoulliLatent, Latent
from lightning_vae.model import EVAL_NOISE_SEED, data_for_init, optimizer_config
from lightning_vae.densities import normal_log_prob
from lightning_vae.nets import (Decoder, DiscreteVAE, GaussianDecoder, GaussianVAE, Network, build_core, m_step_logits,
                                principal_directions, state_offsets)
from lightning_vae.objectives import DETERMINISTIC_NEEDS_SPREAD, ELBO, Objective, Terms
from lightning_vae.scalars import flush_event_files, write_scalars
from lightning_vae.steps import KStepTraining


class _Scorer(nn.Module):
    """Wraps net + objective so that ``functional_call`` can swap in one member's weights."""

    def __init__(self, net: DiscreteVAE, objective: Objective) -> None:
        super().__init__()
        self.net, self.objective = net, objective

    def forward(self, y: Tensor, step: int | None, values: bool = True, eps: Tensor | None = None):
        # (loss, values, scale): vmap returns tensors only (no adversary: the ensemble has
        # no learned spread); member_terms makes them Terms again.
        return tuple(self.objective.terms(y, self.net, step=step, values=values, eps=eps)[:3])


class EnsembleVAE(SafeLoading, KStepTraining, pl.LightningModule):
    """M copies of ``VAE`` with different seeds, trained in one vmapped step.

    Args:
        seeds: one member per seed (the ``seed_everything`` value of its single run).
        data_dim: ambient dimension D (linked from the datamodule).
        objective: as for ``VAE``; shared by all members.
        latent: as for ``VAE`` (a Gaussian latent too: each member draws its own noise).
        decoder: as for ``VAE``.
        hidden: as for ``VAE``.
        depth: as for ``VAE``.
        network: as for ``VAE``.
        image_shape: as for ``VAE`` (linked from the datamodule).
        optimizer: as for ``VAE``; one optimizer over the stacked weights.
        lr_schedule: as for ``VAE``.
        steps_per_batch: as for ``VAE`` (linked from the datamodule, which then serves
            ``(K, M, B, D)`` batches).
    """

    def __init__(
        self,
        seeds: list[int] | None = None,
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
    ) -> None:
        super().__init__()
        seeds = list(range(10)) if seeds is None else list(seeds)
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct ints, got {seeds}")
        self._configure_steps(lr_schedule, steps_per_batch)
        self.save_hyperparameters()
        self.seeds = seeds
        self.objective = objective if objective is not None else ELBO()
        latent = latent or BernoulliLatent()
        decoder = decoder if decoder is not None else GaussianDecoder()
        self._decoder = decoder
        if decoder.deterministic and not self.objective.trains_deterministic:
            raise ValueError(DETERMINISTIC_NEEDS_SPREAD)
        kernel = getattr(self.objective, "kernel", None)
        if getattr(kernel, "learned", False):
            raise ValueError(f"a learned spread kernel ({kernel!r}) trains one noise per run, not one shared "
                             f"by vectorised members: run the seeds as processes (sweep --seeds_as processes) "
                             f"or one fit per seed")
        members = []
        for s in seeds:  # exactly what a single run's VAE.__init__ does after seed_everything(s)
            torch.manual_seed(s)
            members.append(_Scorer(build_core(data_dim, latent, hidden=hidden, depth=depth, decoder=decoder,
                                              network=network, image_shape=image_shape), self.objective))
        self._network = network
        params, _ = stack_module_state(members)  # name -> (M, ...)
        self._names = list(params)
        # requires_grad as in the member (the M-step's mixture weights take no gradient).
        grads = dict(members[0].named_parameters())
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone(),
                                                      requires_grad=grads[n].requires_grad) for n in self._names])
        self._template = [copy.deepcopy(members[0]).to("meta")]  # a list: not a submodule
        self._optimizer = optimizer
        self._noise: list[torch.Generator] | None = None
        self._noise_states: list[Tensor] | None = None  # from a checkpoint, applied lazily
        self.last_terms: Terms | None = None  # as VAE's, per member
        # Members frozen by the divergence guard (``freeze``): seed -> the step. A frozen
        # member keeps its last finite weights; the others train on.
        self.frozen: dict[int, int] = {}
        self._frozen_weights: dict[int, list[Tensor]] = {}
        # Each member's latest logged value per tag (what trainer.callback_metrics is to a
        # single run), for HPARAMS and the summary.
        self.member_metrics: list[dict[str, float]] = [{} for _ in seeds]
        self._posterior_sum: Tensor | None = None  # the M-step's statistic (see VAE)
        self._posterior_batches = 0

    @property
    def members(self) -> list[int]:
        """The member axis the callbacks read (``callbacks.members``): the seeds."""
        return self.seeds

    # --- vmapped maths ----------------------------------------------------------------

    def _params(self) -> dict[str, Tensor]:
        return dict(zip(self._names, self.stacked))

    def _vmapped(self, method: str, *shared: Tensor):
        """``_Scorer``'s (dotted) ``method(*shared)`` for every member's weights, stacked on
        dim 0; e.g. ``"net.log_px"``."""
        caller = _MethodCaller(self._template[0], method)

        def one(params):
            return functional_call(caller, {f"inner.{k}": v for k, v in params.items()}, shared)

        return vmap(one)(self._params())

    def member_terms(self, y: Tensor, step: int | None, values: bool = True, eps: Tensor | None = None):
        """Objective terms of each member on its own data ``y`` ``(M, B, D)`` with its own
        latent draws ``eps`` ``(M, S, B, d)`` (None for an enumerated latent)."""
        template = self._template[0]
        if eps is None:
            out = vmap(lambda p, ym: functional_call(template, p, (ym, step, values)))(self._params(), y)
        else:
            out = vmap(lambda p, ym, em: functional_call(template, p, (ym, step, values, em)))(
                self._params(), y, eps)
        return Terms(*out)

    def member_draws(self, x: Tensor, generators: list[torch.Generator], step: int | None):
        """Each member's randomness of a step from its own generator, as its single run
        draws it (``Objective.draw``): y ``(M, B, D)`` and eps ``(M, S, B, d)`` or None."""
        net = self._template[0].net  # draws need the latent's settings only, no weights
        draws = [self.objective.draw(x[m], net, g, step) for m, g in enumerate(generators)]
        y = torch.stack([d[0] for d in draws])
        return y, None if draws[0][1] is None else torch.stack([d[1] for d in draws])

    def decoder_params(self) -> tuple[Tensor, Tensor]:
        """Decoder loc and std of every member at the latent's states (or probe points),
        ``(M, K, D)`` each."""
        states = self._template[0].net.latent.states(self.stacked[0])  # shared, drawn outside vmap
        return self._vmapped("net.decoder", states)

    def prior_logits(self) -> Tensor | None:
        """Every member's learned prior logits, ``(M, K)``, or None (a fixed prior)."""
        return self._params().get("net.prior_logits")

    def likelihood_scale(self, scale: Tensor) -> Tensor:
        """The std of the likelihood the objective trains, given the decoder std."""
        return self.objective.likelihood_scale(scale)

    def log_px(self, x: Tensor) -> Tensor:
        """log p(x) of every member on shared data ``x`` ``(B, D)``, ``(M, B)``: exact for an
        enumerated latent, the IWAE bound with its fixed evaluation draws (as ``log_px`` of a
        single run) for a Gaussian one."""
        net = self._template[0].net
        eps = net.draws(len(x), False, torch.Generator(x.device).manual_seed(0), x)
        member = _MethodCaller(self._template[0], "net.expectation")

        def one(params):
            inner = {f"inner.{k}": v for k, v in params.items()}
            return functional_call(member, inner, (x, normal_log_prob, eps)).log_px

        return vmap(one)(self._params())

    def member(self, m: int) -> DiscreteVAE | GaussianVAE:
        """Member ``m`` as a plain VAE core (a copy with its weights)."""
        net = build_core(self.hparams.data_dim, self._template[0].net.latent, hidden=self.hparams.hidden,
                         depth=self.hparams.depth, decoder=self._decoder, network=self._network,
                         image_shape=self.hparams.image_shape)
        state = {n.removeprefix("net."): p[m].detach() for n, p in self._params().items()}
        net.load_state_dict(state)
        return net.to(self.device)

    # --- Lightning hooks --------------------------------------------------------------

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        """One training-noise generator per member, seeded as its single run's."""
        if self._noise is None or self._noise[0].device != device:
            self._noise = [torch.Generator(device=device).manual_seed(s) for s in self.seeds]
            for g, state in zip(self._noise, self._noise_states or []):
                g.set_state(state)
        return self._noise

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._noise is not None:
            checkpoint["noise_generator_states"] = [g.get_state() for g in self._noise]
        checkpoint["frozen_members"] = dict(self.frozen)
        flush_event_files(self.trainer, self.member_writers() or ())  # events survive a kill

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._noise_states, self._noise = checkpoint.get("noise_generator_states"), None
        self.frozen = {int(k): v for k, v in (checkpoint.get("frozen_members") or {}).items()}

    # --- a diverged member is frozen, the others train on -------------------------------

    @torch.no_grad()
    def freeze(self, m: int, step: int) -> None:
        """Take member ``m`` out of training from optimizer step ``step`` on, at its current
        weights (called by the divergence guard before the step, on its last finite ones)."""
        self.frozen.setdefault(self.seeds[m], step)
        self._mask_frozen()

    @torch.no_grad()
    def _mask_frozen(self) -> None:
        """Frozen members' gradients to 0 and their weights kept (restored after the step:
        Adam's momentum would still move them)."""
        for i, seed in enumerate(self.seeds):
            if seed in self.frozen:
                self._frozen_weights.setdefault(i, [p[i].clone() for p in self.stacked])
                for p in self.stacked:
                    if p.grad is not None:
                        p.grad[i] = 0

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.frozen:
            self._mask_frozen()

    @torch.no_grad()
    def on_after_optimizer_step(self, step: int) -> None:
        if self._posterior_sum is not None:  # each member's M-step (CategoricalLatent(prior_update="em"))
            mean = self._posterior_sum / self._posterior_batches  # (M, K)
            if self.trainer.world_size > 1:
                mean = self.trainer.strategy.reduce(mean, reduce_op="mean")
            logits = self._params()["net.prior_logits"]
            logits.copy_(m_step_logits(logits, mean, self._template[0].net.latent.prior_rate))
        self._posterior_sum, self._posterior_batches = None, 0
        for i, weights in self._frozen_weights.items():  # after the M-step: a frozen member keeps its weights
            for p, w in zip(self.stacked, weights):
                p[i] = w

    @torch.no_grad()
    def on_fit_start(self) -> None:
        """The members' data-dependent initialisation, as each single run does it
        (``model.data_for_init``): the same data, so the same values in every member."""
        template = self._template[0].net
        x = data_for_init(self.trainer, template)
        if x is None:
            return
        params = self._params()
        x = x.to(self.stacked[0])
        if "net.direction_path.weight" in params:  # the same for every member: data only
            weight, bias = principal_directions(x, template.latent.dim)
            params["net.direction_path.weight"].copy_(weight.expand_as(params["net.direction_path.weight"]))
            params["net.direction_path.bias"].copy_(bias.expand_as(params["net.direction_path.bias"]))
        if "net.decoder.loc_path.weight" in params:  # each member's own means moved onto the same points
            loc = self.decoder_params()[0]  # (M, K, D), the path still zero
            params["net.decoder.loc_path.weight"].copy_(torch.stack([state_offsets(x, l) for l in loc]))

    def step_terms(self, x: Tensor, step: int, values: bool = True) -> Terms:
        """Every member's terms on its own batch ``x`` ``(M, B, D)``."""
        # Each member's noise from its own generator, as in its single run.
        y, eps = self.member_draws(x, self._generators(x.device), step)  # (M, B, D), (M, S, B, d)
        terms = self.member_terms(y, step, values, eps)
        if getattr(self._template[0].net.latent, "em_prior", False):
            with torch.no_grad():  # each member's aggregate posterior on its own y (see VAE.step_terms)
                mean = self._member_posterior(y)
            self._posterior_sum = mean if self._posterior_sum is None else self._posterior_sum + mean
            self._posterior_batches += 1
        self.last_terms = terms  # scale (M, K, D), for the monitor; see VAE
        return terms

    @torch.no_grad()
    def aggregate_posterior(self, x: Tensor) -> Tensor | None:
        """Every member's mean_x q(k | x) on shared data ``x``, ``(M, K)`` (None for a
        continuous latent); see ``VAE.aggregate_posterior``."""
        return self._vmapped("net.aggregate_posterior", x) if self._template[0].net.enumerable else None

    def _member_posterior(self, y: Tensor) -> Tensor:
        """mean_b q(k | y_b) of each member on its own data ``y`` ``(M, B, D)``, ``(M, K)``."""
        caller = _MethodCaller(self._template[0], "net.aggregate_posterior")

        def one(params, ym):
            return functional_call(caller, {f"inner.{k}": v for k, v in params.items()}, (ym,))

        return vmap(one)(self._params(), y)

    def log_train(self, terms, step: int) -> None:
        lr = torch.tensor(float(self.optimizers().param_groups[0]["lr"])).expand(len(self.seeds))
        self.member_log({"train/loss": terms.loss.detach(),
                         **{f"train/{k}": v for k, v in terms.values.items()}, "train/lr": lr}, step)

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        if x.dim() != 4 or x.shape[1] != len(self.seeds):  # (K, M, B, D)
            raise ValueError(f"an ensemble of {len(self.seeds)} needs (M, B, D) batches, got "
                             f"{tuple(x.shape)}: set data.member_seeds to the model's seeds")
        return super().training_step(x, batch_idx)

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        g = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)
        y, eps = self.objective.draw(x, self._template[0].net, g, None)  # the same for every member
        m = len(self.seeds)
        terms = self.member_terms(y.expand(m, *y.shape), None, True,
                                  None if eps is None else eps.expand(m, *eps.shape))
        values = {"val/loss": terms.loss, **{f"val/{k}": v for k, v in terms.values.items()}}
        if "val/log_px" not in values and not self._template[0].net.deterministic:
            values["val/log_px"] = self.log_px(x).mean(1)
        if "val/log_px" in values:  # as a single run logs it (VAE: eval step)
            values["val/bits_per_dim"] = -values["val/log_px"] / (x.shape[-1] * math.log(2))
        self._val.append({k: v.detach() for k, v in values.items()})

    def on_validation_epoch_start(self) -> None:
        self._val: list[dict[str, Tensor]] = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val:
            return
        keys = self._val[0]
        mean = {k: torch.stack([v[k] for v in self._val]).mean(0) for k in keys}
        self.member_log(mean)
        # The ensemble's own scalars: the spread of the members.
        self.log_dict({f"{k}_mean": v.mean() for k, v in mean.items()}, sync_dist=True)

    def member_log(self, values: dict[str, Tensor], step: int | None = None) -> None:
        """Write ``(M,)`` values, one per member's TensorBoard run, at x = ``step``
        (default: global step - 1, the x of a single run's validation values); a member's
        NaN in a ``_SPARSE`` tag is not written (it has no such event, as its single run
        would not)."""
        host = {k: v.float().cpu().tolist() for k, v in values.items()}
        rows = [{k: v[m] for k, v in host.items() if not (k in _SPARSE and math.isnan(v[m]))}
                for m in range(len(self.seeds))]
        for metrics, row in zip(self.member_metrics, rows):
            metrics.update(row)
        writers = self.member_writers()
        if writers is None:
            return
        step = self.global_step - 1 if step is None else step
        for w, row in zip(writers, rows):
            write_scalars(w, row, step)

    def member_writers(self) -> list | None:
        """One TensorBoard writer per member, ``<run dir>/seed_<s>/`` (rank zero only)."""
        return _member_writers(self.trainer, self.seeds)

    def on_fit_end(self) -> None:
        close_writers()  # after the callbacks' on_fit_end (Lightning calls the module's last)

    def configure_optimizers(self):
        return optimizer_config(self.parameters(), self._optimizer, self.lr_schedule, self._total_steps)


class _MethodCaller(nn.Module):
    """Calls ``inner.<dotted method>`` as its forward, so ``functional_call`` can run it."""

    def __init__(self, inner: nn.Module, method: str) -> None:
        super().__init__()
        self.inner, self.method = inner, method

    def forward(self, *args):
        target = self.inner
        for name in self.method.split("."):
            target = getattr(target, name)
        return target(*args)


_WRITERS: dict[tuple[str, tuple[int, ...]], list] = {}
# Tags a single run writes only when the event happened (its presence means it did).
_SPARSE = ("decoder/collapse_step",)


def _member_writers(trainer: pl.Trainer, seeds: list[int]):
    """One TensorBoard writer per member under the run directory (rank zero only)."""
    if not trainer.is_global_zero or run_dir(trainer) is None:
        return None
    key = (run_dir(trainer), tuple(seeds))
    if key not in _WRITERS:
        from torch.utils.tensorboard import SummaryWriter

        _WRITERS[key] = [SummaryWriter(str(Path(key[0]) / f"seed_{s}")) for s in seeds]
    return _WRITERS[key]


def close_writers() -> None:
    for writers in _WRITERS.values():
        for w in writers:
            w.close()
    _WRITERS.clear()


class EnsembleSummary(pl.Callback):
    """At the end of ``fit``: ``ensemble_summary.json`` in the run directory, one row per
    member (seed, decoder locs and stds, collapse and divergence steps, its final
    ``quality/*`` values), each member's ``config.yaml`` (the single run it equals), and
    for data with two modes a one-line count of members that recovered both."""

    @torch.no_grad()
    def on_fit_end(self, trainer, pl_module) -> None:
        from lightning_vae.runs import decoder_summary, recovered_both_modes

        if not trainer.is_global_zero or run_dir(trainer) is None:
            return
        monitor = _find(trainer, DecoderVarianceMonitor)
        collapses = monitor.collapses if monitor is not None else [None] * len(pl_module.seeds)
        loc, scale = pl_module.decoder_params()
        centres = getattr(trainer.datamodule.manifold, "centres", None)
        summary = []
        for m, seed in enumerate(pl_module.seeds):
            collapse = collapses[m] if m < len(collapses) else None
            row = {"seed": seed, **decoder_summary(loc[m], scale[m]),
                   "collapse_step": collapse["step"] if collapse else None,
                   "diverged_step": pl_module.frozen.get(seed),
                   **{k: v for k, v in pl_module.member_metrics[m].items() if k.startswith("quality/")}}
            if centres is not None:
                row["both_modes"] = recovered_both_modes(row, centres)
            summary.append(row)
        path = Path(run_dir(trainer)) / "ensemble_summary.json"
        path.write_text(json.dumps(summary, indent=1))
        _write_member_configs(path.parent, pl_module.seeds)
        if centres is not None:
            n_ok = sum(r["both_modes"] for r in summary)
            _info(f"ensemble of {len(summary)}: both modes recovered in {n_ok}/{len(summary)} "
                  f"members; per-member summary in {path}")


def _write_member_configs(run_dir: Path, seeds: list[int]) -> None:
    """``seed_<s>/config.yaml``: the config of the single run each member equals (the
    ensemble's, with ``seed_everything: s`` and no member seeds), so that reports and
    ``fit --config`` treat a member as that run."""
    import yaml

    source = run_dir / "config.yaml"
    if not source.is_file():
        return
    config = yaml.safe_load(source.read_text())
    config.get("model", {}).pop("seeds", None)
    config.get("data", {}).pop("member_seeds", None)
    for s in seeds:
        (run_dir / f"seed_{s}").mkdir(exist_ok=True)
        (run_dir / f"seed_{s}" / "config.yaml").write_text(yaml.safe_dump({**config, "seed_everything": s},
                                                                          sort_keys=False))


class EnsembleCLI(VAECLI):
    """``VAECLI`` over ``EnsembleVAE``: the same configs and callbacks, plus
    ``--model.seeds`` and the ``ensemble_summary`` group."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.seeds", "data.member_seeds")
        parser.add_lightning_class_args(EnsembleSummary, "ensemble_summary")
        parser.set_defaults({"model.seeds": list(range(10))})

    def before_instantiate_classes(self) -> None:
        super().before_instantiate_classes()
        cfg = self.config.get(str(self.subcommand), self.config)
        policy = cfg.get("divergence_guard", {}).get("policy", "stop")
        if policy != "stop":
            raise bad_input(ValueError, f"divergence_guard.policy must be 'stop' for an ensemble (a "
                                        f"diverged member is frozen, the others train on), got {policy!r}")


def main(args: list[str] | None = None) -> None:
    run_cli(EnsembleCLI, EnsembleVAE, args)


if __name__ == "__main__":
    main()
