"""The learning-rate schedule of a training run and the fraction of its budget that is done.

The learning rate of optimiser step ``k`` is ``train.lr * warmup(k) * decay(f)``::

    warmup(k) = min(1, (k + 1) / max(warmup_iterations, 1))
    decay(f)  = 1                                                  constant
              = m + (1 - m) (1 + cos(pi f)) / 2                    cosine
              = m + (1 - m) (1 - f)                                linear
    f         = min(1, max(iteration / train.iterations, training seconds / (60 train.max_minutes)))

with ``m = train.lr_min_ratio`` and ``f`` the fraction of whichever budget stops the run (the progress bar's
fraction), read at the last completed iteration. So a 10-minute run ends at ``m * lr`` whatever the
machine's speed — and, under a time budget, the schedule follows the wall-clock, which is why
``deterministic: true`` refuses a decaying schedule together with ``max_minutes`` (the config check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "cosine", "linear")


def budget_fraction(iteration: int, wall_seconds: float, iterations: int, max_minutes: float | None) -> float:
    """The fraction in ``[0, 1]`` of the run's budget that is done: the larger of ``iteration / iterations``
    and ``wall_seconds / (60 max_minutes)`` (``max_minutes`` None: iterations alone)."""
    frac = iteration / iterations
    if max_minutes is not None:
        frac = max(frac, wall_seconds / (60 * max_minutes))
    return min(frac, 1.0)


@dataclass
class LRSchedule:
    """The multiplier of ``train.lr`` (module docstring). ``progress`` is set by the trainer after each
    iteration (and after a resume), so the factor is a pure function of the step and the run's counters."""

    kind: str = "constant"
    warmup_steps: int = 0
    min_ratio: float = 0.0
    progress: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.kind!r}; valid: {', '.join(SCHEDULES)}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"lr_min_ratio must lie in [0, 1], got {self.min_ratio}")

    def decay(self, fraction: float) -> float:
        """``decay(f)`` for ``f`` in ``[0, 1]`` (clamped)."""
        f, m = min(max(fraction, 0.0), 1.0), self.min_ratio
        if self.kind == "cosine":
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * f))
        if self.kind == "linear":
            return m + (1 - m) * (1 - f)
        return 1.0

    def __call__(self, step: int) -> float:
        """The factor of optimiser step ``step`` (0-based) at the current ``progress``."""
        return min(1.0, (step + 1) / max(self.warmup_steps, 1)) * self.decay(self.progress)
