"""The experiments behind the claims report: every run ``reproduce`` needs, gathered in one ReproduceResults.

Every seed gives one paired experiment: the same training data, test data and initialization are
trained with GD, SAM, GD+USEFUL, SAM+USEFUL and GD with random upsampling; the beta_d sweep and the
USEFUL ablation (separating iteration, factor k) reuse the same seeds.  :func:`run_experiments`
computes them once; :func:`sims.claims.judge` and :func:`sims.figures.draw_all` read the same
:class:`ReproduceResults`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from theory.plumbing.config import doc

from .config import SimConfig, check_memory
from .simulate import Problem, make_problem, simulate_many
from .trajectory import Trajectory
from .useful import Split, split_many, useful_many

__all__ = ["ReproduceSettings", "ReproduceResults", "check_settings", "run_experiments", "MAIN_RUNS"]

log = logging.getLogger(__name__)

#: The paired runs of every seed, in the order they are saved and drawn.
MAIN_RUNS = ("gd", "sam", "gd_useful", "sam_useful", "gd_random")


@dataclass(frozen=True)
class ReproduceSettings:
    """What ``reproduce`` runs besides the base configuration."""

    seeds: int = doc(10, "paired experiments (seeds 0..seeds-1), an integer >= 1")
    beta_d_grid: tuple[float, ...] = doc((0.2, 0.3, 0.4, 0.5, 0.6),
                                         "the beta_d values of the beta_d sweep, in the order its claim reads them")
    ablation_separate: tuple[int, ...] = doc((5, 10, 20, 40, 120, 480),
                                             "the separating iterations of the USEFUL ablation (capped at iterations)")
    ablation_k: tuple[int, ...] = doc((2, 3, 4), "the upsampling factors k of the USEFUL ablation, each >= 1")
    sweep_tolerance: float = doc(0.005, "the largest drop of mean test accuracy (accuracies are fractions) the beta_d "
                                        "sweep's claim allows from one beta_d to the next")

    @classmethod
    def quick(cls, seeds: int = 3) -> "ReproduceSettings":
        return cls(seeds=seeds, beta_d_grid=(0.2, 0.3, 0.4, 0.5, 0.6), ablation_separate=(5, 20, 120), ablation_k=(2, 4))


@dataclass(frozen=True)
class ReproduceResults:
    """Every result the claims and the figures are made of (one entry per seed unless said otherwise).

    ``base``: the base configuration; ``problems``: each seed's data and initialization;
    ``gd``, ``sam``, ``gd_useful``, ``sam_useful``, ``gd_random``: the paired runs;
    ``gd_splits``, ``sam_splits``: USEFUL's split of GD's and SAM's early outputs;
    ``sweep_cfgs``/``sweep``: the beta_d sweep (configurations and final-value trajectories);
    ``abl_cfgs``/``ablation``: the USEFUL ablation over the separating iteration and k.
    """

    base: SimConfig
    settings: ReproduceSettings
    problems: tuple[Problem, ...]
    gd: tuple[Trajectory, ...]
    sam: tuple[Trajectory, ...]
    gd_useful: tuple[Trajectory, ...]
    sam_useful: tuple[Trajectory, ...]
    gd_random: tuple[Trajectory, ...]
    gd_splits: tuple[Split, ...]
    sam_splits: tuple[Split, ...]
    sweep_cfgs: tuple[SimConfig, ...]
    sweep: tuple[Trajectory, ...]
    abl_cfgs: tuple[SimConfig, ...]
    ablation: tuple[Trajectory, ...]

    def main_runs(self) -> dict[str, tuple[Trajectory, ...]]:
        """The paired runs by name (:data:`MAIN_RUNS`)."""
        return {name: getattr(self, name) for name in MAIN_RUNS}


def check_settings(base: SimConfig, settings: ReproduceSettings) -> None:
    """Validate before running: the base must be a valid USEFUL configuration (``separate_at`` within
    ``iterations``: the rule of :class:`SimConfig`), and the largest batch of runs must fit in memory."""
    base.with_(useful=True)
    S = settings.seeds
    check_memory(base, S, runs_flag="--seeds")
    widest = max(len(settings.beta_d_grid), len(settings.ablation_separate) * len(settings.ablation_k), 1)
    check_memory(base.with_(record_every=base.iterations), S * widest, runs_flag="--seeds")


def run_experiments(
    base: SimConfig,
    settings: ReproduceSettings,
    *,
    progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> ReproduceResults:
    """Run every experiment of the report (see the module docstring)."""
    check_settings(base, settings)
    stage = on_stage or (lambda s: log.info("%s", s))
    S = settings.seeds
    gd_cfgs = [base.with_(optimizer="gd", seed=s, useful=False) for s in range(S)]
    sam_cfgs = [c.with_(optimizer="sam") for c in gd_cfgs]
    problems = [make_problem(c) for c in gd_cfgs]

    stage(f"GD and SAM, {S} seeds")
    both = simulate_many(gd_cfgs + sam_cfgs, problems=problems + problems, progress=progress)
    gd, sam = both[:S], both[S:]

    stage("USEFUL: split at the separating iteration")
    gd_splits = split_many(gd_cfgs, problems)
    sam_splits = split_many(sam_cfgs, problems)
    stage("USEFUL and random upsampling: retrain")
    gd_useful = useful_many(gd_cfgs, problems, gd_splits)
    sam_useful = useful_many(sam_cfgs, problems, sam_splits)
    gd_random = useful_many(gd_cfgs, problems, gd_splits, baseline="random")

    stage("beta_d sweep")
    # Sweep and ablation use only final values: record at the start and the end (learned times stay exact).
    sweep_cfgs = [c.with_(beta_d=b, optimizer=o, record_every=base.iterations)
                  for b in settings.beta_d_grid for o in ("gd", "sam") for c in gd_cfgs]
    sweep = simulate_many(sweep_cfgs, progress=progress)

    stage("USEFUL ablation: separating iteration and k")
    abl_cfgs = [
        c.with_(separate_at=min(t, base.iterations), upsample_factor=k, record_every=base.iterations)
        for t in settings.ablation_separate for k in settings.ablation_k for c in gd_cfgs
    ]
    abl_problems = problems * (len(abl_cfgs) // S)
    ablation = useful_many(abl_cfgs, abl_problems, split_many(abl_cfgs, abl_problems))

    return ReproduceResults(
        base=base, settings=settings, problems=tuple(problems), gd=tuple(gd), sam=tuple(sam),
        gd_useful=tuple(gd_useful), sam_useful=tuple(sam_useful), gd_random=tuple(gd_random),
        gd_splits=tuple(gd_splits), sam_splits=tuple(sam_splits), sweep_cfgs=tuple(sweep_cfgs), sweep=tuple(sweep),
        abl_cfgs=tuple(abl_cfgs), ablation=tuple(ablation),
    )
