"""real/grid.py: grid files, expansion, the local runner (with a fake runner), Slurm options, the job
specifications given to submitit (a fake submitit, then a real one-node Slurm cluster)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
import unicodedata
from pathlib import Path

import pytest
from helpers import REPO, env
from hypothesis import given
from hypothesis import strategies as st

from real.grid import (
    GridSpec,
    TrainJob,
    expand_runs,
    load_grid,
    run_local,
    slurm_minutes,
    slurm_options,
    submit_slurm,
)
from theory.plumbing.config import ConfigError, load_toml

PY = sys.executable
BASE = """
[base]
dataset = "synthetic"
model = "cnn-small"
epochs = 2
synthetic-train = 64
batch_size = 32
"""


def write_grid(tmp_path: Path, body: str, *, name: str = "grid.toml", out: str | None = None) -> Path:
    out = out or str(tmp_path / "out")
    path = tmp_path / name
    path.write_text(f'out = "{out}"\n' + body)
    return path


GOOD = BASE + """
[axes]
optimizer = ["sgd", "sam"]
useful = [false, true]
"""


def good_spec(tmp_path: Path, seeds: str = "seeds = [0, 1]\n", slurm: str = "") -> GridSpec:
    return load_grid(write_grid(tmp_path, seeds + slurm + GOOD))


def cli(capsys, *args: str) -> types.SimpleNamespace:
    """``useful-train ARGS`` in this process: its exit status, stdout and stderr."""
    from real.cli import main

    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=rc, stdout=out.out, stderr=out.err)


def cli_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m real ARGS`` in ``cwd`` (this checkout first on PYTHONPATH, also for Slurm's jobs)."""
    return subprocess.run([PY, "-m", "real", *args], capture_output=True, text=True, timeout=300, env=env(), cwd=cwd)


# ----------------------------------------------------------------------------------------------
# load_grid / expand_runs


def test_load_grid_and_expand(tmp_path):
    spec = good_spec(tmp_path)
    assert spec.seeds == (0, 1)
    assert spec.out_root == str(tmp_path / "out")
    assert dict(spec.axes) == {"optimizer": ["sgd", "sam"], "useful": [False, True]}
    runs = expand_runs(spec)
    assert len(runs) == 2 * 2 * 2
    names = [r.name for r in runs]
    assert len(set(names)) == len(names)
    assert names[:4] == [  # seeds outermost, axes in file order
        "optimizer=sgd,useful=false,seed=0",
        "optimizer=sgd,useful=true,seed=0",
        "optimizer=sam,useful=false,seed=0",
        "optimizer=sam,useful=true,seed=0",
    ]
    assert names[-1] == "optimizer=sam,useful=true,seed=1"
    last = runs[-1]
    assert Path(last.run_dir).parent == tmp_path / "out" / "runs"
    assert last.config == {"dataset": "synthetic", "model": "cnn-small", "epochs": 2, "synthetic_train": 64,
                           "batch_size": 32, "optimizer": "sam", "useful": True, "seed": 1}
    assert last.resolved.optimizer == "sam" and last.resolved.seed == 1 and last.resolved.out == last.run_dir


def test_default_out_and_seeds(tmp_path):
    path = tmp_path / "my-grid.toml"
    path.write_text(BASE)
    spec = load_grid(path)
    assert spec.out_root == str(Path("runs") / "my-grid") and spec.seeds == (0,)
    assert [r.name for r in expand_runs(spec)] == ["seed=0"]


def test_presets_in_base_and_as_an_axis(tmp_path):
    from real.config import load_preset

    spec = load_grid(write_grid(tmp_path, """
seeds = [3]
[base]
preset = "fashion-mnist-cnn-small"
epochs = 1
[axes]
lr = [0.1, 0.05]
milestones = [[1], []]
"""))
    runs = expand_runs(spec)
    assert [r.name for r in runs] == ["lr=0.1,milestones=1,seed=3", "lr=0.1,milestones=empty,seed=3",
                                      "lr=0.05,milestones=1,seed=3", "lr=0.05,milestones=empty,seed=3"]
    preset = load_preset("fashion-mnist-cnn-small")
    first = runs[0].config
    assert first["preset"] == "fashion-mnist-cnn-small" and first["epochs"] == 1  # base over the preset
    assert first["dataset"] == preset["dataset"] and first["separate_epoch"] == preset["separate_epoch"]
    assert first["lr"] == 0.1 and first["milestones"] == [1] and first["seed"] == 3
    spec2 = load_grid(write_grid(tmp_path, """
[base]
epochs = 3
[axes]
preset = ["cifar10-resnet18-sgd", "cifar10-resnet18-sam"]
""", name="p.toml"))
    configs = [r.config for r in expand_runs(spec2)]
    assert [c["optimizer"] for c in configs] == ["sgd", "sam"]
    assert all(c["epochs"] == 3 for c in configs)
    assert [c["preset"] for c in configs] == ["cifar10-resnet18-sgd", "cifar10-resnet18-sam"]
    # An optimizer axis on an -sgd preset takes the setting's radius for each optimizer (the Figure 4
    # grid: SAM at CIFAR10's rho 0.1, ASAM at its own), not the default 0.05.
    spec3 = load_grid(write_grid(tmp_path, """
[base]
preset = "cifar10-resnet18-sgd"
[axes]
optimizer = ["sgd", "sam", "asam"]
""", name="o.toml"))
    runs3 = expand_runs(spec3)
    assert [r.config.get("rho") for r in runs3] == [None, 0.1, 0.5]
    assert [r.resolved.rho for r in runs3][1:] == [0.1, 0.5]


@pytest.mark.parametrize(
    "body, key",
    [
        ("seed = [0]\n" + GOOD, "'seed'"),  # a top-level typo
        (GOOD + "learning_rate = [0.1]\n", "axes.'learning_rate'"),
        (GOOD.replace("[base]", "[base]\nwarmup = 1"), "base.'warmup'"),
        ("[slurm2]\npartition = 'gpu'\n" + GOOD, "'slurm2'"),
    ],
)
def test_unknown_keys_name_the_key_and_the_file(tmp_path, body, key):
    path = write_grid(tmp_path, body)
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_grid(path)
    assert key in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "body, words",
    [
        (GOOD + "seed = [1, 2]\n", ["'seed'", "seeds"]),
        (GOOD.replace("[base]", "[base]\nout = 'x'"), ["'out'"]),
        (GOOD + "lr = [0.1, -1.0]\n", ["run optimizer=sgd,useful=false,lr=-1.0,seed=0", "--lr"]),
        (GOOD + "lr = 0.1\n", ["axes.lr", "non-empty list"]),
        (GOOD + "lr = [0.1, 0.1]\n", ["lr=0.1,seed=0 and", "same configuration"]),
        (GOOD + "data_dir = ['a/b', 'a_b']\n", ["same configuration"]),  # data_dir says where, not what
        ("seeds = [0, 0]\n" + GOOD, ["duplicates"]),
        (GOOD.replace("[base]", "[base]\nbatch-size = 16"), ["base.'batch_size'", "given twice"]),  # not one wins
        (GOOD + "synthetic_train = [64]\nsynthetic-train = [32]\n", ["axis 'synthetic-train'", "given twice"]),
        ("seeds = [-1]\n" + GOOD, ["seeds"]),
        (GOOD.replace("[base]", "[base]\npreset = 'nope'"), ["--preset", "nope"]),
        ("[slurm]\nnodes = 2\n" + GOOD, ["slurm option 'nodes'", "expected 1"]),
        ("[slurm]\ntime = 'soon'\n" + GOOD, ["slurm option 'time'", "'soon'"]),
        ("[slurm]\npartiton = 'gpu'\n" + GOOD, ["slurm option 'partiton'", "unknown"]),
        ("[slurm]\noutput = 'log'\n" + GOOD, ["slurm option 'output'", "submitit sets it"]),
        ("[slurm]\npartition = ['a']\n" + GOOD, ["slurm option 'partition'", "a string, an integer"]),
    ],
)
def test_invalid_grids(tmp_path, body, words):
    with pytest.raises(ConfigError) as err:
        load_grid(write_grid(tmp_path, body))
    assert "\n" not in str(err.value)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "axis, first, second",
    [
        ("lr = [1, 1.0]", "lr=1,seed=0", "lr=1.0,seed=0"),
        ("useful = [true, 'true']", "useful=true,seed=0", "useful=true,seed=0"),  # same name too
        ("epochs = [2, 2.0, 3]", "epochs=2,seed=0", "epochs=2.0,seed=0"),
        ("milestones = [[1], ['1']]", "milestones=1,seed=0", "milestones=1,seed=0"),
    ],
)
def test_one_configuration_written_two_ways_is_refused(tmp_path, capsys, axis, first, second):
    """Values that resolve to the same TrainConfig would be two run folders of one configuration."""
    path = write_grid(tmp_path, BASE + "[axes]\n" + axis + "\n")
    with pytest.raises(ConfigError, match="same configuration") as err:
        load_grid(path)
    assert f"runs {first} and {second} have the same configuration" in str(err.value)
    proc = cli(capsys, "grid", str(path), "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "same configuration" in proc.stderr and str(path) in proc.stderr


def test_long_names_are_cut_with_a_hash(tmp_path):
    spec = GridSpec(base={"dataset": "synthetic", "model": "cnn-small"},
                    axes={"milestones": [list(range(1, 120)), list(range(2, 121))], "epochs": [200]},
                    out_root=str(tmp_path))
    names = [r.name for r in expand_runs(spec)]
    assert len(set(names)) == 2 and all(len(n) <= 200 for n in names)


def test_generated_configs_are_toml_of_the_run_configuration(tmp_path):
    """OUT/configs/NAME.toml (tomli-w) reads back as the run's keys and resolves to its TrainConfig."""
    from real.cli import resolve_run_config

    data = tmp_path / 'd "q" \\ \u00e9 # x'
    data.mkdir()
    spec = load_grid(write_grid(tmp_path, f"""
seeds = [5]
[base]
preset = "fashion-mnist-cnn-small"
label_smoothing = 0.1
data_dir = {json.dumps(str(data))}
[axes]
milestones = [[2, 4], []]
useful = [true]
"""))
    run_local(spec, runner=FakeRunner())
    for run in expand_runs(spec):
        text = Path(run.config_file).read_text()
        assert text.startswith("# generated by useful-train grid")
        assert load_toml(run.config_file) == run.config
        cfg = resolve_run_config({"config": run.config_file, "out": run.run_dir, "preset": None})
        assert cfg == run.resolved
    assert cfg.seed == 5 and cfg.milestones == () and cfg.useful and cfg.preset == "fashion-mnist-cnn-small"
    assert cfg.data_dir == str(data)
    # A programmatic spec may hold tuples and None (TOML has no null: the field's default, None).
    spec = GridSpec(base={"dataset": "synthetic", "model": "cnn-small", "milestones": (1, 2),
                          "long_tail_ratio": None}, out_root=str(tmp_path / "o2"))
    run_local(spec, runner=FakeRunner())
    (run,) = expand_runs(spec)
    assert load_toml(run.config_file) == {"dataset": "synthetic", "model": "cnn-small", "milestones": [1, 2], "seed": 0}
    assert resolve_run_config({"config": run.config_file, "out": run.run_dir, "preset": None}) == run.resolved


# ----------------------------------------------------------------------------------------------
# run_local


class FakeRunner:
    """Records commands; writes the summary a real run would (or fails / diverges)."""

    def __init__(self, outcome=lambda name: ("completed", 0)):
        self.commands: list[list[str]] = []
        self.outcome = outcome

    def __call__(self, command):
        self.commands.append(command)
        out = Path(command[command.index("--out") + 1])
        status, code = self.outcome(out.name)
        if status is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps({"status": status, "message": f"{status}!"}))
        return code


def _complete(run_dir: str, status: str = "completed") -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "summary.json").write_text(json.dumps({"status": status}))


def test_run_local_with_a_fake_runner(tmp_path):
    spec = good_spec(tmp_path, "seeds = [0]\n")
    runs = expand_runs(spec)
    _complete(runs[0].run_dir)  # already done: skipped
    Path(runs[1].run_dir).mkdir(parents=True)
    (Path(runs[1].run_dir) / "checkpoint.pt").write_bytes(b"x")  # interrupted: resumed
    _complete(runs[2].run_dir, "diverged")  # diverged: skipped unless asked
    runner = FakeRunner()
    status = run_local(spec, runner=runner)
    assert [s["status"] for s in status] == ["skipped", "completed", "skipped", "completed"]
    assert [s["reason"] for s in status][:3] == ["completed", None, "diverged"]
    assert len(runner.commands) == 2
    r = runs[1]
    assert runner.commands[0] == [PY, "-m", "real", "run", "--config", r.config_file, "--out", r.run_dir, "--resume"]
    assert runner.commands[1] == [PY, "-m", "real", "run", "--config", runs[3].config_file, "--out", runs[3].run_dir]
    assert status[1]["resume"] and not status[3]["resume"] and status[1]["returncode"] == 0
    manifest = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert [m["name"] for m in manifest["runs"]] == [r.name for r in runs]
    # Running again skips everything.
    again = FakeRunner()
    assert [s["status"] for s in run_local(spec, runner=again)] == ["skipped", "skipped", "skipped", "skipped"]
    assert again.commands == []
    # rerun_diverged resumes the diverged run (its directory holds a run).
    rerun = FakeRunner()
    status = run_local(spec, runner=rerun, rerun_diverged=True)
    assert [s["status"] for s in status] == ["skipped", "skipped", "completed", "skipped"]
    assert rerun.commands[0][-1] == "--resume"


def test_run_local_failures_dry_run_and_stop_on_error(tmp_path):
    spec = good_spec(tmp_path, "seeds = [0]\n")
    dry = run_local(spec, dry_run=True, runner=FakeRunner())
    assert [s["status"] for s in dry] == ["dry-run"] * 4
    assert not (tmp_path / "out").exists()  # a local dry run writes nothing

    def outcome(name):
        if name.startswith("optimizer=sgd,useful=true"):
            return None, 1  # crashed before writing a summary
        if name.startswith("optimizer=sam,useful=false"):
            return "diverged", 1
        return "completed", 0

    status = run_local(spec, runner=FakeRunner(outcome))
    assert [s["status"] for s in status] == ["completed", "failed", "diverged", "completed"]
    assert status[1]["returncode"] == 1 and "exit status 1" in status[1]["reason"]
    assert status[2]["reason"] == "diverged!"
    for d in (tmp_path / "out" / "runs").iterdir():
        (d / "summary.json").unlink()
    runner = FakeRunner(outcome)
    status = run_local(spec, runner=runner, stop_on_error=True)
    assert [s["status"] for s in status] == ["completed", "failed", "not-run", "not-run"]
    assert len(runner.commands) == 2


def test_a_run_folder_of_another_configuration_is_refused(tmp_path):
    """A completed run is skipped only if it is this grid's configuration: after editing the grid,
    the old results are not passed off as the new ones (nor submitted to be refused by the trainer)."""
    from real.rundir import FORMAT
    from theory.plumbing.config import to_jsonable

    spec = good_spec(tmp_path, "seeds = [0]\n")
    run = expand_runs(spec)[2]
    _complete(run.run_dir)
    (Path(run.run_dir) / "config.json").write_text(json.dumps({"format": FORMAT, **to_jsonable(run.resolved)}))
    assert [s["status"] for s in run_local(spec, runner=FakeRunner())][2] == "skipped"
    path = write_grid(tmp_path, "seeds = [0]\n" + GOOD.replace("epochs = 2", "epochs = 3"))
    edited = load_grid(path)
    runner = FakeRunner()
    with pytest.raises(ConfigError) as err:
        run_local(edited, runner=runner)
    assert f"run {run.name}: {run.run_dir} holds a run of another configuration (epochs is 3, was 2)" in str(err.value)
    assert runner.commands == []
    with pytest.raises(ConfigError, match="another configuration"):
        submit_slurm(load_grid(write_grid(tmp_path, "seeds = [0]\n[slurm]\ntime = 5\n"
                                          + GOOD.replace("epochs = 2", "epochs = 3"), name="s.toml")), dry_run=True)


# ----------------------------------------------------------------------------------------------
# Slurm options


@pytest.mark.parametrize("bad", ["gpu\nrm -rf ~", "gpu\r", "a\tb", "a\x00b", "a\x1bb", "a\x85b", "a\u2028b", "a\x7f"])
def test_control_characters_in_slurm_values_are_refused(tmp_path, bad):
    """A value with a newline would be a bash command in submitit's job script: refused, one line
    naming the option."""
    with pytest.raises(ConfigError) as err:
        slurm_options({"partition": bad}, "g.toml")
    assert str(err.value).startswith("g.toml: slurm option 'partition': got ") and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="slurm option 'comment'"):
        GridSpec(slurm={"comment": bad}, source="g.toml")
    with pytest.raises(ConfigError, match="control characters"):
        GridSpec(out_root=f"runs/{bad}")  # submitit writes the log folder into an #SBATCH line too
    with pytest.raises(ConfigError, match="slurm option 'partition'"):
        load_grid(write_grid(tmp_path, "[slurm]\ntime = 5\n" + f"partition = {json.dumps(bad)}\n" + BASE))


def test_a_newline_in_a_slurm_option_is_one_line_exit_2(tmp_path, capsys):
    bad = "gpu\nrm -rf ~"
    path = write_grid(tmp_path, "[slurm]\ntime = 5\n" + f"partition = {json.dumps(bad)}\n" + BASE)
    proc = cli(capsys, "grid", str(path), "--launcher", "submitit", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert f"{path}: slurm option 'partition'" in proc.stderr
    good = write_grid(tmp_path, "[slurm]\ntime = 5\n" + BASE, name="good.toml")
    proc = cli(capsys, "grid", str(good), "--launcher", "submitit", "--dry-run", "--partition", bad)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --partition: got ") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@given(st.text(min_size=1, max_size=20))
def test_an_accepted_slurm_value_is_one_sbatch_line(value):
    """Whatever value passes the check, submitit's job script holds it on its ``#SBATCH`` line only."""
    from submitit.slurm.slurm import _make_sbatch_string

    refused = any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value) or not value.strip()
    try:
        options = slurm_options({"comment": value, "job_name": value}, "g.toml")
    except ConfigError as err:
        assert refused and "\n" not in str(err)
        return
    assert not refused
    script = _make_sbatch_string(command="python -m x", folder="/f", **options).splitlines()
    plain = _make_sbatch_string(command="python -m x", folder="/f", comment="c", job_name="c").splitlines()
    assert len(script) == len(plain)
    assert [line for line in script if not line.startswith(("#SBATCH --comment=", "#SBATCH --job-name="))] == \
           [line for line in plain if not line.startswith(("#SBATCH --comment=", "#SBATCH --job-name="))]


def test_slurm_options_names_and_values():
    assert slurm_options({"gpus-per-node": 2, "exclusive": True, "requeue": False, "mem": "32G", "nodes": 1}, "f") == \
        {"gpus_per_node": 2, "exclusive": True, "mem": "32G", "nodes": 1}  # false: left out
    for bad, words in [({"partition": ""}, "non-empty"), ({"cpus_per_task": -1}, ">= 0"), ({"ntasks": 4}, "expected 1"),
                       ({"array_parallelism": 0}, ">= 1"), ({"mem": 1.5}, "a string, an integer"),
                       ({"Partition": "a"}, "not an sbatch option name"), ({"part\nition": "a"}, "not an sbatch"),
                       ({"wrap": "ls"}, "unknown"), ({"signal": "B:USR1"}, "submitit sets it"),
                       ({"gpus_per_node": "a100"}, "a GPU count"), ({"gpus": "x:y:2"}, "a GPU count")]:
        with pytest.raises(ConfigError, match=words):
            slurm_options(bad, "f")
    with pytest.raises(ConfigError) as err:
        slurm_options({"time": "soon"})  # from the command line: named as the flag
    assert str(err.value).startswith("--time: got 'soon'")


def test_slurm_minutes():
    assert slurm_minutes(90) == 90
    assert slurm_minutes("90") == 90
    assert slurm_minutes("12:00:00") == 720
    assert slurm_minutes("10:30") == 11  # MM:SS, seconds rounded up
    assert slurm_minutes("1-00:00:00") == 1440
    assert slurm_minutes("2-06") == 2 * 1440 + 360
    assert slurm_minutes("1-01:30") == 1440 + 90
    for bad in ("soon", "", 0, True, "1:2:3:4", 1.5):
        with pytest.raises(ConfigError):
            slurm_minutes(bad)


@given(st.integers(0, 30), st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
def test_slurm_minutes_reads_each_sbatch_format(d, h, m, s):
    """sbatch's six time formats, each part in its own unit; seconds round up to a minute."""
    import math

    forms = {f"{m}": m * 60, f"{m}:{s:02d}": m * 60 + s, f"{h}:{m:02d}:{s:02d}": h * 3600 + m * 60 + s,
             f"{d}-{h}": d * 86400 + h * 3600, f"{d}-{h}:{m:02d}": d * 86400 + h * 3600 + m * 60,
             f"{d}-{h:02d}:{m:02d}:{s:02d}": d * 86400 + h * 3600 + m * 60 + s}
    for text, seconds in forms.items():
        if seconds == 0:
            with pytest.raises(ConfigError, match="positive"):
                slurm_minutes(text)
        else:
            assert slurm_minutes(text) == math.ceil(seconds / 60), text


# ----------------------------------------------------------------------------------------------
# submit_slurm: dry run and a fake submitit


SLURM = """[slurm]
partition = "gpu"
time = "12:00:00"
gpus_per_node = 1
cpus_per_task = 8
mem = "32G"
account = "lab"
requeue = true
"""


@pytest.fixture
def no_scheduler(tmp_path, monkeypatch):
    """sbatch, squeue and srun on PATH that only record that they were called."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "scheduler-calls.log"
    for name in ("sbatch", "squeue", "srun", "scontrol", "sinfo"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_dry_run_writes_the_job_specifications_and_contacts_no_scheduler(tmp_path, no_scheduler, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # a dry run needs no submitit either
    spec = good_spec(tmp_path, slurm=SLURM)
    runs = expand_runs(spec)
    _complete(runs[0].run_dir)
    status = submit_slurm(spec, dry_run=True)
    assert [s["status"] for s in status] == ["skipped"] + ["dry-run"] * 7
    jobs = tmp_path / "out" / "jobs"
    assert sorted(p.name for p in jobs.iterdir()) == sorted(f"{r.name}.json" for r in runs[1:])  # no submitit folder
    assert not no_scheduler.exists()
    run = runs[5]
    job = json.loads((jobs / f"{run.name}.json").read_text())
    command = [PY, "-m", "real", "run", "--config", run.config_file, "--out", run.run_dir, "--resume"]
    assert job == {
        "name": run.name, "run_dir": run.run_dir, "config_file": run.config_file,
        "executor": "submitit.SlurmExecutor", "folder": str((tmp_path / "out" / "jobs" / "submitit").absolute()),
        "parameters": {"job_name": "useful-grid-out", "time": 720, "additional_parameters": {
            "partition": "gpu", "gpus_per_node": 1, "cpus_per_task": 8, "mem": "32G", "account": "lab", "requeue": True}},
        "function": "real.grid.TrainJob", "command": command, "cwd": os.getcwd(), "array": {"index": 4, "size": 7},
        "job_id": None, "log": None, "dry_run": True,
    }
    assert load_toml(job["config_file"]) == run.config


def test_submitit_writes_each_option_once_into_the_job_script(tmp_path):
    """The recorded parameters are what submitit takes: its job script holds each option on one line."""
    from submitit.slurm.slurm import SlurmExecutor, _make_sbatch_string

    (status, *_) = submit_slurm(good_spec(tmp_path, slurm=SLURM + "job-name = 'mine'\n"), dry_run=True)
    params = json.loads(Path(status["job_file"]).read_text())["parameters"]
    SlurmExecutor(folder=tmp_path / "s").update_parameters(**params)  # submitit's own check of the keywords
    lines = _make_sbatch_string(command="x", folder="/f", **params).splitlines()
    for line in ("--partition=gpu", "--time=720", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32G",
                 "--account=lab", "--requeue", "--job-name=mine"):
        assert lines.count("#SBATCH " + line) == 1, line
    assert sum(line.startswith("#SBATCH --job-name=") for line in lines) == 1


def test_submitit_needs_a_time_limit(tmp_path):
    spec = good_spec(tmp_path)
    with pytest.raises(ConfigError, match="--time: a Slurm time limit is needed"):
        submit_slurm(spec, dry_run=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("slurm, gpus", [("gpus-per-node = 4", 4), ("gpus_per_node = 'a100:2'", 2),
                                         ("gres = 'gpu:h100:8'", 8), ("gpus_per_node = 0", 0)])
def test_several_gpus_run_through_torchrun(tmp_path, slurm, gpus):
    spec = load_grid(write_grid(tmp_path, f"[slurm]\ntime = 60\n{slurm}\n" + BASE))
    (status,) = submit_slurm(spec, dry_run=True)
    command = json.loads(Path(status["job_file"]).read_text())["command"]
    if gpus > 1:
        assert command[:6] == [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m"]
        assert command[6:8] == ["real", "run"]
    else:
        assert command[:4] == [PY, "-m", "real", "run"]


class FakeSubmitit:
    """submitit's SlurmExecutor as far as submit_slurm uses it; records every submission."""

    def __init__(self, fail: str | None = None):
        self.arrays: list[tuple[str, dict, list]] = []
        self.next_id = 100
        self.fail = fail
        fake = self

        class Job:
            def __init__(self, job_id):
                self.job_id = job_id

            @property
            def paths(self):
                return types.SimpleNamespace(stdout=Path(f"/logs/{self.job_id}_0_log.out"))

        class SlurmExecutor:
            def __init__(self, folder):
                self.folder, self.parameters, self.pending = folder, {}, None

            def update_parameters(self, **kwargs):
                self.parameters.update(kwargs)

            @contextlib.contextmanager
            def batch(self):
                self.pending = []
                yield
                if fake.fail:
                    raise RuntimeError(fake.fail)
                fake.arrays.append((str(self.folder), dict(self.parameters), [fn for fn, _ in self.pending]))
                fake.next_id += 1
                for i, (_, job) in enumerate(self.pending):
                    job.job_id = f"{fake.next_id}_{i}" if len(self.pending) > 1 else str(fake.next_id)

            def submit(self, fn):
                job = Job(None)
                self.pending.append((fn, job))
                return job

        self.module = types.ModuleType("submitit")
        self.module.SlurmExecutor = SlurmExecutor


def _squeue_lists(path: Path, ids: list[str]) -> None:
    (path / "fake-bin" / "squeue").write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(ids) + "\n")


def test_submission_passes_what_the_dry_run_wrote(tmp_path, no_scheduler, monkeypatch):
    """The real path hands submitit exactly the dry run's parameters and commands, as one job array;
    a run whose job is still queued is not submitted again; a refused sbatch is a failed run."""
    spec = good_spec(tmp_path, "seeds = [0]\n", slurm=SLURM.replace("requeue = true", "reservation = 'r1'"))
    submit_slurm(spec, dry_run=True)
    jobs = tmp_path / "out" / "jobs"
    dry = {p.stem: json.loads(p.read_text()) for p in jobs.glob("*.json")}
    fake = FakeSubmitit()
    monkeypatch.setitem(sys.modules, "submitit", fake.module)
    status = submit_slurm(spec)
    assert [s["status"] for s in status] == ["submitted"] * 4
    assert [s["job_id"] for s in status] == ["101_0", "101_1", "101_2", "101_3"]
    ((folder, params, functions),) = fake.arrays
    runs = expand_runs(spec)
    assert all(isinstance(fn, TrainJob) for fn in functions)
    for run, fn in zip(runs, functions):
        assert params == dry[run.name]["parameters"] and folder == dry[run.name]["folder"]
        assert fn.command == dry[run.name]["command"] and fn.cwd == dry[run.name]["cwd"] and fn.run_dir == run.run_dir
        record = json.loads((jobs / f"{run.name}.json").read_text())
        expected = {k: v for k, v in dry[run.name].items() if k != "dry_run"}
        assert record == {**expected, "job_id": record["job_id"], "log": f"/logs/{record['job_id']}_0_log.out"}
    assert params["additional_parameters"]["reservation"] == "r1"
    # Submitted again: the queued jobs are left alone, the others go again (one job, not an array).
    _squeue_lists(tmp_path, ["101_0", "101_2", "101_3", "77"])
    status = submit_slurm(spec)
    assert [s["status"] for s in status] == ["queued", "submitted", "queued", "queued"]
    assert [s["job_id"] for s in status] == ["101_0", "102", "101_2", "101_3"]
    assert [fn.run_dir for fn in fake.arrays[-1][2]] == [runs[1].run_dir]
    # sbatch refuses: every run of the array is failed, with sbatch's last line.
    _squeue_lists(tmp_path, [])
    fake.fail = "sbatch: error: Batch job submission failed\nsbatch: error: invalid partition specified: gpu"
    status = submit_slurm(spec)
    assert {s["status"] for s in status} == {"failed"}
    assert status[0]["reason"] == "sbatch: error: invalid partition specified: gpu"
    assert json.loads((jobs / f"{runs[0].name}.json").read_text())["error"] == status[0]["reason"]


def test_submission_without_submitit_or_slurm(tmp_path, monkeypatch):
    spec = good_spec(tmp_path, slurm=SLURM)
    monkeypatch.setitem(sys.modules, "submitit", None)  # not importable
    with pytest.raises(ConfigError, match=r"^--launcher submitit needs the optional package submitit: "
                                          r"pip install 'useful-sb\[slurm\]'"):
        submit_slurm(spec)
    assert not (tmp_path / "out").exists()  # nothing written before the error
    monkeypatch.setitem(sys.modules, "submitit", FakeSubmitit().module)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    from theory.plumbing.cli import EnvironmentFailure

    with pytest.raises(EnvironmentFailure, match="sbatch or squeue is not on PATH"):
        submit_slurm(spec)
    assert not (tmp_path / "out").exists()


def test_without_submitit_the_local_launcher_works_and_slurm_names_the_extra(tmp_path):
    """submitit is the optional extra ``slurm``: where it cannot be imported (a sitecustomize blocks it
    in every process), a grid runs here and ``--launcher submitit`` is one line naming the extra (exit 2)
    before anything is written.  (A Slurm dry run needs no submitit: test_dry_run_writes_the_job_...)"""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['submitit'] = None\n")
    blocked = {**env(), "PYTHONPATH": f"{site}{os.pathsep}{env()['PYTHONPATH']}"}
    assert subprocess.run([PY, "-c", "import submitit"], env=blocked, capture_output=True).returncode == 1

    def grid(*args):
        return subprocess.run([PY, "-m", "real", "grid", *args], capture_output=True, text=True, timeout=300,
                              env=blocked, cwd=tmp_path)

    path = write_grid(tmp_path, "[slurm]\ntime = 5\n" + BASE.replace("epochs = 2", "epochs = 1"))
    proc = grid(str(path), "--launcher", "submitit")
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --launcher submitit needs the optional package submitit: "
                                  "pip install 'useful-sb[slurm]'")
    assert not (tmp_path / "out").exists()
    proc = grid(str(path))
    assert proc.returncode == 0 and "1 run(s): 1 completed" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "runs" / "seed=0" / "summary.json").read_text())["status"] == "completed"


# ----------------------------------------------------------------------------------------------
# TrainJob: what a Slurm task runs


FAKE_RUN = """
import json, os, signal, sys, time
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "seen.json"), "w") as fh:
    json.dump({"usr2_ignored": signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN, "cwd": os.getcwd()}, fh)
if sys.argv[2] == "finish":
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump({"status": "completed"}, fh)
    sys.exit(0)
if sys.argv[2] == "fail":
    sys.exit(3)
try:
    time.sleep(60)
except KeyboardInterrupt:
    open(os.path.join(out, "interrupted"), "w").close()
    sys.exit(130)
"""


def test_train_job_runs_the_command_in_its_folder(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    job = TrainJob("r", [PY, str(script), "run", "finish"], str(tmp_path), "run")
    assert job() == {"name": "r", "status": "completed", "returncode": 0}
    seen = json.loads((tmp_path / "run" / "seen.json").read_text())
    assert seen == {"usr2_ignored": True, "cwd": str(tmp_path)}  # submitit's warning signal is not the run's
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # ours is restored
    (tmp_path / "run" / "seen.json").unlink()
    assert job()["status"] == "completed" and not (tmp_path / "run" / "seen.json").exists()  # done: not rerun
    with pytest.raises(RuntimeError, match="run f: exit status 3"):
        TrainJob("f", [PY, str(script), "f", "fail"], str(tmp_path), "f")()


def test_train_job_checkpoint_stops_the_run_and_hands_itself_back(tmp_path):
    """As under submitit: the warning signal's handler (in the main thread, on top of the job's
    frame) calls checkpoint(), which interrupts the run with SIGINT and returns the job to requeue."""
    pytest.importorskip("submitit")
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    job = TrainJob("r", [PY, str(script), "run", "sleep"], str(tmp_path), "run")
    handed_back = []

    class Requeued(Exception):
        pass

    def handler(signum, frame):
        handed_back.append(job.checkpoint())
        raise Requeued  # submitit requeues, then exits

    previous = signal.signal(signal.SIGUSR2, handler)
    sender = threading.Thread(target=lambda: (_wait_for(tmp_path / "run" / "seen.json"),
                                              os.kill(os.getpid(), signal.SIGUSR2)))
    try:
        sender.start()
        start = time.monotonic()
        with pytest.raises(Requeued):
            job()
        sender.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert time.monotonic() - start < 30  # not the 60 s sleep: interrupted
    assert (tmp_path / "run" / "interrupted").exists()  # SIGINT: the run stopped cleanly
    (delayed,) = handed_back
    assert delayed.function is job and delayed.args == () and delayed.kwargs == {}
    again = pickle.loads(pickle.dumps(job))  # submitit pickles the job to requeue it (not the process)
    assert again.command == job.command and again._child is None


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# The command line


def test_grid_cli_dry_run(tmp_path, capsys, monkeypatch):
    """``useful-train grid FILE --dry-run`` lists the commands and runs nothing; a Slurm dry run
    writes the job specifications."""
    path = write_grid(tmp_path, "seeds = [0, 1]\n" + BASE + "\n[axes]\noptimizer = ['sgd', 'sam']\n")
    proc = cli(capsys, "grid", str(path), "--dry-run")
    assert proc.returncode == 0 and proc.stdout.count("dry-run ") == 4 and "optimizer=sam,seed=1" in proc.stdout
    assert "-m real run --config" in proc.stdout and "4 run(s): 4 dry-run" in proc.stdout
    assert not (tmp_path / "out").exists()  # the local dry run writes nothing
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm (nor anything else) to call
    proc = cli(capsys, "grid", str(path), "--dry-run", "--launcher", "submitit", "--partition", "gpu", "--time", "01:00:00")
    assert proc.returncode == 0 and proc.stdout.count("--resume") == 4, proc.stderr
    assert "job specifications (what would be passed to submitit)" in proc.stdout
    job = json.loads((tmp_path / "out" / "jobs" / "optimizer=sgd,seed=0.json").read_text())
    assert job["parameters"] == {"job_name": "useful-grid-out", "time": 60, "additional_parameters": {"partition": "gpu"}}
    assert job["job_id"] is None and job["dry_run"] is True
    proc = cli(capsys, "grid", str(path), "--partition", "gpu")  # a Slurm option without Slurm
    assert proc.returncode == 2 and "--partition: a Slurm option needs --launcher submitit" in proc.stderr
    proc = cli(capsys, "grid", str(path), "--launcher", "submitit", "--stop-on-error", "--dry-run")
    assert proc.returncode == 2 and "--stop-on-error: only for --launcher local" in proc.stderr
    with pytest.raises(SystemExit) as exit_:
        cli(capsys, "grid", str(path), "--launcher", "sbatch")  # the hand-written sbatch launcher is gone
    assert exit_.value.code == 2 and "invalid choice: 'sbatch'" in capsys.readouterr().err


def test_every_grid_flag_has_one_line_help_with_its_default():
    """add_arguments is the grid command's whole interface: each flag says what it is and its default."""
    from real.grid import add_arguments
    from theory.plumbing.cli import OneLineArgumentParser

    parser = OneLineArgumentParser(prog="grid")
    add_arguments(parser)
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} >= {"launcher", "dry_run", "partition", "time", "gpus_per_node", "account",
                                       "rerun_diverged", "stop_on_error"}
    for action in flags:
        assert action.help and "\n" not in action.help and "(default: " in action.help, action.option_strings


# ----------------------------------------------------------------------------------------------
# A real one-node Slurm cluster (.ci/slurm-up starts one)


def _slurm_down_reason() -> str | None:
    for tool in ("sinfo", "sbatch", "squeue", "scontrol", "srun"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/slurm-up installs slurm-wlm and starts a one-node cluster)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 15 s"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc", "comp") for s in states):
        return "no Slurm node is up (run .ci/slurm-up as root): " + (proc.stderr.strip() or " ".join(states) or "no nodes")
    return None


def _metrics_rows(run_dir: Path) -> list[dict]:
    from real.rundir import read_metrics

    timing = ("seconds", "images_per_second")
    return [{k: v for k, v in row.items() if k not in timing} for row in read_metrics(run_dir)]


@pytest.mark.slurm
def test_a_grid_on_slurm_equals_the_local_grid(tmp_path):
    """2 settings x 2 seeds through submitit on a real cluster, one task interrupted by submitit's
    warning signal and requeued: the same configurations and bitwise the same metrics as the grid run
    here, one run after another."""
    from real.rundir import read_config, read_summary

    reason = _slurm_down_reason()
    if reason:
        pytest.skip(reason)
    body = """seeds = [0, 1]
[base]
dataset = "synthetic"
model = "cnn-small"
epochs = 8
synthetic_train = 128
synthetic_test = 64
batch_size = 32
device = "cpu"
deterministic = true
[axes]
optimizer = ["sgd", "sam"]
[slurm]
time = 10
"""
    local, remote = write_grid(tmp_path, body, name="local.toml"), write_grid(tmp_path, body, name="slurm.toml",
                                                                                out="slurm-out")
    proc = cli_process("grid", str(remote), "--launcher", "submitit", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spec = load_grid(remote)
    runs = expand_runs(spec)
    jobs = {r.name: json.loads((tmp_path / "slurm-out" / "jobs" / f"{r.name}.json").read_text())["job_id"] for r in runs}
    assert all(jobs.values()) and proc.stdout.count("submitted ") == 4
    local_grid = subprocess.Popen([PY, "-m", "real", "grid", str(local)], env=env(), cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # the same grid here, meanwhile
    first, signalled = tmp_path / runs[0].run_dir, False
    deadline = time.monotonic() + 150
    try:
        while True:
            # Interrupt the first task once it has finished an epoch; submitit checkpoints and requeues it.
            if not signalled and (first / "checkpoint.pt").exists():
                assert (read_summary(first) or {}).get("status") is None, "the first task finished before its signal"
                subprocess.run(["scancel", "--signal=USR2", jobs[runs[0].name] + ".0"], check=True, timeout=30)
                signalled = True
            queued = subprocess.run(["squeue", "-h", "-r", "-o", "%i %r"], capture_output=True, text=True,
                                    timeout=30).stdout.splitlines()
            ours = [line for line in queued if line.split(" ")[0] in jobs.values()]
            for line in ours:  # a requeued job waits out Slurm's requeue delay: start it now
                if "BeginTime" in line:
                    subprocess.run(["scontrol", "update", f"JobId={line.split()[0]}", "StartTime=now"], timeout=30)
            if signalled and not ours and local_grid.poll() is not None:
                break
            assert time.monotonic() < deadline, f"still queued after 150 s: {ours}; local grid done: {local_grid.poll()}"
            time.sleep(0.05 if not signalled else 0.5)
    finally:
        subprocess.run(["scancel", *jobs.values()], capture_output=True, timeout=30)
        if local_grid.poll() is None:
            local_grid.kill()
        output = local_grid.communicate()[0]
    assert local_grid.returncode == 0, output[-3000:]
    logs = tmp_path / "slurm-out" / "jobs" / "submitit"
    first_log = (logs / f"{jobs[runs[0].name]}_0_log.err").read_text()
    assert "resuming" in first_log, first_log[-2000:]  # it was interrupted and continued, not restarted
    for run in runs:
        here, there = tmp_path / "out" / "runs" / run.name, tmp_path / run.run_dir
        assert (read_summary(there) or {}).get("status") == "completed", (logs / f"{jobs[run.name]}_0_log.err").read_text()[-2000:]
        run_control = {"out": None, "resume": None}  # set by the launcher: --out, and --resume on Slurm
        assert {**read_config(there), **run_control} == {**read_config(here), **run_control}
        assert _metrics_rows(there) == _metrics_rows(here) and len(_metrics_rows(here)) == 8
    # Submitted again: everything is completed, nothing goes to Slurm.
    proc = cli_process("grid", str(remote), "--launcher", "submitit", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.count("skipped ") == 4 and "submitted" not in proc.stdout


def test_slurm_up_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_runs_that_differ_only_in_how_they_run_are_one_run(tmp_path):
    """An axis over a run-control field (eval_batch_size, device, tensorboard: how a run is run, not
    what it computes) gives runs that resume, compare and reproduce treat as one: refused here too."""
    with pytest.raises(ConfigError, match="same configuration"):
        load_grid(write_grid(tmp_path, '[base]\ndataset = "synthetic"\n[axes]\neval_batch_size = [256, 512]\n',
                             name="e.toml"))
