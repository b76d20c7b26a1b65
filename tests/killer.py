"""A callback that SIGKILLs its own process at a given optimizer step (no clean-up, no
checkpoint: what an out-of-memory killer or a pre-empted node does). Active only while the
environment variable LVAE_KILL_AT_STEP is set, so the resumed run of the same config lives."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        at = os.environ.get("LVAE_KILL_AT_STEP")
        if at is not None and trainer.global_step >= int(at):
            os.kill(os.getpid(), signal.SIGKILL)
