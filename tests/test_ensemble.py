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
from lightning_vae.report import read_scalars

ENSEMBLE_TINY = [a for a in TINY if a.startswith(("--trainer.", "--data."))]


@pytest.mark.parametrize("config,k,max_steps", [
    ("seed_spread.yaml", 1, 30),  # 1.5 epochs: crosses a reshuffle
    ("seed_spread.yaml", 6, 30),
    ("seed_elbo.yaml", 6, 100),  # past the variance collapse (~step 60)
    ("circle_spread.yaml", 6, 30),  # 64 states with learned mixture weights, in R^3
])
def test_members_equal_single_runs(tmp_path, config, k, max_steps):
    """Members of a K-step ensemble equal single K = 1 runs: weights, collapse steps."""
    seeds = [0, 3]
    steps = [f"--trainer.max_steps={max_steps}", "--trainer.max_epochs=-1"]
    singles = {s: fit(config, tmp_path, *steps, f"--seed_everything={s}", "--data.steps_per_batch=1")
               for s in seeds}
    ensemble_main(["fit", "--config", str(CONFIGS / config), *ENSEMBLE_TINY, *steps,
                   "--ensemble_monitor.n_samples=500", f"--data.steps_per_batch={k}",
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
        torch.manual_seed(s)
        init = VAE(data_dim=single.net.data_dim, objective=SpreadELBO(0.3), latent=single.net.latent).net.state_dict()
        assert max((a[key] - init[key]).abs().max() for key in a) > 1e-3
        single_collapse = read_scalars(singles[s]).get("decoder/collapse_step")
        assert rows[m]["collapse_step"] == (single_collapse[-1][1] if single_collapse else None)
        if config == "seed_elbo.yaml":
            assert rows[m]["collapse_step"] is not None


def test_bad_ensemble_arguments():
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct ints"):
        EnsembleVAE(seeds=[1, 1])
    with pytest.raises(ValueError, match="seeds must be a non-empty list"):
        EnsembleVAE(seeds=[])
