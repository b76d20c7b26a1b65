"""Slow learning-signal tests of the manifold lab's configs (full 60-epoch runs)."""

from __future__ import annotations

import math

import pytest

from conftest import CONFIGS, run_dirs
from lightning_vae.runs import read_scalars

pytestmark = pytest.mark.slow


def _full(config: str, root) -> dict:
    from lightning_vae.cli import main

    main(["fit", "--config", str(CONFIGS / config), "--trainer.enable_progress_bar=false",
          f"--trainer.logger.init_args.save_dir={root}"])
    return read_scalars(run_dirs(root, config.removesuffix(".yaml"))[-1])


def test_denoising_is_biased_where_spread_is_not(tmp_path):
    """Noise on the data only learns x-std ~ sqrt(s^2 + sigma^2) = 0.316; spread learns s = 0.1."""
    target = math.hypot(0.1, 0.3)
    denoise, spread = _full("seed_denoise.yaml", tmp_path), _full("seed_spread.yaml", tmp_path)
    for z in (0, 1):
        assert abs(denoise[f"decoder/std_x_z{z}"][-1][1] - target) < 0.02
        assert abs(spread[f"decoder/std_x_z{z}"][-1][1] - 0.1) < 0.015


@pytest.mark.parametrize("config", ["delta_gaussian.yaml", "delta_laplace.yaml"])
def test_delta_vae_samples_lie_on_the_line(config, tmp_path):
    s = _full(config, tmp_path)
    assert s["quality/dist_mean"][-1][1] < 0.03  # noise 0.3: samples 10x closer than the noise
    assert s["quality/mmd"][-1][1] < 0.01


def test_circle_elbo_collapses_where_spread_samples_stay_on_the_circle(tmp_path):
    """The same 64-state model on a circle in R^3: the ELBO's off-manifold std collapses;
    spread (noise 0.1) does not, and its samples lie well within the noise of the circle."""
    elbo, spread = _full("circle_elbo.yaml", tmp_path), _full("circle_spread.yaml", tmp_path)
    assert "decoder/collapse_step" in elbo and elbo["decoder/min_likelihood_std_ratio"][-1][1] < 1e-2
    assert "decoder/collapse_step" not in spread
    assert spread["decoder/min_likelihood_std_ratio"][-1][1] > 0.1  # >= noise 0.1 / data scale ~0.7
    assert spread["quality/dist_mean"][-1][1] < 0.5 * 0.1
    assert spread["quality/dist_p95"][-1][1] < 0.1
