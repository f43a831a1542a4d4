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

    [slurm]                              # optional: defaults for submit_slurm (sbatch option names)
    partition = "gpu"
    time = "12:00:00"
    gpus_per_node = 1

The grid above has ``2 x 2`` settings ``x 3`` seeds = 12 runs.  A run's configuration is, lowest
precedence first: the preset (from ``[base]`` or an axis named ``preset``), ``[base]``, the axis
values, the seed.  Each run gets

* a run directory ``OUT/runs/<name>`` whose name lists the axis values and the seed, e.g.
  ``optimizer=sam,useful=true,seed=0``;
* a generated configuration ``OUT/configs/<name>.toml`` holding every key above, so that the run is
  ``python -m real run --config OUT/configs/<name>.toml --out OUT/runs/<name>`` (plus ``--resume``
  when the directory already holds a run);

and ``OUT/grid.json`` lists them all (``useful-train compare OUT/runs/*`` tabulates the results).
:func:`submit_slurm` also writes ``OUT/jobs/<name>.json`` (the job specification) and
``OUT/jobs/<name>.sbatch``.  Runs whose summary.json says ``completed`` are skipped, so re-running or
re-submitting a grid only does what is missing.

``submitit`` is imported only when jobs are really submitted through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from theory.plumbing.config import ConfigError, config_from_mapping, load_toml

from .rundir import has_run_files, read_summary, run_status

__all__ = [
    "GridSpec",
    "GridRun",
    "GRID_KEYS",
    "GRID_CONTROLLED",
    "load_grid",
    "expand",
    "expand_runs",
    "run_command",
    "toml_text",
    "write_run_files",
    "run_local",
    "submit_slurm",
    "sbatch_script",
    "slurm_minutes",
    "register_commands",
]

GRID_KEYS = ("out", "seeds", "base", "axes", "slurm")
# Fields the grid sets itself (seed from ``seeds``, the directory from ``out``).
GRID_CONTROLLED = ("seed", "out", "resume", "overwrite")
MAX_NAME = 200  # longer run names are cut and end in a hash (file names are at most 255 bytes)

# Slurm options submitit knows as ``slurm_<name>`` (the others go to ``slurm_additional_parameters``).
_SUBMITIT_SLURM = frozenset({
    "partition", "qos", "constraint", "exclude", "account", "gres", "mail_type", "mail_user", "nodelist",
    "dependency", "exclusive", "comment", "wckey", "mem", "mem_per_gpu", "mem_per_cpu", "cpus_per_gpu",
    "gpus_per_task", "signal_delay_s", "array_parallelism", "setup",
})


@dataclass(frozen=True)
class GridSpec:
    """A grid of runs.

    Attributes
    ----------
    base : TrainConfig keys shared by all runs (``preset`` names a preset expanded underneath them).
    axes : field -> list of values; the settings are the Cartesian product, in the given order.
    seeds : the seeds; every setting runs once per seed.
    out_root : the grid's folder (runs/, configs/, jobs/, grid.json).
    slurm : default Slurm options for :func:`submit_slurm` (sbatch option names, ``_`` or ``-``).
    source : where the spec came from (for messages).
    """

    base: Mapping[str, Any] = field(default_factory=dict)
    axes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    out_root: str = "runs/grid"
    slurm: Mapping[str, Any] = field(default_factory=dict)
    source: str = "grid"


@dataclass(frozen=True)
class GridRun:
    """One run of a grid: its name, directory, generated TOML file, configuration mapping (the keys
    written to that file), axis values and seed."""

    name: str
    run_dir: str
    config_file: str
    config: dict[str, Any]
    axes: dict[str, Any]
    seed: int


# ----------------------------------------------------------------------------------------------
# Reading and expanding.


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
        An unknown key (naming it and the file), a value of the wrong type, or a run whose
        configuration is invalid (naming the run and the field).
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
    out = data.get("out", str(Path("runs") / path.stem))
    if not isinstance(out, str) or not out:
        raise ConfigError("out", message=f"{source}: 'out' must be a directory path (a non-empty string)")
    spec = GridSpec(
        base=dict(data.get("base", {})),
        axes=dict(data.get("axes", {})),
        seeds=tuple(seeds),
        out_root=out,
        slurm=dict(data.get("slurm", {})),
        source=source,
    )
    expand_runs(spec)  # every run's configuration is valid
    _slurm_params(spec.slurm, source)
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


def expand_runs(spec: GridSpec) -> list[GridRun]:
    """Every (setting, seed) of ``spec`` as a :class:`GridRun`, seeds outermost (all settings of the
    first seed come first, so a partly finished grid already covers every setting), each
    configuration validated as a :class:`~real.config.TrainConfig`."""
    from .config import TrainConfig, load_preset

    base, axes, seeds = _check_spec(spec)
    out_root = Path(spec.out_root)
    runs: list[GridRun] = []
    names: dict[str, dict] = {}
    presets: dict[str, dict] = {}
    for seed in seeds:
        for values in itertools.product(*axes.values()):
            combo = dict(zip(axes, values))
            preset = combo.get("preset", base.get("preset"))
            layer: dict[str, Any] = {}
            if preset is not None:
                if not isinstance(preset, str):
                    raise ConfigError("preset", message=f"{spec.source}: preset must be a preset name, got {preset!r}")
                if preset not in presets:
                    presets[preset] = load_preset(preset)  # ConfigError naming --preset if unknown
                layer = dict(presets[preset])
            config = {**layer, **{k: v for k, v in base.items() if k != "preset"}, **combo, "seed": seed}
            if preset is not None:
                config["preset"] = preset
            name = _run_name(combo, seed)
            if name in names:
                raise ConfigError("axes", message=f"{spec.source}: runs {names[name]} and {combo} get the same directory name {name!r}")
            names[name] = combo
            run_dir = str(out_root / "runs" / name)
            try:
                config_from_mapping(TrainConfig, {**config, "out": run_dir}, source=f"{spec.source} (run {name})")
            except ConfigError as err:
                raise ConfigError(err.field, err.value, err.expected,
                                  message=f"{spec.source}: run {name}: {err}") from None
            runs.append(GridRun(name=name, run_dir=run_dir, config_file=str(out_root / "configs" / f"{name}.toml"),
                                config=config, axes=combo, seed=seed))
    return runs


def expand(spec: GridSpec) -> list[tuple[str, dict]]:
    """``(run_dir, config mapping)`` for every setting x seed (see :func:`expand_runs`)."""
    return [(r.run_dir, dict(r.config)) for r in expand_runs(spec)]


# ----------------------------------------------------------------------------------------------
# Files of a run.


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string (JSON's escapes are TOML's)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise ConfigError(key, value, "a TOML value (string, number, boolean or list)")


def toml_text(config: Mapping[str, Any], *, header: str = "") -> str:
    """A flat TOML document of ``config`` (None values are left out: TOML has no null)."""
    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in config.items():
        if value is None:
            continue
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"


def run_command(run: GridRun, *, resume: bool, python: str | None = None, extra_args: Sequence[str] = (),
                gpus: int = 1) -> list[str]:
    """``python -m real run --config CONFIG --out RUN_DIR [--resume] [extra_args]``; with ``gpus > 1``
    the same through ``python -m torch.distributed.run --standalone --nproc-per-node=GPUS``."""
    python = python or sys.executable
    launcher = [python]
    if gpus > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    command = launcher + ["-m", "real", "run", "--config", run.config_file, "--out", run.run_dir]
    if resume:
        command.append("--resume")
    return command + list(extra_args)


def write_run_files(spec: GridSpec, runs: Sequence[GridRun]) -> Path:
    """Write ``OUT/configs/<name>.toml`` for each run and ``OUT/grid.json``; returns the manifest path."""
    from theory.plumbing.atomic import atomic_write_json, atomic_write_text

    out_root = Path(spec.out_root)
    for run in runs:
        header = f"generated by real.grid from {spec.source}: run {run.name}\n" \
                 f"python -m real run --config {run.config_file} --out {run.run_dir}"
        atomic_write_text(run.config_file, toml_text(run.config, header=header))
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


def _skip_reason(run_dir: str, rerun_diverged: bool) -> str | None:
    status = run_status(run_dir)
    if status == "completed":
        return "completed"
    if status == "diverged" and not rerun_diverged:
        return "diverged"
    return None


# ----------------------------------------------------------------------------------------------
# Local runs.


def _default_runner(command: Sequence[str]) -> int:
    return subprocess.run(list(command), check=False).returncode


def run_local(spec: GridSpec, *, dry_run: bool = False, runner: Callable[[list[str]], Any] | None = None,
              python: str | None = None, extra_args: Sequence[str] = (), rerun_diverged: bool = False,
              stop_on_error: bool = False) -> list[dict]:
    """Run the grid here, one run after another.

    Each run is ``python -m real run --config OUT/configs/<name>.toml --out OUT/runs/<name>``, with
    ``--resume`` when the directory already holds a run's files (a checkpoint to continue; the
    trainer restarts a run that died before its first checkpoint).  Runs whose summary.json says
    ``completed`` are skipped, and so are ``diverged`` ones unless ``rerun_diverged`` (resuming
    replays the same computation, so it diverges again).

    Parameters
    ----------
    dry_run : write nothing, run nothing; report the commands.
    runner : ``runner(command) -> return code`` (or an object with ``returncode``); default
        ``subprocess.run`` with the output going to this process's stdout/stderr.
    python : the interpreter (default ``sys.executable``).
    extra_args : flags appended to every command (e.g. ``["--device", "cuda"]``).
    stop_on_error : stop at the first run that fails (default: go on with the others).

    Returns
    -------
    list of dict
        Per run: ``name``, ``run_dir``, ``config_file``, ``command``, ``resume``, ``status``
        (``dry-run``, ``skipped``, ``completed``, ``diverged`` or ``failed``), ``reason`` (why skipped
        or failed), ``returncode`` and ``seconds`` (of the runs that ran).
    """
    runs = expand_runs(spec)
    runner = runner or _default_runner
    if not dry_run:
        write_run_files(spec, runs)
    results: list[dict] = []
    for i, run in enumerate(runs):
        resume = has_run_files(run.run_dir)
        command = run_command(run, resume=resume, python=python, extra_args=extra_args)
        entry: dict[str, Any] = {"name": run.name, "run_dir": run.run_dir, "config_file": run.config_file,
                                 "command": command, "resume": resume, "status": None, "reason": None,
                                 "returncode": None, "seconds": None}
        results.append(entry)
        reason = _skip_reason(run.run_dir, rerun_diverged)
        if reason is not None:
            entry.update(status="skipped", reason=reason)
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
# Slurm.


def slurm_minutes(value: Any) -> int:
    """A Slurm time limit in minutes: an integer (minutes) or ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` (sbatch's formats); seconds are rounded up."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    text = str(value).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if isinstance(value, bool) or not m:
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


def _slurm_params(params: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dict(params).items():
        name = str(key).replace("-", "_")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(str(key), message=f"{source}: slurm option {key!r} is not an sbatch option name")
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(str(key), message=f"{source}: slurm option {key!r} must be a string, number or boolean")
        out[name] = value
    if "time" in out:
        slurm_minutes(out["time"])
    for key in ("gpus_per_node", "nodes", "cpus_per_task"):
        if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 0):
            raise ConfigError(key, message=f"{source}: slurm option {key!r} must be an integer >= 0, got {out[key]!r}")
    if int(out.get("nodes", 1)) > 1:
        raise ConfigError("nodes", message=f"{source}: slurm option 'nodes' must be 1 (a run uses one node; "
                                           "use gpus_per_node for several GPUs)")
    return out


def sbatch_script(command: Sequence[str], params: Mapping[str, Any], *, job_name: str, log_path: str, cwd: str,
                  note: str = "") -> str:
    """An sbatch script: one ``#SBATCH --option=value`` per Slurm option (``true`` gives a bare
    ``--option``, ``false`` leaves it out), then ``cd CWD`` and ``exec COMMAND``."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --output={log_path}"]
    for key, value in params.items():
        if key in ("job_name", "output"):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            lines.append(f"#SBATCH {flag}")
        elif value is not False:
            lines.append(f"#SBATCH {flag}={value}")
    if note:
        lines += [f"# {line}" for line in note.splitlines()]
    lines += ["set -euo pipefail", f"cd {shlex.quote(cwd)}", "exec " + shlex.join(list(command))]
    return "\n".join(lines) + "\n"


def _submitit_parameters(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Slurm options as ``submitit.AutoExecutor.update_parameters`` keywords."""
    kwargs: dict[str, Any] = {"name": params.get("job_name", name)}
    additional: dict[str, Any] = {}
    for key, value in params.items():
        if key == "job_name":
            continue
        if key == "time":
            kwargs["timeout_min"] = slurm_minutes(value)
        elif key in ("gpus_per_node", "cpus_per_task", "nodes"):
            kwargs[key] = int(value)
        elif key == "ntasks_per_node":
            kwargs["tasks_per_node"] = int(value)
        elif key in _SUBMITIT_SLURM:
            kwargs[f"slurm_{key}"] = str(value) if key == "mem" else value
        else:
            additional[key] = value
    if additional:
        kwargs["slurm_additional_parameters"] = additional
    return kwargs


def _import_submitit():
    try:
        return importlib.import_module("submitit"), importlib.import_module("submitit.helpers")
    except ModuleNotFoundError:
        raise ConfigError("--launcher", message="--launcher: submitit is not installed; pip install submitit "
                          "(or write the job files only with --dry-run, or use --launcher sbatch)") from None


def submit_slurm(spec: GridSpec, *, dry_run: bool = True, slurm: Mapping[str, Any] | None = None,
                 launcher: str = "submitit", python: str | None = None, extra_args: Sequence[str] = (),
                 rerun_diverged: bool = False) -> list[dict]:
    """Write a job per run (and submit it unless ``dry_run``).

    For every run not yet completed: ``OUT/configs/<name>.toml``, ``OUT/jobs/<name>.json`` (the job
    specification: ``name``, ``run_dir``, ``config_file``, ``command``, ``cwd``, ``slurm``,
    ``script``, ``log``, and once submitted ``job_id``) and ``OUT/jobs/<name>.sbatch``.  The command
    always has ``--resume``: a job that is requeued or resubmitted continues from the checkpoint, a
    fresh directory starts fresh.  With ``gpus_per_node > 1`` the command goes through ``torchrun``
    (``python -m torch.distributed.run --standalone``), one process per GPU.

    Parameters
    ----------
    dry_run : write the files, contact no scheduler (the default).
    slurm : Slurm options (sbatch names with ``_`` or ``-``: partition, time, gpus_per_node,
        cpus_per_task, mem, account, qos, constraint, ...) over the grid file's ``[slurm]`` table.
    launcher : ``"submitit"`` (``submitit.AutoExecutor``, one job per run, running the command through
        ``submitit.helpers.CommandFunction``) or ``"sbatch"`` (``sbatch --parsable SCRIPT``).

    Returns
    -------
    list of dict
        Per run: ``name``, ``run_dir``, ``status`` (``dry-run``, ``submitted``, ``skipped`` or
        ``failed``), ``reason``, ``job_id``, ``job_file``, ``script``, ``command``.

    Raises
    ------
    ConfigError
        An unknown launcher; submitit (or sbatch) missing when ``dry_run`` is False.
    """
    if launcher not in ("submitit", "sbatch"):
        raise ConfigError("--launcher", launcher, "one of 'submitit', 'sbatch' (or 'local' for run_local)")
    params = _slurm_params({**dict(spec.slurm), **dict(slurm or {})}, "--slurm" if slurm else spec.source)
    runs = expand_runs(spec)
    submitit = helpers = None
    if not dry_run:
        if launcher == "submitit":
            submitit, helpers = _import_submitit()
        elif shutil.which("sbatch") is None:
            raise ConfigError("--launcher", message="--launcher: sbatch is not on PATH (not a Slurm login node?)")
    from theory.plumbing.atomic import atomic_write_json, atomic_write_text

    write_run_files(spec, runs)
    jobs = Path(spec.out_root) / "jobs"
    cwd = os.getcwd()
    gpus = int(params.get("gpus_per_node", 1) or 1)
    results: list[dict] = []
    for run in runs:
        command = run_command(run, resume=True, python=python, extra_args=extra_args, gpus=gpus)
        job_file, script = jobs / f"{run.name}.json", jobs / f"{run.name}.sbatch"
        entry: dict[str, Any] = {"name": run.name, "run_dir": run.run_dir, "status": None, "reason": None,
                                 "job_id": None, "job_file": str(job_file), "script": str(script), "command": command}
        results.append(entry)
        reason = _skip_reason(run.run_dir, rerun_diverged)
        if reason is not None:
            entry.update(status="skipped", reason=reason, job_file=None, script=None)
            continue
        job_name = str(params.get("job_name", "useful-" + run.name))
        log_path = str(jobs / f"{run.name}.%j.out")
        spec_json: dict[str, Any] = {
            "name": run.name,
            "run_dir": run.run_dir,
            "config_file": run.config_file,
            "command": command,
            "cwd": cwd,
            "slurm": {"job_name": job_name, **{k: v for k, v in params.items() if k != "job_name"}},
            "launcher": launcher,
            "script": str(script),
            "log": log_path,
            "job_id": None,
        }
        note = (f"generated by real.grid from {spec.source}: run {run.name}\n"
                "resubmitting is safe: the run resumes from its checkpoint (a completed run is not redone)")
        atomic_write_text(script, sbatch_script(command, params, job_name=job_name, log_path=log_path, cwd=cwd, note=note))
        os.chmod(script, 0o755)
        if dry_run:
            entry["status"] = "dry-run"
        elif launcher == "submitit":
            executor = submitit.AutoExecutor(folder=str(jobs / "submitit"))
            executor.update_parameters(**_submitit_parameters({**params, "job_name": job_name}, job_name))
            job = executor.submit(helpers.CommandFunction(command, cwd=cwd))
            entry.update(status="submitted", job_id=str(job.job_id))
        else:
            proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                entry.update(status="submitted", job_id=proc.stdout.strip().split(";")[0])
            else:
                entry.update(status="failed", reason=(proc.stderr.strip() or f"sbatch exit status {proc.returncode}"))
        spec_json["job_id"] = entry["job_id"]
        atomic_write_json(job_file, spec_json)
    return results


# ----------------------------------------------------------------------------------------------
# CLI: useful-train grid FILE


def _grid_arguments(parser) -> None:
    parser.add_argument("grid", metavar="FILE", help="a grid TOML file (see real/grid.py or docs/training.md)")
    parser.add_argument("--launcher", choices=("local", "submitit", "sbatch"), default="local",
                        help="local: run here one after another (default); submitit / sbatch: Slurm jobs")
    parser.add_argument("--dry-run", action="store_true",
                        help="run and submit nothing: list the commands (Slurm: also write the job files)")
    parser.add_argument("--partition", default=None, help="Slurm partition (over the grid file's [slurm])")
    parser.add_argument("--time", default=None, help="Slurm time limit, e.g. 12:00:00")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per run (> 1: torchrun)")
    parser.add_argument("--account", default=None, help="Slurm account")
    parser.add_argument("--rerun-diverged", action="store_true", help="run diverged runs again (default: skip)")
    parser.add_argument("--stop-on-error", action="store_true", help="local: stop at the first failed run")


def _grid_handler(args) -> int:
    spec = load_grid(args.grid)
    slurm = {k: v for k, v in (("partition", args.partition), ("time", args.time),
                               ("gpus_per_node", args.gpus_per_node), ("account", args.account)) if v is not None}
    if args.launcher == "local":
        if slurm:
            flag = "--" + next(iter(slurm)).replace("_", "-")
            raise ConfigError(flag, message=f"{flag}: a Slurm option needs --launcher submitit or sbatch")
        results = run_local(spec, dry_run=args.dry_run, rerun_diverged=args.rerun_diverged,
                            stop_on_error=args.stop_on_error)
    else:
        results = submit_slurm(spec, dry_run=args.dry_run, slurm=slurm, launcher=args.launcher,
                               rerun_diverged=args.rerun_diverged)
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
    print(f"{len(results)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; results: useful-train compare {shlex.quote(str(Path(spec.out_root) / 'runs'))}/*")
    return 1 if any(e.get("status") in ("failed", "diverged") for e in results) else 0


def register_commands(register_command) -> None:
    register_command("grid", "run a grid of configurations x seeds here, or submit it to Slurm (submitit/sbatch)",
                     _grid_arguments, _grid_handler)
