"""Run the simulator: build the problem from a configuration, drive a backend, record a Trajectory.

    traj = simulate(SimConfig(optimizer="sam"))
    trajs = simulate_many([cfg.with_(seed=s) for s in range(10)])   # batched where the backend can

A problem (training sample, test sample, initial weights) is a pure function of the configuration's
data/network fields and seed, so GD and SAM runs with the same seed start from the same data and
initialization.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from theory.data import PatchData, sample
from theory.model import init_weights
from theory.updates import minibatch_schedule

from .backend import RunSpec, make_backend
from .config import SimConfig
from .trajectory import SERIES, Trajectory

__all__ = ["Problem", "make_problem", "simulate", "simulate_many", "record", "run_specs"]


@dataclass(frozen=True)
class Problem:
    """A training sample, a test sample and the initial weights."""

    train: PatchData
    test: PatchData
    W0: np.ndarray


def make_problem(cfg: SimConfig) -> Problem:
    """Sample the data and the initialization from the configuration's seed streams."""
    seeds = cfg.seeds()
    data_cfg = cfg.data_config()
    train = sample(data_cfg, cfg.n_train, np.random.default_rng(seeds["train"]))
    test = sample(data_cfg, cfg.n_test, np.random.default_rng(seeds["test"]))
    W0 = init_weights(cfg.J, cfg.d, cfg.sigma_0, np.random.default_rng(seeds["init"]))
    return Problem(train=train, test=test, W0=W0)


def _accuracy(f: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.sign(f) == y)) if len(y) else float("nan")


def record(W: np.ndarray, f_train: np.ndarray, problem: Problem, cfg: SimConfig, m: np.ndarray) -> dict[str, float]:
    """The quantities of SPEC section 2 at weights ``W`` (train outputs ``f_train`` given)."""
    train, test = problem.train, problem.test
    a_e, a_d = W @ train.v_e, W @ train.v_d
    noise = train.X[train.noise_mask]  # (M, d)
    f_test = np.einsum("npj->n", (test.X @ W.T) ** 3)
    fast = test.has_fast
    with np.errstate(over="ignore"):
        losses = np.logaddexp(0.0, -train.y * f_train)
    return {
        "align_fast": float(a_e.max()),
        "align_slow": float(a_d.max()),
        "out_fast": float(np.sum((cfg.beta_e * a_e) ** 3)),
        "out_slow": float(np.sum((cfg.beta_d * a_d) ** 3)),
        "noise_memorization": float(np.abs(noise @ W.T).max()) if len(noise) else 0.0,
        "train_loss": float(m @ losses / m.sum()),
        "train_acc": _accuracy(f_train, train.y),
        "test_acc": _accuracy(f_test, test.y),
        "test_acc_fast": _accuracy(f_test[fast], test.y[fast]),
        "test_acc_slow": _accuracy(f_test[~fast], test.y[~fast]),
    }


def run_specs(cfg: SimConfig, problem: Problem, multiplicities: np.ndarray | None, W0: np.ndarray | None) -> RunSpec:
    """The backend's description of the run ``cfg`` on ``problem``."""
    m = np.ones(cfg.n_train) if multiplicities is None else np.asarray(multiplicities, dtype=np.float64)
    schedule = None
    if cfg.batch_size is not None:
        schedule = minibatch_schedule(m, cfg.batch_size, cfg.iterations, np.random.default_rng(cfg.seeds()["batches"]))
    return RunSpec(
        train=problem.train,
        W0=problem.W0 if W0 is None else W0,
        multiplicities=m,
        rule=cfg.optimizer,
        lr=cfg.lr,
        rho=cfg.rho,
        beta_e=cfg.beta_e,
        beta_d=cfg.beta_d,
        schedule=schedule,
    )


def _group_key(cfg: SimConfig) -> tuple:
    return (cfg.optimizer, cfg.n_train, cfg.n_test, cfg.P, cfg.d, cfg.J, cfg.batch_size, cfg.iterations,
            cfg.record_every, cfg.dtype, cfg.backend, cfg.device)


def simulate_many(
    cfgs: Sequence[SimConfig],
    *,
    multiplicities: Sequence[np.ndarray | None] | None = None,
    problems: Sequence[Problem | None] | None = None,
    W0s: Sequence[np.ndarray | None] | None = None,
    progress: bool | None = None,
) -> list[Trajectory]:
    """Simulate several configurations; runs that share shapes and rule go through one backend.

    ``multiplicities[i]`` weights run i's examples; ``problems[i]`` overrides its sampled problem;
    ``W0s[i]`` its initialization.  Raises :class:`sims.backend.SimulationDiverged` on divergence.
    """
    n = len(cfgs)
    multiplicities = list(multiplicities) if multiplicities is not None else [None] * n
    problems = list(problems) if problems is not None else [None] * n
    W0s = list(W0s) if W0s is not None else [None] * n
    out: list[Trajectory | None] = [None] * n
    groups: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(_group_key(cfg), []).append(i)
    if progress is None:
        progress = sys.stderr.isatty()
    for members in groups.values():
        for i, traj in zip(members, _simulate_group([cfgs[i] for i in members], [problems[i] for i in members],
                                                     [multiplicities[i] for i in members], [W0s[i] for i in members],
                                                     progress)):
            out[i] = traj
    return out  # type: ignore[return-value]


def _simulate_group(cfgs, problems, multiplicities, W0s, progress) -> list[Trajectory]:
    cfg0 = cfgs[0]
    problems = [p if p is not None else make_problem(c) for p, c in zip(problems, cfgs)]
    specs = [run_specs(c, p, m, w) for c, p, m, w in zip(cfgs, problems, multiplicities, W0s)]
    backend = make_backend(cfg0.backend, specs, dtype=cfg0.dtype, device=cfg0.device)
    R, T = len(cfgs), cfg0.iterations
    records: list[list[dict[str, float]]] = [[] for _ in range(R)]
    iterations = [0]
    learned = {"fast": [None] * R, "slow": [None] * R}

    def snapshot() -> None:
        W, f = backend.weights(), backend.train_outputs()
        for r in range(R):
            records[r].append(record(W[r], f[r], problems[r], cfgs[r], specs[r].multiplicities))

    def mark(F: np.ndarray, key: str, start: int, r: int, theta: float) -> None:
        if learned[key][r] is None:
            hit = np.flatnonzero(F >= theta)
            if hit.size:
                learned[key][r] = start + int(hit[0])

    W0_all = backend.weights()
    for r in range(R):  # learned at initialization?
        F0e = np.sum((cfgs[r].beta_e * (W0_all[r] @ problems[r].train.v_e)) ** 3)
        F0d = np.sum((cfgs[r].beta_d * (W0_all[r] @ problems[r].train.v_d)) ** 3)
        mark(np.array([F0e]), "fast", 0, r, cfgs[r].theta)
        mark(np.array([F0d]), "slow", 0, r, cfgs[r].theta)
    snapshot()
    bar = tqdm(total=T, disable=not progress, desc=f"{cfg0.optimizer} x{R}", leave=False)
    while backend.iteration < T:
        start = backend.iteration + 1
        steps = min(cfg0.record_every - backend.iteration % cfg0.record_every, T - backend.iteration)
        F_e, F_d = backend.advance(steps)
        for r in range(R):
            mark(F_e[:, r], "fast", start, r, cfgs[r].theta)
            mark(F_d[:, r], "slow", start, r, cfgs[r].theta)
        iterations.append(backend.iteration)
        snapshot()
        bar.update(steps)
    bar.close()
    W_final, f_final = backend.weights(), backend.train_outputs()
    trajs = []
    for r, cfg in enumerate(cfgs):
        series = {"iterations": np.asarray(iterations, dtype=np.int64)}
        for name in SERIES[1:]:
            series[name] = np.array([rec[name] for rec in records[r]])
        trajs.append(
            Trajectory(
                config=asdict(cfg),
                series=series,
                fast_learned_at=learned["fast"][r],
                slow_learned_at=learned["slow"][r],
                final_weights=W_final[r],
                final_train_outputs=f_final[r],
                multiplicities=specs[r].multiplicities,
            )
        )
    return trajs


def simulate(
    cfg: SimConfig,
    *,
    multiplicities: np.ndarray | None = None,
    problem: Problem | None = None,
    W0: np.ndarray | None = None,
    progress: bool | None = None,
) -> Trajectory:
    """Simulate one configuration (see :func:`simulate_many`)."""
    return simulate_many([cfg], multiplicities=[multiplicities], problems=[problem], W0s=[W0], progress=progress)[0]
