"""Linear ICA by EM through the one training loop: the data source, the model and its CLI.

    python -m lightning_vae fit --config ica_spread      # spread EM (configs/ica_spread.yaml)
    python -m lightning_vae fit --config ica_standard    # standard EM, the same problems

The maths is ``lightning_vae/ica.py`` (pure functions, no Lightning); this module wires it
into Lightning so that logging, checkpoints, exact resume and sweeps work as for the VAEs
(docs/ica.md):

- ``ICAData`` (a ``LightningDataModule``): ``repeats`` independent problems, each its own
  A (X x Z, entries uniform on +-1) and N points x = A z + gamma n (unit-variance Laplace
  sources), every one from its own seeded generator. Batch EM reads the whole data set at
  every iteration, so each batch is all of it, ``(R, N, X)``; an epoch is
  ``iterations_per_epoch`` iterations (checkpoints are written at epoch ends).
- ``LinearICA`` (a ``LightningModule`` on ``KStepTraining``, the loop every model here
  trains with): one EM iteration per optimizer step. The E-step runs in ``step_terms``
  (the importance sampler of ``ica.e_step``); its sufficient statistics are what the
  optimizer, ``MStep``, reads in place of gradients, and its ``step()`` is the exact
  M-step, A <- (sum E[y z^T]) (sum E[z z^T])^{-1}, written into the parameter in place.
  Nothing is differentiated (``backward`` is a no-op): ``zero_grad`` clears the
  statistics, ``accumulate_grad_batches`` sums them over batches, ``global_step`` counts
  EM iterations, ``max_steps`` is the number of iterations.
- The CLI: ``python -m lightning_vae fit`` runs a config whose ``model.class_path`` is a
  ``LinearICA`` with ``ICACLI`` (``lightning_vae.cli.main`` dispatches on it), which has
  the VAE CLI's error handling, logger, checkpoint and run-outcome groups, and none of the
  VAE's monitors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_vae import ica
from lightning_vae.objectives import Terms
from lightning_vae.scalars import flush_event_files, log_scalars
from lightning_vae.steps import KStepTraining, SeededNoise

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Independent streams of one seed: the data, the initial A, the E-step's noise.
DATA_STREAM, INIT_STREAM, HELD_OUT_STREAM = 0, 1, 2
EVAL_NOISE_SEED = 0  # the held-out scores' importance samples and spread noise: fixed, comparable


def stream_seed(seed: int, stream: int, repeat: int) -> int:
    """The seed of repeat ``repeat``'s generator of ``stream`` under the run's ``seed``
    (distinct for distinct triples with repeat < 7919 and stream < 1_000_003 // 7919)."""
    return (seed * 1_000_003 + stream * 7919 + repeat) % (2**63 - 1)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class _Whole(Dataset):
    """``length`` items, each the whole data set as a group of ``k`` batches ``(k, R, N, X)``
    (a view: nothing is copied); the last item of an epoch may be a shorter group."""

    def __init__(self, x: Tensor, iterations: int, k: int) -> None:
        self.x, self.iterations, self.k = x, iterations, k

    def __len__(self) -> int:
        return -(-self.iterations // self.k)

    def __getitem__(self, i: int) -> Tensor:
        k = min(self.k, self.iterations - i * self.k)
        return self.x.expand(k, *self.x.shape)


class ICAData(pl.LightningDataModule):
    """``repeats`` linear ICA problems x = A z + gamma n, exact and seeded.

    Args:
        x_dim: X, the observed dimension (linked to the model).
        z_dim: Z, the number of independent Laplace sources (unit variance; X >= Z).
        n: N, points per problem.
        gamma: the observation noise's std (0: noiseless, x = A z exactly).
        repeats: R independent problems (each its own A and data), solved side by side by
            one vectorised EM: the paper's repeats, in one run.
        seed: the data's seed; None (default) takes the run's ``seed_everything``. Repeat r
            draws A, then z, then n, from its own generator (``stream_seed(seed, 0, r)``):
            its A does not depend on N, so a sweep over N keeps the same problems.
        iterations_per_epoch: EM iterations per epoch (a checkpoint is written at each
            epoch's end).
        steps_per_batch: EM iterations per Lightning step (``KStepTraining``; 1: every
            iteration its own step, as their cost dwarfs Lightning's).
        dtype: "float32" (default) or "float64", the data's and the E-step's precision
            (the M-step's statistics are summed in float64 either way).
        n_val, n_test: held-out points per problem (the same A; their own generator,
            ``stream_seed(seed, 2, r)``, validation's first), scored by ``validate`` and
            ``test`` and at every epoch's end (0: none).
    """

    def __init__(self, x_dim: int = 20, z_dim: int = 10, n: int = 20_000, gamma: float = 0.0,
                 repeats: int = 10, seed: int | None = None, iterations_per_epoch: int = 50,
                 steps_per_batch: int = 1, dtype: Literal["float32", "float64"] = "float32",
                 n_val: int = 1000, n_test: int = 1000) -> None:
        super().__init__()
        for name in ("x_dim", "z_dim", "n", "repeats", "iterations_per_epoch", "steps_per_batch"):
            _positive_int(name, locals()[name])
        for name in ("n_val", "n_test"):
            if isinstance(locals()[name], bool) or not isinstance(locals()[name], int) or locals()[name] < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {locals()[name]!r}")
        if z_dim > x_dim:
            raise ValueError(f"z_dim must be <= x_dim ({x_dim}): the model needs A^T A invertible, got {z_dim}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.save_hyperparameters()
        self.x_dim, self.z_dim, self.n, self.gamma, self.repeats = x_dim, z_dim, n, float(gamma), repeats
        self.seed = int(torch.initial_seed()) if seed is None else int(seed)
        self.iterations_per_epoch, self.steps_per_batch, self.dtype = iterations_per_epoch, steps_per_batch, dtype
        self.n_val, self.n_test = n_val, n_test
        self.x: Tensor | None = None  # (R, N, X)
        self.val_x: Tensor | None = None  # (R, n_val, X)
        self.test_x: Tensor | None = None  # (R, n_test, X)
        self.a_true: Tensor | None = None  # (R, X, Z), float64
        self.z: Tensor | None = None  # (R, N, Z)

    def prepare_problems(self) -> None:
        """Draw the R problems (once; the same on every call and in every process)."""
        if self.x is not None:
            return
        problems = [ica.ica_data(self.n, self.x_dim, self.z_dim, self.gamma,
                                 torch.Generator().manual_seed(stream_seed(self.seed, DATA_STREAM, r)))
                    for r in range(self.repeats)]
        self.a_true = torch.stack([p.a for p in problems])
        self.z = torch.stack([p.z for p in problems]).to(DTYPES[self.dtype])
        self.x = torch.stack([p.x for p in problems]).to(DTYPES[self.dtype])
        held_out = []
        for r, p in enumerate(problems):
            g = torch.Generator().manual_seed(stream_seed(self.seed, HELD_OUT_STREAM, r))
            held_out.append([ica.ica_data(k, self.x_dim, self.z_dim, self.gamma, g, a=p.a).x if k else None
                             for k in (self.n_val, self.n_test)])
        if self.n_val:
            self.val_x = torch.stack([h[0] for h in held_out]).to(DTYPES[self.dtype])
        if self.n_test:
            self.test_x = torch.stack([h[1] for h in held_out]).to(DTYPES[self.dtype])

    def setup(self, stage: str) -> None:
        self.prepare_problems()

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimizer steps (EM iterations) per epoch."""
        return self.iterations_per_epoch

    def train_dataloader(self) -> DataLoader:
        self.prepare_problems()
        return DataLoader(_Whole(self.x, self.iterations_per_epoch, self.steps_per_batch), batch_size=None)

    def _held_out(self, x: Tensor | None, stage: str) -> DataLoader:
        self.prepare_problems()
        if x is None:
            raise ValueError(f"data.init_args.n_{stage} is 0: there are no held-out points to {stage} on; "
                             f"expected n_{stage} >= 1")
        return DataLoader([x], batch_size=None)  # one batch: every held-out point of every problem

    def val_dataloader(self) -> DataLoader:
        return self._held_out(self.val_x, "val") if self.n_val else []

    def test_dataloader(self) -> DataLoader:
        return self._held_out(self.test_x, "test")


class MStep(torch.optim.Optimizer):
    """The exact M-step as a torch optimizer over one parameter, A ``(R, X, Z)``.

    The E-step hands it its sufficient statistics (``accumulate``), as backward hands an
    optimizer gradients: ``zero_grad`` clears them, several batches add up, and ``step()``
    writes A = (sum E[y z^T]) (sum E[z z^T])^{-1} into the parameter in place."""

    def __init__(self, params) -> None:
        super().__init__(params, {})
        params = [p for group in self.param_groups for p in group["params"]]
        if len(params) != 1:
            raise ValueError(f"MStep updates one parameter (A), got {len(params)}")
        self.a = params[0]
        # Mutated in place, never rebound: Lightning's LightningOptimizer wraps this object
        # as an instance of a subclass with its own __dict__ and reaches the optimizer's
        # attributes through __getattr__, so zero_grad called on the wrapper must change
        # this dict, not set attributes of the wrapper.
        self._sums: dict[str, Tensor] = {}

    def accumulate(self, yz: Tensor, zz: Tensor) -> None:
        for key, value in (("yz", yz), ("zz", zz)):
            self._sums[key] = value if key not in self._sums else self._sums[key] + value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._sums.clear()

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if not self._sums:
            return loss  # nothing accumulated (a skipped step): A stays
        new = ica.m_step(ica.EStep(self._sums["yz"], self._sums["zz"], None, None))
        self.a.copy_(new.to(self.a.dtype))
        return loss


class LinearICA(SeededNoise, KStepTraining, pl.LightningModule):
    """Linear ICA, x = A z + gamma n, learned by EM: one EM iteration per optimizer step.

    Args:
        x_dim, z_dim, gamma, repeats: the data's (linked from ``data``): EM knows the
            observation noise gamma, as in the paper.
        method: "standard" (EM on x, the likelihood's variance gamma^2: the exact point-mass
            E-step at gamma = 0, the importance sampler otherwise) or "spread" (EM on
            y = x + sigma e, variance gamma^2 + sigma^2, ``s_y`` noisy copies of every point,
            fresh each iteration).
        s_z: importance samples per point (the paper: 1000).
        s_y: noisy copies of each point per iteration (spread EM; the paper: 1).
        spread_std: sigma; None (default): the paper's rule from the current A, each
            iteration, max(``spread_floor``, ``spread_scale`` sqrt(mean(A A^T))).
        spread_scale, spread_floor: that rule's 2.5 and 0.001.
        init_seed: the seed of the initial A (entries uniform on +-1, as the truth's, but
            drawn independently of it); None: the run's ``seed_everything``. Standard and
            spread EM with the same seed start from the same A.
        chunk: points per block of the E-step (memory: R x chunk x s_z x Z numbers).
        steps_per_batch: linked from ``data``.
    """

    members = None

    def __init__(self, x_dim: int = 20, z_dim: int = 10, gamma: float = 0.0, repeats: int = 10,
                 method: Literal["standard", "spread"] = "spread", s_z: int = 1000, s_y: int = 1,
                 spread_std: float | None = None, spread_scale: float = 2.5, spread_floor: float = 0.001,
                 init_seed: int | None = None, chunk: int = 256, steps_per_batch: int = 1) -> None:
        super().__init__()
        if method not in ("standard", "spread"):
            raise ValueError(f"method must be 'standard' or 'spread', got {method!r}")
        for name in ("x_dim", "z_dim", "repeats", "s_z", "s_y", "chunk"):
            _positive_int(name, locals()[name])
        if spread_std is not None and not (spread_std > 0 and math.isfinite(spread_std)):
            raise ValueError(f"spread_std must be a number > 0 or null (the paper's rule), got {spread_std}")
        for name in ("spread_scale", "spread_floor"):
            if not (locals()[name] > 0 and math.isfinite(locals()[name])):
                raise ValueError(f"{name} must be a number > 0, got {locals()[name]}")
        self.save_hyperparameters()
        self._configure_steps("constant", steps_per_batch)
        self.method, self.gamma, self.s_z, self.s_y, self.chunk = method, float(gamma), s_z, s_y, chunk
        seed = int(torch.initial_seed()) if init_seed is None else int(init_seed)
        start = torch.stack([2 * torch.rand(x_dim, z_dim, dtype=torch.float64,
                                            generator=torch.Generator().manual_seed(stream_seed(seed, INIT_STREAM, r)))
                             - 1 for r in range(repeats)])
        self.a = torch.nn.Parameter(start, requires_grad=False)  # (R, X, Z), updated in place by MStep
        self.noise_seed = int(torch.initial_seed())  # the E-step's noise, saved in checkpoints
        self._noise, self._noise_state = None, None  # SeededNoise's
        self._m_step: MStep | None = None
        self._stats: ica.EStep | None = None  # the E-step's, until backward hands them on
        self._a_before: Tensor | None = None
        self.a_true: Tensor | None = None  # from the datamodule, for the error
        self.initial_error: list[float] | None = None
        self._loaded_step = 0  # the iterations of the checkpoint loaded (validate / test: the x of their scores)

    # --- the maths of one iteration ------------------------------------------------------

    def spread_level(self) -> Tensor | None:
        """sigma per repeat ``(R,)`` for this iteration (None: standard EM)."""
        if self.method == "standard":
            return None
        if self.hparams.spread_std is not None:
            return torch.full((self.a.shape[0],), float(self.hparams.spread_std), dtype=torch.float64)
        return ica.spread_noise(self.a, self.hparams.spread_scale, self.hparams.spread_floor)

    def errors(self) -> list[float]:
        """The paper's error of each repeat's A (``ica.relative_error``)."""
        return [ica.relative_error(self.a[r].detach().cpu(), self.a_true[r].cpu()) for r in range(self.a.shape[0])]

    def spread_data(self, x: Tensor, generator: torch.Generator, copies: int) -> tuple[Tensor, object, Tensor | None]:
        """(y, the likelihood's variance, sigma) for EM on ``x`` ``(R, N, X)``: standard EM,
        (x, gamma^2, None); spread EM, ``copies`` noisy copies y = x + sigma e of every
        point ``(R, copies N, X)``, drawn from ``generator``, variance gamma^2 + sigma^2 and
        sigma per repeat ``(R,)``."""
        sigma = self.spread_level()
        return (*ica.spread_copies(x, self.gamma, sigma, copies, generator), sigma)

    def step_terms(self, x: Tensor, step: int, values: bool = True) -> Terms:
        """The E-step of iteration ``step`` on ``x`` ``(R, N, X)``: its statistics go to the
        M-step; the loss is minus the (spread) log-likelihood per repeat, ``(R,)``."""
        generator = self.noise_generator(x.device)
        a = self.a.detach()  # float64: the E-step does its Z x Z algebra in float64
        y, variance, sigma = self.spread_data(x, generator, self.s_y)
        with torch.no_grad():
            stats = ica.e_step(y, a, variance, self.s_z, generator, chunk=self.chunk)
        self._stats = stats  # handed to the M-step by backward
        log_lik, ess = stats.log_lik, stats.ess.mean() / self.s_z
        if sigma is None and self.gamma == 0:  # the exact point mass: no sampling
            log_lik, ess = noiseless_log_lik(x.double(), a), torch.ones(())
        if values:
            self._a_before = self.a.detach().clone()
        out = {"log_lik": log_lik.mean(), "ess": ess}
        if sigma is not None:
            out["spread_std"] = sigma.mean()
        return Terms(loss=-log_lik, values=out)

    @torch.no_grad()
    def held_out_log_lik(self, x: Tensor) -> Tensor:
        """mean_n log p(x_n) per repeat ``(R,)`` of held-out points under the current A: the
        noiseless density on A's column space for standard EM at gamma = 0; else the
        importance-sampling estimate (``s_z`` draws) of log p(x) (standard) or of the spread
        log p~(y), y = x + sigma e (spread), its draws from a fixed seed."""
        a = self.a.detach()
        if self.method == "standard" and self.gamma == 0:
            return noiseless_log_lik(x.double(), a)
        g = torch.Generator(device=x.device).manual_seed(EVAL_NOISE_SEED)
        y, variance, _ = self.spread_data(x, g, 1)
        return ica.e_step(y, a, variance, self.s_z, g, chunk=self.chunk).log_lik

    def _eval_step(self, x: Tensor, stage: str) -> None:
        log_lik = self.held_out_log_lik(x)
        logged = {f"{stage}/log_lik": log_lik.mean(), f"{stage}/loss": -log_lik.mean()}
        if self.a_true is not None:
            logged[f"{stage}/error"] = torch.tensor(sum(self.errors()) / self.a.shape[0])
        # At the x of the last iteration of the A scored, as for the VAE: in fit, the current
        # one; in validate / test, the checkpoint's (0 without one).
        fitting = self.trainer.state.fn == "fit"
        logged["step"] = float(max(0, (self.global_step if fitting else self._loaded_step) - 1))
        self.log_dict({k: torch.as_tensor(v, dtype=torch.float64).float() for k, v in logged.items()},
                      on_step=False, on_epoch=True)

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, "val")

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._eval_step(x, "test")

    def _truth(self) -> None:
        """A_true from the datamodule (for the error), checked against the model's shape."""
        data = self.trainer.datamodule
        if isinstance(data, ICAData) and self.a_true is None:
            data.prepare_problems()
            if data.a_true.shape != self.a.shape:
                raise ValueError(f"the model's A is {tuple(self.a.shape)} but the data's is "
                                 f"{tuple(data.a_true.shape)}; expected equal repeats, x_dim and z_dim")
            self.a_true = data.a_true.to(self.a.device)

    def on_validation_start(self) -> None:
        self._truth()

    def on_test_start(self) -> None:
        self._truth()

    # --- Lightning -----------------------------------------------------------------------

    def backward(self, loss: Tensor, *args, **kwargs) -> None:
        """Nothing to differentiate: what backward hands an optimizer is, for EM, the
        E-step's sufficient statistics (the loop calls it after ``zero_grad``)."""
        if self._stats is not None:
            self._m_step.accumulate(self._stats.yz, self._stats.zz)
            self._stats = None

    def configure_optimizers(self):
        self._m_step = MStep([self.a])
        return self._m_step

    def on_fit_start(self) -> None:
        if self.trainer.world_size > 1:
            raise ValueError(f"LinearICA runs in one process (its repeats are vectorised instead), "
                             f"got trainer.devices x num_nodes = {self.trainer.world_size}; expected 1")
        self._truth()
        if self.a_true is not None and self.initial_error is None:
            self.initial_error = self.errors()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.save_noise_state(checkpoint)
        checkpoint["initial_error"] = self.initial_error
        flush_event_files(self.trainer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.load_noise_state(checkpoint)
        self.initial_error = checkpoint.get("initial_error")
        self._loaded_step = int(checkpoint.get("global_step") or 0)

    def log_train(self, terms: Terms, step: int) -> None:
        """The iteration's scalars at x = ``step``: ``train/loss`` (minus the mean (spread)
        log-likelihood per point, the mean over repeats), ``train/log_lik``, and under
        ``ica/``: ``error`` (the mean over repeats of the paper's error of A after this
        iteration), ``error_se`` (its standard error), ``error_median``, ``change`` (the
        relative change of A in this iteration, ||A_new - A|| / ||A||: 0 is the freeze),
        ``ess`` (the importance weights' effective sample size / s_z; 1 for the exact
        point-mass E-step) and ``spread_std``."""
        values = {"train/loss": float(terms.loss.mean()), "train/log_lik": float(terms.values["log_lik"]),
                  "ica/ess": float(terms.values["ess"])}
        if "spread_std" in terms.values:
            values["ica/spread_std"] = float(terms.values["spread_std"])
        if self._a_before is not None:
            change = (self.a - self._a_before).flatten(1).norm(dim=1) / self._a_before.flatten(1).norm(dim=1)
            values["ica/change"] = float(change.mean())
        if self.a_true is not None:
            errors = torch.tensor(self.errors(), dtype=torch.float64)
            values["ica/error"] = float(errors.mean())
            values["ica/error_median"] = float(errors.median())
            values["ica/error_se"] = float(errors.std() / math.sqrt(len(errors))) if len(errors) > 1 else 0.0
        log_scalars(self.trainer, values, step)

    def on_train_end(self) -> None:
        """``ica_result.json`` in the run directory: each repeat's final error and the settings."""
        from lightning_vae.callbacks import run_dir

        folder = run_dir(self.trainer)
        if folder is None or not self.trainer.is_global_zero or self.a_true is None:
            return
        data = self.trainer.datamodule
        errors = self.errors()
        record = {"method": self.method, "gamma": self.gamma, "iterations": int(self.global_step),
                  "x_dim": self.a.shape[1], "z_dim": self.a.shape[2], "repeats": self.a.shape[0],
                  "n": getattr(data, "n", None), "s_z": self.s_z, "s_y": self.s_y,
                  "spread_std": self.hparams.spread_std, "errors": errors,
                  "error_mean": sum(errors) / len(errors), "initial_errors": self.initial_error}
        path = Path(folder) / "ica_result.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)


def noiseless_log_lik(x: Tensor, a: Tensor) -> Tensor:
    """mean_n log p(x_n) per repeat ``(R,)`` of the noiseless model x = A z: the density on
    A's column space, log p_z(A^+ x) - 1/2 log det(A^T A) (Lebesgue measure on that Z-dim
    subspace; the full density in R^X is degenerate for X > Z)."""
    gram = a.transpose(-1, -2) @ a
    z = x @ torch.linalg.solve(gram, a.transpose(-1, -2)).transpose(-1, -2)
    return ica.laplace_log_prob(z).mean(-1) - 0.5 * torch.logdet(gram)


# --- the CLI --------------------------------------------------------------------------------

def ica_cli_class():
    """``ICACLI``: the VAE CLI's machinery (one-line errors, the run directory checks, the
    logger, ``checkpoint`` and ``run_outcome`` groups, the K-step loop's trainer settings,
    the finished-run check on resume) with ``LinearICA`` and ``ICAData`` chosen by
    ``class_path`` and none of the VAE's monitors or pre-flight checks."""
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.cli import LightningCLI

    from lightning_vae import cli as cli_module
    from lightning_vae import preflight
    from lightning_vae.callbacks import RunOutcome
    from lightning_vae.errors import bad_input

    class ICACLI(cli_module.VAECLI):
        def add_arguments_to_parser(self, parser) -> None:
            for key in ("x_dim", "z_dim", "gamma", "repeats", "steps_per_batch"):
                parser.link_arguments(f"data.init_args.{key}", f"model.init_args.{key}")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.add_lightning_class_args(RunOutcome, "run_outcome")
            parser.set_defaults({"checkpoint.save_last": "link", "checkpoint.save_top_k": 1,
                                 **cli_module.LOGGER_DEFAULT})

        def parse_arguments(self, parser, args) -> None:
            LightningCLI.parse_arguments(self, parser, args)
            sub = self.config.get("subcommand")
            found = preflight.read_checkpoint(self.config[sub].get("ckpt_path") if sub else None, cli_module.PROG)
            if found is not None:
                self.ckpt_shapes, _, self.ckpt_steps = found

        def before_instantiate_classes(self) -> None:
            LightningCLI.before_instantiate_classes(self)
            trainer = cli_module._section(self.config, self.subcommand).get("trainer") or {}
            devices, nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
            many = (len(devices) if isinstance(devices, (list, tuple)) else
                    int(devices) if isinstance(devices, int) or str(devices).lstrip("-").isdigit() else 1)
            if many > 1 or many == -1 or nodes > 1:
                raise bad_input(ValueError, f"trainer.devices: LinearICA runs in one process (its repeats are "
                                            f"vectorised instead), got devices={devices!r}, num_nodes={nodes}; "
                                            f"expected devices=1")

    ICACLI.__name__ = ICACLI.__qualname__ = "ICACLI"
    ICACLI.__module__ = __name__
    return ICACLI


def main(args: list[str] | None = None):
    """``python -m lightning_vae fit --config ica_spread`` lands here (``cli.main``)."""
    from lightning_vae.cli import run_cli

    return run_cli(ica_cli_class(), LinearICA, args, datamodule_class=ICAData, subclass_mode=True)
