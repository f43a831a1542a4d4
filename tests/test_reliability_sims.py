"""Reliability of ``useful-sim`` (issue 7): divergence, SIGKILL during a sweep, determinism of ``reproduce``.

Complements tests/test_cli_invalid_sim.py (500 generated invalid configurations) and
tests/test_sims_pipeline.py (in-process sweep resume).  Everything runs as a real process, small sizes,
on the reference backend.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import kill_when, run_module

from sims.cli import main

SMALL = ["--n-train", "40", "--d", "20", "--J", "5", "--backend", "reference"]


def sim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_module("sims", *args, timeout=timeout)


# ----------------------------------------------------------------------------------------------
# Divergence.


def test_absurd_lr_exits_1_naming_the_iteration(tmp_path):
    res = sim("run", "--lr", "1e200", "--iterations", "50", *SMALL, "--out", str(tmp_path / "d"))
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:") and "diverged at iteration" in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "d.npz").exists() and not (tmp_path / "d.json").exists()


def test_divergence_in_process_is_exit_1(tmp_path, capsys):
    code = main(["run", "--lr", "1e200", "--iterations", "20", *SMALL, "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "iteration" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# SIGKILL during a sweep.

SWEEP = ["sweep", "--grid", "beta_d=0.2,0.4,0.6", "--seeds", "4", "--chunk", "1", "--iterations", "3000", *SMALL]


def _finished(runs: Path) -> set[str]:
    if not runs.is_dir():
        return set()
    return {p.stem for p in runs.glob("*.json")} & {p.stem for p in runs.glob("*.npz")}


def test_sweep_killed_resumes_and_skips_finished(tmp_path):
    out = tmp_path / "killed"
    kill_when("sims", [*SWEEP, "--out", str(out)], lambda: len(_finished(out / "runs")) >= 3)
    done = _finished(out / "runs")
    assert 3 <= len(done) < 12
    # No temporaries are taken for finished runs: every .json present is whole JSON.
    for key in done:
        json.loads((out / "runs" / f"{key}.json").read_text())
    stamps = {p.name: p.stat().st_mtime_ns for key in done for p in (out / "runs").glob(f"{key}.*")}
    res = sim(*SWEEP, "--out", str(out))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["total"] == 12 and report["finished"] == 12
    assert report["skipped_as_done"] == len(done)
    assert {p.name: p.stat().st_mtime_ns for key in done for p in (out / "runs").glob(f"{key}.*")} == stamps
    # The same numbers as an uninterrupted sweep.
    ref = sim(*SWEEP, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    a = json.loads((out / "sweep.json").read_text())
    b = json.loads((tmp_path / "ref" / "sweep.json").read_text())
    assert a["runs"] == b["runs"]
    assert a["finished"] == b["finished"] == 12


# ----------------------------------------------------------------------------------------------
# Determinism.


def _claims_without_seconds(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds", None)
    return data


def test_reproduce_twice_gives_identical_claims(tmp_path):
    args = ["reproduce", "--quick", "--iterations", "200", "--n-train", "40", "--d", "20", "--J", "5", "--seeds", "2"]
    first, second = sim(*args, "--out", str(tmp_path / "a")), sim(*args, "--out", str(tmp_path / "b"))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    a, b = _claims_without_seconds(tmp_path / "a" / "claims.json"), _claims_without_seconds(tmp_path / "b" / "claims.json")
    assert a == b
    assert {c["id"] for c in a["claims"]} >= {"gd_fast_first", "sam_delays_fast", "beta_d_sweep"}


@pytest.mark.parametrize("argv", [
    ["run", "--alpha", "1.5", "--out", "x"],
    ["run", "--rho", "-0.1", "--out", "x"],
    ["run", "--batch-size", "0", "--out", "x"],
    ["run", "--optimizer", "adam", "--out", "x"],
    ["run", "--iterations", "ten", "--out", "x"],
    ["run", "--device", "cuda", "--out", "x"],
    ["run", "--useful", "--upsample-factor", "0", "--out", "x"],
    ["run", "--config", "/nonexistent/c.toml", "--out", "x"],
    ["sweep", "--out", "x", "--grid", "betad=0.2"],
    ["sweep", "--out", "x", "--grid", "beta_d=0.2,abc"],
    ["sweep", "--out", "x", "--seeds", "0"],
    ["reproduce", "--out", "x", "--seeds", "-1"],
])
def test_user_mistakes_one_line_exit_2(argv, capsys, tmp_path, monkeypatch):
    """The mistakes listed in docs/reliability.md: exit 2, one line, nothing written."""
    monkeypatch.chdir(tmp_path)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert not any(tmp_path.iterdir())
