"""The simulator's driver: a configuration's problem (data, initialization), a backend stepped, a Trajectory recorded.

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
from theory.model import feature_output, init_weights
from theory.updates import minibatch_schedule

from .backend_contract import RunSpec
from .backends import make_backend
from .config import SimConfig, check_memory
from .structured import structure
from .trajectory import SERIES, Trajectory

__all__ = ["Problem", "make_problem", "simulate", "simulate_many", "record"]


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


def record(Ws: np.ndarray, F_train: np.ndarray, problem: Problem, cfg: SimConfig, m: np.ndarray) -> dict[str, np.ndarray]:
    """The quantities of SPEC section 2 at each of K weights ``Ws`` (K, J, d), train outputs ``F_train`` (K, n).

    All K records are evaluated together: the test set's noise rows meet all weights in one product.
    """
    train, test = problem.train, problem.test
    K, J, d = Ws.shape
    a_e, a_d = Ws @ train.v_e, Ws @ train.v_d  # (K, J)
    flat = Ws.reshape(K * J, d)
    test_s = structure(test)  # only the test set's noise rows need d-dimensional products
    Zt = test_s.B @ flat.T  # (M_test + 2, K * J)
    f_test = np.stack([test_s.outputs(Zt[:, k * J:(k + 1) * J]) for k in range(K)])  # (K, n_test)
    noise = train.X[train.noise_mask]  # (M, d) training noise patches
    memo = np.abs(noise @ flat.T).reshape(len(noise), K, J).max(axis=(0, 2)) if len(noise) else np.zeros(K)
    with np.errstate(over="ignore"):
        losses = np.logaddexp(0.0, -train.y * F_train)  # (K, n)
    fast = test.has_fast

    def acc(f: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.mean(np.sign(f) == y, axis=1) if len(y) else np.full(K, np.nan)

    return {
        "align_fast": a_e.max(axis=1),
        "align_slow": a_d.max(axis=1),
        "out_fast": np.sum((cfg.beta_e * a_e) ** 3, axis=1),
        "out_slow": np.sum((cfg.beta_d * a_d) ** 3, axis=1),
        "noise_memorization": memo,
        "train_loss": losses @ m / m.sum(),
        "train_acc": acc(F_train, train.y),
        "test_acc": acc(f_test, test.y),
        "test_acc_fast": acc(f_test[:, fast], test.y[fast]),
        "test_acc_slow": acc(f_test[:, ~fast], test.y[~fast]),
    }


def _run_spec(cfg: SimConfig, problem: Problem, multiplicities: np.ndarray | None, W0: np.ndarray | None) -> RunSpec:
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
    ``W0s[i]`` its initialization.  Raises :class:`sims.backend_contract.SimulationDiverged` on
    divergence, and ``ConfigError`` (before allocating) when a group of runs would not fit in memory.
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
        check_memory(cfgs[members[0]], len(members))
    for members in groups.values():
        for i, traj in zip(members, _simulate_group([cfgs[i] for i in members], [problems[i] for i in members],
                                                     [multiplicities[i] for i in members], [W0s[i] for i in members],
                                                     progress)):
            out[i] = traj
    return out  # type: ignore[return-value]


def _simulate_group(cfgs, problems, multiplicities, W0s, progress) -> list[Trajectory]:
    cfg0 = cfgs[0]
    problems = [p if p is not None else make_problem(c) for p, c in zip(problems, cfgs)]
    specs = [_run_spec(c, p, m, w) for c, p, m, w in zip(cfgs, problems, multiplicities, W0s)]
    backend = make_backend(cfg0.backend, specs, dtype=cfg0.dtype, device=cfg0.device)
    R, T = len(cfgs), cfg0.iterations
    iterations = [0]
    learned = {"fast": [None] * R, "slow": [None] * R}

    snaps_W: list[np.ndarray] = []  # (R, J, d) per record
    snaps_f: list[np.ndarray] = []  # (R, n) per record

    def snapshot() -> None:
        snaps_W.append(backend.weights())
        snaps_f.append(backend.train_outputs())

    def mark(F: np.ndarray, key: str, start: int, r: int, theta: float) -> None:
        if learned[key][r] is None:
            hit = np.flatnonzero(F >= theta)
            if hit.size:
                learned[key][r] = start + int(hit[0])

    W0_all = backend.weights()
    for r in range(R):  # learned at initialization?
        tr = problems[r].train
        mark(np.array([feature_output(W0_all[r], tr.v_e, cfgs[r].beta_e)]), "fast", 0, r, cfgs[r].theta)
        mark(np.array([feature_output(W0_all[r], tr.v_d, cfgs[r].beta_d)]), "slow", 0, r, cfgs[r].theta)
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
    W_final, f_final = snaps_W[-1], snaps_f[-1]
    Ws_all, fs_all = np.stack(snaps_W), np.stack(snaps_f)  # (K, R, J, d), (K, R, n)
    trajs = []
    for r, cfg in enumerate(cfgs):
        rec = record(Ws_all[:, r], fs_all[:, r], problems[r], cfg, specs[r].multiplicities)
        series = {"iterations": np.asarray(iterations, dtype=np.int64)}
        for name in SERIES[1:]:
            series[name] = np.asarray(rec[name], dtype=np.float64)
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
