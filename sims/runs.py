"""A run of useful-sim: configurations to trajectories (USEFUL honoured), and a run's files on disk.

``useful-sim run`` and ``useful-sim sweep`` both compute through :func:`compute_runs`: a configuration
with ``useful`` trains to ``separate_at``, splits, upsamples and retrains (:mod:`sims.useful`); any
other is simulated as it is.  So a sweep's USEFUL run equals ``useful-sim run --useful`` of the same
configuration.

A run's files, for a stem ``STEM``: ``STEM.npz`` (arrays), ``STEM_partition.npz`` (USEFUL's split,
only for a USEFUL run) and ``STEM.json`` (metadata and the run's identity, written last: a run whose
``.json`` exists is complete).  Each carries a format marker (:mod:`sims.files`); :func:`run_state`
says whether the files hold a finished run of a given configuration, and refuses files not ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from theory.plumbing.atomic import atomic_save_npz

from .config import SimConfig, config_hash
from .files import PARTITION_FORMAT, RUN_FORMAT, StateFileError, marker, read_json_object, remove_ours, require_ours
from .simulate import make_problem, simulate_many
from .trajectory import Trajectory
from .useful import Split, split_many, useful_many

__all__ = ["RunResult", "RunState", "compute_runs", "run_paths", "run_state", "save_run", "summary"]


@dataclass(frozen=True)
class RunResult:
    """A finished run: its trajectory and, for a USEFUL run, the split it upsampled."""

    traj: Trajectory
    split: Split | None = None


def compute_runs(cfgs: Sequence[SimConfig], *, progress: bool | None = None) -> list[RunResult]:
    """Simulate each configuration, USEFUL ones through split + upsample + retrain (batched where possible)."""
    out: list[RunResult | None] = [None] * len(cfgs)
    plain = [i for i, c in enumerate(cfgs) if not c.useful]
    useful = [i for i, c in enumerate(cfgs) if c.useful]
    if plain:
        for i, traj in zip(plain, simulate_many([cfgs[i] for i in plain], progress=progress)):
            out[i] = RunResult(traj)
    if useful:
        ucfgs = [cfgs[i] for i in useful]
        problems = [make_problem(c) for c in ucfgs]
        splits = split_many(ucfgs, problems)
        for i, traj, s in zip(useful, useful_many(ucfgs, problems, splits), splits):
            out[i] = RunResult(traj, s)
    return out  # type: ignore[return-value]


def run_paths(stem: str | Path) -> tuple[Path, Path, Path]:
    """``(STEM.npz, STEM_partition.npz, STEM.json)`` (a ``.npz``/``.json`` suffix on ``stem`` is dropped)."""
    stem = Path(stem)
    name = stem.name
    for suffix in (".npz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return stem.with_name(name + ".npz"), stem.with_name(name + "_partition.npz"), stem.with_name(name + ".json")


@dataclass(frozen=True)
class RunState:
    """What the files at a stem hold for a configuration: ``done`` (its finished run), ``missing``
    (nothing, or an unfinished run of ours), or ``other`` (a finished run of another configuration,
    ``stored`` its configuration)."""

    status: str
    stored: dict | None = None


def run_state(stem: str | Path, cfg: SimConfig) -> RunState:
    """Classify the files at ``stem`` for ``cfg``; files that are not ours raise :class:`StateFileError`."""
    npz, part, meta_path = run_paths(stem)
    require_ours([npz, part, meta_path])
    if not meta_path.exists():
        return RunState("missing")
    meta = read_json_object(meta_path, RUN_FORMAT, what="a simulator run")
    stored = meta.get("config")
    if not isinstance(stored, dict):
        raise StateFileError(meta_path, 'has a "config" that is not a JSON object')
    if config_hash(stored) != config_hash(cfg):
        return RunState("other", stored)
    complete = marker(npz) == RUN_FORMAT and (not cfg.useful or marker(part) == PARTITION_FORMAT)
    return RunState("done" if complete else "missing")


def save_run(stem: str | Path, result: RunResult) -> tuple[Path, Path]:
    """Write the run's files (replacing earlier files of ours at ``stem``; others raise
    :class:`StateFileError`): the old ``.json`` goes first, the new one is written last."""
    npz, part, meta = run_paths(stem)
    require_ours([npz, part, meta])
    remove_ours([meta, part])
    if result.split is not None:
        s = result.split
        atomic_save_npz(part, format=np.array(PARTITION_FORMAT), upsampled=s.partition.indices,
                        multiplicities=s.partition.multiplicities, outputs=s.outputs, losses=s.losses,
                        has_fast=s.has_fast)
    return result.traj.save(npz)


def summary(key: str, cfg: SimConfig, result: RunResult) -> dict:
    """A sweep index entry: identity, configuration, learned iterations, final values (and the split)."""
    traj = result.traj
    last = {name: float(values[-1]) for name, values in traj.series.items() if name != "iterations"}
    entry = {"key": key, "config_hash": config_hash(cfg), "config": asdict(cfg),
             "fast_learned_at": traj.fast_learned_at, "slow_learned_at": traj.slow_learned_at, "final": last}
    if cfg.useful:
        entry["split"] = {k: traj.extra.get(k) for k in ("upsampled", "precision", "recall")}
    return entry
