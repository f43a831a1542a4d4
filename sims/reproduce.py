"""``useful-sim reproduce``: run the experiments, judge the claims, write the report folder (SPEC section 3).

The report folder holds ``claims.json`` (written last), the figures (:data:`sims.figures.FIGURES`)
and ``runs/{gd,sam,gd_useful,sam_useful,gd_random}_seed{S}.npz/.json``.  Every run is computed
afresh; nothing is read back from the folder, so an earlier report's runs can never be mixed in:

* a folder that already holds any of these files (a finished report, or one interrupted before its
  ``claims.json``) is refused unless ``overwrite`` (``--overwrite``);
* ``overwrite`` first deletes the report's files of ours there -- ``claims.json``, the figures, and
  every ``runs/{name}_seed{S}`` file that carries our marker (also seeds the new report will not have;
  a sweep's runs, say, are left alone) -- and refuses, before deleting anything, if a file in the way
  is not ours.

``reproduce.lock`` keeps a second ``reproduce`` out of the folder while one runs.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.config import ConfigError
from theory.plumbing.lock import holding

from . import figures
from .claims import judge
from .config import SimConfig
from .experiments import MAIN_RUNS, ReproduceSettings, check_settings, run_experiments
from .files import StateFileError, marker, remove_ours, require_folder, require_ours
from .runs import run_paths

__all__ = ["reproduce", "report_files", "LOCK_NAME"]

log = logging.getLogger(__name__)

LOCK_NAME = "reproduce.lock"


def report_files(out: str | Path, seeds: int) -> list[Path]:
    """The files a report with ``seeds`` seeds writes into ``out`` (claims.json first)."""
    out = Path(out)
    paths = [out / "claims.json"] + [out / name for name in figures.FIGURES]
    for name in MAIN_RUNS:
        for s in range(seeds):
            npz, _, meta = run_paths(out / "runs" / f"{name}_seed{s}")
            paths += [npz, meta]
    return paths


_REPORT_RUN = re.compile(r"(%s)_seed[0-9]+\.(npz|json)" % "|".join(MAIN_RUNS))


def _earlier_report_runs(runs_dir: Path) -> list[Path]:
    """Run files of an earlier report in ``runs_dir`` (report names, our marker), any number of seeds."""
    if not runs_dir.is_dir():
        return []
    return sorted(p for p in runs_dir.iterdir() if _REPORT_RUN.fullmatch(p.name) and p.is_file() and marker(p))


def _prepare(out: Path, seeds: int, overwrite: bool) -> None:
    """Refuse or clear an existing report (see the module docstring)."""
    runs_dir = out / "runs"
    if runs_dir.exists() and not runs_dir.is_dir():
        raise StateFileError(runs_dir, "is a file where the report keeps its runs/ folder")
    targets = report_files(out, seeds)
    existing = [p for p in targets if p.exists()] + [p for p in _earlier_report_runs(runs_dir) if p not in targets]
    if not existing:
        return
    if not overwrite:
        raise ConfigError("--out", message=(
            f"--out: {out} already holds a report ({existing[0].relative_to(out)}); add --overwrite to replace it, "
            f"or choose another --out"))
    require_ours(existing, hint="move it away or choose another --out (--overwrite replaces only files of useful-sim)")
    remove_ours(existing)  # claims.json first: a report cut short never looks finished


def reproduce(
    base: SimConfig,
    out_dir: str | Path,
    settings: ReproduceSettings,
    *,
    overwrite: bool = False,
    progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every experiment, write the figures, the main runs and ``claims.json``; return the report."""
    t_start = time.perf_counter()
    check_settings(base, settings)
    out = require_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with holding(out, LOCK_NAME):
        _prepare(out, settings.seeds, overwrite)
        results = run_experiments(base, settings, progress=progress, on_stage=on_stage)
        (on_stage or log.info)("claims")
        report = judge(results)
        for name, trajs in results.main_runs().items():
            for s, traj in enumerate(trajs):
                traj.save(out / "runs" / f"{name}_seed{s}")
        (on_stage or log.info)("figures")
        figures.draw_all(results, out)
        report["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(out / "claims.json", report)
        return report
