"""Step time of the numba simulator backend vs a plain torch-autograd step, and its FLOP rate.

    python bench/sim_cpu.py [--smoke] [--repeats K]

Sizes: small (n = 200, P = 3, d = 200, J = 20: Gram path) and large (n = 4000, P = 4, d = 1000,
J = 64: direct path), float32 and float64, GD and SAM.  The baseline is the straightforward dense
model in torch (einsum, cube, sum, softplus loss, autograd backward, ``W -= lr grad``; SAM: two
passes), at the same dtype; it is timed with torch's default threads and with one thread and the
faster of the two is used.  Baseline and backend are timed in alternating repeats (the machine is
shared and noisy) and compared by medians.

FLOP rate: the backend's matrix products per step (``sims.backend_contract.flops_per_step``: Gram
``2 Mb^2 J`` per product, direct ``4 Mb d J`` per gradient; SAM doubles; elementwise work not
counted) over its measured step time, as a fraction of numpy's rate on the same products (timed
in the same alternating repeats, with the backend's BLAS thread policy: ``B @ W^T`` and
``B^T @ S`` for the direct path, ``G @ S`` in one call for the Gram path).

The last line printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sims.backend_contract import RunSpec  # noqa: E402
from sims.backend_numba import SMALL_PRODUCT_FLOPS, NumbaBackend  # noqa: E402
from theory.data import DataConfig, sample  # noqa: E402
from theory.model import init_weights  # noqa: E402
from theory.updates import update  # noqa: E402

SIZES = {
    "small": dict(n=200, P=3, d=200, J=20),
    "large": dict(n=4000, P=4, d=1000, J=64),
}
SMOKE_SIZES = {
    "small": dict(n=30, P=3, d=24, J=5),
    "large": dict(n=40, P=4, d=12, J=6),  # Mb > 2d: the direct path
}
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


# -- the plain torch implementation ---------------------------------------------------------------


def plain_grad(W: torch.Tensor, X: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """dL/dW by autograd on the dense model."""
    W = W.detach().requires_grad_(True)
    z = torch.einsum("npd,jd->npj", X, W)
    f = (z**3).sum((1, 2))
    loss = (m * F.softplus(-y * f)).sum() / m.sum()
    (g,) = torch.autograd.grad(loss, W)
    return g


def plain_step(W, X, y, m, *, rule: str, lr: float, rho: float) -> torch.Tensor:
    """One GD / SAM / USAM step of the plain implementation."""
    g = plain_grad(W, X, y, m)
    if rule in ("sam", "usam") and rho > 0:
        if rule == "sam":
            norm = torch.linalg.norm(g)
            eps = rho * g / norm if norm > 0 else torch.zeros_like(g)
        else:
            eps = rho * g
        g = plain_grad(W + eps, X, y, m)
    return (W - lr * g).detach()


def make_problem(size: dict, seed: int = 0, lr: float = 0.5):
    """Data and initialization at a size (SPEC's regime: sigma_0 = 0.01, sigma_p = 0.06)."""
    rng = np.random.default_rng(seed)
    data = sample(DataConfig(d=size["d"], P=size["P"], alpha=0.9, beta_e=1.0, beta_d=0.4, sigma_p=0.06),
                  size["n"], rng)
    W0 = init_weights(size["J"], size["d"], 0.01, rng)
    return data, W0


def make_spec(data, W0, rule: str, lr: float = 0.5, rho: float = 0.015) -> RunSpec:
    return RunSpec(train=data, W0=W0, multiplicities=np.ones(data.n), rule=rule, lr=lr, rho=rho,
                   beta_e=1.0, beta_d=0.4)


def check_plain_step(data, W0) -> float:
    """Relative difference of one plain SAM step to theory's reference update (sanity check)."""
    X = torch.as_tensor(data.X)
    y = torch.as_tensor(data.y)
    m = torch.ones(data.n, dtype=torch.float64)
    W1 = plain_step(torch.as_tensor(W0), X, y, m, rule="sam", lr=0.5, rho=0.015).numpy()
    ref = update(W0, data.X, data.y, None, rule="sam", lr=0.5, rho=0.015)
    return float(np.abs(W1 - ref).max() / np.abs(ref).max())


# -- timing ---------------------------------------------------------------------------------------


def timed(fn, inner: int) -> float:
    t = time.perf_counter()
    fn(inner)
    return (time.perf_counter() - t) / inner


def timed2(fn, inner: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per call."""
    t, c = time.perf_counter(), time.process_time()
    fn(inner)
    return (time.perf_counter() - t) / inner, (time.process_time() - c) / inner


def plain_runner(data, W0, dtype: str, rule: str, device: str = "cpu"):
    dt = TORCH_DTYPES[dtype]
    X = torch.as_tensor(data.X, dtype=dt, device=device)
    y = torch.as_tensor(data.y, dtype=dt, device=device)
    m = torch.ones(data.n, dtype=dt, device=device)
    state = {"W": torch.as_tensor(W0, dtype=dt, device=device)}

    def run(steps: int) -> None:
        W = state["W"]
        for _ in range(steps):
            W = plain_step(W, X, y, m, rule=rule, lr=0.5, rho=0.015)
        if W.is_cuda:
            torch.cuda.synchronize()
        state["W"] = W

    return run


def bench_size(name: str, size: dict, dtype: str, rule: str, repeats: int, budget: float) -> dict:
    """Alternating repeats of the plain torch step (default threads, one thread) and the backend."""
    data, W0 = make_problem(size)
    backend = NumbaBackend([make_spec(data, W0, rule)], dtype=dtype)
    backend.advance(2)  # compile / warm up
    plain = plain_runner(data, W0, dtype, rule)
    plain(1)
    # steps per repeat so that one repeat takes about `budget` seconds
    t_b = timed(backend.advance, 3)
    t_p = timed(plain, 1)
    k_b = max(1, int(budget / max(t_b, 1e-7)))
    k_p = max(1, int(budget / max(t_p, 1e-7)))
    # numpy on the same products, with the backend's BLAS thread policy (one thread for small ones)
    run_np, flops_np = numpy_products(backend.path, backend.Mb, size["d"], size["J"], dtype)
    small = backend._product_flops() < SMALL_PRODUCT_FLOPS
    run_np(1)
    k_n = max(1, int(budget / max(timed(run_np, 1), 1e-7)))
    default_threads = torch.get_num_threads()
    tb, tp, tp1, tn = [], [], [], []
    for _ in range(repeats):
        tp.append(timed2(plain, k_p))
        tb.append(timed2(backend.advance, k_b))
        with threadpool_limits(1 if small else None, user_api="blas"):
            tn.append(timed(run_np, k_n))
        torch.set_num_threads(1)
        try:
            tp1.append(timed2(plain, k_p))
        finally:
            torch.set_num_threads(default_threads)
    (step_b, cpu_b), (step_p_default, _), (step_p_one, cpu_p_one) = (
        tuple(float(v) for v in np.median(np.array(x), axis=0)) for x in (tb, tp, tp1))
    step_p = min(step_p_default, step_p_one)
    flops = backend.flops_per_step()
    t_np = float(np.median(tn))
    return {
        "size": name, "dtype": dtype, "rule": rule, "path": backend.path, "Mb": backend.Mb,
        "numba_step_us": step_b * 1e6,
        "torch_step_us": step_p * 1e6,
        "torch_step_us_default_threads": step_p_default * 1e6,
        "torch_step_us_one_thread": step_p_one * 1e6,
        "speedup": step_p / step_b,
        # process CPU time: steadier on a shared machine (both sides on one thread here)
        "numba_step_cpu_us": cpu_b * 1e6,
        "torch_one_thread_step_cpu_us": cpu_p_one * 1e6,
        "speedup_cpu_time": cpu_p_one / cpu_b if backend._product_flops() < SMALL_PRODUCT_FLOPS else None,
        "numba_gflops": flops / step_b / 1e9,
        "flops_per_step": flops,
        "numpy_gflops": flops_np / t_np / 1e9,
        "numpy_products_us": t_np * 1e6,
        "numpy_blas_threads": 1 if small else "default",
        "fraction_of_numpy_rate": flops / step_b / (flops_np / t_np),
        "steps_per_repeat": [k_b, k_p],
    }


def numpy_products(path: str, Mb: int, d: int, J: int, dtype: str):
    """numpy doing the matrix products of one gradient of ``path`` (same shapes): (run(k), flops)."""
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    S = rng.standard_normal((Mb, J)).astype(dt)
    if path == "direct":
        B = rng.standard_normal((Mb, d)).astype(dt)
        Wt = rng.standard_normal((d, J)).astype(dt)
        Z, gT = np.empty((Mb, J), dt), np.empty((d, J), dt)

        def products():
            np.dot(B, Wt, out=Z)
            np.dot(B.T, S, out=gT)

        flops = 4 * Mb * d * J
    else:
        G = rng.standard_normal((Mb, Mb)).astype(dt)
        T = np.empty((Mb, J), dt)

        def products():
            np.dot(G, S, out=T)

        flops = 2 * Mb * Mb * J

    def run(k: int) -> None:
        for _ in range(k):
            products()

    return run, flops


def breakdown_small(size: dict, dtype: str, repeats: int) -> dict:
    """Time of the parts of a Gram-space GD step (product in the backend's row blocks, gradient
    coordinates, update), single thread, wall clock."""
    from numba import njit

    from sims.backend_numba import _dot_rows, _grad, gemm_block_rows
    from sims.structured import structure

    data, W0 = make_problem(size)
    s = structure(data)
    dt = np.dtype(dtype)
    G = (s.B @ s.B.T).astype(dt)
    Z = (s.B @ W0.T).astype(dt)
    S, T, C = np.zeros_like(Z), np.zeros_like(Z), np.zeros_like(Z)
    y, E, w = s.y.astype(dt), s.E.astype(dt), np.ones(s.n, dt)
    f, coef, ex = np.empty(s.n, dt), np.empty(s.n, dt), np.arange(s.n)

    @njit
    def loop_grad(k, Z, ex, ptr, y, E, w, S, f, coef):
        for _ in range(k):
            _grad(Z, ex, ptr, y, E, w, float(len(y)), S, f, coef)

    rows = gemm_block_rows(*G.shape, S.shape[1])

    @njit
    def loop_dot(k, G, S, T):
        for _ in range(k):
            _dot_rows(G, S, T, rows)

    @njit(fastmath={"nsz", "arcp", "contract", "reassoc"})
    def loop_update(k, Z, C, S, T, lr):
        chk = 0.0
        for _ in range(k):
            for a in range(Z.shape[0]):
                for b in range(Z.shape[1]):
                    v = Z[a, b] - lr * T[a, b]
                    Z[a, b] = v
                    u = C[a, b] - lr * S[a, b]
                    C[a, b] = u
                    chk += v * 0.0 + u * 0.0
        return chk

    parts = {
        "product": (loop_dot, (G, S, T)),
        "gradient_coordinates": (loop_grad, (Z, ex, s.ptr, y, E, w, S, f, coef)),
        "update_and_check": (loop_update, (Z.copy(), C, S, T, dt.type(0.0))),
    }
    out = {}
    with threadpool_limits(1, user_api="blas"):
        for key, (fn, args) in parts.items():
            fn(2, *args)
            out[key + "_us"] = float(np.median([timed(lambda k: fn(k, *args), 200) for _ in range(repeats)])) * 1e6
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    sizes = SMOKE_SIZES if args.smoke else SIZES
    repeats = args.repeats or (2 if args.smoke else 7)
    budget = 0.02 if args.smoke else 0.25
    results = []
    for name, size in sizes.items():
        for dtype in ("float64", "float32"):
            for rule in ("gd", "sam"):
                r = bench_size(name, size, dtype, rule, repeats if name == "small" else max(2, repeats // 2),
                               budget if name == "small" else 2 * budget)
                results.append(r)
                print(f"{name:5s} {dtype} {rule:3s} {r['path']:6s} numba {r['numba_step_us']:10.1f} us  "
                      f"torch {r['torch_step_us']:10.1f} us  x{r['speedup']:6.1f}  "
                      f"{r['numba_gflops']:6.1f} GF/s = {r['fraction_of_numpy_rate']:.2f} of numpy", flush=True)
    data, W0 = make_problem(sizes["small"])
    summary = {
        "bench": "sim_cpu",
        "smoke": args.smoke,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "loadavg_1min": os.getloadavg()[0]},
        "plain_step_rel_error_vs_reference": check_plain_step(data, W0),
        "breakdown_small_gd_step_float64": breakdown_small(sizes["small"], "float64", repeats),
        "min_speedup_small": min(r["speedup"] for r in results if r["size"] == "small"),
        "min_speedup_cpu_time_small": min(r["speedup_cpu_time"] for r in results if r["size"] == "small"),
        "min_fraction_of_numpy_rate_large": min(r["fraction_of_numpy_rate"] for r in results if r["size"] == "large"),
        "targets": {"speedup_small": 10.0, "fraction_of_numpy_rate_large": 0.6},
        "results": results,
    }
    summary["targets_met"] = {
        "speedup_small": bool(summary["min_speedup_small"] >= 10.0),
        "fraction_of_numpy_rate_large": bool(summary["min_fraction_of_numpy_rate_large"] >= 0.6),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
