"""A sweep of R small runs, batched, vs R sequential runs of the plain torch implementation.

    python bench/sim_sweep.py [--smoke] [--device cuda] [--runs 256] [--steps 100] [--rule gd]

Each run has its own data, initialization, learning rate and rho (small size: n = 200, P = 3,
d = 200, J = 20).  Batched: :class:`sims.backend_torch.TorchBackend` with all R runs in one
computation (on ``--device``), and :class:`sims.backend_numba.NumbaBackend` with R runs split over
the CPU cores (CPU only).  Baseline: the plain torch-autograd step of ``bench/sim_cpu.py`` (on the
same device), one run after the other; a few runs are timed and the time is extrapolated to R
(``plain_extrapolated`` in the JSON says so).  On CPU the baseline is timed with torch's default
threads and with one thread and the faster is used.

Targets: >= 8x on 2 CPU cores, >= 50x on CUDA.  The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

from sim_cpu import SIZES, SMOKE_SIZES, make_problem, make_spec, plain_runner  # noqa: E402

from sims.backend_numba import NumbaBackend  # noqa: E402
from sims.backend_torch import TorchBackend  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batched(backend, steps: int, device: str) -> float:
    backend.advance(2)  # compile / warm up
    _sync(device)
    t = time.perf_counter()
    backend.advance(steps)
    _sync(device)
    return time.perf_counter() - t


def time_plain(problems, dtype: str, rule: str, steps: int, device: str) -> float:
    """Seconds per run (median over the timed runs) of the plain implementation."""
    ts = []
    for data, W0 in problems:
        run = plain_runner(data, W0, dtype, rule, device)
        run(2)  # warm up
        t = time.perf_counter()
        run(steps)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rule", default="gd", choices=["gd", "sam", "usam"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--plain-runs", type=int, default=None, help="plain runs to time (extrapolated to --runs)")
    args = parser.parse_args(argv)
    size = SMOKE_SIZES["small"] if args.smoke else SIZES["small"]
    R = args.runs or (8 if args.smoke else 256)
    steps = args.steps or (10 if args.smoke else 100)
    k_plain = min(R, args.plain_runs or (2 if args.smoke else 4))
    device = args.device
    rng = np.random.default_rng(0)
    problems = [make_problem(size, seed=1000 + r) for r in range(R)]
    lrs = rng.uniform(0.2, 0.5, R)
    rhos = rng.uniform(0.0, 0.03, R)
    specs = [make_spec(data, W0, args.rule, lr=float(lr), rho=float(rho))
             for (data, W0), lr, rho in zip(problems, lrs, rhos)]

    result: dict = {"bench": "sim_sweep", "smoke": args.smoke, "device": device, "runs": R, "steps": steps,
                    "rule": args.rule, "dtype": args.dtype, "size": size, "cpus": os.cpu_count(),
                    "loadavg_1min": os.getloadavg()[0]}

    # baseline: sequential plain runs (a few, extrapolated)
    plain = time_plain(problems[:k_plain], args.dtype, args.rule, steps, device)
    if device == "cpu":
        default = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            plain_one = time_plain(problems[:k_plain], args.dtype, args.rule, steps, device)
        finally:
            torch.set_num_threads(default)
        result["plain_seconds_per_run_default_threads"] = plain
        result["plain_seconds_per_run_one_thread"] = plain_one
        plain = min(plain, plain_one)
    result.update({
        "plain_seconds_per_run": plain,
        "plain_runs_timed": k_plain,
        "plain_extrapolated": k_plain < R,
        "plain_seconds_total": plain * R,
    })

    torch_backend = TorchBackend(specs, dtype=args.dtype, device=device)
    t_torch = time_batched(torch_backend, steps, device)
    result.update({"torch_path": torch_backend.path, "torch_threads": torch_backend.threads})
    if device == "cpu":  # also with the other thread setting (torch's default vs one); the faster counts
        other = torch.get_num_threads() if torch_backend.threads == 1 else 1
        t_other = time_batched(TorchBackend(specs, dtype=args.dtype, device=device, threads=other), steps, device)
        result.update({"torch_batched_seconds_threads": {str(torch_backend.threads or torch.get_num_threads()): t_torch,
                                                         str(other): t_other}})
        if t_other < t_torch:
            t_torch = t_other
            result["torch_threads"] = other
    result.update({"torch_batched_seconds": t_torch, "speedup_torch": plain * R / t_torch})
    how = f"extrapolated from {k_plain}" if k_plain < R else "measured"
    print(f"plain {plain * R:.3f} s for {R} runs ({how}); "
          f"torch batched {t_torch:.3f} s (x{plain * R / t_torch:.1f})", flush=True)
    del torch_backend

    numba_backend = NumbaBackend(specs, dtype=args.dtype)
    t_numba = time_batched(numba_backend, steps, "cpu")
    result.update({"numba_path": numba_backend.path, "numba_batched_seconds": t_numba,
                   "numba_threads": min(R, numba_backend.threads)})
    if device == "cpu":
        result["speedup_numba"] = plain * R / t_numba
        print(f"numba batched {t_numba:.3f} s (x{plain * R / t_numba:.1f})", flush=True)
    target = 50.0 if device.startswith("cuda") else 8.0
    best = max(result["speedup_torch"], result.get("speedup_numba", 0.0))
    result.update({"target": target, "best_speedup": best, "target_met": best >= target})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
