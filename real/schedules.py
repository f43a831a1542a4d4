"""Learning-rate schedules, stepped once per iteration.

With ``T = epochs * steps_per_epoch`` iterations, ``w = round(warmup_epochs * steps_per_epoch)`` warm-up
iterations and iteration ``s = 0, 1, ...`` (the (s+1)-th optimizer step uses ``lr * factor(s)``):

    warm-up     factor(s) = (s + 1) / w                              for s < w
    constant    factor(s) = 1
    cosine      factor(s) = (1 + cos(pi * min(s - w, T - w) / (T - w))) / 2
    multistep   factor(s) = gamma ** #{m in milestones : s >= m * steps_per_epoch}

A ``LambdaLR`` over a ``partial`` of :func:`lr_factor`: its ``state_dict`` holds the step count, so
resuming is "build the same schedule, ``load_state_dict``".
"""

from __future__ import annotations

import math
from functools import partial

import torch

__all__ = ["SCHEDULES", "build_schedule", "lr_factor"]

SCHEDULES = ("cosine", "multistep", "constant")


def lr_factor(step: int, *, name: str, total: int, warmup: int, steps_per_epoch: int, milestones: tuple[int, ...],
              gamma: float) -> float:
    """The multiplier of the base LR at iteration ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "cosine":
        span = max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))
    return gamma ** sum(step >= m * steps_per_epoch for m in milestones)


def build_schedule(optimizer: torch.optim.Optimizer, *, name: str, epochs: int, steps_per_epoch: int,
                   warmup_epochs: float = 0.0, milestones: tuple[int, ...] = (),
                   gamma: float = 0.2) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-iteration ``LambdaLR``; ``milestones`` are epochs.  The values are TrainConfig's, validated there."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(
        lr_factor, name=name, total=epochs * steps_per_epoch, warmup=round(warmup_epochs * steps_per_epoch),
        steps_per_epoch=steps_per_epoch, milestones=tuple(milestones), gamma=float(gamma)))
