"""The vectorised ensemble trains exactly the models that single runs with its seeds train."""

from __future__ import annotations

import json
import logging
import math

import pytest
import pytorch_lightning as pl
import torch

from conftest import CONFIGS, TINY, fit, run_dirs
from lightning_vae.ensemble import EnsembleVAE
from lightning_vae.ensemble import main as ensemble_main
from lightning_vae.model import VAE
from lightning_vae.nets import DeterministicDecoder
from lightning_vae.runs import read_scalars

ENSEMBLE_TINY = TINY


@pytest.mark.parametrize("config,k,max_steps", [
    ("seed_spread.yaml", 6, 30),
    pytest.param("seed_elbo.yaml", 6, 100, marks=pytest.mark.slow),  # past the variance collapse (~step 60)
    # The other latents and decoders (~5-12 s each; the default suite keeps the two above).
    pytest.param("seed_spread.yaml", 1, 30, marks=pytest.mark.slow),  # 1.5 epochs: crosses a reshuffle
    pytest.param("circle_spread.yaml", 6, 30, marks=pytest.mark.slow),  # 64 states, learned weights, R^3
    pytest.param("circle_gauss_spread.yaml", 6, 30, marks=pytest.mark.slow),  # each member draws its own eps
    pytest.param("circle_hyper_spread.yaml", 6, 30, marks=pytest.mark.slow),  # wrapped normal, KL by the draws
    pytest.param("delta_gaussian.yaml", 6, 30, marks=pytest.mark.slow),  # a deterministic decoder (delta-VAE)
])
def test_members_equal_single_runs(tmp_path, config, k, max_steps):
    """Members of a K-step ensemble equal single K = 1 runs: weights, collapse steps."""
    seeds = [0, 3]
    steps = [f"--trainer.max_steps={max_steps}", "--trainer.max_epochs=-1"]
    singles = {s: fit(config, tmp_path, *steps, f"--seed_everything={s}", "--data.steps_per_batch=1")
               for s in seeds}
    ensemble_main(["fit", "--config", str(CONFIGS / config), *ENSEMBLE_TINY, *steps,
                   "--sample_quality.n_samples=500", f"--data.steps_per_batch={k}",
                   f"--model.seeds=[{','.join(map(str, seeds))}]",
                   f"--trainer.logger.init_args.save_dir={tmp_path}",
                   "--trainer.logger.init_args.name=ensemble"])
    (run,) = run_dirs(tmp_path, "ensemble")
    ens = EnsembleVAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    rows = json.loads((run / "ensemble_summary.json").read_text())
    assert [r["seed"] for r in rows] == seeds
    assert all((run / f"seed_{s}").is_dir() for s in seeds)
    for m, s in enumerate(seeds):
        single = VAE.load_from_checkpoint(singles[s] / "checkpoints" / "last.ckpt", map_location="cpu")
        a, b = ens.member(m).state_dict(), single.net.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            # Equal up to float rounding of batched vs unbatched matrix products.
            assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-5), (s, key, (a[key] - b[key]).abs().max())
        # ... and the training moved the weights (the test would be empty otherwise).
        torch.manual_seed(s)  # the single run's initial weights: its own settings, its seed
        decoder = DeterministicDecoder() if single.net.deterministic else None
        init = VAE(data_dim=single.net.data_dim, objective=single.objective, latent=single.net.latent,
                   decoder=decoder).net.state_dict()
        assert max((a[key] - init[key]).abs().max() for key in a) > 1e-3
        single_collapse = read_scalars(singles[s]).get("decoder/collapse_step")
        assert rows[m]["collapse_step"] == (single_collapse[-1][1] if single_collapse else None)
        if config == "seed_elbo.yaml":
            assert rows[m]["collapse_step"] is not None
        # One monitor: the member's run holds the single run's scalars, tag for tag, at the
        # same steps, with the same values up to rounding (train, val, decoder, quality, hp).
        mine, theirs = read_scalars(run / f"seed_{s}"), read_scalars(singles[s])
        assert mine.keys() == theirs.keys(), set(mine) ^ set(theirs)
        for tag, series in theirs.items():
            assert [i for i, _ in mine[tag]] == [i for i, _ in series], tag
            got, want = torch.tensor([v for _, v in mine[tag]]), torch.tensor([v for _, v in series])
            # The gradient norm near a collapse (~1/std^2) amplifies the rounding most.
            rtol = 2e-2 if tag == "train/grad_norm" else 2e-3
            assert torch.allclose(got, want, rtol=rtol, atol=1e-4, equal_nan=True), (s, tag, got, want)


def test_bad_ensemble_arguments():
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct ints"):
        EnsembleVAE(seeds=[1, 1])
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        EnsembleVAE(seeds=[])


class PoisonMember(pl.Callback):
    """Test-only: a NaN in one data row of one member's batch (every member's with
    ``member`` null) at step ``at`` (a real non-finite gradient, with finite weights)."""

    def __init__(self, member: int | None = 1, at: int = 10) -> None:
        self.member, self.at = member, at

    @torch.no_grad()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        i = self.at - trainer.global_step
        if 0 <= i < len(batch):  # batch (K, M, B, D)
            batch[i, slice(None) if self.member is None else self.member, 0] = math.nan


def test_a_diverged_member_is_frozen_and_the_others_finish(tmp_path):
    seeds = [0, 3, 5]
    steps = ["--trainer.max_steps=60", "--trainer.max_epochs=-1", "--data.steps_per_batch=1"]
    ensemble_main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *ENSEMBLE_TINY, *steps,
                   "--sample_quality.n_samples=500", f"--model.seeds=[{','.join(map(str, seeds))}]",
                   "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.PoisonMember"}),
                   f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=ens"])
    (run,) = run_dirs(tmp_path, "ens")
    rows = {r["seed"]: r for r in json.loads((run / "ensemble_summary.json").read_text())}
    assert rows[3]["diverged_step"] == 10 and rows[0]["diverged_step"] is None is rows[5]["diverged_step"]
    ens = EnsembleVAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert ens.frozen == {3: 10}
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 60  # the others trained to the end
    assert all(bool(p.isfinite().all()) for p in ens.stacked)  # frozen at finite weights
    assert all(math.isfinite(rows[s]["quality/mmd"]) for s in (0, 5))


@pytest.fixture
def lvae_messages():
    """The messages the package logs (its logger writes to the stderr it was set up with,
    which capsys does not see once an earlier test has set it up)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("lightning_vae")
    log.addHandler(handler)
    yield records
    log.removeHandler(handler)


def test_when_every_member_diverged_the_run_stops_with_the_diagnosis(tmp_path, lvae_messages):
    seeds = [0, 3]
    poison = {"class_path": f"{__name__}.PoisonMember", "init_args": {"member": None, "at": 7}}
    ensemble_main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *ENSEMBLE_TINY,
                   "--trainer.max_steps=60", "--trainer.max_epochs=-1", "--data.steps_per_batch=4",
                   f"--model.seeds=[{','.join(map(str, seeds))}]", "--trainer.callbacks+=" + json.dumps(poison),
                   f"--trainer.logger.init_args.save_dir={tmp_path}", "--trainer.logger.init_args.name=ens"])
    (run,) = run_dirs(tmp_path, "ens")
    err = "\n".join(r.getMessage() for r in lvae_messages)
    assert "every member of the ensemble diverged (non-finite gradient; seed 0 at step 7, seed 3 at step 7)" in err
    ckpt = torch.load(run / "checkpoints" / "last-finite.ckpt", weights_only=False)
    assert ckpt["global_step"] == 8  # the step at 7 was a no-op; the run stopped there
    rows = json.loads((run / "ensemble_summary.json").read_text())
    assert [r["diverged_step"] for r in rows] == [7, 7]
    for s in seeds:
        assert read_scalars(run / f"seed_{s}")["hp/diverged"][-1][1] == 1.0


def test_an_ensemble_refuses_the_recovering_guard_policies(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        ensemble_main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *ENSEMBLE_TINY,
                       "--divergence_guard.policy=rollback", "--model.seeds=[0,1]",
                       f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("lightning_vae: error: ValueError: divergence_guard.policy must be 'stop' for an "
                       "ensemble (a diverged member is frozen, the others train on), got 'rollback' "
                       "(set LVAE_TRACEBACK=1 for the traceback)")
    assert not any(tmp_path.iterdir())  # nothing written


def test_report_reads_ensemble_members_like_single_runs(tmp_path):
    """``python -m lightning_vae report`` on an ensemble: its members are the runs of one
    configuration (their own config.yaml and events), collapse counted per member."""
    from lightning_vae.report import write_report
    from lightning_vae.runs import find_runs

    ensemble_main(["fit", "--config", str(CONFIGS / "seed_elbo.yaml"), *ENSEMBLE_TINY,
                   "--trainer.max_steps=100", "--trainer.max_epochs=-1", "--sample_quality.n_samples=300",
                   "--model.seeds=[0,3]", f"--trainer.logger.init_args.save_dir={tmp_path}",
                   "--trainer.logger.init_args.name=ens"])
    (run,) = run_dirs(tmp_path, "ens")
    assert find_runs(tmp_path) == [run / "seed_0", run / "seed_3"]
    assert "seed_everything: 3" in (run / "seed_3" / "config.yaml").read_text()
    write_report(tmp_path, tmp_path / "report")
    lines = (tmp_path / "report" / "report.md").read_text().splitlines()
    head = [c.strip() for c in next(ln for ln in lines if ln.startswith("| configuration")).strip("|").split("|")]
    row = next(ln for ln in lines if ln.startswith(f"| ens/{run.name} "))
    cells = dict(zip(head, (c.strip() for c in row.strip("|").split("|"))))
    assert cells["seeds"] == "2/2" and cells["collapsed"] == "2" and cells["diverged"] == "0", row
    assert cells["both modes"].endswith("/2"), row  # each member's verdict, from the ensemble's summary
    # Each member's run has its final figure and its HPARAMS session, as a single run's has.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for s in (0, 3):
        ea = EventAccumulator(str(run / f"seed_{s}"), size_guidance={"images": 0})
        ea.Reload()
        # As its single run's: every 4th epoch of 20 steps (TINY's cadence) and the last step.
        assert [e.step for e in ea.Images("samples/scatter")] == [80, 100]
        scalars = read_scalars(run / f"seed_{s}")
        assert scalars["hp/diverged"][-1][1] == 0.0 and scalars["hp/collapse_step"][-1][1] >= 0
        assert "hp/quality_mmd" in scalars and "hp/val_loss" in scalars
        assert ea.PluginTagToContent("hparams")  # the session's start and end summaries
