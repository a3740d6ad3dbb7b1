"""Learning-rate schedule over the training horizon: linear warm-up, then constant, cosine or linear
decay towards 0.

The horizon is whichever ends first: `epochs` passes, or the `max_seconds` budget. With a time budget
the progress is the larger of the two fractions (steps done / steps of all epochs, seconds spent /
budget), so a budget-limited run still decays to (almost) 0 by its deadline instead of stopping at a
high rate. Under DDP the ranks' clocks differ: there only the step fraction counts, so every rank sets
the same rate.
"""
from __future__ import annotations

import math
import time

import torch

from training.settings import TrainSettings


def decay_factor(schedule: str, progress: float) -> float:
    """Multiplier of the base rate at `progress` in [0, 1] of the horizon (clipped)."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - p
    if schedule == "constant":
        return 1.0
    raise ValueError(f"lr_schedule: unknown schedule {schedule!r}")


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: (step + 1) / warmup_steps for the first warmup_steps steps, then 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


class LearningRate:
    """Sets every parameter group's rate before each optimizer step.

    total_steps: optimizer steps of all `settings.epochs` epochs; began: perf_counter() at the start
    of training (the clock of settings.max_seconds); use_clock: whether the time budget counts.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, settings: TrainSettings, *,
                 total_steps: int, began: float, use_clock: bool = True) -> None:
        self.optimizer = optimizer
        self.settings = settings
        self.total_steps = max(total_steps, 1)
        self.began = began
        self.use_clock = use_clock and settings.max_seconds is not None
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.last_factor = 1.0

    def progress(self, step: int) -> float:
        fraction = step / self.total_steps
        if self.use_clock:
            fraction = max(fraction, (time.perf_counter() - self.began) / self.settings.max_seconds)
        return fraction

    def update(self, step: int) -> float:
        """Set the rate of optimizer step number `step` (0-based); returns the factor used."""
        if self.settings.lr_schedule == "constant" and self.settings.warmup_steps == 0:
            return 1.0
        factor = (warmup_factor(step, self.settings.warmup_steps)
                  * decay_factor(self.settings.lr_schedule, self.progress(step)))
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor
        self.last_factor = factor
        return factor
