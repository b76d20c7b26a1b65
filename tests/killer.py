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


class SignalAtStep(pl.Callback):
    """Sends its own process signals at given optimizer steps, each once: what a scheduler's
    time limit, ``timeout``, Ctrl-C or SLURM's ``--signal`` does, mid-epoch.
    LVAE_SIGNAL_AT_STEP is a step (the signal: LVAE_SIGNAL, default SIGTERM) or a list
    ``SIGUSR1@50,SIGTERM@90``. Inactive while it is unset."""

    def __init__(self) -> None:
        self.sent: set[int] = set()

    @staticmethod
    def _plan() -> list[tuple[str, int]]:
        spec = os.environ.get("LVAE_SIGNAL_AT_STEP")
        if spec is None:
            return []
        if "@" not in spec:
            return [(os.environ.get("LVAE_SIGNAL", "SIGTERM"), int(spec))]
        return [(name, int(at)) for name, at in (item.split("@") for item in spec.split(","))]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for i, (name, at) in enumerate(self._plan()):
            if i not in self.sent and trainer.global_step >= at:
                self.sent.add(i)
                os.kill(os.getpid(), getattr(signal, name))
