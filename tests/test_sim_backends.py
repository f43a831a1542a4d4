"""The fast simulator backends (numba, torch) against the dense float64 reference backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sims.backend_contract import RunSpec, SimulationDiverged, choose_path, flops_per_step
from sims.backend_numba import NumbaBackend, gemm_block_rows
from sims.backend_reference import ReferenceBackend
from sims.backend_torch import TorchBackend
from sims.config import SimConfig
from sims.simulate import simulate
from sims.structured import outputs_from_projections, stack, structure
from theory.data import DataConfig, PatchData, sample
from theory.model import init_weights, outputs
from theory.updates import minibatch_schedule

BACKENDS = {"numba": NumbaBackend, "torch": TorchBackend}
PATHS = ("gram", "direct")
SETTINGS = settings(deadline=None, max_examples=8, suppress_health_check=list(HealthCheck), derandomize=True)


def random_features(d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    Q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    return Q[:, 0].copy(), Q[:, 1].copy()


def make_spec(rule: str, seed: int, *, n=10, d=8, P=3, J=4, alpha=0.8, lr=0.3, rho=0.05, batch=None,
              mult=None, custom_features=False, sigma_0=0.3, sigma_p=0.5, iterations=60, beta_d=0.5) -> RunSpec:
    rng = np.random.default_rng(seed)
    cfg = DataConfig(d=d, P=P, alpha=alpha, beta_e=1.0, beta_d=beta_d, sigma_p=sigma_p)
    v = random_features(d, rng) if custom_features else (None, None)
    data = sample(cfg, n, rng, *v)
    W0 = init_weights(J, d, sigma_0, rng)
    m = np.ones(n) if mult is None else np.asarray(mult, dtype=np.float64)
    schedule = minibatch_schedule(m, batch, iterations, rng) if batch else None
    return RunSpec(train=data, W0=W0, multiplicities=m, rule=rule, lr=lr, rho=rho, beta_e=1.0, beta_d=beta_d,
                   schedule=schedule)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| relative to the scale of b."""
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


def run_both(ref, fast, steps):
    """Advance both; returns (ref F, fast F) or raises an AssertionError on mismatched divergence."""
    try:
        Fr = ref.advance(steps)
    except SimulationDiverged as err:
        with pytest.raises(SimulationDiverged) as info:
            fast.advance(steps)
        assert info.value.run == err.run and abs(info.value.iteration - err.iteration) <= 1
        return None
    return Fr, fast.advance(steps)


def assert_close(ref, fast, Fr, Ff, tol=1e-10):
    assert rel(fast.weights(), ref.weights()) < tol
    assert rel(fast.train_outputs(), ref.train_outputs()) < tol
    for r in range(ref.n_runs):
        for k in range(2):  # per run and feature: relative to that series' scale
            assert rel(Ff[k][:, r], Fr[k][:, r]) < tol


configs = st.fixed_dictionaries({
    "rule": st.sampled_from(["gd", "sgd", "sam", "usam"]),
    "R": st.integers(1, 3),
    "n": st.integers(3, 12),
    "d": st.integers(3, 10),
    "P": st.integers(3, 5),
    "J": st.integers(1, 5),
    "alpha": st.sampled_from([1.0, 0.5, 0.8]),
    "minibatch": st.booleans(),
    "custom_features": st.booleans(),
    "seed": st.integers(0, 10_000),
})


def specs_from(c) -> list[RunSpec]:
    rng = np.random.default_rng(c["seed"])
    out = []
    for r in range(c["R"]):
        mult = rng.integers(1, 4, c["n"]) if rng.random() < 0.7 else None
        batch = None
        if c["rule"] == "sgd" or c["minibatch"]:
            batch = max(1, c["n"] // 2)
        out.append(make_spec(
            c["rule"], c["seed"] * 7 + r, n=c["n"], d=c["d"], P=c["P"], J=c["J"], alpha=c["alpha"],
            lr=float(rng.uniform(0.05, 0.5)), rho=float(rng.choice([0.0, rng.uniform(0.01, 0.3)])), batch=batch,
            mult=mult, custom_features=c["custom_features"],
        ))
    return out


# -- structured form ----------------------------------------------------------------------------


@pytest.mark.parametrize("custom", [False, True])
def test_structure_is_exact(custom):
    spec = make_spec("gd", 3, n=15, d=9, P=4, alpha=0.6, custom_features=custom)
    s = structure(spec.train)
    assert s.M == int(spec.train.noise_mask.sum())
    Z = s.B @ spec.W0.T
    f = outputs_from_projections(Z, s.M, s.ptr, s.E)
    np.testing.assert_allclose(f, outputs(spec.W0, spec.train.X), rtol=1e-12, atol=1e-15)
    other = structure(make_spec("gd", 4, n=15, d=9, P=4, alpha=0.1).train)  # more noise rows than s
    assert other.M > s.M
    st_ = stack([s, other])
    assert st_.Mp == other.M and st_.B.shape[1] == st_.Mp + 2 and np.all(st_.B[0, s.M:st_.Mp] == 0)
    np.testing.assert_array_equal(st_.B[0, st_.Mp:], s.B[s.M:])  # the feature rows sit last in every run


def test_path_choice_and_flops():
    assert choose_path(222, 200) == "gram" and choose_path(8402, 1000) == "direct"
    assert flops_per_step("gram", 10, 5, 3, "gd") == 2 * 10 * 10 * 3
    assert flops_per_step("direct", 10, 5, 3, "sam") == 2 * 4 * 10 * 5 * 3
    assert gemm_block_rows(200, 200, 20) == 200 and gemm_block_rows(228, 228, 20) == 114
    assert gemm_block_rows(8402, 8402, 64) == 8402  # too many blocks: one packed product
    wide = [make_spec("gd", 0, n=12, d=40, P=3)]  # Mb ~ 14 < 80: Gram space
    tall = [make_spec("gd", 0, n=12, d=4, P=5)]  # Mb ~ 40 > 8: direct
    for cls in BACKENDS.values():
        assert cls(wide).path == "gram" and cls(tall).path == "direct"


@pytest.mark.parametrize("rule", ["gd", "sam"])
def test_numba_gram_product_in_row_blocks(rule):
    """The blocked Gram product (used from about 1e6 multiply-adds up) on a small problem."""
    specs = [make_spec(rule, s, n=12, d=10, P=4) for s in range(2)]
    ref = ReferenceBackend(specs)
    fast = NumbaBackend(specs, path="gram")
    fast._rows = 5  # blocks of 5 rows (of about 20)
    assert_close(ref, fast, *run_both(ref, fast, 30))


# -- equality with the reference ----------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
@SETTINGS
@given(c=configs)
def test_matches_reference(name, path, c):
    specs = specs_from(c)
    ref = ReferenceBackend(specs)
    fast = BACKENDS[name](specs, dtype="float64", path=path)
    assert fast.path == path
    for chunk in (1, 29, 20):  # 50 steps, in calls of different lengths
        res = run_both(ref, fast, chunk)
        if res is None:
            return
        assert_close(ref, fast, *res)
    assert fast.iteration == ref.iteration == 50


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_batched_runs_equal_single_runs(name, path):
    specs = [
        make_spec("sam", 1, n=9, lr=0.2, rho=0.1, alpha=1.0),
        make_spec("sam", 2, n=9, lr=0.4, rho=0.02, mult=[1, 2, 3, 1, 1, 2, 1, 1, 3]),
        make_spec("sam", 3, n=9, lr=0.1, rho=0.0, beta_d=0.3, custom_features=True),
    ]
    batched = BACKENDS[name](specs, path=path)
    Fb = batched.advance(40)
    Wb, fb = batched.weights(), batched.train_outputs()
    for r, spec in enumerate(specs):
        single = BACKENDS[name]([spec], path=path)
        Fs = single.advance(40)
        assert rel(Wb[r], single.weights()[0]) < 1e-12
        assert rel(fb[r], single.train_outputs()[0]) < 1e-12
        for k in range(2):
            assert rel(Fb[k][:, r], Fs[k][:, 0]) < 1e-12


@pytest.mark.parametrize("rule", ["sgd", "sam"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_float32_close_to_float64(name, path, rule):
    specs = [make_spec(rule, s, n=12, d=10, J=5, batch=4 if rule == "sgd" else None, lr=0.2) for s in range(2)]
    b64 = BACKENDS[name](specs, dtype="float64", path=path)
    b32 = BACKENDS[name](specs, dtype="float32", path=path)
    F64, F32 = b64.advance(30), b32.advance(30)
    assert rel(b32.weights(), b64.weights()) < 1e-3
    assert rel(b32.train_outputs(), b64.train_outputs()) < 1e-3
    for k in range(2):
        assert rel(F32[k], F64[k]) < 1e-3


@pytest.mark.parametrize("batch", [None, 4])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_rho_zero_is_gd_bitwise(name, path, batch):
    """SAM/USAM with rho = 0 equal GD bit for bit (numba branches on rho; torch adds 0 * T)."""
    base = [make_spec("gd", s, n=10, rho=0.0, batch=batch) for s in range(2)]
    gd = BACKENDS[name](base, path=path)
    Fg = gd.advance(25)
    for rule in ("sam", "usam"):
        specs = [RunSpec(train=s.train, W0=s.W0, multiplicities=s.multiplicities, rule=rule, lr=s.lr, rho=0.0,
                         beta_e=s.beta_e, beta_d=s.beta_d, schedule=s.schedule) for s in base]
        specs[1] = RunSpec(train=base[1].train, W0=base[1].W0, multiplicities=base[1].multiplicities, rule=rule,
                           lr=base[1].lr, rho=0.1, beta_e=1.0, beta_d=base[1].beta_d, schedule=base[1].schedule)
        other = BACKENDS[name](specs, path=path)  # run 0: rho = 0; run 1: rho > 0 in the same batch
        Fo = other.advance(25)
        assert np.array_equal(other.weights()[0], gd.weights()[0])
        assert np.array_equal(Fo[0][:, 0], Fg[0][:, 0]) and np.array_equal(Fo[1][:, 0], Fg[1][:, 0])
        assert not np.array_equal(other.weights()[1], gd.weights()[1])


def duplicate(data: PatchData, counts: np.ndarray) -> PatchData:
    idx = np.repeat(np.arange(data.n), counts)
    return PatchData(X=data.X[idx], y=data.y[idx], has_fast=data.has_fast[idx], noise_mask=data.noise_mask[idx],
                     v_e=data.v_e, v_d=data.v_d)


@pytest.mark.parametrize("rule", ["gd", "sam", "usam"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_multiplicity_equals_copies(name, path, rule):
    spec = make_spec(rule, 11, n=8, mult=[1, 2, 1, 3, 1, 1, 2, 1], rho=0.1)
    counts = spec.multiplicities.astype(int)
    copies = RunSpec(train=duplicate(spec.train, counts), W0=spec.W0, multiplicities=np.ones(counts.sum()),
                     rule=rule, lr=spec.lr, rho=spec.rho, beta_e=1.0, beta_d=spec.beta_d)
    a, b = BACKENDS[name]([spec], path=path), BACKENDS[name]([copies], path=path)
    Fa, Fb = a.advance(50), b.advance(50)
    assert rel(a.weights(), b.weights()) < 1e-10
    assert rel(a.train_outputs()[0], b.train_outputs()[0][np.r_[0, np.cumsum(counts)[:-1]]]) < 1e-10
    for k in range(2):
        assert rel(Fa[k], Fb[k]) < 1e-10


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's overflow on its way to Inf
@pytest.mark.parametrize("rule", ["gd", "sam"])
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", list(BACKENDS))
def test_divergence_names_run_and_iteration(name, path, rule):
    specs = [make_spec(rule, 5, lr=0.1), make_spec(rule, 6, lr=1e4), make_spec(rule, 7, lr=0.1)]
    ref = ReferenceBackend(specs)
    with pytest.raises(SimulationDiverged) as expected:
        ref.advance(200)
    fast = BACKENDS[name](specs, path=path)
    fast.advance(1)
    with pytest.raises(SimulationDiverged) as info:
        fast.advance(199)
    assert info.value.run == 1 == expected.value.run
    assert 1 < info.value.iteration <= 200
    assert abs(info.value.iteration - expected.value.iteration) <= 1


def test_minibatch_schedule_length_is_checked():
    spec = make_spec("sgd", 0, batch=3, iterations=10)
    for cls in BACKENDS.values():
        b = cls([spec])
        b.advance(10)
        with pytest.raises(ValueError):
            b.advance(1)


# -- import boundaries --------------------------------------------------------------------------

_WITHOUT_NUMBA = r"""
import importlib.abc, sys

class NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba is blocked for this test")
        return None

sys.meta_path.insert(0, NoNumba())
try:
    import numba  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the numba block did not work")

import numpy as np
from sims.backend_torch import TorchBackend
from sims.backend_reference import ReferenceBackend
from sims.backend_contract import RunSpec
from sims.config import SimConfig
from sims.simulate import make_problem, simulate
from theory.updates import minibatch_schedule

cfg = SimConfig(d=10, P=3, n_train=12, n_test=8, J=3, sigma_0=0.3, sigma_p=0.5, iterations=15, record_every=5,
                optimizer="sam", rho=0.05, lr=0.3, backend="torch", separate_at=5)
p = make_problem(cfg)
spec = RunSpec(train=p.train, W0=p.W0, multiplicities=np.ones(12), rule="sam", lr=0.3, rho=0.05, beta_e=1.0,
               beta_d=0.4)
fast, ref = TorchBackend([spec]), ReferenceBackend([spec])
Ff, Fr = fast.advance(15), ref.advance(15)
assert np.max(np.abs(fast.weights() - ref.weights())) <= 1e-10 * np.max(np.abs(ref.weights()))
traj = simulate(cfg, progress=False)  # the driver picks the torch backend without touching numba
assert np.allclose(traj.final_weights, ref.weights()[0], rtol=0, atol=1e-10 * np.max(np.abs(ref.weights())))
assert not any(m == "numba" or m.startswith("numba.") for m in sys.modules), "numba was imported"
print("ok")
"""


def test_torch_backend_works_without_numba():
    """``import sims.backend_torch`` and a torch run need no numba (a meta-path hook makes it unimportable)."""
    import subprocess
    import sys

    from helpers import REPO, env

    res = subprocess.run([sys.executable, "-c", _WITHOUT_NUMBA], capture_output=True, text=True, env=env(), cwd=REPO,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


def test_backend_modules_import_no_cycle():
    """The contract imports no backend; each backend imports the contract, never another backend."""
    import ast
    from pathlib import Path

    sims_dir = Path(__file__).resolve().parents[1] / "sims"

    def imported(module: str) -> set[str]:
        tree = ast.parse((sims_dir / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                names.add(node.module)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sims."):
                names.add(node.module[len("sims."):])
        return names

    backends = {"backend_reference", "backend_numba", "backend_torch"}
    assert imported("backend_contract") & (backends | {"backends"}) == set()
    for name in backends:
        assert "backend_contract" in imported(name)
        assert imported(name) & (backends | {"backends"}) == set(), name


# -- the driver ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer,batch_size", [("gd", None), ("sam", None), ("sgd", 6)])
def test_simulate_matches_reference(optimizer, batch_size):
    cfg = SimConfig(d=16, P=3, n_train=20, n_test=30, J=6, sigma_0=0.05, sigma_p=0.3, lr=0.5, rho=0.05,
                    iterations=60, record_every=7, separate_at=10, optimizer=optimizer, batch_size=batch_size,
                    backend="reference", beta_d=0.5, theta=1e-4)
    ref = simulate(cfg, progress=False)
    for backend in BACKENDS:
        traj = simulate(cfg.with_(backend=backend), progress=False)
        assert traj.fast_learned_at == ref.fast_learned_at and traj.slow_learned_at == ref.slow_learned_at
        for key, value in ref.series.items():
            np.testing.assert_allclose(traj.series[key], value, rtol=1e-9, atol=1e-14, err_msg=key)
        assert rel(traj.final_weights, ref.final_weights) < 1e-10


# -- CUDA ---------------------------------------------------------------------------------------
# Each check runs on the CPU here (so its logic and tolerances are exercised everywhere) and on CUDA
# where a device exists (marked ``cuda``; bench/gpu.py runs them on the GPU machine).

_HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not _HAS_CUDA, reason="no CUDA device")])]
#: Largest relative difference to the float64 reference after 40 steps (weights, outputs, feature
#: outputs).  On the CPU the differences are about 1e-15 (float64) and 1e-6 (float32); the bounds leave
#: room for GPU reductions and cuBLAS kernels summing in another order, and float32's bound is ten
#: times below what TF32 products (10-bit mantissa) would give.
REFERENCE_TOL = {"float64": 1e-11, "float32": 1e-4}
#: Batched vs one run at a time on the same device: the same arithmetic up to the kernel cuBLAS picks.
BATCH_TOL = {"float64": 1e-12, "float32": 1e-5}
RULES_BATCH = [("gd", None), ("sam", None), ("sgd", 4), ("sam", 4)]


def _cuda_specs(rule: str, batch: int | None, R: int, seed: int = 0) -> list[RunSpec]:
    return [make_spec(rule, seed + s, n=12, d=10, J=5, lr=0.2, rho=0.05, batch=batch, iterations=40,
                      mult=[1, 2] * 6 if batch is None else None) for s in range(R)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rule,batch", RULES_BATCH)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_device_matches_reference(device, dtype, rule, batch, path):
    """The torch backend on ``device`` equals the float64 reference within REFERENCE_TOL[dtype]."""
    specs = _cuda_specs(rule, batch, 3)
    ref = ReferenceBackend(specs)
    fast = TorchBackend(specs, device=device, dtype=dtype, path=path)
    res = run_both(ref, fast, 40)
    assert res is not None, "the reference diverged: the test's sizes are wrong"
    assert_close(ref, fast, *res, tol=REFERENCE_TOL[dtype])


@pytest.mark.parametrize("rule,batch", RULES_BATCH)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_device_batched_equals_one_by_one(device, dtype, rule, batch):
    """16 runs in one batch equal the same runs done one by one (BATCH_TOL[dtype])."""
    specs = _cuda_specs(rule, batch, 16, seed=100)
    batched = TorchBackend(specs, device=device, dtype=dtype)
    Fb = batched.advance(40)
    Wb, fb = batched.weights(), batched.train_outputs()
    tol = BATCH_TOL[dtype]
    for r, spec in enumerate(specs):
        single = TorchBackend([spec], device=device, dtype=dtype)
        Fs = single.advance(40)
        assert rel(Wb[r], single.weights()[0]) < tol
        assert rel(fb[r], single.train_outputs()[0]) < tol
        for k in range(2):
            assert rel(Fb[k][:, r], Fs[k][:, 0]) < tol


@pytest.mark.parametrize("device", DEVICES)
def test_torch_float32_ignores_tf32_and_restores_the_setting(device):
    """With TF32 switched on elsewhere (the trainer does), float32 runs still match the reference at
    full-float32 precision, and the global setting is left as it was."""
    specs = _cuda_specs("sam", None, 3)
    ref = ReferenceBackend(specs)
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        fast = TorchBackend(specs, device=device, dtype="float32")
        res = run_both(ref, fast, 40)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(old)
    assert_close(ref, fast, *res, tol=REFERENCE_TOL["float32"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("device", DEVICES)
def test_torch_device_divergence_names_run_and_iteration(device):
    specs = [make_spec("sam", 5, lr=0.1), make_spec("sam", 6, lr=1e4), make_spec("sam", 7, lr=0.1)]
    with pytest.raises(SimulationDiverged) as expected:
        ReferenceBackend(specs).advance(200)
    with pytest.raises(SimulationDiverged) as info:
        TorchBackend(specs, device=device).advance(200)
    assert info.value.run == expected.value.run == 1
    assert abs(info.value.iteration - expected.value.iteration) <= 1
