"""The objective contract (``lightning_vae.objectives``): one base class, one call that owns
a step's randomness (including a DDP rank's share), the latent family supplying the
expectation, and a user's own objective (the module docstring's example) trained by
``class_path`` from outside the package."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
import torch

from conftest import fit
from lightning_vae import objectives
from lightning_vae.densities import elbo_terms, gaussian_log_lik, log_marginal, normal_log_prob
from lightning_vae.kernels import LaplaceKernel
from lightning_vae.latents import CategoricalLatent, GaussianLatent
from lightning_vae.model import VAE
from lightning_vae.nets import DeterministicDecoder, DiscreteVAE, GaussianVAE, importance_weights
from lightning_vae.objectives import ELBO, DenoisingELBO, Objective, SpreadELBO, Terms
from lightning_vae.runs import read_scalars

D = 3


def _discrete(seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(D, CategoricalLatent(4), hidden=16, depth=1)


def _gaussian(seed: int = 0, decoder=None) -> GaussianVAE:
    torch.manual_seed(seed)
    return GaussianVAE(D, GaussianLatent(dim=2, n_samples=3, iwae_samples=5), hidden=16, depth=1,
                       decoder=decoder)


def _x(n: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))  # (B, D)


def test_objective_is_an_abstract_base_with_one_method_to_implement():
    with pytest.raises(TypeError, match="abstract"):
        Objective()

    class Minimal(Objective):
        def terms(self, y, vae, step=None, values=True, eps=None):
            e = vae.expectation(y, normal_log_prob, eps)
            return Terms(-e.rec.mean(), {}, e.scale)

    vae, x = _discrete(), _x()
    t = Minimal()(x, vae)
    torch.testing.assert_close(t.loss, -vae.expectation(x, normal_log_prob).rec.mean())
    assert not Minimal.trains_deterministic and SpreadELBO.trains_deterministic
    assert not ELBO.trains_deterministic and not DenoisingELBO.trains_deterministic


def test_a_deterministic_decoder_needs_an_objective_that_can_train_it():
    with pytest.raises(ValueError, match="deterministic decoder has no likelihood"):
        VAE(objective=ELBO(), decoder=DeterministicDecoder())
    with pytest.raises(ValueError, match="deterministic decoder has no likelihood"):
        VAE(objective=DenoisingELBO(0.3), decoder=DeterministicDecoder())
    VAE(objective=SpreadELBO(0.3), decoder=DeterministicDecoder())  # the capability flag


def test_discrete_expectation_is_the_exact_enumeration():
    vae, y = _discrete(), _x()
    e = vae.expectation(y, normal_log_prob)
    loc, scale = vae.decoder_params(y)
    ll = gaussian_log_lik(y, loc, scale)
    t = elbo_terms(vae.log_q(y), vae.log_prior(y), ll)
    torch.testing.assert_close(e.rec, t["rec"], rtol=0, atol=0)
    torch.testing.assert_close(e.kl, t["kl"], rtol=0, atol=0)
    torch.testing.assert_close(e.log_px, log_marginal(vae.log_prior(y), ll), rtol=0, atol=0)
    torch.testing.assert_close(e.log_px, vae.log_px(y), rtol=0, atol=0)
    assert e.scale.shape == (4, D)


def test_gaussian_expectation_uses_the_draws_and_bounds_log_px():
    vae, y = _gaussian(), _x()
    eps = vae.draws(len(y), training=False, generator=torch.Generator().manual_seed(0), like=y)
    assert eps.shape == (5, len(y), 2)  # iwae_samples in evaluation
    e = vae.expectation(y, normal_log_prob, eps)
    torch.testing.assert_close(e.log_px, vae.log_px(y, generator=torch.Generator().manual_seed(0)))
    # IWAE >= the mean of the single-draw estimates log w_s with the same draws (Jensen).
    ll, log_ratio, kl, _ = importance_weights(vae, y, eps, normal_log_prob)
    torch.testing.assert_close(e.rec, ll.mean(0), rtol=0, atol=0)
    torch.testing.assert_close(e.kl, kl, rtol=0, atol=0)
    assert torch.all(e.log_px >= (ll + log_ratio).mean(0) - 1e-6)
    assert torch.any(e.log_px > (ll + log_ratio).mean(0) + 1e-3)  # strictly, somewhere
    assert e.scale.shape == (5 * len(y), D)
    assert vae.draws(4, training=True, generator=None, like=y).shape == (3, 4, 2)
    assert _discrete().draws(4, training=True, generator=None, like=y) is None


@pytest.mark.parametrize("kind", ["spread-gaussian-latent", "spread-laplace", "enumerated"])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_their_rows_of_the_one_process_noise(kind, world):
    """``draw`` with share (world, rank) on rank r's rows, from identically seeded
    generators, gives exactly rows r of the one-process draw of the global batch."""
    vae = _gaussian() if kind == "spread-gaussian-latent" else _discrete()
    objective = SpreadELBO(0.3, kernel=LaplaceKernel() if kind == "spread-laplace" else None)
    x = _x(6 * world)
    y_all, eps_all = objective.draw(x, vae, torch.Generator().manual_seed(7), step=3)
    for rank in range(world):
        rows = slice(rank * 6, (rank + 1) * 6)
        y, eps = objective.draw(x[rows], vae, torch.Generator().manual_seed(7), step=3, share=(world, rank))
        torch.testing.assert_close(y, y_all[rows], rtol=0, atol=0)
        if eps_all is None:
            assert eps is None
        else:
            torch.testing.assert_close(eps, eps_all[:, rows], rtol=0, atol=0)
    assert not torch.equal(y_all, x)  # the noise is there: the test could fail


def test_call_is_draw_then_terms():
    vae, x = _gaussian(), _x()
    objective = SpreadELBO(0.2, kl_warmup_steps=10)
    t = objective(x, vae, torch.Generator().manual_seed(3), step=4)
    y, eps = objective.draw(x, vae, torch.Generator().manual_seed(3), step=4)
    u = objective.terms(y, vae, 4, True, eps)
    torch.testing.assert_close(t.loss, u.loss, rtol=0, atol=0)
    assert t.values.keys() == u.values.keys() >= {"spread_elbo", "rec", "kl", "spread_log_px", "kl_weight",
                                                  "noise_std"}


# --- a user's own objective: the module docstring's example ---------------------------------


def _docstring_example() -> str:
    """The example class in ``objectives``' module docstring, as source code."""
    block = re.search(r"For example, a beta-VAE::\n\n(.*?)\n\n(?=\S)", objectives.__doc__, re.S)
    assert block, "the objectives module docstring lost its example"
    return textwrap.dedent(block.group(1))


@pytest.fixture()
def user_objective(tmp_path, monkeypatch):
    """The docstring's example written to a module outside the package, importable."""
    (tmp_path / "my_objectives.py").write_text(_docstring_example() + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_objectives", raising=False)
    return tmp_path


def test_docstring_example_is_ten_lines_of_code():
    code = [ln for ln in _docstring_example().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(code) <= 14, code  # two imports, the class and its ten lines


def test_users_objective_trains_by_class_path(user_objective, tmp_path):
    run = fit("seed_spread.yaml", tmp_path, "--model.objective=my_objectives.BetaELBO",
              "--model.objective.init_args.beta=2.0", "--trainer.max_epochs=2")
    scalars = read_scalars(run)
    assert {"train/rec", "train/kl", "train/loss", "val/loss", "decoder/min_std_ratio"} <= set(scalars)
    rec, kl, loss = (dict(scalars[k]) for k in ("train/rec", "train/kl", "train/loss"))
    step = max(rec)
    assert abs(loss[step] - (-(rec[step] - 2.0 * kl[step]))) < 1e-4  # beta = 2 reached the loss


def test_users_objective_trains_in_the_ensemble(user_objective, tmp_path):
    """The same class, unchanged, in the vectorised ensemble: members equal single runs."""
    from conftest import CONFIGS, TINY, run_dirs
    from lightning_vae.ensemble import EnsembleVAE
    from lightning_vae.ensemble import main as ensemble_main

    objective = ["--model.objective=my_objectives.BetaELBO", "--model.objective.init_args.beta=2.0",
                 "--trainer.max_steps=30", "--trainer.max_epochs=-1"]
    single = fit("seed_spread.yaml", tmp_path, *objective, "--seed_everything=3")
    ensemble_main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"),
                   *[a for a in TINY if a.startswith(("--trainer.", "--data."))], *objective,
                   "--model.seeds=[3,4]", "--sample_quality.n_samples=500",
                   f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=ens"])
    (run,) = run_dirs(tmp_path, "ens")
    ens = EnsembleVAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    a, b = ens.member(0).state_dict(), VAE.load_from_checkpoint(single / "checkpoints" / "last.ckpt").net.state_dict()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), key
    assert type(ens.objective).__name__ == "BetaELBO" and ens.objective.beta == 2.0
