"""Smoke runs of the benchmarks (SPEC.md section 5): each script runs with ``--smoke`` in a subprocess,
finishes quickly, and prints as its last line one JSON object with its expected keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 120  # each smoke run takes seconds; generous for a loaded CI machine

BENCHES = {
    "train_throughput.py": {
        "bench", "device", "torch", "n", "model", "cases", "split", "max_split_over_epoch",
        "peak_mem_bytes", "targets", "targets_met", "epoch_time",
    },
    "sim_cpu.py": {"bench", "smoke", "results", "min_speedup_small", "targets", "targets_met"},
    "sim_sweep.py": {"target", "best_speedup", "target_met", "plain_seconds_per_run", "torch_batched_seconds"},
}
CASE_KEYS = {
    "optimizer", "batch_size", "real_img_s", "reference_img_s", "ratio", "data_prep_share",
    "split_over_epoch", "peak_mem_bytes_real", "peak_mem_bytes_reference",
}


def run_smoke(script: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{script} --smoke printed nothing"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("script", sorted(BENCHES))
def test_bench_smoke_last_line_is_json(script: str) -> None:
    result = run_smoke(script)
    missing = BENCHES[script] - result.keys()
    assert not missing, f"{script}: missing keys {sorted(missing)}"
    if script == "train_throughput.py":
        assert result["smoke"] is True
        assert {c["optimizer"] for c in result["cases"]} == {"sgd", "sam"}
        for case in result["cases"]:
            assert CASE_KEYS <= case.keys()
            assert case["real_img_s"] > 0 and case["reference_img_s"] > 0
            assert 0.0 <= case["data_prep_share"] <= 1.5  # separately timed; noise may push it past 1 on a busy box
            assert case["split_over_epoch"] > 0
        if result["device_type"] == "cpu":
            assert result["peak_mem_bytes"] is None
            assert isinstance(result["targets_met"], str) and "not measured" in result["targets_met"]
