"""The vectorised ensemble trains exactly the models that single runs with its seeds train."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import CONFIGS, TINY, fit, run_dirs
from lightning_vae.ensemble import EnsembleVAE
from lightning_vae.ensemble import main as ensemble_main
from lightning_vae.model import VAE
from lightning_vae.objectives import SpreadELBO

STEPS = ["--trainer.max_steps=30", "--trainer.max_epochs=-1"]  # 1.5 epochs: crosses a reshuffle
ENSEMBLE_TINY = [a for a in TINY if a.startswith(("--trainer.", "--data."))]


def test_members_equal_single_runs(tmp_path):
    seeds = [0, 3]
    singles = {s: fit("seed_spread.yaml", tmp_path, *STEPS, f"--seed_everything={s}") for s in seeds}
    ensemble_main(["fit", "--config", str(CONFIGS / "seed_spread.yaml"), *ENSEMBLE_TINY, *STEPS,
                   "--ensemble_monitor.n_samples=500",
                   f"--model.seeds=[{','.join(map(str, seeds))}]",
                   f"--trainer.logger.init_args.save_dir={tmp_path}",
                   "--trainer.logger.init_args.name=ensemble"])
    (run,) = run_dirs(tmp_path, "ensemble")
    ens = EnsembleVAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu")
    for m, s in enumerate(seeds):
        single = VAE.load_from_checkpoint(singles[s] / "checkpoints" / "last.ckpt", map_location="cpu")
        a, b = ens.member(m).state_dict(), single.net.state_dict()
        assert a.keys() == b.keys()
        for k in a:
            # Equal up to float rounding of batched vs unbatched matrix products.
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), (s, k, (a[k] - b[k]).abs().max())
        # ... and the training moved the weights (the test would be empty otherwise).
        torch.manual_seed(s)
        init = VAE(objective=SpreadELBO(0.3)).net.state_dict()
        assert max((a[k] - init[k]).abs().max() for k in a) > 1e-3
    rows = json.loads((run / "ensemble_summary.json").read_text())
    assert [r["seed"] for r in rows] == seeds
    assert all((run / f"seed_{s}").is_dir() for s in seeds)


def test_bad_ensemble_arguments():
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct ints"):
        EnsembleVAE(seeds=[1, 1])
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        EnsembleVAE(seeds=[])
