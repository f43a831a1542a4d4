"""``useful-sim`` (and ``python -m sims``): the command line of run | sweep | reproduce.

    useful-sim run --optimizer sam --beta-d 0.4 --out runs/sam          # one run -> runs/sam.npz/.json
    useful-sim sweep --out sweeps/b --grid beta_d=0.2,0.4,0.6 --grid optimizer=gd,sam --seeds 10
    useful-sim reproduce --out results [--quick] [--seeds S] [--overwrite]

Every configuration field is a flag (``--beta-d``, ``--sigma-p``, ``--lr``, ...) and may come from a
TOML file given with ``--config`` (the command line wins).  Every failure is one line on stderr
(through :func:`theory.plumbing.cli.cli_entry`): bad input, a file in ``--out`` that is not ours or
holds another configuration's runs, a size that cannot fit in memory: exit 2; a divergence, a file
system error, running out of memory: exit 1; Ctrl-C: exit 130.  What is printed on stdout as JSON is
strict JSON (a non-finite number is ``null``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from theory.plumbing.atomic import to_json
from theory.plumbing.claims import claims_lines
from theory.plumbing.cli import Command, build_parser, cli_entry
from theory.plumbing.config import (
    ConfigError,
    add_config_arguments,
    check_int,
    resolve_config,
)
from theory.plumbing.lock import RunLock, RunLockError

from .backend_contract import SimulationDiverged
from .config import SimConfig, check_memory
from .files import require_folder

log = logging.getLogger("sims")


def _add_config(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--config", metavar="TOML",
                        help=f"TOML file with {what} (keys: the field names; the command line wins; default: none)")


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="OUT",
                        help="output path stem (required): OUT.npz and OUT.json are written, with --useful also "
                             "OUT_partition.npz; earlier files of useful-sim there are replaced, other files never")
    _add_config(parser, "configuration fields")
    add_config_arguments(parser, SimConfig)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="output folder (required): runs/<key>.npz + .json per run and the index sweep.json; "
                             "a rerun computes only what is missing")
    _add_config(parser, "the base configuration")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                        help="a configuration field other than seed and its comma-separated values (repeatable, "
                             "each field once; the grid is the product of all; default: none, the base alone)")
    parser.add_argument("--seeds", default="1", metavar="S",
                        help="seeds per grid point, an integer >= 1: seeds 0..S-1 (default: 1)")
    parser.add_argument("--chunk", default="64", metavar="RUNS",
                        help="runs simulated together (and saved) per batch, an integer >= 1 (default: 64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace runs of another configuration found under the same names (default: refuse)")
    add_config_arguments(parser, SimConfig, exclude=("seed",))


def _reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="FOLDER",
                        help="output folder (required): claims.json, the figures, runs/")
    _add_config(parser, "the base configuration")
    parser.add_argument("--quick", action="store_true",
                        help="3 seeds and a smaller USEFUL ablation, under a minute (default: the full report)")
    parser.add_argument("--seeds", default=None, metavar="S",
                        help="number of seeds, an integer >= 1 (default: 10, or 3 with --quick)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier report in --out (only files useful-sim wrote; default: refuse)")
    add_config_arguments(parser, SimConfig, exclude=("seed", "useful"))


def _int_flag(name: str, raw: str, low: int) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(name, raw, f"an integer >= {low}") from None
    check_int(name, value, low=low)
    return value


def _print_json(obj) -> None:
    print(to_json(obj, indent=None))


def _cmd_run(args) -> int:
    from .files import require_ours
    from .runs import compute_runs, run_paths, save_run

    cfg = resolve_config(SimConfig, args, config_path=args.config)
    check_memory(cfg)
    out = Path(args.out)
    npz, part, meta = run_paths(out)
    require_folder(out.parent)
    require_ours([npz, part, meta])  # before computing: refuse early
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out.parent, f".{meta.stem}.lock")
    try:
        lock.acquire()
    except RunLockError as err:
        raise ConfigError("--out", message=f"--out: {err}") from None
    try:
        (result,) = compute_runs([cfg])
        npz, meta = save_run(out, result)
    finally:
        lock.release()
    traj = result.traj
    _print_json({"npz": str(npz), "json": str(meta), "partition": str(part) if result.split is not None else None,
                 "fast_learned_at": traj.fast_learned_at, "slow_learned_at": traj.slow_learned_at,
                 "test_acc": float(traj.test_acc[-1]), "test_acc_slow": float(traj.test_acc_slow[-1])})
    return 0


def _cmd_sweep(args) -> int:
    from .sweep import expand_grid, grid_flags_given, parse_grid, sweep

    base = resolve_config(SimConfig, args, config_path=args.config)
    seeds = _int_flag("--seeds", args.seeds, 1)
    chunk = _int_flag("--chunk", args.chunk, 1)
    grid = parse_grid(args.grid)
    both = grid_flags_given(grid, vars(args))
    if both:
        raise ConfigError("--grid", message=f"--grid: {both[0]} is given both as a flag and in --grid; give it once")
    runs = expand_grid(base, grid, seeds)
    index = sweep(runs, args.out, chunk=chunk, overwrite=args.overwrite)
    _print_json({"out": args.out, "finished": index["finished"], "total": index["total"],
                 "skipped_as_done": index["skipped_as_done"], "replaced": index["replaced"]})
    return 0


def _cmd_reproduce(args) -> int:
    from .experiments import ReproduceSettings
    from .reproduce import reproduce

    base = resolve_config(SimConfig, args, config_path=args.config)
    if args.seeds is not None:
        seeds = _int_flag("--seeds", args.seeds, 1)
    else:
        seeds = 3 if args.quick else 10
    settings = ReproduceSettings.quick(seeds) if args.quick else ReproduceSettings(seeds=seeds)
    report = reproduce(base, args.out, settings, overwrite=args.overwrite,
                       on_stage=lambda s: log.info("reproduce: %s", s))
    print("\n".join(claims_lines(report)))
    print(f"claims.json and figures in {args.out} ({report['seconds']:.1f} s)")
    return 0


#: The subcommands of ``useful-sim``: name -> (help, its flags, its handler).
COMMANDS = {
    "run": Command("one configuration: trajectory to OUT.npz + OUT.json", _run_arguments, _cmd_run),
    "sweep": Command("a grid of configurations times seeds, batched and resumable", _sweep_arguments, _cmd_sweep),
    "reproduce": Command("the claims report and figures", _reproduce_arguments, _cmd_reproduce),
}


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``useful-sim`` (one subparser per entry of :data:`COMMANDS`)."""
    return build_parser("useful-sim", __doc__.split("\n\n")[0], COMMANDS)


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``useful-sim``."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = make_parser().parse_args(argv)
    try:
        # Overflow on the way to a divergence is detected (non-finite weights -> SimulationDiverged,
        # one line, exit 1); numpy's RuntimeWarnings about it would only add lines to stderr.
        with np.errstate(over="ignore", invalid="ignore"):
            return args.handler(args)
    except SimulationDiverged as err:
        sys.stderr.write(f"error: {err}\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
