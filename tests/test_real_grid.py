"""real/grid.py: grid files, expansion, the local runner (with a fake runner) and Slurm job files."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import types
from pathlib import Path

import pytest

from real.grid import (
    GridSpec,
    expand,
    expand_runs,
    load_grid,
    run_local,
    slurm_minutes,
    submit_slurm,
    toml_text,
)
from theory.plumbing.config import ConfigError, load_toml

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


def good_spec(tmp_path: Path, seeds: str = "seeds = [0, 1]\n") -> GridSpec:
    return load_grid(write_grid(tmp_path, seeds + GOOD))


# ----------------------------------------------------------------------------------------------
# load_grid / expand


def test_load_grid_and_expand(tmp_path):
    spec = good_spec(tmp_path)
    assert spec.seeds == (0, 1)
    assert spec.out_root == str(tmp_path / "out")
    assert dict(spec.axes) == {"optimizer": ["sgd", "sam"], "useful": [False, True]}
    runs = expand(spec)
    assert len(runs) == 2 * 2 * 2
    names = [Path(d).name for d, _ in runs]
    assert len(set(names)) == len(names)
    assert names[:4] == [  # seeds outermost, axes in file order
        "optimizer=sgd,useful=false,seed=0",
        "optimizer=sgd,useful=true,seed=0",
        "optimizer=sam,useful=false,seed=0",
        "optimizer=sam,useful=true,seed=0",
    ]
    assert names[-1] == "optimizer=sam,useful=true,seed=1"
    run_dir, config = runs[-1]
    assert Path(run_dir).parent == tmp_path / "out" / "runs"
    assert config == {"dataset": "synthetic", "model": "cnn-small", "epochs": 2, "synthetic_train": 64,
                      "batch_size": 32, "optimizer": "sam", "useful": True, "seed": 1}


def test_default_out_and_seeds(tmp_path):
    path = tmp_path / "my-grid.toml"
    path.write_text(BASE)
    spec = load_grid(path)
    assert spec.out_root == str(Path("runs") / "my-grid") and spec.seeds == (0,)
    assert [Path(d).name for d, _ in expand(spec)] == ["seed=0"]


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
    configs = [c for _, c in expand(spec2)]
    assert [c["optimizer"] for c in configs] == ["sgd", "sam"]
    assert all(c["epochs"] == 3 for c in configs)
    assert [c["preset"] for c in configs] == ["cifar10-resnet18-sgd", "cifar10-resnet18-sam"]


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
        (GOOD + "lr = [0.1, 0.1]\n", ["same directory name"]),
        ("seeds = [0, 0]\n" + GOOD, ["duplicates"]),
        ("seeds = [-1]\n" + GOOD, ["seeds"]),
        (GOOD.replace("[base]", "[base]\npreset = 'nope'"), ["--preset", "nope"]),
        ("[slurm]\nnodes = 2\n" + GOOD, ["nodes"]),
        ("[slurm]\ntime = 'soon'\n" + GOOD, ["time"]),
    ],
)
def test_invalid_grids(tmp_path, body, words):
    with pytest.raises(ConfigError) as err:
        load_grid(write_grid(tmp_path, body))
    for word in words:
        assert word in str(err.value)


def test_long_names_are_cut_with_a_hash(tmp_path):
    spec = GridSpec(base={"dataset": "synthetic", "model": "cnn-small"},
                    axes={"milestones": [list(range(1, 120)), list(range(2, 121))], "epochs": [200]},
                    out_root=str(tmp_path))
    names = [r.name for r in expand_runs(spec)]
    assert len(set(names)) == 2 and all(len(n) <= 200 for n in names)


def test_toml_text_round_trips(tmp_path):
    config = {"a": "x \"q\" \\ é", "b": 1, "c": 0.1, "d": 1e-05, "e": True, "f": [1, 2], "g": None,
              "h": float("inf"), "i": []}
    path = tmp_path / "c.toml"
    path.write_text(toml_text(config, header="line one\nline two"))
    back = load_toml(path)
    assert back == {k: v for k, v in config.items() if v is not None}


# ----------------------------------------------------------------------------------------------
# run_local


class FakeRunner:
    """Records commands; writes the summary.json a real run would (or fails / diverges)."""

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
    status = run_local(spec, runner=runner, python="PY")
    assert [s["status"] for s in status] == ["skipped", "completed", "skipped", "completed"]
    assert [s["reason"] for s in status][:3] == ["completed", None, "diverged"]
    assert len(runner.commands) == 2
    cmd = runner.commands[0]
    r = runs[1]
    assert cmd == ["PY", "-m", "real", "run", "--config", r.config_file, "--out", r.run_dir, "--resume"]
    assert runner.commands[1] == ["PY", "-m", "real", "run", "--config", runs[3].config_file, "--out", runs[3].run_dir]
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


def test_generated_config_resolves_to_the_run_configuration(tmp_path):
    from real.cli import resolve_run_config
    from real.config import TrainConfig
    from theory.plumbing.config import config_from_mapping

    spec = load_grid(write_grid(tmp_path, """
seeds = [5]
[base]
preset = "fashion-mnist-cnn-small"
label_smoothing = 0.1
[axes]
milestones = [[2, 4]]
useful = [true]
"""))
    run_local(spec, runner=FakeRunner())
    (run,) = expand_runs(spec)
    text = Path(run.config_file).read_text()
    assert text.startswith("# generated by real.grid")
    cfg = resolve_run_config({"config": run.config_file, "out": run.run_dir, "preset": None})
    want = config_from_mapping(TrainConfig, {**run.config, "out": run.run_dir})
    assert cfg == want
    assert cfg.seed == 5 and cfg.milestones == (2, 4) and cfg.useful and cfg.preset == "fashion-mnist-cnn-small"


def test_run_local_failures_dry_run_and_stop_on_error(tmp_path):
    spec = good_spec(tmp_path, "seeds = [0]\n")
    dry = run_local(spec, dry_run=True, runner=FakeRunner())
    assert [s["status"] for s in dry] == ["dry-run"] * 4
    assert not (tmp_path / "out").exists()  # a dry run writes nothing

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


# ----------------------------------------------------------------------------------------------
# submit_slurm


SLURM = {"partition": "gpu", "time": "12:00:00", "gpus_per_node": 1, "cpus_per_task": 8, "mem": "32G",
         "account": "lab", "requeue": True}


def test_submit_slurm_dry_run_writes_job_files(tmp_path):
    spec = good_spec(tmp_path)
    runs = expand_runs(spec)
    _complete(runs[0].run_dir)
    status = submit_slurm(spec, dry_run=True, slurm=SLURM, python="PY")
    assert [s["status"] for s in status] == ["skipped"] + ["dry-run"] * 7
    jobs = tmp_path / "out" / "jobs"
    assert sorted(p.name for p in jobs.glob("*.json")) == sorted(f"{r.name}.json" for r in runs[1:])
    assert sorted(p.name for p in jobs.glob("*.sbatch")) == sorted(f"{r.name}.sbatch" for r in runs[1:])
    run = runs[5]
    job = json.loads((jobs / f"{run.name}.json").read_text())
    command = ["PY", "-m", "real", "run", "--config", run.config_file, "--out", run.run_dir, "--resume"]
    assert job["command"] == command
    assert job["run_dir"] == run.run_dir and job["cwd"] == os.getcwd() and job["job_id"] is None
    assert job["slurm"]["partition"] == "gpu" and job["slurm"]["gpus_per_node"] == 1
    assert Path(job["config_file"]).is_file()
    script = (jobs / f"{run.name}.sbatch").read_text()
    assert script.startswith("#!/bin/bash\n")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=12:00:00", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH --account=lab", "#SBATCH --requeue",
                 f"#SBATCH --job-name=useful-{run.name}", "exec " + shlex.join(command)):
        assert line in script.splitlines()
    assert os.stat(jobs / f"{run.name}.sbatch").st_mode & stat.S_IXUSR


def test_submit_slurm_multi_gpu_uses_torchrun_and_grid_slurm_table(tmp_path):
    spec = load_grid(write_grid(tmp_path, "[slurm]\npartition = 'a100'\ngpus-per-node = 4\n" + BASE))
    (status,) = submit_slurm(spec, python="PY")
    job = json.loads(Path(status["job_file"]).read_text())
    assert job["command"][:6] == ["PY", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "-m"]
    assert job["command"][6:8] == ["real", "run"]
    assert job["slurm"]["partition"] == "a100"
    # The slurm argument overrides the file's table.
    (status,) = submit_slurm(spec, python="PY", slurm={"partition": "h100"})
    assert json.loads(Path(status["job_file"]).read_text())["slurm"]["partition"] == "h100"


def test_submit_slurm_without_submitit_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # not importable
    spec = good_spec(tmp_path)
    with pytest.raises(ConfigError, match="pip install submitit"):
        submit_slurm(spec, dry_run=False, slurm=SLURM)
    assert not (tmp_path / "out" / "jobs").exists()  # nothing written before the error
    assert [s["status"] for s in submit_slurm(spec, dry_run=True)] == ["dry-run"] * 8
    with pytest.raises(ConfigError, match="launcher"):
        submit_slurm(spec, launcher="pbs")


def test_submit_slurm_through_a_fake_submitit(tmp_path, monkeypatch):
    submitted = []

    class Job:
        def __init__(self, n):
            self.job_id = f"10{n}"

    class AutoExecutor:
        def __init__(self, folder):
            self.folder, self.params = folder, {}

        def update_parameters(self, **kwargs):
            self.params.update(kwargs)

        def submit(self, fn):
            submitted.append((self.folder, dict(self.params), fn))
            return Job(len(submitted))

    class CommandFunction:
        def __init__(self, command, cwd=None):
            self.command, self.cwd = command, cwd

    fake = types.ModuleType("submitit")
    fake.AutoExecutor = AutoExecutor
    helpers = types.ModuleType("submitit.helpers")
    helpers.CommandFunction = CommandFunction
    fake.helpers = helpers
    monkeypatch.setitem(sys.modules, "submitit", fake)
    monkeypatch.setitem(sys.modules, "submitit.helpers", helpers)
    spec = good_spec(tmp_path, "seeds = [0]\n")
    status = submit_slurm(spec, dry_run=False, slurm={**SLURM, "exclude": "node1", "reservation": "r1"}, python="PY")
    assert [s["status"] for s in status] == ["submitted"] * 4
    assert [s["job_id"] for s in status] == ["101", "102", "103", "104"]
    folder, params, fn = submitted[1]
    run = expand_runs(spec)[1]
    assert folder == str(tmp_path / "out" / "jobs" / "submitit")
    assert params == {"name": f"useful-{run.name}", "slurm_partition": "gpu", "timeout_min": 720, "gpus_per_node": 1,
                      "cpus_per_task": 8, "slurm_mem": "32G", "slurm_account": "lab", "slurm_exclude": "node1",
                      "slurm_additional_parameters": {"requeue": True, "reservation": "r1"}}
    assert fn.command == ["PY", "-m", "real", "run", "--config", run.config_file, "--out", run.run_dir, "--resume"]
    assert fn.cwd == os.getcwd()
    assert json.loads((tmp_path / "out" / "jobs" / f"{run.name}.json").read_text())["job_id"] == "102"


def test_submit_slurm_through_sbatch(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "sbatch.log"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "4242;cluster"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = good_spec(tmp_path, "seeds = [0]\n")
    status = submit_slurm(spec, dry_run=False, launcher="sbatch", slurm=SLURM)
    assert [s["job_id"] for s in status] == ["4242"] * 4
    calls = log.read_text().splitlines()
    assert calls == [f"--parsable {s['script']}" for s in status]


def test_slurm_minutes():
    assert slurm_minutes(90) == 90
    assert slurm_minutes("90") == 90
    assert slurm_minutes("12:00:00") == 720
    assert slurm_minutes("10:30") == 11  # MM:SS, seconds rounded up
    assert slurm_minutes("1-00:00:00") == 1440
    assert slurm_minutes("2-06") == 2 * 1440 + 360
    assert slurm_minutes("1-01:30") == 1440 + 90
    for bad in ("soon", "", 0, True, "1:2:3:4"):
        with pytest.raises(ConfigError):
            slurm_minutes(bad)


def test_grid_cli_dry_run(tmp_path, capsys):
    """``useful-train grid FILE --dry-run`` lists the commands and runs nothing; Slurm dry runs write jobs."""
    from real.cli import main

    path = write_grid(tmp_path, "seeds = [0, 1]\n" + BASE + "\n[axes]\noptimizer = ['sgd', 'sam']\n")
    rc = main(["grid", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("dry-run ") == 4 and "optimizer=sam,seed=1" in out
    assert "-m real run --config" in out and "4 run(s): 4 dry-run" in out
    assert not (tmp_path / "out").exists()  # the local dry run writes nothing
    rc = main(["grid", str(path), "--dry-run", "--launcher", "submitit", "--partition", "gpu", "--time", "01:00:00"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("--resume") == 4
    job = json.loads((tmp_path / "out" / "jobs" / "optimizer=sgd,seed=0.json").read_text())
    assert job["slurm"]["partition"] == "gpu" and job["launcher"] == "submitit" and job["job_id"] is None
    assert "#SBATCH --partition=gpu" in (tmp_path / "out" / "jobs" / "optimizer=sgd,seed=0.sbatch").read_text()
    rc = main(["grid", str(path), "--partition", "gpu"])  # a Slurm option without a Slurm launcher
    err = capsys.readouterr().err
    assert rc == 2 and "--partition" in err
