"""A sweep of R small runs: the torch backend with all runs in one batch vs the numba backend one run after another.

    python bench/sim_sweep.py [--smoke] [--device cuda] [--runs 256] [--steps 100] [--rule gd] [--dtype float64]

or, from Python (e.g. bench/gpu.py):

    from sim_sweep import measure, SMOKE
    figures = measure(device="cuda")               # default sizes: R = 256 runs, 100 steps, n = 200, d = 200
    figures = measure(**SMOKE, device="cuda")      # tiny sizes, seconds

Each run has its own data, initialization, learning rate and rho (default size n = 200, P = 3, d = 200,
J = 20).  Timed, each after a 2-step warm-up (compilation, CUDA context):

* ``torch_batched``: :class:`sims.backend_torch.TorchBackend` with all R runs in one computation, on
  ``device`` (on CPU also with the other thread setting, torch's default vs one; the faster counts);
* ``numba_sequential``: :class:`sims.backend_numba.NumbaBackend` on one run at a time, one after the
  other (the first ``sequential_runs`` runs timed, extrapolated to R when fewer: the JSON says so);
* ``numba_batched``: the numba backend with the R runs split over the CPU cores;
* ``plain``: the plain torch-autograd step of ``bench/sim_cpu.py`` (on ``device``), one run after the
  other, a few timed and extrapolated (``plain_runs = 0`` skips it).

The batched torch results are checked against the sequential numba ones (``torch_vs_numba_max_rel_diff``:
the largest difference of final weights relative to the run's scale), so a fast wrong answer shows.
Targets (vs the plain baseline): >= 8x on 2 CPU cores, >= 50x on CUDA.  The last line printed is one
JSON object.
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

__all__ = ["measure", "DEFAULT", "SMOKE", "main"]

#: The default sizes of :func:`measure` and the ``--smoke`` ones.
DEFAULT = dict(runs=256, steps=100, **SIZES["small"])
SMOKE = dict(runs=8, steps=10, **SMOKE_SIZES["small"], sequential_runs=4, plain_runs=2)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_batched(backend, steps: int, device: str) -> float:
    """Seconds of ``steps`` steps after a 2-step warm-up."""
    backend.advance(2)
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


def time_sequential(specs, dtype: str, steps: int) -> tuple[float, np.ndarray]:
    """Total seconds of the numba backend on each spec alone, one after the other, and the final weights.

    Each run advances 2 + ``steps`` steps (like the batched backends); only the ``steps`` are timed.
    """
    total, weights = 0.0, []
    for spec in specs:
        backend = NumbaBackend([spec], dtype=dtype)
        backend.advance(2)
        t = time.perf_counter()
        backend.advance(steps)
        total += time.perf_counter() - t
        weights.append(backend.weights()[0])
    return total, np.stack(weights)


def _max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max over runs of max |a_r - b_r| / max |b_r|."""
    scale = np.maximum(np.abs(b).reshape(len(b), -1).max(1), 1e-300)
    return float((np.abs(a - b).reshape(len(b), -1).max(1) / scale).max())


def measure(runs: int = 256, steps: int = 100, n: int = 200, P: int = 3, d: int = 200, J: int = 20, *,
            rule: str = "gd", dtype: str = "float64", device: str | None = None, sequential_runs: int | None = None,
            plain_runs: int = 4, seed: int = 0) -> dict:
    """Time R = ``runs`` runs of ``steps`` steps at size (n, P, d, J) (see the module docstring); returns the figures.

    ``device``: where the torch backend and the plain baseline run (default: ``cuda`` when available);
    ``sequential_runs``: numba runs timed one after another (default: all R; fewer are extrapolated);
    ``plain_runs``: plain-baseline runs timed (0: skip the baseline).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = dict(n=n, P=P, d=d, J=J)
    R = int(runs)
    k_seq = R if sequential_runs is None else max(1, min(R, int(sequential_runs)))
    k_plain = max(0, min(R, int(plain_runs)))
    rng = np.random.default_rng(seed)
    problems = [make_problem(size, seed=1000 + r) for r in range(R)]
    lrs = rng.uniform(0.2, 0.5, R)
    rhos = rng.uniform(0.0, 0.03, R)
    specs = [make_spec(data, W0, rule, lr=float(lr), rho=float(rho))
             for (data, W0), lr, rho in zip(problems, lrs, rhos)]

    result: dict = {"bench": "sim_sweep", "device": device, "runs": R, "steps": steps, "rule": rule, "dtype": dtype,
                    "size": size, "cpus": os.cpu_count(), "loadavg_1min": os.getloadavg()[0]}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name(torch.device(device))

    torch_backend = TorchBackend(specs, dtype=dtype, device=device)
    t_torch = time_batched(torch_backend, steps, device)
    result.update({"torch_path": torch_backend.path, "torch_threads": torch_backend.threads})
    if device == "cpu":  # also with the other thread setting (torch's default vs one); the faster counts
        other = torch.get_num_threads() if torch_backend.threads == 1 else 1
        t_other = time_batched(TorchBackend(specs, dtype=dtype, device=device, threads=other), steps, device)
        result["torch_batched_seconds_threads"] = {str(torch_backend.threads or torch.get_num_threads()): t_torch,
                                                   str(other): t_other}
        if t_other < t_torch:
            t_torch = t_other
            result["torch_threads"] = other
    W_torch = torch_backend.weights()
    result.update({"torch_batched_seconds": t_torch,
                   "torch_batched_gflops": torch_backend.flops_per_step() * steps / t_torch / 1e9})
    del torch_backend

    t_seq, W_seq = time_sequential(specs[:k_seq], dtype, steps)
    seq_total = t_seq * R / k_seq
    result.update({
        "numba_sequential_runs_timed": k_seq,
        "numba_sequential_extrapolated": k_seq < R,
        "numba_sequential_seconds": seq_total,
        "speedup_torch_batched_vs_numba_sequential": seq_total / t_torch,
        "torch_vs_numba_max_rel_diff": _max_rel_diff(W_torch[:k_seq], W_seq),
    })

    numba_backend = NumbaBackend(specs, dtype=dtype)
    t_numba = time_batched(numba_backend, steps, "cpu")
    result.update({"numba_path": numba_backend.path, "numba_batched_seconds": t_numba,
                   "numba_threads": min(R, numba_backend.threads)})
    del numba_backend

    if k_plain:
        plain = time_plain(problems[:k_plain], dtype, rule, steps, device)
        if device == "cpu":
            default = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                plain_one = time_plain(problems[:k_plain], dtype, rule, steps, device)
            finally:
                torch.set_num_threads(default)
            result["plain_seconds_per_run_default_threads"] = plain
            result["plain_seconds_per_run_one_thread"] = plain_one
            plain = min(plain, plain_one)
        result.update({"plain_seconds_per_run": plain, "plain_runs_timed": k_plain,
                       "plain_extrapolated": k_plain < R, "plain_seconds_total": plain * R,
                       "speedup_torch": plain * R / t_torch})
        if device == "cpu":
            result["speedup_numba"] = plain * R / t_numba
        target = 50.0 if device.startswith("cuda") else 8.0
        best = max(result["speedup_torch"], result.get("speedup_numba", 0.0))
        result.update({"target": target, "best_speedup": best, "target_met": best >= target})
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when available)")
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--rule", default="gd", choices=["gd", "sam", "usam"])
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--sequential-runs", type=int, default=None,
                        help="numba runs timed one after another (default: all; fewer are extrapolated)")
    parser.add_argument("--plain-runs", type=int, default=None, help="plain runs to time (extrapolated to --runs)")
    args = parser.parse_args(argv)
    sizes = dict(SMOKE if args.smoke else DEFAULT)
    for key in ("runs", "steps", "sequential_runs", "plain_runs"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    result = measure(**sizes, rule=args.rule, dtype=args.dtype, device=args.device)
    result["smoke"] = args.smoke
    print(f"{result['runs']} runs x {result['steps']} steps on {result['device']}: torch batched "
          f"{result['torch_batched_seconds']:.3f} s, numba one after another {result['numba_sequential_seconds']:.3f} s "
          f"(x{result['speedup_torch_batched_vs_numba_sequential']:.1f}), numba batched "
          f"{result['numba_batched_seconds']:.3f} s", flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
