"""``useful-train grid FILE``: a grid of training runs (settings x seeds), here or on Slurm.

A grid file (TOML, docs/training.md) is read into a :class:`GridSpec`.  A run's configuration is, lowest first:
the preset (its values for the run's optimizer), ``[base]``, the axis values, the seed.  Each run is ``python -m
real run --config OUT/configs/<name>.toml --out OUT/runs/<name> [--resume]``; ``OUT/grid.json`` lists them.
Completed runs (and diverged ones, unless asked) are skipped.  On Slurm, submitit (an optional extra) submits
the runs left to do as job arrays of :class:`TrainJob`; ``OUT/jobs/<name>.json`` records what it got.
"""

from __future__ import annotations

import collections
import dataclasses
import getpass
import hashlib
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

import tomli_w

from theory.plumbing.atomic import atomic_write_json, atomic_write_text
from theory.plumbing.cli import EnvironmentFailure
from theory.plumbing.config import ConfigError, config_digest, config_from_mapping, load_toml

from .config import TrainConfig, computed_config, load_preset
from .optim import OPTIMIZERS
from .rundir import config_differences, has_run_files, is_run_dir, read_config, read_summary, run_status

__all__ = ["GridSpec", "GridRun", "TrainJob", "load_grid", "expand_runs", "slurm_options", "slurm_minutes",
           "run_command", "write_run_files", "run_local", "submit_slurm", "HELP", "add_arguments", "command"]

HELP = "run a grid of configurations x seeds here, or submit it to Slurm (submitit)"
INSTALL = "pip install 'useful-sb[slurm]'"
GRID_KEYS = ("out", "seeds", "base", "axes", "slurm")
GRID_CONTROLLED = ("seed", "out", "resume", "overwrite")  # the grid sets them (from seeds and out)
MAX_NAME = 200  # longer run names are cut and end in a hash (file names are at most 255 bytes)
MAX_ARRAY = 1000  # tasks per job array (Slurm's default MaxArraySize is 1001)

# sbatch's long options (Slurm 22.05-24.x), "_" for "-", less SUBMITIT_SETS and non-directives (wrap, ...):
# a misspelt option is refused here, before a dry run writes a job that sbatch would refuse.
SBATCH_OPTIONS = frozenset("""
    account acctg_freq batch bb bbf begin chdir cluster_constraint clusters comment constraint container
    contiguous core_spec cores_per_socket cpu_freq cpus_per_gpu cpus_per_task deadline delay_boot dependency
    distribution exclude exclusive export export_file extra_node_info get_user_env gid gpu_bind gpu_freq gpus
    gpus_per_node gpus_per_socket gpus_per_task gres gres_flags hint hold ignore_pbs job_name
    kill_on_invalid_dep licenses mail_type mail_user mcs_label mem mem_bind mem_per_cpu mem_per_gpu mincpus
    network nice no_kill no_requeue nodefile nodelist nodes ntasks ntasks_per_core ntasks_per_gpu
    ntasks_per_node ntasks_per_socket overcommit oversubscribe partition power prefer priority profile propagate qos
    reboot requeue reservation sockets_per_node spread_job switches thread_spec threads_per_core time time_min
    tmp tres_bind tres_per_task uid use_min_nodes wait_all_nodes wckey array_parallelism
""".split())  # array_parallelism: submitit's own (how many tasks of the array run at once)
SUBMITIT_SETS = ("output", "error", "open_mode", "signal", "array")
# Given to SlurmExecutor.update_parameters by name; every other option goes in its additional_parameters,
# which submitit writes as "#SBATCH --name=value" (true: "--name") as it would the named ones.
SUBMITIT_NAMED = ("job_name", "time", "array_parallelism")
GPU_COUNT = r"(?:[^:]+:)?(\d+)"  # gpus_per_node / gpus: N or TYPE:N


# -- Slurm options: checked once, here ---------------------------------------------------------


def slurm_minutes(value: Any) -> int:
    """A Slurm time limit in minutes: an integer (minutes) or sbatch's ``MM``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``; seconds are rounded up."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip()) if isinstance(value, str) else None
    if not m:
        raise ConfigError("time", value, "minutes or a Slurm time such as 12:00:00 or 1-00:00:00")
    days, parts = m.group(1), [int(p) for p in m.groups()[1:] if p is not None]
    units = ([3600, 60, 1] if days or len(parts) == 3 else [60, 1])[: len(parts)]  # seconds per part
    seconds = int(days or 0) * 86400 + sum(p * u for p, u in zip(parts, units))
    if seconds < 1:
        raise ConfigError("time", value, "a positive time limit")
    return -(-seconds // 60)


def _control_character(text: str) -> str | None:
    """The first control character or line separator in ``text``: in an ``#SBATCH`` line, a newline starts a command."""
    return next((c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def _value_problem(name: str, value: Any) -> str | None:
    """What a Slurm option's value was expected to be, or None when it is fine."""
    if isinstance(value, str) and (bad := _control_character(value)) is not None:
        return f"a value without a newline or other control character (found {bad!r})"
    if isinstance(value, str) and not value.strip():
        return "a non-empty value"
    if value is False:
        return None  # left out
    if not isinstance(value, (str, int)):
        return "a string, an integer or true/false"
    if name == "time":
        try:
            slurm_minutes(value)
        except ConfigError as err:
            return err.expected
    if name in ("nodes", "ntasks", "ntasks_per_node") and value not in (1, "1"):
        return "1 (a run is one process, or torchrun with one process per GPU of one node: use gpus_per_node)"
    if name == "array_parallelism" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        return "an integer >= 1"
    if name in ("gpus_per_node", "gpus") and not re.fullmatch(GPU_COUNT, str(value)):
        return "a GPU count, N or TYPE:N"
    return "an integer >= 0" if isinstance(value, int) and value < 0 else None


def slurm_options(options: Mapping[str, Any], source: str | None = None) -> dict[str, Any]:
    """The options with ``_`` names, the ``false`` ones left out (true: a bare ``--flag``), or a one-line
    :class:`ConfigError` naming the option (``FILE: slurm option 'x'``, or ``--x`` without ``source``)."""
    for key, value in dict(options).items():
        name = str(key).replace("-", "_")
        label = f"{source}: slurm option {str(key)!r}" if source else "--" + name.replace("_", "-")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(name, message=f"{label}: not an sbatch option name")
        if name in SUBMITIT_SETS:
            raise ConfigError(name, message=f"{label}: submitit sets it (the logs go to OUT/jobs/submitit/)")
        if name not in SBATCH_OPTIONS:
            raise ConfigError(name, message=f"{label}: unknown; expected an sbatch long option such as partition, "
                                            "time, gpus_per_node, cpus_per_task, mem, account, qos, constraint")
        if (expected := _value_problem(name, value)) is not None:
            raise ConfigError(name, value, expected, message=f"{label}: got {value!r}, expected {expected}")
    return {str(key).replace("-", "_"): value for key, value in dict(options).items() if value is not False}


def _gpus(options: Mapping[str, Any]) -> int:
    """GPUs a run gets: ``gpus_per_node`` (or ``gpus``, or ``gres = "gpu[:type]:N"``); default 1."""
    if (count := options.get("gpus_per_node", options.get("gpus"))) is not None:
        return int(re.fullmatch(GPU_COUNT, str(count)).group(1))
    m = re.search(r"(?:^|,)gpu(?::[^:,]+)?:(\d+)(?:,|$)", str(options.get("gres", "")))
    return int(m.group(1)) if m else 1


# -- The grid ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridSpec:
    """A grid: ``base`` keys of every run, ``axes`` (field -> values; the settings are their product), ``seeds``,
    ``out_root`` (holds runs/, configs/, jobs/, grid.json), ``slurm`` options (checked here), ``source``."""

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
    """One run: ``config`` holds the keys of its TOML file, ``resolved`` its :class:`~real.config.TrainConfig`."""

    name: str
    run_dir: str
    config_file: str
    config: dict[str, Any]
    axes: dict[str, Any]
    seed: int
    resolved: Any = field(repr=False, compare=False, default=None)


def load_grid(path: str | os.PathLike) -> GridSpec:
    """Read a grid file and check every run (:func:`expand_runs`); a bad key, value, run or Slurm
    option is a one-line :class:`ConfigError` naming it and the file."""
    path, source = Path(path), str(path)
    data = load_toml(path)
    for key, value in data.items():
        if key not in GRID_KEYS:
            raise ConfigError(key, message=f"{source}: unknown key {key!r}; allowed keys: {', '.join(GRID_KEYS)}")
        if key in ("base", "axes", "slurm") and not isinstance(value, dict):
            raise ConfigError(key, message=f"{source}: {key!r} must be a table ([{key}])")
    seeds = data.get("seeds", [0])
    spec = GridSpec(base=data.get("base", {}), axes=data.get("axes", {}),
                    seeds=tuple(seeds) if isinstance(seeds, list) else (seeds,),
                    out_root=data.get("out", str(Path("runs") / path.stem)), slurm=data.get("slurm", {}), source=source)
    expand_runs(spec)  # every run's configuration is valid, and no two are the same
    return spec


def _field_key(key: str, where: str, source: str, fields: set[str]) -> str:
    name = key.replace("-", "_")
    if name not in fields:
        allowed = ", ".join(sorted(f.replace("_", "-") for f in fields if f not in GRID_CONTROLLED))
        raise ConfigError(key, message=f"{source}: unknown key {where}{key!r}; allowed keys: {allowed}")
    if name in GRID_CONTROLLED:
        hint = "use the top-level 'seeds'" if name == "seed" else "the grid sets it (use the top-level 'out')"
        raise ConfigError(key, message=f"{source}: key {where}{key!r} is not allowed in a grid; {hint}")
    return name


def _check_spec(spec: GridSpec) -> tuple[dict[str, Any], dict[str, list[Any]], tuple[int, ...]]:
    """``base`` and ``axes`` with field names, and the seeds, checked."""
    source, fields = spec.source, {f.name for f in dataclasses.fields(TrainConfig)}
    base: dict[str, Any] = {}
    for key, value in dict(spec.base).items():
        if (name := _field_key(key, "base.", source, fields)) in base:  # batch-size and batch_size: one wins silently
            raise ConfigError(key, message=f"{source}: key base.{key!r} is given twice")
        base[name] = value
    axes: dict[str, list[Any]] = {}
    for key, values in dict(spec.axes).items():
        name = _field_key(key, "axes.", source, fields)
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(key, message=f"{source}: axes.{key} must be a non-empty list of values, got {values!r}")
        if name in axes:
            raise ConfigError(key, message=f"{source}: axis {key!r} is given twice")
        axes[name] = list(values)
    seeds = list(spec.seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError("seeds", message=f"{source}: 'seeds' must be a non-empty list of integers >= 0, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", message=f"{source}: 'seeds' has duplicates: {seeds!r}")
    return base, axes, tuple(seeds)


def _token(value: Any) -> str:
    """A value as it appears in a run name."""
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(_token(v) for v in value) or "empty"
    return str(value)  # a float's str is its repr


def _run_name(axis_values: Mapping[str, Any], seed: int) -> str:
    """``field=value,...,seed=S`` (field names with dashes; unsafe characters become ``_``)."""
    parts = [f"{k.replace('_', '-')}={_token(v)}" for k, v in axis_values.items()] + [f"seed={seed}"]
    name = re.sub(r"[^A-Za-z0-9._+=,-]", "_", ",".join(parts))
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 11] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def _make_run(spec: GridSpec, base: Mapping[str, Any], combo: dict[str, Any], seed: int) -> GridRun:
    """One run, under the keys of its preset (an axis or ``[base]``) for its optimizer: a grid over
    optimizers on an -sgd preset runs SAM at the setting's radius, not the default."""
    preset, optimizer = combo.get("preset", base.get("preset")), combo.get("optimizer", base.get("optimizer"))
    if preset is not None and not isinstance(preset, str):
        raise ConfigError("preset", message=f"{spec.source}: preset must be a preset name, got {preset!r}")
    known = isinstance(optimizer, str) and optimizer in OPTIMIZERS
    preset_keys = {} if preset is None else load_preset(preset, optimizer=optimizer if known else None)
    config = {**preset_keys, **base, **combo, "seed": seed}
    name = _run_name(combo, seed)
    run_dir = str(Path(spec.out_root) / "runs" / name)
    try:
        resolved = config_from_mapping(TrainConfig, {**config, "out": run_dir}, source=f"{spec.source} (run {name})")
    except ConfigError as err:
        raise ConfigError(err.field, err.value, err.expected, message=f"{spec.source}: run {name}: {err}") from None
    return GridRun(name=name, run_dir=run_dir, config_file=str(Path(spec.out_root) / "configs" / f"{name}.toml"),
                   config=config, axes=combo, seed=seed, resolved=resolved)


def expand_runs(spec: GridSpec) -> list[GridRun]:
    """Every (setting, seed) as a validated :class:`GridRun`, seeds outermost; two runs that compute
    the same (``lr = [1, 1.0]``, or only ``device`` differs) or share a name are refused naming both."""
    base, axes, seeds = _check_spec(spec)
    by_identity, by_name = {}, {}
    for seed in seeds:
        for values in itertools.product(*axes.values()):
            run = _make_run(spec, base, dict(zip(axes, values)), seed)
            identity = config_digest(computed_config(run.resolved))
            if identity in by_identity:
                raise ConfigError("axes", message=f"{spec.source}: runs {by_identity[identity].name} and {run.name} "
                                                  "have the same configuration (one value written two ways, such as "
                                                  "1 and 1.0?)")
            if run.name in by_name:
                raise ConfigError("axes", message=f"{spec.source}: runs {by_name[run.name].axes} and {run.axes} get "
                                                  f"the same directory name {run.name!r}")
            by_identity[identity] = by_name[run.name] = run
    return list(by_name.values())


def _left_to_do(spec: GridSpec, rerun_diverged: bool) -> tuple[list[GridRun], list[dict]]:
    """The runs, and per run its result entry: ``status`` skipped (``reason`` completed or diverged) or None (to do).
    A run directory holding a run of another configuration is a :class:`ConfigError` naming the run and the fields."""
    runs, entries = expand_runs(spec), []
    for run in runs:
        if is_run_dir(run.run_dir) and (diff := config_differences(read_config(run.run_dir), run.resolved)):
            fields = ", ".join(f"{n.replace('_', '-')} is {now!r}, was {then!r}" for n, then, now in diff)
            raise ConfigError("out", message=f"{spec.source}: run {run.name}: {run.run_dir} holds a run of another "
                                             f"configuration ({fields}); change 'out' or remove that folder")
        status = run_status(run.run_dir)
        skip = status if status == "completed" or (status == "diverged" and not rerun_diverged) else None
        entries.append({"name": run.name, "run_dir": run.run_dir, "status": skip and "skipped", "reason": skip})
    return runs, entries


def run_command(run: GridRun, *, resume: bool, gpus: int = 1) -> list[str]:
    """``python -m real run --config CONFIG --out RUN_DIR [--resume]``; with ``gpus > 1`` through
    ``python -m torch.distributed.run --standalone --nproc-per-node=GPUS``."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"] if gpus > 1 else []
    return [sys.executable, *torchrun, "-m", "real", "run", "--config", run.config_file, "--out", run.run_dir,
            *(["--resume"] if resume else [])]


def write_run_files(spec: GridSpec, runs: Sequence[GridRun]) -> Path:
    """Write ``OUT/configs/<name>.toml`` per run (tomli-w) and ``OUT/grid.json``; returns the latter."""
    for run in runs:
        header = (f"# generated by useful-train grid from {json.dumps(spec.source)}: run {run.name}\n"
                  f"# {shlex.join(run_command(run, resume=False))}\n")
        # TOML has no null: a None value is the field's default (every optional field's default is None).
        toml = tomli_w.dumps({k: v for k, v in run.config.items() if v is not None})
        atomic_write_text(run.config_file, header + toml)
    manifest = Path(spec.out_root) / "grid.json"
    atomic_write_json(manifest, {
        "source": spec.source, "out_root": str(Path(spec.out_root)),
        "axes": {k: list(v) for k, v in dict(spec.axes).items()}, "seeds": list(spec.seeds),
        "runs": [{"name": r.name, "run_dir": r.run_dir, "config_file": r.config_file, "axes": r.axes, "seed": r.seed}
                 for r in runs],
    })
    return manifest


# -- Local runs --------------------------------------------------------------------------------


def _outcome(run: GridRun, code: int) -> dict[str, Any]:
    """A finished run's ``status`` and ``reason``, from its exit status and its summary."""
    status = run_status(run.run_dir)
    if code == 0 and status == "completed":
        return {"status": "completed"}
    if status == "diverged":
        return {"status": "diverged", "reason": (read_summary(run.run_dir) or {}).get("message") or "diverged"}
    return {"status": "failed", "reason": f"exit status {code}" + ("" if status else ", no summary")}


def run_local(spec: GridSpec, *, dry_run: bool = False, runner: Callable[[list[str]], Any] | None = None,
              rerun_diverged: bool = False, stop_on_error: bool = False) -> list[dict]:
    """Run the grid here, one run after another (``--resume`` where a folder holds a run's files); per run
    an entry, ``status`` one of dry-run, skipped, completed, diverged, failed, not-run (after ``stop_on_error``).
    ``runner(command)`` returns the exit status or has ``returncode`` (default: a subprocess)."""
    runs, results = _left_to_do(spec, rerun_diverged)
    if not dry_run:
        write_run_files(spec, runs)
    runner = runner or (lambda command: subprocess.run(command, check=False))
    stopped_after = None
    for run, entry in zip(runs, results):
        resume = has_run_files(run.run_dir)
        entry.update(config_file=run.config_file, command=run_command(run, resume=resume), resume=resume,
                     returncode=None, seconds=None)
        if stopped_after is not None:
            entry.update(command=None, resume=None, status="not-run", reason=f"stopped after {stopped_after} failed")
        elif entry["status"] is None and dry_run:
            entry["status"] = "dry-run"
        elif entry["status"] is None:
            start = time.perf_counter()
            outcome = runner(entry["command"])
            code = int(getattr(outcome, "returncode", outcome) or 0)
            entry.update(returncode=code, seconds=time.perf_counter() - start, **_outcome(run, code))
            if entry["status"] != "completed" and stop_on_error:
                stopped_after = run.name
    return results


# -- Slurm, through submitit -------------------------------------------------------------------


class TrainJob:
    """What one Slurm task runs (submitit pickles it): the run's command (with ``--resume``) in ``cwd``. The training
    process ignores submitit's warning signal (USR2, before the time limit or on preemption); submitit then calls
    :meth:`checkpoint`: SIGINT stops the run (it keeps its last checkpoint, releases its lock), the job is requeued."""

    _child: subprocess.Popen | None = None  # the training process, while __call__ runs

    def __init__(self, name: str, command: Sequence[str], cwd: str, run_dir: str, stop_timeout_s: float = 60.0):
        self.name, self.command, self.cwd, self.run_dir = name, list(command), cwd, run_dir
        self.stop_timeout_s = stop_timeout_s

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}  # the process stays here

    def __call__(self) -> dict:
        run_dir = os.path.join(self.cwd, self.run_dir)
        if run_status(run_dir) != "completed":  # done already (a requeued task): not rerun
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
            if (status := run_status(run_dir)) != "completed" or code != 0:
                raise RuntimeError(f"run {self.name}: exit status {code}, summary status {status}")
        return {"name": self.name, "status": "completed", "returncode": 0}

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Stop the training process (SIGINT; SIGKILL after ``stop_timeout_s``); return this job to requeue."""
        import submitit

        if (child := self._child) is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _executor_parameters(spec: GridSpec) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` keywords for the spec's (checked) options."""
    if "time" not in spec.slurm:
        raise ConfigError("time", message="--time: a Slurm time limit is needed (give [slurm] time or --time; "
                                          "submitit's default would be 5 minutes)")
    params = {"job_name": "useful-grid-" + Path(spec.out_root).name, **spec.slurm}
    params["time"] = slurm_minutes(params["time"])
    additional = {k: params.pop(k) for k in list(params) if k not in SUBMITIT_NAMED}
    return {**params, "additional_parameters": additional} if additional else params


def _queued_job_ids() -> set[str]:
    """IDs of this user's jobs that Slurm still holds (pending, running, requeued), one per array task."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise EnvironmentFailure("--launcher submitit: sbatch or squeue is not on PATH (not a Slurm login node?); "
                                 "--dry-run writes the job specifications without Slurm")
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise EnvironmentFailure(f"squeue: {err}") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise EnvironmentFailure(f"squeue: {last}")
    return set(proc.stdout.split())


def _recorded_job_id(job_file: Path) -> str | None:
    try:
        job_id = json.loads(job_file.read_text(encoding="utf-8")).get("job_id")
    except (OSError, ValueError, AttributeError):  # no record, not JSON (or not UTF-8), not an object
        return None
    return None if job_id is None else str(job_id)


def _submit_array(submitit, chunk: Sequence[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Submit one job array (submitit's batch); per run what its entry and job record get (its job, or the refusal)."""
    first = chunk[0][1]
    try:
        executor = submitit.SlurmExecutor(folder=first["folder"])
        executor.update_parameters(**first["parameters"])
        with executor.batch():
            jobs = [executor.submit(TrainJob(r["name"], r["command"], r["cwd"], r["run_dir"])) for _, r in chunk]
    except (RuntimeError, OSError) as err:  # sbatch refused (submitit's FailedJobError holds its stderr), ...
        reason = (str(err).strip().splitlines() or ["sbatch failed"])[-1]
        return [({"status": "failed", "reason": reason}, {"error": reason})] * len(chunk)
    return [({"status": "submitted", "job_id": str(job.job_id)},
             {"job_id": str(job.job_id), "log": str(job.paths.stdout)}) for job in jobs]


def submit_slurm(spec: GridSpec, *, dry_run: bool = False, rerun_diverged: bool = False) -> list[dict]:
    """Submit the runs left to do as one job array through submitit, recording in ``OUT/jobs/<name>.json``
    what submitit gets (``dry_run``: only that, with neither submitit nor Slurm); every refusal comes first.
    Per run an entry, ``status`` one of dry-run, submitted, queued (its job still is), skipped, failed."""
    runs, results = _left_to_do(spec, rerun_diverged)
    parameters = _executor_parameters(spec)  # a time limit is needed, dry run or not
    submitit = None
    if not dry_run:  # the optional extra, imported only to submit
        try:
            import submitit
        except ImportError:
            raise ConfigError("--launcher", message="--launcher submitit needs the optional package submitit: "
                              f"{INSTALL} (--dry-run writes the job specifications without it)") from None
    queued = set() if dry_run else _queued_job_ids()
    jobs_dir, gpus = Path(spec.out_root).absolute() / "jobs", _gpus(spec.slurm)
    common = {"executor": "submitit.SlurmExecutor", "folder": str(jobs_dir / "submitit"), "parameters": parameters,
              "function": f"{TrainJob.__module__}.{TrainJob.__qualname__}", "cwd": os.getcwd(), "job_id": None,
              "log": None}
    todo = []
    for run, entry in zip(runs, results):
        command, job_file = run_command(run, resume=True, gpus=gpus), jobs_dir / f"{run.name}.json"
        entry.update(job_id=None, job_file=str(job_file), command=command)
        if entry["status"] == "skipped":
            entry["job_file"] = None
        elif (previous := _recorded_job_id(job_file)) in queued:  # None (no job recorded) never is
            entry.update(status="queued", reason="still in the queue", job_id=previous)
        else:
            todo.append((entry, {"name": run.name, "run_dir": run.run_dir, "config_file": run.config_file, **common,
                                 "command": command}))
    write_run_files(spec, runs)
    for first in range(0, len(todo), MAX_ARRAY):  # a job array each (one run: a job)
        chunk = todo[first : first + MAX_ARRAY]
        outcomes = ([({"status": "dry-run"}, {"dry_run": True})] * len(chunk) if dry_run
                    else _submit_array(submitit, chunk))
        for i, ((entry, record), (result, extra)) in enumerate(zip(chunk, outcomes)):
            entry.update(result)
            array = {"index": i, "size": len(chunk)} if len(chunk) > 1 else None
            atomic_write_json(entry["job_file"], {**record, "array": array, **extra})
    return results


# -- CLI: useful-train grid FILE ---------------------------------------------------------------


def add_arguments(parser) -> None:
    """The ``grid`` subcommand's flags."""
    parser.add_argument("grid", metavar="FILE", help="a grid TOML file: out, seeds, [base], [axes], [slurm] "
                                                     "(see docs/training.md)")
    parser.add_argument("--launcher", choices=("local", "submitit"), default="local",
                        help="local: run here, one after another; submitit: one Slurm job array (needs "
                             f"{INSTALL}) (default: local)")
    parser.add_argument("--dry-run", action="store_true", help="run and submit nothing: list the commands; "
                                                               "submitit: also write OUT/jobs/*.json (default: off)")
    parser.add_argument("--partition", metavar="NAME", default=None,
                        help="submitit only: Slurm partition (default: [slurm] partition, else Slurm's default)")
    parser.add_argument("--time", metavar="LIMIT", default=None,
                        help="submitit only: time limit per task, minutes or [D-]HH:MM:SS (default: [slurm] time; "
                             "one of them is required)")
    parser.add_argument("--gpus-per-node", metavar="N", type=int, default=None,
                        help="submitit only: GPUs per run, an integer >= 0; > 1 runs torchrun, one process per GPU "
                             "(default: [slurm] gpus_per_node, else 1)")
    parser.add_argument("--account", metavar="NAME", default=None,
                        help="submitit only: Slurm account to charge (default: [slurm] account, else yours)")
    parser.add_argument("--rerun-diverged", action="store_true",
                        help="run diverged runs again, resuming them (default: off, skip them)")
    parser.add_argument("--stop-on-error", action="store_true",
                        help="local only: stop at the first run that fails (default: off, go on with the others)")


def command(args) -> int:
    """``useful-train grid FILE``: a line per run and a count; exit 0, or 1 when a run failed or diverged."""
    flags = {k: v for k in ("partition", "time", "gpus_per_node", "account") if (v := getattr(args, k)) is not None}
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
    for entry in results:
        print(f"{entry['status']:<10} {entry['name']}" + (f"  ({entry['reason']})" if entry.get("reason") else "")
              + (f"  job {entry['job_id']}" if entry.get("job_id") else ""))
        if entry["status"] == "dry-run":
            print("           " + shlex.join(entry["command"]))
    if args.launcher == "submitit" and args.dry_run:
        print(f"job specifications (what would be passed to submitit): {Path(spec.out_root) / 'jobs'}/*.json")
    counts = collections.Counter(entry["status"] for entry in results)
    print(f"{len(results)} run(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"; results: useful-train compare {shlex.quote(str(Path(spec.out_root) / 'runs'))}/*")
    return 1 if any(e["status"] in ("failed", "diverged") for e in results) else 0
