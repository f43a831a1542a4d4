"""``useful-train`` (also ``python -m real``): full-scale training with and without USEFUL.

The subcommands are :data:`COMMANDS` (most from their modules' ``add_arguments`` and ``command``); ``run``'s
flags are :class:`~real.config.TrainConfig`'s fields with dashes (:func:`resolve_run_config`).  An invalid
value, unknown key or missing data set ends with exit status 2 and one line on stderr; a run that diverges exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Sequence

# OpenMP threads that busy-wait (the default) collapse when the CPU is shared with other jobs (two
# threads measured 5x slower than one); passive waiting costs little when the CPU is idle.  Set before
# torch is imported; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from theory.plumbing.cli import Command, build_parser, cli_entry  # noqa: E402
from theory.plumbing.config import ConfigError, add_config_arguments, to_jsonable  # noqa: E402

from . import compare, download, grid, reproduce, sharpness  # noqa: E402
from .config import TrainConfig, describe_preset, preset_names, resolve_train_config  # noqa: E402
from .datasets import DatasetError  # noqa: E402
from .rundir import is_run_dir, read_config  # noqa: E402
from .train import train  # noqa: E402

__all__ = ["main", "COMMANDS", "resolve_run_config", "config_toml"]


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="a TOML file of TrainConfig keys (flags override it)")
    parser.add_argument("--preset", metavar="NAME", default=None,
                        help="a setting of the paper as the base, e.g. cifar10-resnet18-sgd (useful-train presets "
                             "lists them); --optimizer picks the setting's values for that optimizer")
    add_config_arguments(parser, TrainConfig, exclude=("preset",))


def resolve_run_config(args: argparse.Namespace | dict[str, Any], *, with_sources: bool = False):
    """``run``'s :class:`~real.config.TrainConfig`: defaults < preset < ``--config`` < flags (``with_sources``:
    also each value's source).  With ``--resume`` and a run in ``--out``, its stored configuration replaces
    defaults and preset, so ``run --out DIR --resume`` is enough (the trainer refuses changes to what is computed)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    config_path, preset = given.get("config"), given.get("preset")
    cfg, sources = resolve_train_config(given, config_path=config_path, preset=preset)
    if cfg.resume and cfg.out is not None and is_run_dir(cfg.out):
        cfg, sources = resolve_train_config(given, config_path=config_path, stored=read_config(cfg.out))
    return (cfg, sources) if with_sources else cfg


def _run(args: argparse.Namespace) -> int:
    cfg = resolve_run_config(args)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, datefmt="%H:%M:%S", stream=sys.stderr,
                        format="%(asctime)s " + (f"[rank {rank}] " if rank else "") + "%(levelname)s %(message)s")
    # SIGTERM (scancel, a preemption, torchrun stopping its workers) ends the run like Ctrl-C: the
    # last checkpoint stays and the run lock is released, so a requeued job on another node can resume.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = train(cfg)
    except DatasetError as err:
        raise ConfigError("--data-dir", message=f"--data-dir: {err}") from None
    return 0 if summary.get("status") == "completed" else 1


def _presets(args: argparse.Namespace) -> int:
    names = preset_names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe_preset(name)}")
    return 0


def config_toml(cfg, sources: dict[str, str]) -> str:
    """The resolved configuration as TOML (tomli-w), each value commented with its source; fields
    without a value (None: TOML has no null) appear as comments."""
    import tomli_w

    data = to_jsonable(cfg)
    lines = ["# useful-train config: the fully resolved configuration (nothing was trained).",
             "# Save it and pass it back with --config FILE; a comment says where each value came from."]
    width = max(len(k) for k in data)
    for key, value in data.items():
        text = f"# {key} is not set" if value is None else tomli_w.dumps({key: value}).strip()
        lines.append(f"{text:<{width + 24}}  # {sources[key]}")
    return "\n".join(lines) + "\n"


def _config(args: argparse.Namespace) -> int:
    sys.stdout.write(config_toml(*resolve_run_config(args, with_sources=True)))
    return 0


COMMANDS: dict[str, Command] = {
    "run": Command("one training run (flags: the configuration's fields)", _run_arguments, _run),
    "config": Command("print the fully resolved configuration of a run as TOML (trains nothing)", _run_arguments,
                      _config),
    "presets": Command("list the presets: the paper's settings x optimizers", lambda parser: None, _presets),
    "compare": Command("test error (mean/std over seeds), paired differences and training time relative to SGD "
                       "over run directories; --out draws the bar plot", compare.add_arguments, compare.command),
    "sharpness": Command("Hessian top eigenvalue(s), trace (Hutchinson) and L1 norm of runs' checkpoints",
                         sharpness.add_arguments, sharpness.command),
    "grid": Command(grid.HELP, grid.add_arguments, grid.command),
    "download": Command(download.HELP, download.add_arguments, download.command),
    "reproduce": Command(reproduce.HELP, reproduce.add_arguments, reproduce.command),
}


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser("useful-train", "Full-scale training with USEFUL (upsample early for uniform learning), "
                        "SGD/SAM/ASAM.", COMMANDS).parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
