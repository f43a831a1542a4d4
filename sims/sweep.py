"""Grid sweeps: every combination of some fields' values times seeds, batched and resumable.

    useful-sim sweep --out DIR --grid beta_d=0.2,0.4,0.6 --grid optimizer=gd,sam --seeds 10

Each run is saved as ``DIR/runs/<key>.npz`` + ``.json`` as soon as its chunk finishes (atomically), and
``DIR/sweep.json`` lists every finished run with its final numbers.  Re-running the same command after
an interruption skips the runs whose files exist.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.config import ConfigError, config_from_mapping

from .config import SimConfig
from .simulate import simulate_many
from .trajectory import Trajectory

__all__ = ["parse_grid", "expand_grid", "run_key", "sweep"]


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["beta_d=0.2,0.4", "optimizer=gd,sam"]`` -> ``{"beta_d": ["0.2", "0.4"], ...}``."""
    grid: dict[str, list[str]] = {}
    names = {f.replace("_", "-") for f in SimConfig.__dataclass_fields__} | set(SimConfig.__dataclass_fields__)
    for item in items:
        if "=" not in item:
            raise ConfigError("--grid", item, "NAME=V1,V2,... with NAME a configuration field")
        name, values = item.split("=", 1)
        name = name.strip()
        if name not in names or name in ("seed",):
            raise ConfigError("--grid", name, "a configuration field other than seed (use --seeds)")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not vals:
            raise ConfigError("--grid", item, "at least one value after '='")
        grid[name.replace("-", "_")] = vals
    return grid


def expand_grid(base: SimConfig, grid: dict[str, list[Any]], seeds: int) -> list[tuple[str, SimConfig]]:
    """Every combination (validated) as ``(key, config)``; key names the grid values and the seed."""
    names = list(grid)
    out = []
    base_map = asdict(base)
    for combo in itertools.product(*(grid[n] for n in names)):
        for seed in range(seeds):
            mapping = {**base_map, **dict(zip(names, combo)), "seed": seed}
            cfg = config_from_mapping(SimConfig, mapping, source="--grid")
            out.append((run_key({n: getattr(cfg, n) for n in names}, seed), cfg))
    return out


def run_key(values: dict[str, Any], seed: int) -> str:
    parts = [f"{k}={v}" for k, v in values.items()] + [f"seed={seed}"]
    return "__".join(parts).replace("/", "_")


def _summary(key: str, cfg: SimConfig, traj: Trajectory) -> dict[str, Any]:
    last = {name: float(values[-1]) for name, values in traj.series.items() if name != "iterations"}
    return {"key": key, "config": asdict(cfg), "fast_learned_at": traj.fast_learned_at,
            "slow_learned_at": traj.slow_learned_at, "final": last}


def sweep(runs: list[tuple[str, SimConfig]], out_dir: str | Path, *, chunk: int = 64, progress: bool | None = None) -> dict[str, Any]:
    """Run (or resume) ``runs``; returns the content of ``sweep.json``."""
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    index_path = out / "sweep.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"runs": {}}

    def done(key: str) -> bool:
        return (out / "runs" / f"{key}.npz").exists() and (out / "runs" / f"{key}.json").exists()

    todo = [(k, c) for k, c in runs if not done(k)]
    for k, c in runs:  # finished earlier but missing from the index (killed between the two writes)
        if done(k) and k not in index["runs"]:
            index["runs"][k] = _summary(k, c, Trajectory.load(out / "runs" / k))
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        trajs = simulate_many([c for _, c in part], progress=progress)
        for (key, cfg), traj in zip(part, trajs):
            traj.save(out / "runs" / key)
            index["runs"][key] = _summary(key, cfg, traj)
        index["finished"] = len(index["runs"])
        index["total"] = len(runs)
        atomic_write_json(index_path, index)
    index["finished"] = len(index["runs"])
    index["total"] = len(runs)
    index["skipped_as_done"] = len(runs) - len(todo)
    atomic_write_json(index_path, index)
    return index
