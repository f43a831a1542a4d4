"""Grid sweeps: every combination of some fields' values times seeds, batched, resumable, one owner at a time.

    useful-sim sweep --out DIR --grid beta_d=0.2,0.4,0.6 --grid optimizer=gd,sam --seeds 10

A run's identity is its full resolved configuration (:func:`sims.config.config_hash`).  Grid values
are converted to their field's type first, so ``beta_d=1,1.0`` is one run, not two.  Each run is saved
as ``DIR/runs/<key>.npz`` + ``.json`` (``<key>`` names the grid values and the seed; a USEFUL run
also ``<key>_partition.npz``) as soon as its chunk finishes, and ``DIR/sweep.json`` (the index) lists
every finished run with its identity and final numbers.

Re-running computes only what is missing for the current configuration.  If a key's files hold a
run of another configuration (e.g. the same grid with another ``--lr``), the sweep refuses before
computing anything, naming what differs (``--lr is 0.3, the folder's runs have 0.5``), unless
``overwrite`` (``--overwrite``) is given: then those runs are recomputed and replaced.  Files not
written by useful-sim are never replaced.  ``DIR/sweep.lock`` keeps a second sweep out of the folder
while one runs (:class:`theory.plumbing.lock.RunLock`).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.config import ConfigError, check_allocation, config_from_mapping
from theory.plumbing.lock import holding

from .config import SimConfig, check_memory, config_hash, describe_difference, flag, memory_need
from .files import SWEEP_FORMAT, StateFileError, read_json_object, require_folder, require_ours
from .runs import RunResult, compute_runs, run_state, save_run, summary
from .trajectory import Trajectory

__all__ = ["parse_grid", "expand_grid", "run_key", "sweep", "LOCK_NAME"]

log = logging.getLogger(__name__)

LOCK_NAME = "sweep.lock"

#: Bytes per run held in memory before simulating (configuration, key, index entry): for the size check.
_BYTES_PER_RUN = 4096


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["beta_d=0.2,0.4", "optimizer=gd,sam"]`` -> ``{"beta_d": ["0.2", "0.4"], ...}``; a field twice is refused."""
    grid: dict[str, list[str]] = {}
    names = {f.replace("_", "-") for f in SimConfig.__dataclass_fields__} | set(SimConfig.__dataclass_fields__)
    for item in items:
        if "=" not in item:
            raise ConfigError("--grid", item, "NAME=V1,V2,... with NAME a configuration field")
        name, values = item.split("=", 1)
        name = name.strip()
        if name not in names or name in ("seed",):
            raise ConfigError("--grid", name, "a configuration field other than seed (use --seeds)")
        field = name.replace("-", "_")
        if field in grid:
            raise ConfigError("--grid", name, "each field once (give all its values in one --grid NAME=V1,V2)")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise ConfigError("--grid", item, "at least one value after '='")
        grid[field] = vals
    return grid


def count_runs(grid: dict[str, list[Any]], seeds: int) -> int:
    """Runs before removing duplicates: the product of the grid's sizes times ``seeds``."""
    return math.prod(len(v) for v in grid.values()) * seeds


def expand_grid(base: SimConfig, grid: dict[str, list[Any]], seeds: int) -> list[tuple[str, SimConfig]]:
    """Every combination (validated) as ``(key, config)``, each configuration once (by its identity).

    The key names the grid values (in their field's type: ``beta_d=1.0``) and the seed.  The number of
    runs is checked against memory before the list is built (``--seeds`` or ``--grid`` named).
    """
    n = count_runs(grid, seeds)
    longest = max((len(v) for v in grid.values()), default=1)
    check_allocation("--seeds" if seeds >= longest else "--grid", n * _BYTES_PER_RUN, f"the list of {n} runs")
    names = list(grid)
    out: list[tuple[str, SimConfig]] = []
    seen: set[str] = set()
    base_map = asdict(base)
    for combo in itertools.product(*(grid[name] for name in names)):
        for seed in range(seeds):
            mapping = {**base_map, **dict(zip(names, combo)), "seed": seed}
            cfg = config_from_mapping(SimConfig, mapping, source="--grid")
            identity = config_hash(cfg)
            if identity in seen:
                continue
            seen.add(identity)
            out.append((run_key({name: getattr(cfg, name) for name in names}, seed), cfg))
    return out


def run_key(values: dict[str, Any], seed: int) -> str:
    """``beta_d=0.2__optimizer=sam__seed=3``: the grid values and the seed (``/`` replaced by ``_``)."""
    parts = [f"{k}={v}" for k, v in values.items()] + [f"seed={seed}"]
    return "__".join(parts).replace("/", "_")


def _read_index(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"format": SWEEP_FORMAT, "runs": {}}
    index = read_json_object(path, SWEEP_FORMAT, what="a sweep index")
    runs = index.get("runs")
    if not isinstance(runs, dict) or not all(isinstance(v, dict) for v in runs.values()):
        raise StateFileError(path, 'has a "runs" that is not an object of run entries')
    return index


def _heaviest(cfgs: Sequence[SimConfig]) -> SimConfig:
    return max(cfgs, key=lambda c: memory_need(c)[0])


def sweep(runs: list[tuple[str, SimConfig]], out_dir: str | Path, *, chunk: int = 64, overwrite: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) ``runs`` into ``out_dir``; returns the index (``sweep.json``) plus this call's counts.

    ``finished``/``total`` count the runs of this call; ``skipped_as_done`` those already finished;
    ``replaced`` those of another configuration recomputed under ``overwrite``.
    """
    keys = [k for k, _ in runs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError("--grid", dup, "distinct runs (two configurations share the run name)")
    out = require_folder(out_dir)
    if runs:
        check_memory(_heaviest([c for _, c in runs]), min(chunk, len(runs)), runs_flag="--chunk")
    out.mkdir(parents=True, exist_ok=True)
    with holding(out, LOCK_NAME):
        return _sweep_locked(runs, out, chunk, overwrite, progress)


def _sweep_locked(runs, out: Path, chunk: int, overwrite: bool, progress) -> dict[str, Any]:
    runs_dir = out / "runs"
    index_path = out / "sweep.json"
    require_ours([index_path])
    if runs_dir.exists() and not runs_dir.is_dir():
        raise StateFileError(runs_dir, "is a file where the sweep keeps its runs/ folder")
    index = _read_index(index_path)
    hashes = {key: config_hash(cfg) for key, cfg in runs}
    states = {key: run_state(runs_dir / key, cfg) for key, cfg in runs}
    other = [(key, cfg) for key, cfg in runs if states[key].status == "other"]
    if other and not overwrite:
        key, cfg = other[0]
        what = describe_difference(asdict(cfg), states[key].stored)
        raise ConfigError("--out", message=(
            f"--out: {out} holds {len(other)} run(s) of another configuration under the same names ({what}); "
            f"use another --out, or add --overwrite to replace them"))
    runs_dir.mkdir(exist_ok=True)
    done = [(k, c) for k, c in runs if states[k].status == "done"]
    todo = [(k, c) for k, c in runs if states[k].status != "done"]
    for key, cfg in done:  # finished earlier but missing from the index (killed between the two writes)
        entry = index["runs"].get(key)
        if entry is None or entry.get("config_hash") != hashes[key]:
            index["runs"][key] = summary(key, cfg, RunResult(Trajectory.load(runs_dir / key)))
    if other:
        log.info("sweep: replacing %d run(s) of another configuration (--overwrite)", len(other))

    def write_index() -> None:
        index["finished"] = sum(1 for k in hashes if index["runs"].get(k, {}).get("config_hash") == hashes[k])
        index["total"] = len(runs)
        atomic_write_json(index_path, index)

    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        for (key, cfg), result in zip(part, compute_runs([c for _, c in part], progress=progress)):
            save_run(runs_dir / key, result)
            index["runs"][key] = summary(key, cfg, result)
        write_index()
    write_index()
    return {**index, "skipped_as_done": len(done), "replaced": len(other)}


def grid_flags_given(grid: dict[str, list[Any]], given: dict[str, Any]) -> list[str]:
    """The grid's fields that were also given as flags (refused: the grid would silently win)."""
    return [flag(name) for name in grid if given.get(name) is not None]
