"""USEFUL on the synthetic model: train to the separating iteration, split, upsample, retrain.

    1. train with the configuration's optimizer for ``separate_at`` iterations;
    2. per class (y = -1, +1), 2-means on the network outputs ``f(x_i; W)``; the cluster with the
       higher mean loss gets multiplicity ``k = upsample_factor`` (``theory.useful.useful_partition``);
    3. retrain for the full budget from the same initialization (``fresh_init``: a new one) with the
       multiplicities.

The random-upsampling baseline upsamples as many examples per class, chosen at random.
All splits of several seeds are computed from one batched simulation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from theory.model import init_weights
from theory.useful import Partition, random_partition, useful_partition

from .config import SimConfig
from .simulate import Problem, simulate_many
from .trajectory import Trajectory

__all__ = ["Split", "split_many", "separation_quality", "fresh_weights", "useful_many"]


@dataclass(frozen=True)
class Split:
    """USEFUL's partition at the separating iteration and how well it finds the slow-only examples."""

    partition: Partition
    outputs: np.ndarray  # (n,) network outputs at the separating iteration
    losses: np.ndarray  # (n,) per-example losses there
    has_fast: np.ndarray  # (n,) the training sample's ground truth
    precision: float  # of the upsampled cluster against has_fast == False
    recall: float


def separation_quality(upsample: np.ndarray, has_fast: np.ndarray) -> tuple[float, float]:
    """Precision and recall of the upsampled examples as a detector of ``has_fast == False``."""
    target = ~np.asarray(has_fast, dtype=bool)
    chosen = np.asarray(upsample, dtype=bool)
    tp = float(np.sum(chosen & target))
    precision = tp / chosen.sum() if chosen.sum() else 0.0
    recall = tp / target.sum() if target.sum() else 1.0
    return precision, recall


def fresh_weights(cfg: SimConfig) -> np.ndarray:
    """A second, independent initialization for ``fresh_init`` retraining."""
    seq = np.random.SeedSequence(cfg.seed).spawn(5)[4]
    return init_weights(cfg.J, cfg.d, cfg.sigma_0, np.random.default_rng(seq))


def split_many(cfgs: Sequence[SimConfig], problems: Sequence[Problem]) -> list[Split]:
    """Train each configuration to its ``separate_at`` (batched) and split its training set."""
    short = simulate_many(
        [c.with_(iterations=c.separate_at, record_every=c.separate_at, useful=False) for c in cfgs],
        problems=problems,
    )
    out = []
    for cfg, problem, traj in zip(cfgs, problems, short):
        y = problem.train.y
        f = traj.final_train_outputs
        losses = np.logaddexp(0.0, -y * f)
        part = useful_partition(f, y, losses, k=cfg.upsample_factor, seed=cfg.seed)
        precision, recall = separation_quality(part.upsample, problem.train.has_fast)
        out.append(Split(partition=part, outputs=f, losses=losses, has_fast=problem.train.has_fast,
                         precision=precision, recall=recall))
    return out


def useful_many(
    cfgs: Sequence[SimConfig],
    problems: Sequence[Problem],
    splits: Sequence[Split],
    *,
    baseline: str = "useful",
) -> list[Trajectory]:
    """Retrain each configuration for its full budget on the upsampled data (batched).

    ``baseline="random"`` upsamples the same number of examples per class chosen at random.
    The split's precision/recall and the partition are stored in each trajectory's ``extra``.
    """
    ms, W0s = [], []
    parts = []
    for cfg, problem, s in zip(cfgs, problems, splits):
        part = s.partition
        if baseline == "random":
            part = random_partition(problem.train.y, part.upsample, k=cfg.upsample_factor, seed=cfg.seed + 7919)
        elif baseline != "useful":
            raise ValueError(f"baseline: got {baseline!r}, expected 'useful' or 'random'")
        parts.append(part)
        ms.append(part.multiplicities.astype(np.float64))
        W0s.append(fresh_weights(cfg) if cfg.fresh_init else None)
    trajs = simulate_many([c.with_(useful=False) for c in cfgs], multiplicities=ms, problems=problems, W0s=W0s)
    for traj, cfg, part, s, problem in zip(trajs, cfgs, parts, splits, problems):
        precision, recall = separation_quality(part.upsample, problem.train.has_fast)
        traj.config = {**traj.config, "useful": True}
        traj.extra.update(
            method=part.method,
            upsampled=int(part.upsample.sum()),
            precision=precision,
            recall=recall,
            classes=[
                {"label": c.label, "size": c.size, "sizes": list(c.sizes), "mean_losses": list(c.mean_losses),
                 "chosen": c.chosen, "reason": c.reason}
                for c in part.classes
            ],
        )
    return trajs
