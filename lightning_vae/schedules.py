"""Schedules for a noise level (torch-free; plain Python numbers).

A schedule maps the optimizer step to a value: ``schedule.value(step)``. ``step=None`` means
evaluation, which always sees the final value, so validation numbers of an annealed run are
comparable across epochs and with a run at that constant level. The annealing schedules go
from ``start`` to ``end`` over ``steps`` optimizer steps and stay at ``end`` afterwards.

Constructor arguments are plain numbers so that YAML can build a schedule by
``class_path``/``init_args``.
"""

from __future__ import annotations

import math
import operator


def _check_level(name: str, value: float) -> float:
    value = float(value)
    # `not >= 0` also rejects NaN.
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def _check_steps(steps: int) -> int:
    try:
        steps_int = operator.index(steps)  # any integer type, but not 2.5 or "10"
    except TypeError:
        steps_int = None
    if steps_int is None or isinstance(steps, bool) or steps_int < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps_int


def _check_step(step: int) -> int:
    if step < 0:
        raise ValueError(f"step must be >= 0 (or None for evaluation), got {step}")
    return step


class Schedule:
    """Base of the schedules: ``value(step)``, the level at optimizer step ``step`` (None:
    evaluation, the final level). Subclass it for your own schedule."""

    def value(self, step: int | None) -> float:
        raise NotImplementedError


class Constant(Schedule):
    """The same value at every step.

    Args:
        value: the value (>= 0).
    """

    def __init__(self, value: float) -> None:
        self.level = _check_level("value", value)

    def value(self, step: int | None) -> float:
        if step is not None:
            _check_step(step)
        return self.level

    def __repr__(self) -> str:
        return f"Constant(value={self.level})"


class _Anneal(Schedule):
    """start -> end over ``steps`` steps along ``_shape(t)``, t in [0, 1]; then end."""

    def __init__(self, start: float, end: float, steps: int) -> None:
        self.start = _check_level("start", start)
        self.end = _check_level("end", end)
        self.steps = _check_steps(steps)

    def _shape(self, t: float) -> float:
        """Fraction of the way from start to end at progress t; 0 at t = 0, 1 at t = 1."""
        raise NotImplementedError

    def value(self, step: int | None) -> float:
        if step is None or _check_step(step) >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * self._shape(step / self.steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(start={self.start}, end={self.end}, steps={self.steps})"


class LinearAnneal(_Anneal):
    """start + (end - start) * t, t = step / steps.

    Args:
        start: value at step 0 (>= 0).
        end: value from step ``steps`` on, and in evaluation (>= 0).
        steps: optimizer steps to go from start to end (>= 1).
    """

    def _shape(self, t: float) -> float:
        return t


class CosineAnneal(_Anneal):
    """end + (start - end) * (1 + cos(pi t)) / 2, t = step / steps (Loshchilov & Hutter,
    SGDR, 2017, without restarts): flat at both ends, fastest in the middle.

    Args:
        start: value at step 0 (>= 0).
        end: value from step ``steps`` on, and in evaluation (>= 0).
        steps: optimizer steps to go from start to end (>= 1).
    """

    def _shape(self, t: float) -> float:
        return 0.5 * (1 - math.cos(math.pi * t))
