"""Smoke runs of the benchmarks (SPEC.md section 5): each script runs with ``--smoke`` in a subprocess,
finishes quickly, and prints as its last line one JSON object with its expected keys.  bench/gpu.py's
smoke run also writes gpu.json and gpu.log and runs every section (on the CPU)."""

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


def run_smoke(script: str, *extra: str, timeout: float = TIMEOUT_S) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
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


GPU_SECTIONS = {"correctness", "throughput", "split", "sims", "compile"}
GPU_FIGURES = {
    "sgd_b512_img_s", "min_sam_over_sgd", "real_over_plain_sgd_b128", "split_over_200_epochs",
    "min_sims_over_numba_sequential", "sam_over_sgd", "real_over_plain", "img_s", "split_over_sgd_epoch",
    "sims_over_numba_sequential", "sims_over_numba_all_cores", "models_sgd_img_s", "models_peak_gib",
}


def test_gpu_bench_smoke_runs_every_section(tmp_path):
    import torch

    out = tmp_path / "gpu"
    result = run_smoke("gpu.py", "--out", str(out), timeout=600)
    assert result["bench"] == "gpu" and result["mode"] == "smoke" and result["device_type"] == "cpu"
    assert set(result["sections"]) == GPU_SECTIONS
    assert all(status == "ok" for status in result["sections"].values()), result["sections"]
    assert result["ok"] is True and result["errors"] == {}
    assert GPU_FIGURES <= result["figures"].keys()
    assert set(result["targets"]) == {"sgd_b512_img_s", "min_sam_over_sgd", "real_over_plain_sgd_b128",
                                      "split_over_200_epochs", "min_sims_over_numba_sequential"}
    assert isinstance(result["targets_met"], str) and result["targets_met"].startswith("not measured")
    # Section 1 ran pytest -m cuda (and the sims CUDA test): every test collected, none failed; on a
    # machine without CUDA they are all skipped.
    pytest_counts = result["pytest"]
    assert pytest_counts["tests"] > 0 and pytest_counts["failures"] == pytest_counts["errors"] == 0
    if not torch.cuda.is_available():
        assert pytest_counts["skipped"] == pytest_counts["tests"]
    # The files: gpu.json holds the sections in full and the same summary; gpu.log the progress.
    report = json.loads((out / "gpu.json").read_text())
    assert report["summary"] == result
    tp = report["sections"]["throughput"]
    assert {(c["optimizer"], c["batch_size"]) for c in tp["cases"]} == {("sgd", 32), ("sam", 32), ("sgd", 64), ("sam", 64)}
    for case in tp["cases"]:
        assert CASE_KEYS <= case.keys() and case["real_img_s"] > 0 and case["reference_img_s"] > 0
        assert case["real_epoch_s_extrapolated"] is False  # full epochs, their last smaller batch included
    assert [m["model"] for m in tp["models"]] == ["mlp"]
    split = report["sections"]["split"]
    assert split["split_s"] > 0 and set(split["by_batch"]) == {"32", "64"}
    sims = report["sections"]["sims"]["cases"]
    assert [(c["rule"], c["dtype"]) for c in sims] == [("gd", "float64"), ("sam", "float32")]
    assert sims[0]["max_rel_diff_torch_vs_numba"] < 1e-9  # the torch and numba backends ran the same runs
    assert report["sections"]["compile"]["img_s"] > 0
    log = (out / "gpu.log").read_text()
    assert "== correctness" in log and "== sims" in log and "pytest" in log
    # A second run into the same folder is refused (one line, exit 2), the files untouched.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    again = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert json.loads((out / "gpu.json").read_text()) == report
