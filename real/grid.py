"""Grids of training runs (settings x seeds), run one after another here or submitted to Slurm.

A grid file is TOML::

    # runs/useful-cifar10.toml
    out = "runs/useful-cifar10"          # where everything goes (relative to the working directory)
    seeds = [0, 1, 2]

    [base]                               # TrainConfig fields shared by every run
    preset = "cifar10-resnet18-sgd"      # optional: a preset's keys first, then the others here
    epochs = 200

    [axes]                               # every combination of these values is a setting
    optimizer = ["sgd", "sam"]
    useful = [false, true]

    [slurm]                              # optional: sbatch options (long names, "_" or "-")
    partition = "gpu"
    time = "12:00:00"
    gpus_per_node = 1

The grid above has ``2 x 2`` settings ``x 3`` seeds = 12 runs.  A run's configuration is, lowest
precedence first: the preset (from ``[base]`` or an axis named ``preset``; with its values for the
run's optimizer, e.g. SAM's radius of the setting), ``[base]``, the axis
values, the seed.  Two runs whose resolved :class:`~real.config.TrainConfig` is the same (``lr = [1,
1.0]``) are refused, and so is a run directory that holds a run of another configuration.  Each run gets

* a run directory ``OUT/runs/<name>`` whose name lists the axis values and the seed, e.g.
  ``optimizer=sam,useful=true,seed=0``;
* a generated configuration ``OUT/configs/<name>.toml`` (written with tomli-w), so that the run is
  ``python -m real run --config OUT/configs/<name>.toml --out OUT/runs/<name>`` (plus ``--resume``
  when the directory already holds a run);

and ``OUT/grid.json`` lists them all (``useful-train compare OUT/runs/*`` tabulates the results).
Completed runs are skipped (diverged ones too, unless asked), so running a grid again only does what
is missing.

Slurm goes through submitit (:func:`submit_slurm`): the runs left to do are one job array of
``submitit.SlurmExecutor`` (one task per run, at most ``array_parallelism`` at once), each task
running :class:`TrainJob`.  The Slurm options are checked once, when a :class:`GridSpec` is made: known
sbatch option names only, values without newlines or other control characters (submitit writes them
into ``#SBATCH`` lines of a bash script).  ``OUT/jobs/<name>.json`` records what was passed to
submitit for each run (and its job ID once submitted); a dry run writes the same files and contacts no
scheduler.  There is no hand-written sbatch script: submitit serves every case this module has.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import importlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import (
    ConfigError,
    config_digest,
    config_from_mapping,
    load_toml,
)

from .rundir import (
    config_differences,
    has_run_files,
    is_run_dir,
    read_config,
    read_summary,
    run_status,
)

__all__ = [
    "GridSpec",
    "GridRun",
    "TrainJob",
    "load_grid",
    "expand_runs",
    "slurm_options",
    "slurm_minutes",
    "run_local",
    "submit_slurm",
    "register_commands",
]

GRID_KEYS = ("out", "seeds", "base", "axes", "slurm")
# Fields the grid sets itself (seed from ``seeds``, the directory from ``out``).
GRID_CONTROLLED = ("seed", "out", "resume", "overwrite")
MAX_NAME = 200  # longer run names are cut and end in a hash (file names are at most 255 bytes)
MAX_ARRAY = 1000  # tasks per job array (Slurm's default MaxArraySize is 1001)

# sbatch's long options (Slurm 22.05-24.x) that a grid may set, with "_" for "-".  Left out: what
# submitit sets itself (output, error, open-mode, signal, array) and what is not a job directive
# (wrap, parsable, wait, test-only, input, help, ...).
SBATCH_OPTIONS = frozenset("""
    account acctg_freq batch bb bbf begin chdir cluster_constraint clusters comment constraint container
    contiguous core_spec cores_per_socket cpu_freq cpus_per_gpu cpus_per_task deadline delay_boot dependency
    distribution exclude exclusive export export_file extra_node_info get_user_env gid gpu_bind gpu_freq gpus
    gpus_per_node gpus_per_socket gpus_per_task gres gres_flags hint hold ignore_pbs job_name
    kill_on_invalid_dep licenses mail_type mail_user mcs_label mem mem_bind mem_per_cpu mem_per_gpu mincpus
    network nice no_kill no_requeue nodefile nodelist nodes ntasks ntasks_per_core ntasks_per_gpu
    ntasks_per_node ntasks_per_socket overcommit oversubscribe partition power prefer priority profile propagate qos
    reboot requeue reservation sockets_per_node spread_job switches thread_spec threads_per_core time time_min
    tmp tres_bind tres_per_task uid use_min_nodes wait_all_nodes wckey
""".split())
# submitit's own option: how many tasks of the array run at once.
GRID_SLURM_OPTIONS = frozenset({"array_parallelism"})
# Options that submitit's SlurmExecutor takes by name; the other sbatch options go to
# ``additional_parameters`` (submitit writes both as ``#SBATCH --name=value``).
_SUBMITIT_NAMED = frozenset({
    "job_name", "partition", "time", "nodes", "ntasks_per_node", "cpus_per_task", "cpus_per_gpu", "gpus_per_node",
    "gpus_per_task", "qos", "mem", "mem_per_gpu", "mem_per_cpu", "comment", "constraint", "exclude", "account",
    "gres", "mail_type", "mail_user", "nodelist", "dependency", "exclusive", "wckey", "array_parallelism",
})


# ----------------------------------------------------------------------------------------------
# Slurm options: checked once, here.


def slurm_minutes(value: Any) -> int:
    """A Slurm time limit in minutes: an integer (minutes) or ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` (sbatch's formats); seconds are rounded up."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError("time", value, "minutes or a Slurm time such as 12:00:00 or 1-00:00:00")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
    elif c is not None:  # HH:MM:SS
        minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    elif b is not None:  # MM:SS
        minutes = int(a) + (1 if int(b) else 0)
    else:
        minutes = int(a)
    if minutes < 1:
        raise ConfigError("time", value, "a positive time limit")
    return minutes


def _control_character(text: str) -> str | None:
    """The first newline, tab or other control character (or line separator) in ``text``."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def slurm_options(options: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """Check Slurm options and return them with ``_`` names, ``false`` ones left out.

    ``source`` names where they come from (a grid file: errors say ``FILE: slurm option 'x'``);
    None means command-line flags (errors name ``--x``).  A name must be a known sbatch long option
    (or ``array_parallelism``); a value a non-empty string without control characters, an integer
    >= 0 or a boolean (true: a bare ``--flag``).  ``time`` must be a Slurm time; ``nodes``,
    ``ntasks`` and ``ntasks_per_node`` must be 1 (a run is one process, or torchrun on one node).

    Raises
    ------
    ConfigError
        One line naming the option.
    """
    out: dict[str, Any] = {}
    for key, value in dict(options).items():
        name = str(key).replace("-", "_")
        label = f"{source}: slurm option {str(key)!r}" if source else "--" + name.replace("_", "-")
        bad = _control_character(str(key))
        if bad is not None or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(name, message=f"{label}: not an sbatch option name")
        if name in ("output", "error", "open_mode", "signal", "array"):
            raise ConfigError(name, message=f"{label}: submitit sets it (the logs go to OUT/jobs/submitit/)")
        if name not in SBATCH_OPTIONS and name not in GRID_SLURM_OPTIONS:
            raise ConfigError(name, message=f"{label}: unknown; expected an sbatch long option such as partition, "
                                            "time, gpus_per_node, cpus_per_task, mem, account, qos, constraint")
        if isinstance(value, str):
            bad = _control_character(value)
            if bad is not None:
                raise ConfigError(name, message=f"{label}: got {value!r}, expected a value without a newline or "
                                                f"other control character (found {bad!r})")
            if not value.strip():
                raise ConfigError(name, message=f"{label}: got {value!r}, expected a non-empty value")
        elif isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ConfigError(name, message=f"{label}: got {value!r}, expected an integer >= 0")
        elif not isinstance(value, bool):
            raise ConfigError(name, message=f"{label}: got {value!r}, expected a string, an integer or true/false")
        if value is False:
            continue
        if name == "time":
            try:
                slurm_minutes(value)
            except ConfigError as err:
                raise ConfigError(name, message=f"{label}: got {value!r}, expected {err.expected}") from None
        if name in ("nodes", "ntasks", "ntasks_per_node") and value not in (1, "1"):
            raise ConfigError(name, message=f"{label}: got {value!r}, expected 1 (a run is one process, or torchrun "
                                            "with one process per GPU of one node: use gpus_per_node)")
        if name == "array_parallelism" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(name, message=f"{label}: got {value!r}, expected an integer >= 1")
        out[name] = value
    try:
        _gpus(out)
    except ConfigError as err:
        label = f"{source}: slurm option {err.field!r}" if source else "--" + err.field.replace("_", "-")
        raise ConfigError(err.field, message=f"{label}: got {err.value!r}, expected {err.expected}") from None
    return out


def _gpus(options: Mapping[str, Any]) -> int:
    """GPUs a run gets: ``gpus_per_node`` (or ``gpus``, or ``gres = "gpu[:type]:N"``), as ``[type:]N``."""
    for key in ("gpus_per_node", "gpus"):
        if key in options:
            m = re.fullmatch(r"(?:[^:]+:)?(\d+)", str(options[key]))
            if not m:
                raise ConfigError(key, options[key], "a GPU count, N or TYPE:N")
            return int(m.group(1))
    m = re.search(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)(?:,|$)", str(options.get("gres", "")))
    return int(m.group(1)) if m else 1


# ----------------------------------------------------------------------------------------------
# The grid.


@dataclass(frozen=True)
class GridSpec:
    """A grid of runs.

    Attributes
    ----------
    base : TrainConfig keys shared by all runs (``preset`` names a preset expanded underneath them).
    axes : field -> list of values; the settings are the Cartesian product, in the given order.
    seeds : the seeds; every setting runs once per seed.
    out_root : the grid's folder (runs/, configs/, jobs/, grid.json).
    slurm : Slurm options for :func:`submit_slurm`, checked by :func:`slurm_options` (names with ``_``).
    source : where the spec came from (for messages).
    """

    base: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    out_root: str = "runs/grid"
    slurm: Mapping[str, Any] = field(default_factory=dict)
    source: str = "grid"

    def __post_init__(self) -> None:
        if not isinstance(self.out_root, str) or not self.out_root or _control_character(self.out_root):
            raise ConfigError("out", message=f"{self.source}: 'out' must be a directory path without control "
                                             f"characters, got {self.out_root!r}")
        object.__setattr__(self, "slurm", slurm_options(self.slurm, self.source))


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its name, directory, generated TOML file, configuration mapping (the keys
    written to that file), axis values, seed and resolved :class:`~real.config.TrainConfig`."""

    name: str
    run_dir: str
    config_file: str
    config: dict[str, Any]
    axes: dict[str, Any]
    seed: int
    resolved: Any = field(repr=False, compare=False, default=None)


def _train_fields() -> set[str]:
    from .config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _field_key(key: str, where: str, source: str, fields: set[str]) -> str:
    name = key.replace("-", "_")
    if name not in fields:
        allowed = ", ".join(sorted(f.replace("_", "-") for f in fields if f not in GRID_CONTROLLED))
        raise ConfigError(key, message=f"{source}: unknown key {where}{key!r}; allowed keys: {allowed}")
    if name in GRID_CONTROLLED:
        hint = "use the top-level 'seeds'" if name == "seed" else "the grid sets it (use the top-level 'out')"
        raise ConfigError(key, message=f"{source}: key {where}{key!r} is not allowed in a grid; {hint}")
    return name


def load_grid(path: str | os.PathLike) -> GridSpec:
    """Read a grid TOML file (see the module docstring) and check every run's configuration.

    Raises
    ------
    ConfigError
        An unknown key (naming it and the file), a value of the wrong type, a run whose configuration
        is invalid (naming the run and the field), two runs of one configuration, a bad Slurm option.
    """
    path = Path(path)
    source = str(path)
    data = load_toml(path)
    for key in data:
        if key not in GRID_KEYS:
            raise ConfigError(key, message=f"{source}: unknown key {key!r}; allowed keys: {', '.join(GRID_KEYS)}")
    for key in ("base", "axes", "slurm"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(key, message=f"{source}: {key!r} must be a table ([{key}])")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list):
        raise ConfigError("seeds", message=f"{source}: 'seeds' must be a list of integers >= 0, got {seeds!r}")
    spec = GridSpec(base=dict(data.get("base", {})), axes=dict(data.get("axes", {})), seeds=tuple(seeds),
                    out_root=data.get("out", str(Path("runs") / path.stem)), slurm=dict(data.get("slurm", {})),
                    source=source)
    expand_runs(spec)  # every run's configuration is valid, and no two are the same
    return spec


def _check_spec(spec: GridSpec) -> tuple[dict[str, Any], dict[str, list[Any]], tuple[int, ...]]:
    source, fields = spec.source, _train_fields()
    base = {_field_key(k, "base.", source, fields): v for k, v in dict(spec.base).items()}
    axes: dict[str, list[Any]] = {}
    for key, values in dict(spec.axes).items():
        name = _field_key(key, "axes.", source, fields)
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) or len(values) == 0:
            raise ConfigError(key, message=f"{source}: axes.{key} must be a non-empty list of values, got {values!r}")
        if name in axes:
            raise ConfigError(key, message=f"{source}: axis {key!r} is given twice")
        axes[name] = list(values)
    seeds = tuple(spec.seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError("seeds", message=f"{source}: 'seeds' must be a non-empty list of integers >= 0, got {list(seeds)!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", message=f"{source}: 'seeds' has duplicates: {list(seeds)!r}")
    return base, axes, seeds


def _token(value: Any) -> str:
    """A value as it appears in a run name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(_token(v) for v in value) or "empty"
    return str(value)


def _run_name(axis_values: Mapping[str, Any], seed: int) -> str:
    """``field=value,...,seed=S`` (field names with dashes; unsafe characters become ``_``)."""
    parts = [f"{k.replace('_', '-')}={_token(v)}" for k, v in axis_values.items()] + [f"seed={seed}"]
    name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(parts))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: MAX_NAME - 11] + "-" + digest
    return name


def _identity(cfg) -> str:
    """What a resolved run computes (:func:`real.config.computed_config`), as its digest: two runs
    that differ only in how they run (``eval_batch_size``, ``device``, ``tensorboard``) are one."""
    from .config import computed_config

    return config_digest(computed_config(cfg))


def expand_runs(spec: GridSpec) -> list[GridRun]:
    """Every (setting, seed) of ``spec`` as a :class:`GridRun`, seeds outermost (all settings of the
    first seed come first, so a partly finished grid already covers every setting), each
    configuration validated as a :class:`~real.config.TrainConfig`.

    Raises
    ------
    ConfigError
        An invalid run (naming it and the field); two runs with the same resolved configuration
        (e.g. ``lr = [1, 1.0]`` or ``useful = [true, "true"]``) or the same directory name.
    """
    from .config import TrainConfig, load_preset
    from .optim import OPTIMIZERS

    base, axes, seeds = _check_spec(spec)
    out_root = Path(spec.out_root)
    runs: list[GridRun] = []
    names: dict[str, str] = {}
    identities: dict[str, str] = {}
    presets: dict[tuple, dict] = {}
    for seed in seeds:
        for values in itertools.product(*axes.values()):
            combo = dict(zip(axes, values))
            preset = combo.get("preset", base.get("preset"))
            layer: dict[str, Any] = {}
            if preset is not None:
                if not isinstance(preset, str):
                    raise ConfigError("preset", message=f"{spec.source}: preset must be a preset name, got {preset!r}")
                # The preset's values for the run's optimizer (an axis or [base] may set it): a grid
                # over optimizers on an -sgd preset runs SAM at the setting's radius, not the default.
                optimizer = combo.get("optimizer", base.get("optimizer"))
                key = (preset, optimizer if isinstance(optimizer, str) else None)
                if key not in presets:
                    presets[key] = load_preset(preset, optimizer=key[1] if key[1] in OPTIMIZERS else None)
                layer = dict(presets[key])
            config = {**layer, **{k: v for k, v in base.items() if k != "preset"}, **combo, "seed": seed}
            if preset is not None:
                config["preset"] = preset
            name = _run_name(combo, seed)
            run_dir = str(out_root / "runs" / name)
            try:
                resolved = config_from_mapping(TrainConfig, {**config, "out": run_dir}, source=f"{spec.source} (run {name})")
            except ConfigError as err:
                raise ConfigError(err.field, err.value, err.expected,
                                  message=f"{spec.source}: run {name}: {err}") from None
            identity = _identity(resolved)
            if identity in identities:
                raise ConfigError("axes", message=f"{spec.source}: runs {identities[identity]} and {name} have the same "
                                                  "configuration (one value written two ways, such as 1 and 1.0?)")
            if name in names:
                raise ConfigError("axes", message=f"{spec.source}: runs {names[name]} and {combo} get the same "
                                                  f"directory name {name!r}")
            identities[identity], names[name] = name, str(combo)
            runs.append(GridRun(name=name, run_dir=run_dir, config_file=str(out_root / "configs" / f"{name}.toml"),
                                config=config, axes=combo, seed=seed, resolved=resolved))
    return runs


# ----------------------------------------------------------------------------------------------
# What is left to do.


def _left_to_do(spec: GridSpec, runs: Sequence[GridRun], rerun_diverged: bool) -> list[str | None]:
    """Per run: why it is skipped (``completed``, ``diverged``) or None (to run).

    Raises
    ------
    ConfigError
        A run directory that holds a run of another configuration (naming the run and the fields):
        its results are not this grid's, and resuming it would be refused anyway.
    """
    reasons: list[str | None] = []
    for run in runs:
        if is_run_dir(run.run_dir):
            diff = config_differences(read_config(run.run_dir), run.resolved)
            if diff:
                fields = ", ".join(f"{n.replace('_', '-')} is {now!r}, was {then!r}" for n, then, now in diff)
                raise ConfigError("out", message=f"{spec.source}: run {run.name}: {run.run_dir} holds a run of "
                                                 f"another configuration ({fields}); change 'out' or remove that folder")
        status = run_status(run.run_dir)
        reasons.append(status if status == "completed" or (status == "diverged" and not rerun_diverged) else None)
    return reasons


def run_command(run: GridRun, *, resume: bool, gpus: int = 1) -> list[str]:
    """``python -m real run --config CONFIG --out RUN_DIR [--resume]``; with ``gpus > 1`` the same
    through ``python -m torch.distributed.run --standalone --nproc-per-node=GPUS``."""
    launcher = [sys.executable]
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    return launcher + ["-m", "real", "run", "--config", run.config_file, "--out", run.run_dir] + (["--resume"] if resume else [])


def write_run_files(spec: GridSpec, runs: Sequence[GridRun]) -> Path:
    """Write ``OUT/configs/<name>.toml`` for each run (tomli-w) and ``OUT/grid.json``; returns the manifest."""
    import tomli_w

    from theory.plumbing.atomic import atomic_write_json, atomic_write_text

    out_root = Path(spec.out_root)
    for run in runs:
        header = (f"# generated by useful-train grid from {json.dumps(spec.source)}: run {run.name}\n"
                  f"# {shlex.join(run_command(run, resume=False))}\n")
        # TOML has no null: a None value is the field's default (every optional field's default is None).
        atomic_write_text(run.config_file, header + tomli_w.dumps({k: v for k, v in run.config.items() if v is not None}))
    manifest = out_root / "grid.json"
    atomic_write_json(manifest, {
        "source": spec.source,
        "out_root": str(out_root),
        "axes": {k: list(v) for k, v in dict(spec.axes).items()},
        "seeds": list(spec.seeds),
        "runs": [{"name": r.name, "run_dir": r.run_dir, "config_file": r.config_file, "axes": r.axes, "seed": r.seed}
                 for r in runs],
    })
    return manifest


# ----------------------------------------------------------------------------------------------
# Local runs.


def _default_runner(command: Sequence[str]) -> int:
    return subprocess.run(list(command), check=False).returncode


def run_local(spec: GridSpec, *, dry_run: bool = False, runner: Callable[[list[str]], Any] | None = None,
              rerun_diverged: bool = False, stop_on_error: bool = False) -> list[dict]:
    """Run the grid here, one run after another.

    Each run is ``python -m real run --config OUT/configs/<name>.toml --out OUT/runs/<name>``, with
    ``--resume`` when the directory already holds a run's files (a checkpoint to continue; the
    trainer restarts a run that died before its first checkpoint).  Completed runs are skipped, and
    so are diverged ones unless ``rerun_diverged`` (resuming replays the same computation, so it
    diverges again).

    Parameters
    ----------
    dry_run : write nothing, run nothing; report the commands.
    runner : ``runner(command) -> return code`` (or an object with ``returncode``); default
        ``subprocess.run`` with the output going to this process's stdout/stderr.
    stop_on_error : stop at the first run that fails (default: go on with the others).

    Returns
    -------
    list of dict
        Per run: ``name``, ``run_dir``, ``config_file``, ``command``, ``resume``, ``status``
        (``dry-run``, ``skipped``, ``completed``, ``diverged``, ``failed`` or ``not-run``), ``reason``
        (why skipped or failed), ``returncode`` and ``seconds`` (of the runs that ran).
    """
    runs = expand_runs(spec)
    skips = _left_to_do(spec, runs, rerun_diverged)
    runner = runner or _default_runner
    if not dry_run:
        write_run_files(spec, runs)
    results: list[dict] = []
    for i, (run, skip) in enumerate(zip(runs, skips)):
        resume = has_run_files(run.run_dir)
        command = run_command(run, resume=resume)
        entry: dict[str, Any] = {"name": run.name, "run_dir": run.run_dir, "config_file": run.config_file,
                                 "command": command, "resume": resume, "status": None, "reason": None,
                                 "returncode": None, "seconds": None}
        results.append(entry)
        if skip is not None:
            entry.update(status="skipped", reason=skip)
            continue
        if dry_run:
            entry["status"] = "dry-run"
            continue
        start = time.perf_counter()
        outcome = runner(command)
        entry["seconds"] = time.perf_counter() - start
        code = int(getattr(outcome, "returncode", outcome) or 0)
        entry["returncode"] = code
        status = run_status(run.run_dir)
        if code == 0 and status == "completed":
            entry["status"] = "completed"
        elif status == "diverged":
            entry.update(status="diverged", reason=(read_summary(run.run_dir) or {}).get("message") or "diverged")
        else:
            entry.update(status="failed", reason=f"exit status {code}" + ("" if status else ", no summary"))
        if entry["status"] != "completed" and stop_on_error:
            for rest in runs[i + 1 :]:
                results.append({"name": rest.name, "run_dir": rest.run_dir, "config_file": rest.config_file,
                                "command": None, "resume": None, "status": "not-run",
                                "reason": f"stopped after {run.name} failed", "returncode": None, "seconds": None})
            break
    return results


# ----------------------------------------------------------------------------------------------
# Slurm, through submitit.


class TrainJob:
    """What one Slurm task runs (submitit pickles it): the run's command, in ``cwd``.

    The command has ``--resume``, so a task that runs again (requeued by Slurm, or the grid
    submitted again) continues from the run's last checkpoint, and a completed run is not redone.
    The training process ignores submitit's warning signal (USR2, sent ``signal_delay_s`` before the
    time limit or on preemption); submitit then calls :meth:`checkpoint`, which stops it with SIGINT
    (it releases the run's lock; what it computed up to its last epoch is in the checkpoint) and
    hands submitit this same job to requeue.
    """

    def __init__(self, name: str, command: Sequence[str], cwd: str, run_dir: str, stop_timeout_s: float = 60.0):
        self.name, self.command, self.cwd, self.run_dir = name, list(command), cwd, run_dir
        self.stop_timeout_s = stop_timeout_s
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _child=None)

    def __call__(self) -> dict:
        if run_status(os.path.join(self.cwd, self.run_dir)) == "completed":
            return {"name": self.name, "status": "completed", "returncode": 0}
        warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
        previous = signal.signal(warning, signal.SIG_IGN)  # ignored signals stay ignored across exec
        try:
            self._child = subprocess.Popen(self.command, cwd=self.cwd)
        finally:
            signal.signal(warning, previous)
        # Poll rather than wait(): checkpoint() runs in a signal handler on top of this frame, and a
        # wait() interrupted there would hold the lock that the handler's own poll() needs.
        while (code := self._child.poll()) is None:
            time.sleep(0.2)
        status = run_status(os.path.join(self.cwd, self.run_dir))
        if code != 0 or status != "completed":
            raise RuntimeError(f"run {self.name}: exit status {code}, summary status {status}")
        return {"name": self.name, "status": status, "returncode": code}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Stop the training process (SIGINT, then SIGKILL after ``stop_timeout_s``) and return this
        job for submitit to requeue."""
        import submitit

        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            deadline = time.monotonic() + self.stop_timeout_s
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if child.poll() is None:
                child.kill()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _import_submitit():
    try:
        return importlib.import_module("submitit")
    except ModuleNotFoundError:
        raise ConfigError("--launcher", message="--launcher: submitit is not installed; pip install submitit "
                          "(or write the job specifications only, with --dry-run)") from None


def _executor_parameters(spec: GridSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` keywords for ``options`` (checked ones)."""
    if "time" not in options:
        raise ConfigError("time", message="--time: a Slurm time limit is needed (give [slurm] time or --time; "
                                          "submitit's default would be 5 minutes)")
    params: dict[str, Any] = {"job_name": "useful-grid-" + Path(spec.out_root).name}
    additional: dict[str, Any] = {}
    for key, value in options.items():
        if key == "time":
            params[key] = slurm_minutes(value)
        elif key in _SUBMITIT_NAMED:
            params[key] = value
        else:
            additional[key] = value
    if additional:
        params["additional_parameters"] = additional
    return params


def _read_job_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _queued_job_ids() -> set[str]:
    """IDs of this user's jobs that Slurm still holds (pending, running, requeued), one per array task."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EnvironmentFailure(f"squeue: {err}") from None
    if proc.returncode != 0:
        raise EnvironmentFailure("squeue: " + (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1])
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def submit_slurm(spec: GridSpec, *, dry_run: bool = False, rerun_diverged: bool = False) -> list[dict]:
    """Submit the runs left to do as one Slurm job array through submitit (or, with ``dry_run``,
    write what would be submitted and contact no scheduler).

    Writes ``OUT/configs/<name>.toml``, ``OUT/grid.json`` and, per run to submit,
    ``OUT/jobs/<name>.json``: ``executor`` and ``folder`` (the submitit executor and its folder),
    ``parameters`` (exactly what is passed to its ``update_parameters``), ``function``, ``command``
    and ``cwd`` (the :class:`TrainJob` each task runs), ``array`` (the run's task index and the
    array's size), ``job_id`` (None until submitted) and ``log``.
    The command always has ``--resume``: a task that is requeued or submitted again continues from
    the checkpoint.  With more than one GPU per run the command goes through torchrun
    (``python -m torch.distributed.run --standalone``), one process per GPU.

    A run whose recorded job is still queued or running is not submitted again (``queued``);
    completed runs (and diverged ones, unless ``rerun_diverged``) are skipped.

    Returns
    -------
    list of dict
        Per run: ``name``, ``run_dir``, ``status`` (``dry-run``, ``submitted``, ``queued``, ``skipped``
        or ``failed``), ``reason``, ``job_id``, ``job_file``, ``command``.

    Raises
    ------
    ConfigError
        No time limit; submitit missing (unless ``dry_run``); a run directory of another configuration.
    EnvironmentFailure
        squeue fails.
    """
    runs = expand_runs(spec)
    skips = _left_to_do(spec, runs, rerun_diverged)
    params = _executor_parameters(spec, spec.slurm)
    submitit = None if dry_run else _import_submitit()
    if not dry_run and (shutil.which("sbatch") is None or shutil.which("squeue") is None):
        raise EnvironmentFailure("--launcher submitit: sbatch or squeue is not on PATH (not a Slurm login node?); "
                                 "--dry-run writes the job specifications without Slurm")
    queued = set() if dry_run else _queued_job_ids()
    jobs_dir = Path(spec.out_root).absolute() / "jobs"
    folder = jobs_dir / "submitit"
    cwd = os.getcwd()
    gpus = _gpus(spec.slurm)
    write_run_files(spec, runs)

    from theory.plumbing.atomic import atomic_write_json

    results: list[dict] = []
    todo: list[tuple[GridRun, dict, dict]] = []  # (run, result entry, job record)
    for run, skip in zip(runs, skips):
        command = run_command(run, resume=True, gpus=gpus)
        job_file = jobs_dir / f"{run.name}.json"
        entry: dict[str, Any] = {"name": run.name, "run_dir": run.run_dir, "status": None, "reason": None,
                                 "job_id": None, "job_file": str(job_file), "command": command}
        results.append(entry)
        previous = (_read_job_record(job_file) or {}).get("job_id")
        if skip is not None:
            entry.update(status="skipped", reason=skip, job_file=None)
        elif previous is not None and str(previous) in queued:
            entry.update(status="queued", reason="still in the queue", job_id=str(previous))
        else:
            record = {"name": run.name, "run_dir": run.run_dir, "config_file": run.config_file,
                      "executor": "submitit.SlurmExecutor", "folder": str(folder), "parameters": params,
                      "function": f"{TrainJob.__module__}.{TrainJob.__qualname__}", "command": command,
                      "cwd": cwd, "job_id": None, "log": None}
            todo.append((run, entry, record))
    for i, (_, _, record) in enumerate(todo):  # each MAX_ARRAY runs are one job array (one run: a plain job)
        size = min(MAX_ARRAY, len(todo) - i // MAX_ARRAY * MAX_ARRAY)
        record["array"] = {"index": i % MAX_ARRAY, "size": size} if size > 1 else None
    if dry_run:
        for _, entry, record in todo:
            atomic_write_json(entry["job_file"], {**record, "dry_run": True})
            entry["status"] = "dry-run"
        return results
    for start in range(0, len(todo), MAX_ARRAY):
        chunk = todo[start : start + MAX_ARRAY]
        try:
            executor = submitit.SlurmExecutor(folder=folder)
            executor.update_parameters(**params)
            with executor.batch():
                submitted = [executor.submit(TrainJob(run.name, record["command"], cwd, run.run_dir))
                             for run, _, record in chunk]
        except (RuntimeError, OSError) as err:  # sbatch refused (submitit's FailedJobError holds its stderr), ...
            reason = (str(err).strip().splitlines() or ["sbatch failed"])[-1]
            for _, entry, record in chunk:
                entry.update(status="failed", reason=reason)
                atomic_write_json(entry["job_file"], {**record, "error": entry["reason"]})
            continue
        for job, (_, entry, record) in zip(submitted, chunk):
            entry.update(status="submitted", job_id=str(job.job_id))
            atomic_write_json(entry["job_file"], {**record, "job_id": str(job.job_id), "log": str(job.paths.stdout)})
    return results


# ----------------------------------------------------------------------------------------------
# CLI: useful-train grid FILE


def _grid_arguments(parser) -> None:
    parser.add_argument("grid", metavar="FILE", help="a grid TOML file (see docs/training.md)")
    parser.add_argument("--launcher", choices=("local", "submitit"), default="local",
                        help="local: run here one after another (default); submitit: a Slurm job array")
    parser.add_argument("--dry-run", action="store_true",
                        help="run and submit nothing: list the commands (submitit: also write OUT/jobs/*.json)")
    parser.add_argument("--partition", default=None, help="Slurm partition (over the grid file's [slurm])")
    parser.add_argument("--time", default=None, help="Slurm time limit, e.g. 12:00:00")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per run (> 1: torchrun)")
    parser.add_argument("--account", default=None, help="Slurm account")
    parser.add_argument("--rerun-diverged", action="store_true", help="run diverged runs again (default: skip)")
    parser.add_argument("--stop-on-error", action="store_true", help="local: stop at the first failed run")


def _grid_handler(args) -> int:
    flags = {k: v for k, v in (("partition", args.partition), ("time", args.time),
                               ("gpus_per_node", args.gpus_per_node), ("account", args.account)) if v is not None}
    if args.launcher == "local" and flags:
        flag = "--" + next(iter(flags)).replace("_", "-")
        raise ConfigError(flag, message=f"{flag}: a Slurm option needs --launcher submitit")
    if args.launcher != "local" and args.stop_on_error:
        raise ConfigError("--stop-on-error", message="--stop-on-error: only for --launcher local (Slurm runs the "
                                                     "tasks of a job array side by side)")
    flags = slurm_options(flags)  # the command line's options, checked here (the file's by GridSpec)
    spec = load_grid(args.grid)
    if args.launcher == "local":
        results = run_local(spec, dry_run=args.dry_run, rerun_diverged=args.rerun_diverged,
                            stop_on_error=args.stop_on_error)
    else:
        spec = dataclasses.replace(spec, slurm={**spec.slurm, **flags})
        results = submit_slurm(spec, dry_run=args.dry_run, rerun_diverged=args.rerun_diverged)
    counts: dict[str, int] = {}
    for entry in results:
        status = entry.get("status") or "?"
        counts[status] = counts.get(status, 0) + 1
        line = f"{status:<10} {entry['name']}"
        if entry.get("reason"):
            line += f"  ({entry['reason']})"
        if entry.get("job_id"):
            line += f"  job {entry['job_id']}"
        print(line)
        if status == "dry-run" and entry.get("command"):
            print("           " + shlex.join(entry["command"]))
    if args.launcher == "submitit" and args.dry_run:
        print(f"job specifications (what would be passed to submitit): {Path(spec.out_root) / 'jobs'}/*.json")
    print(f"{len(results)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; results: useful-train compare {shlex.quote(str(Path(spec.out_root) / 'runs'))}/*")
    return 1 if any(e.get("status") in ("failed", "diverged") for e in results) else 0


def register_commands(register_command) -> None:
    register_command("grid", "run a grid of configurations x seeds here, or submit it to Slurm (submitit)",
                     _grid_arguments, _grid_handler)
