"""Trust in ``useful-sim``'s results and files: no silently wrong sweep, nothing lost, every failure one line.

One section per class of docs/_reliability_sims.md.  Small sizes; most commands run in-process
through ``sims.cli.main`` (the same ``cli_entry`` boundary as the console script), the interrupt and
concurrency checks as real processes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sims.cli import main
from sims.config import SimConfig, check_memory, config_hash
from sims.files import RUN_FORMAT, SWEEP_FORMAT, StateFileError
from sims.sweep import expand_grid, parse_grid
from sims.trajectory import Trajectory
from theory.plumbing.config import ConfigError
from theory.plumbing.lock import RunLock, RunLockError

from helpers import REPO, env

SMALL = ["--n-train", "20", "--n-test", "10", "--d", "12", "--J", "3", "--iterations", "30", "--record-every", "10",
         "--separate-at", "10", "--sigma-0", "0.05", "--sigma-p", "0.1"]
REF = [*SMALL, "--backend", "reference"]
TINY_REPORT = ["reproduce", "--quick", "--seeds", "2", "--n-train", "20", "--n-test", "20", "--d", "12", "--J", "3",
               "--iterations", "40", "--separate-at", "10", "--backend", "reference"]
HYP = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err.strip()


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temporaries(folder: Path) -> None:
    left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
    assert not left, left


# ----------------------------------------------------------------------------------------------
# 1. USEFUL is honoured in sweeps.


@pytest.mark.parametrize("backend,seeds,exact", [("reference", 2, True), ("numba", 1, True), ("numba", 2, False)])
def test_sweep_useful_equals_run_useful(backend, seeds, exact, tmp_path, capsys):
    """``sweep --useful`` gives the arrays of ``run --useful`` for each seed: bit for bit when the runs are
    computed alone (reference backend; a one-run sweep), to rounding (1e-12) when numba batches seeds
    (a batch pads its runs to a common number of noise rows, which reorders sums in BLAS)."""
    flags = [*SMALL, "--backend", backend]
    code, out, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "sw"), "--useful", "--seeds", str(seeds), *flags)
    assert code == 0, err
    for seed in range(seeds):
        code, _, err = run_cli(capsys, "run", "--out", str(tmp_path / f"r{seed}"), "--useful", "--seed", str(seed),
                               *flags)
        assert code == 0, err
        for suffix in (".npz", "_partition.npz"):
            with np.load(tmp_path / f"r{seed}{suffix}") as a, \
                    np.load(tmp_path / "sw" / "runs" / f"seed={seed}{suffix}") as b:
                assert a.files == b.files
                for key in a.files:
                    if exact or a[key].dtype.kind not in "f":
                        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{suffix}:{key}")
                    else:
                        scale = max(float(np.max(np.abs(a[key]), initial=0.0)), 1e-300)
                        np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-12 * scale,
                                                   err_msg=f"{suffix}:{key}")
        ran = Trajectory.load(tmp_path / f"r{seed}")
        swept = Trajectory.load(tmp_path / "sw" / "runs" / f"seed={seed}")
        assert ran.config == swept.config and ran.config["useful"] is True
        assert (ran.fast_learned_at, ran.slow_learned_at) == (swept.fast_learned_at, swept.slow_learned_at)
        assert ran.extra["upsampled"] == swept.extra["upsampled"] > 0
        assert not np.array_equal(ran.multiplicities, np.ones_like(ran.multiplicities))


def test_grid_useful_true_false_gives_useful_and_plain_runs(tmp_path, capsys):
    code, out, err = run_cli(capsys, "sweep", "--out", str(tmp_path), "--grid", "useful=true,false", *REF)
    assert code == 0, err
    index = strict_json((tmp_path / "sweep.json").read_text())
    useful, plain = index["runs"]["useful=True__seed=0"], index["runs"]["useful=False__seed=0"]
    assert useful["split"]["upsampled"] > 0 and "split" not in plain
    m_useful = Trajectory.load(tmp_path / "runs" / "useful=True__seed=0").multiplicities
    m_plain = Trajectory.load(tmp_path / "runs" / "useful=False__seed=0").multiplicities
    assert m_useful.max() == 2 and np.all(m_plain == 1)
    assert (tmp_path / "runs" / "useful=True__seed=0_partition.npz").exists()
    assert not (tmp_path / "runs" / "useful=False__seed=0_partition.npz").exists()


# ----------------------------------------------------------------------------------------------
# 2. A sweep run's identity is its full configuration.


def test_sweep_rerun_with_another_setting_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "sw"
    base = ["sweep", "--out", str(out), "--grid", "beta_d=0.2,0.4", *REF]
    assert run_cli(capsys, *base)[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(capsys, *base, "--lr", "0.3")
    line = one_line(err)
    assert code == 2 and "--lr is 0.3, the folder's runs have 0.5" in line and "--overwrite" in line
    assert line.count(" is ") == 1  # only the field that differs is named
    assert snapshot(out) == before  # nothing computed, nothing written
    code, stdout, err = run_cli(capsys, *base, "--lr", "0.3", "--overwrite")
    assert code == 0, err
    report = strict_json(stdout)
    assert report["replaced"] == 2 and report["skipped_as_done"] == 0 and report["finished"] == report["total"] == 2
    index = strict_json((out / "sweep.json").read_text())
    assert index["format"] == SWEEP_FORMAT
    for key, entry in index["runs"].items():
        meta = strict_json((out / "runs" / f"{key}.json").read_text())
        assert meta["format"] == RUN_FORMAT and meta["config"]["lr"] == 0.3
        assert meta["config_hash"] == entry["config_hash"] == config_hash(meta["config"])
    # The same command again computes nothing; more seeds compute only the new ones.
    stamps = snapshot(out / "runs")
    code, stdout, _ = run_cli(capsys, *base, "--lr", "0.3")
    assert code == 0 and strict_json(stdout)["skipped_as_done"] == 2 and snapshot(out / "runs") == stamps
    code, stdout, _ = run_cli(capsys, *base, "--lr", "0.3", "--seeds", "2")
    report = strict_json(stdout)
    assert code == 0 and report["skipped_as_done"] == 2 and report["finished"] == report["total"] == 4
    assert all(snapshot(out / "runs")[k] == v for k, v in stamps.items())


def test_grid_field_also_given_as_flag_is_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "s"), "--grid", "lr=0.1,0.2", "--lr", "0.5", *REF)
    assert code == 2 and "--lr" in one_line(err) and not (tmp_path / "s").exists()
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "s"), "--grid", "lr=0.1", "--grid", "lr=0.2", *REF)
    assert code == 2 and "--grid" in one_line(err)


# ----------------------------------------------------------------------------------------------
# 3. The sweep folder's lock.

_garbage = st.one_of(
    st.binary(max_size=40),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=6).map(lambda v: json.dumps(v).encode()),
    st.builds(lambda pid: json.dumps({"pid": pid, "host": os.uname().nodename}).encode(),
              st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.none(), st.just(-5), st.just(2**70))),
)


@HYP
@given(content=_garbage)
def test_garbled_lock_is_stale_never_a_traceback(content, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lock")
    (folder / "sweep.lock").write_bytes(content)
    lock = RunLock(folder, "sweep.lock")
    owner = lock.owner()
    if owner is not None and lock._owner_alive(owner):
        return  # a well-formed lock naming a live process (e.g. pid 1, or another host) is respected
    with lock:
        assert json.loads((folder / "sweep.lock").read_text())["pid"] == os.getpid()
    assert not (folder / "sweep.lock").exists()


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sims", *args], env=env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


_HOLD_LOCK = """
import sys, time
from theory.plumbing.lock import RunLock
with RunLock(sys.argv[1], "sweep.lock"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_live_lock_refuses_and_dead_lock_is_taken_over(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], env=env(), cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path), *REF)
        assert code == 2 and f"in use by a live process (pid {holder.pid}" in one_line(err)
        assert not (tmp_path / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "sweep.lock").exists()  # SIGKILL left it: stale now
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path), *REF)
    assert code == 0, err
    assert not (tmp_path / "sweep.lock").exists()


def test_lock_reused_pid_and_own_pid_are_stale_other_host_is_live(tmp_path):
    from theory.plumbing.lock import _process_start_time

    host = os.uname().nodename
    parent = os.getppid()  # alive, but started at another time than recorded: its PID was "reused"
    cases = [({"pid": parent, "host": host, "start": "1"}, True),
             ({"pid": os.getpid(), "host": host, "start": _process_start_time(os.getpid())}, True),
             ({"pid": parent, "host": host, "start": _process_start_time(parent)}, False),
             ({"pid": 1, "host": host + "-elsewhere", "start": "1"}, False)]
    for owner, stale in cases:
        (tmp_path / "x.lock").write_text(json.dumps(owner))
        lock = RunLock(tmp_path, "x.lock")
        if stale:
            with lock:
                assert lock.owner()["pid"] == os.getpid()
        else:
            with pytest.raises(RunLockError, match="in use by a live process"):
                lock.acquire()
            assert json.loads((tmp_path / "x.lock").read_text()) == owner  # a live owner's lock is untouched


def test_two_sweeps_at_once_lose_nothing(tmp_path):
    """Two sweeps started together into one folder: one may be refused (exit 2, "in use"), never may an
    index entry be lost; re-running the refused one completes the union."""
    out = tmp_path / "sw"
    grids = (["--grid", "beta_d=0.2,0.3", "--seeds", "3"], ["--grid", "beta_d=0.5,0.6", "--seeds", "3"])
    procs = [_start("sweep", "--out", str(out), *g, "--chunk", "1", *REF, "--iterations", "300") for g in grids]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    for (stdout, stderr, code), grid in zip(results, grids):
        if code == 2:
            assert "in use" in one_line(stderr.strip())
            again = subprocess.run([sys.executable, "-m", "sims", "sweep", "--out", str(out), *grid, "--chunk", "1",
                                    *REF, "--iterations", "300"], env=env(), cwd=REPO, capture_output=True, text=True,
                                   timeout=300)
            assert again.returncode == 0, again.stderr
        else:
            assert code == 0, stderr
    index = strict_json((out / "sweep.json").read_text())
    assert len(index["runs"]) == 12
    assert {p.stem for p in (out / "runs").glob("*.json")} == set(index["runs"])


# ----------------------------------------------------------------------------------------------
# 4. Grid values equal as numbers are one run.

_float_spellings = st.floats(min_value=0.01, max_value=0.99, allow_nan=False).flatmap(
    lambda x: st.lists(st.sampled_from([repr(x), f"{x:.17g}", f"{x:.17e}", repr(x) + "0", f"{x * 10:.17g}e-1"]),
                       min_size=2, max_size=4))


@HYP
@given(spellings=_float_spellings, seeds=st.integers(1, 3))
def test_grid_values_equal_as_numbers_are_one_run(spellings, seeds):
    base = SimConfig(beta_e=1.0, iterations=5)
    grid = parse_grid(["beta_d=" + ",".join(spellings)])
    values = {float(v) for v in spellings}
    runs = expand_grid(base, grid, seeds)
    assert len(runs) == len(values) * seeds
    assert len({k for k, _ in runs}) == len({config_hash(c) for _, c in runs}) == len(runs)


@pytest.mark.parametrize("field,spellings", [("beta_e", ["1", "1.0", "1e0", "1.00"]), ("J", ["3", "03", "+3"]),
                                             ("useful", ["true", "1", "yes", "True"])])
def test_int_float_bool_spellings_are_one_run(field, spellings):
    runs = expand_grid(SimConfig(iterations=5, separate_at=2), parse_grid([f"{field}=" + ",".join(spellings)]), 2)
    assert len(runs) == 2
    assert SimConfig(beta_e=1).beta_e == 1.0 and isinstance(SimConfig(beta_e=1).beta_e, float)
    assert config_hash(SimConfig(beta_e=1)) == config_hash(SimConfig(beta_e=1.0))


# ----------------------------------------------------------------------------------------------
# 5. State files of the wrong shape.

_json_not_object = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3), max_leaves=5)
_wrong_state = st.one_of(
    _json_not_object.map(json.dumps),
    st.dictionaries(st.sampled_from(["runs", "config", "format", "x"]), _json_not_object, max_size=3).map(json.dumps),
    st.just('{"format": "useful-sb/sim-claims/1", "runs": {}}'),
    st.just(json.dumps({"format": SWEEP_FORMAT, "runs": []})),
    st.just(json.dumps({"format": SWEEP_FORMAT, "runs": {"seed=0": None}})),
    st.just(json.dumps({"format": RUN_FORMAT, "config": None})),
    st.just(json.dumps({"format": RUN_FORMAT, "config": [1, 2]})),
    st.binary(min_size=1, max_size=30).map(lambda b: b.decode("latin-1")).filter(lambda s: not _is_json_object(s)),
)


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(content=_wrong_state, which=st.sampled_from(["sweep.json", "runs/seed=0.json"]))
def test_wrong_shape_state_file_is_one_line_and_kept(content, which, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("sw")
    path = out / which
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("latin-1"))
    code, _, err = run_cli(capsys, "sweep", "--out", str(out), *REF)
    line = one_line(err)
    assert code == 2 and str(path) in line, line
    assert path.read_bytes() == content.encode("latin-1")
    assert not (out / "sweep.lock").exists()


def test_trajectory_load_refuses_wrong_shapes(tmp_path):
    for content in ("[]", "null", '{"format": "useful-sb/sim-run/1", "config": []}', "{"):
        (tmp_path / "x.json").write_text(content)
        (tmp_path / "x.npz").write_bytes(b"")
        with pytest.raises(StateFileError, match="x.json"):
            Trajectory.load(tmp_path / "x")


# ----------------------------------------------------------------------------------------------
# 6. Sizes are checked before allocating.

HUGE_FLAGS = ["d", "n_train", "n_test", "J", "P", "iterations"]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(field=st.sampled_from(HUGE_FLAGS), value=st.integers(10**10, 10**18), command=st.sampled_from(["run", "sweep"]))
def test_huge_size_is_refused_naming_the_flag(field, value, command, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("huge")
    argv = [command, "--out", str(tmp / "o"), f"--{field.replace('_', '-')}", str(value), "--backend", "reference"]
    if field == "iterations":
        argv += ["--record-every", "1"]
    t = time.perf_counter()
    code, _, err = run_cli(capsys, *argv)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: --{field.replace('_', '-')}: the configuration needs about"), line
    assert "is available" in line and time.perf_counter() - t < 5
    assert not any(tmp.iterdir())


def test_number_of_runs_is_checked(tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "s"), "--seeds", str(10**13), *REF)
    assert code == 2 and one_line(err).startswith("error: --seeds: the configuration needs about")
    code, _, err = run_cli(capsys, "reproduce", "--out", str(tmp_path / "r"), "--seeds", str(10**9), *REF)
    assert code == 2 and one_line(err).startswith("error: --seeds:")
    with pytest.raises(ConfigError, match="^--chunk:"):
        check_memory(SimConfig(), runs=10**9, runs_flag="--chunk")
    check_memory(SimConfig(), runs=1)  # the default fits
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "g"), "--grid", f"P=3,{10**12}", *REF)
    assert code == 2 and one_line(err).startswith("error: --P:") and not (tmp_path / "g" / "runs").exists()


# ----------------------------------------------------------------------------------------------
# 7. Errors name fields as flags.


@pytest.mark.parametrize("argv,prefix", [(["--J", "0"], "error: --J: got 0"), (["--P", "2"], "error: --P: got 2"),
                                         (["--n-train", "1"], "error: --n-train: got 1")])
def test_field_errors_name_the_flag(argv, prefix, tmp_path, capsys):
    for command in ("run", "sweep", "reproduce"):
        code, _, err = run_cli(capsys, command, "--out", str(tmp_path / "o"), *argv)
        assert code == 2 and one_line(err).startswith(prefix), err


# ----------------------------------------------------------------------------------------------
# 8. Ctrl-C.


def _interrupt_when(args: list[str], ready) -> subprocess.CompletedProcess:
    proc = _start(*args)
    deadline = time.time() + 90
    while not ready():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def test_ctrl_c_during_sweep_is_130_one_line_nothing_half_written(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--out", str(out), "--grid", "beta_d=0.2,0.3,0.4,0.5", "--seeds", "3", "--chunk", "1", *REF,
            "--iterations", "400"]
    res = _interrupt_when(args, lambda: (out / "sweep.json").exists())
    assert res.returncode == 130 and one_line(res.stderr.strip()) == "error: interrupted"
    no_temporaries(out)
    assert not (out / "sweep.lock").exists()
    for p in out.rglob("*.json"):
        strict_json(p.read_text())
    again = subprocess.run([sys.executable, "-m", "sims", *args], env=env(), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and strict_json(again.stdout)["finished"] == 12


def test_ctrl_c_during_run_leaves_no_output(tmp_path):
    args = ["run", "--out", str(tmp_path / "r"), *REF, "--iterations", "200000", "--record-every", "100000"]
    res = _interrupt_when(args, lambda: (tmp_path / ".r.lock").exists())  # the lock is taken just before simulating
    assert res.returncode == 130 and one_line(res.stderr.strip()) == "error: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == []  # no output, no temporary, no lock


# ----------------------------------------------------------------------------------------------
# 9. Printed and written JSON is strict.


def test_nan_accuracy_prints_null(tmp_path, capsys):
    """alpha = 1: no test example lacks the fast feature, so slow-only accuracy is NaN -> null."""
    code, out, err = run_cli(capsys, "run", "--out", str(tmp_path / "r"), "--alpha", "1", *REF)
    assert code == 0, err
    printed = strict_json(out)
    assert printed["test_acc_slow"] is None and math.isfinite(printed["test_acc"])
    strict_json((tmp_path / "r.json").read_text())
    code, out, err = run_cli(capsys, "sweep", "--out", str(tmp_path / "s"), "--alpha", "1", *REF)
    assert code == 0 and strict_json(out)["finished"] == 1
    index = strict_json((tmp_path / "s" / "sweep.json").read_text())
    assert index["runs"]["seed=0"]["final"]["test_acc_slow"] is None


@pytest.mark.slow
def test_reproduce_without_slow_only_test_examples_writes_strict_json(tmp_path, capsys):
    """alpha = 1: every slow-only accuracy is NaN; the report is still written, with nulls."""
    code, _, err = run_cli(capsys, *TINY_REPORT, "--seeds", "1", "--alpha", "1", "--out", str(tmp_path))
    assert code == 0, err
    report = strict_json((tmp_path / "claims.json").read_text())
    gen = next(c for c in report["claims"] if c["id"] == "sam_generalizes_better")
    assert gen["values"]["slow_only_test_acc_gd"]["per_seed"] == [None] and gen["holds"] is False


# ----------------------------------------------------------------------------------------------
# 10. reproduce: an earlier report is refused without --overwrite; one rule for separate_at.



@pytest.mark.slow
def test_reproduce_refuses_an_earlier_report_and_overwrite_clears_stale_runs(tmp_path, capsys):
    out = tmp_path / "rep"
    assert run_cli(capsys, *TINY_REPORT, "--out", str(out))[0] == 0
    before = snapshot(out)
    code, _, err = run_cli(capsys, *TINY_REPORT, "--out", str(out))
    assert code == 2 and "already holds a report" in one_line(err) and snapshot(out) == before
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, *TINY_REPORT, "--seeds", "1", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        f"{n}_seed0.{s}" for n in ("gd", "sam", "gd_useful", "sam_useful", "gd_random") for s in ("npz", "json"))
    assert (out / "notes.txt").read_text() == "mine"
    assert strict_json((out / "claims.json").read_text())["seeds"] == 1
    # A file of the user's in the way is refused even with --overwrite, and nothing is deleted.
    (out / "gd_fast_first.png").write_bytes(b"\x89PNG mine")
    before = snapshot(out)
    code, _, err = run_cli(capsys, *TINY_REPORT, "--out", str(out), "--overwrite")
    assert code == 2 and "gd_fast_first.png" in one_line(err) and snapshot(out) == before


def test_separate_at_beyond_iterations_one_rule(tmp_path, capsys):
    lines = []
    for argv in (["run", "--useful"], ["reproduce"], ["sweep", "--useful"]):
        code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "o"), *REF, "--separate-at", "31")
        assert code == 2
        lines.append(one_line(err))
    assert len(set(lines)) == 1 and lines[0] == "error: --separate-at: got 31, expected an integer in [1, 30]"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------
# 11. File-system errors.


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_out_is_a_file_where_a_folder_is_expected(command, tmp_path, capsys):
    target = tmp_path / "f"
    target.write_text("user data")
    code, _, err = run_cli(capsys, command, "--out", str(target), *REF)
    assert code == 2 and one_line(err) == f"error: --out: {target} is a file, expected a folder"
    code, _, err = run_cli(capsys, "run", "--out", str(target / "x"), *REF)
    assert code == 2 and "is a file, expected a folder" in one_line(err)
    assert target.read_text() == "user data"


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("failure", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_failure_is_one_line_exit_1_nothing_half_written(command, failure, tmp_path, capsys, monkeypatch):
    import theory.plumbing.atomic as atomic

    class FailingOs:  # the os module as the atomic writers see it, with a failing fsync
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def fsync(fd):
            raise OSError(failure, os.strerror(failure))

    monkeypatch.setattr(atomic, "os", FailingOs())
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, command, "--out", str(out), *REF)
    assert code == 1 and one_line(err).endswith(os.strerror(failure)), err
    monkeypatch.undo()
    no_temporaries(tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written  # the first write failed: nothing else was written, no lock left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_exit_1(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = run_cli(capsys, "run", "--out", str(ro / "r"), *REF)
        assert code == 1 and "Permission denied" in one_line(err)
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------------------------
# 12. Files not ours are never overwritten.


@pytest.mark.parametrize("name", ["r.json", "r.npz", "r_partition.npz"])
def test_run_refuses_to_overwrite_foreign_files(name, tmp_path, capsys):
    (tmp_path / name).write_bytes(b'{"my": "data"}')
    code, _, err = run_cli(capsys, "run", "--out", str(tmp_path / "r"), "--useful", *REF)
    assert code == 2 and f"{tmp_path / name} exists and was not written by useful-sim" in one_line(err)
    assert (tmp_path / name).read_bytes() == b'{"my": "data"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_run_replaces_its_own_files_and_drops_a_stale_partition(tmp_path, capsys):
    stem = str(tmp_path / "r")
    assert run_cli(capsys, "run", "--out", stem, "--useful", *REF)[0] == 0
    assert (tmp_path / "r_partition.npz").exists()
    assert run_cli(capsys, "run", "--out", stem, *REF, "--lr", "0.4")[0] == 0
    assert not (tmp_path / "r_partition.npz").exists()
    traj = Trajectory.load(stem)
    assert traj.config["lr"] == 0.4 and traj.config["useful"] is False


def test_sweep_refuses_foreign_run_files(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "seed=0.npz").write_bytes(b"not ours")
    code, _, err = run_cli(capsys, "sweep", "--out", str(tmp_path), *REF)
    assert code == 2 and "seed=0.npz exists and was not written by useful-sim" in one_line(err)
    assert (tmp_path / "runs" / "seed=0.npz").read_bytes() == b"not ours"
