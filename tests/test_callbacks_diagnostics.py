"""Model diagnostics: posterior entropy, active units, bits per dimension."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from lightning_vae.callbacks import encoder_diagnostics


def test_posterior_entropy_is_the_mean_entropy_and_log2_at_collapse():
    probs = torch.tensor([0.5, 0.9, 0.01])
    manual = -(probs * probs.log() + (1 - probs) * (1 - probs).log()).mean()
    got = encoder_diagnostics(Bernoulli(probs=probs))
    torch.testing.assert_close(got["encoder/posterior_entropy"], manual)
    assert "encoder/active_units" not in got
    collapsed = encoder_diagnostics(Bernoulli(probs=torch.full((50,), 0.5)))
    assert float(collapsed["encoder/posterior_entropy"]) == pytest.approx(math.log(2))
    uniform = encoder_diagnostics(Categorical(logits=torch.zeros(7, 16)))
    assert float(uniform["encoder/posterior_entropy"]) == pytest.approx(math.log(16))


def test_active_units_count_the_dimensions_the_encoder_uses():
    g = torch.Generator().manual_seed(0)
    n = 1000
    mean = torch.stack([torch.randn(n, generator=g),  # used: variance ~1
                        0.05 * torch.randn(n, generator=g),  # variance ~0.0025 < 0.01: inactive
                        torch.zeros(n),  # collapsed onto the prior's mean
                        0.5 * torch.randn(n, generator=g)], -1)  # variance ~0.25: active
    std = torch.full_like(mean, 0.3)
    got = encoder_diagnostics(Independent(Normal(mean, std), 1))
    assert float(got["encoder/active_units"]) == 2
    # The differential entropy of N(mu, 0.3^2 I_4), the same for every point.
    expected = 4 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.3))
    assert float(got["encoder/posterior_entropy"]) == pytest.approx(expected, rel=1e-5)


def test_validation_logs_diagnostics_and_bits_per_dim(runs):
    from lightning_vae.runs import read_scalars

    s = read_scalars(runs["spread"])
    entropy = s["encoder/posterior_entropy"][-1][1]
    assert 0 <= entropy <= math.log(2)
    log_px, bpd = s["val/log_px"][-1][1], s["val/bits_per_dim"][-1][1]
    assert bpd == pytest.approx(-log_px / (2 * math.log(2)), rel=1e-5)


def test_quality_and_figure_cadence(tmp_path):
    """By wall time during fit (and always at the final validation); every time in
    validate; every n epochs when asked."""
    import time

    import pytorch_lightning as pl

    from lightning_vae.callbacks import Cadence

    class FakeTrainer:
        sanity_checking, should_stop, max_epochs, max_steps, global_step = False, False, 10, -1, 5

        def __init__(self, fn: str, epoch: int) -> None:
            self.state = type("S", (), {"fn": pl.trainer.states.TrainerFn(fn)})()
            self.current_epoch = epoch
            self.strategy = type("St", (), {"broadcast": staticmethod(lambda v: v)})()

    timed = Cadence(None, every_n_seconds=3600)
    timed.start()
    assert not timed.due(FakeTrainer("fit", 3))  # an hour has not passed
    assert timed.due(FakeTrainer("fit", 9))  # the last epoch
    assert timed.due(FakeTrainer("validate", 3))  # validate: always
    quick = Cadence(None, every_n_seconds=0.0)
    quick.start()
    time.sleep(0.01)
    assert quick.due(FakeTrainer("fit", 2))
    by_epoch = Cadence(4, every_n_seconds=0.0)
    assert [by_epoch.due(FakeTrainer("fit", e)) for e in range(8)] == [False, False, False, True,
                                                                        False, False, False, True]
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1 or null, got 0"):
        Cadence(0, 1.0)
