"""The numba backend: the structured simulator (see :mod:`sims.structured`) on CPU, many steps per call.

State and cost per step (``Mb = M + 2`` basis rows: the noise patches plus ``v_e``, ``v_d``):

* **Gram path** (``Mb < 2 d``, the small sizes): the state is ``Z = B W^T`` (Mb, J) -- whose last two
  rows are ``a_e = W v_e`` and ``a_d = W v_d`` -- and ``C`` (Mb, J) with ``W = W0 + C^T B``.  A
  step computes ``S`` (the gradient's coordinates, elementwise), ``T = G S`` with ``G = B B^T``
  precomputed, and ``Z -= eta T``, ``C -= eta S``.  ``||grad||_F^2 = sum(S * T)`` and SAM's
  perturbed ``Z' = Z + c T`` reuse the same product.  GD: ``2 Mb^2 J`` flops, SAM/USAM twice that.
* **direct path** (``Mb >= 2 d``, e.g. N = 4000, P = 4, d = 1000): the state is ``W^T`` (d, J);
  a gradient is ``Z = B W^T`` then ``g^T = B^T S``: ``4 Mb d J`` flops, SAM/USAM twice that.

The products go to BLAS (``np.dot`` inside ``@njit``; the Gram product in row blocks small enough
for OpenBLAS's unpacked small-matrix kernel, see :func:`gemm_block_rows`); everything else is fused
loops.  Feature
patches cost O(n + J) per step (four power sums of ``(a_e, a_d)``).  Minibatch steps gather the
batch's rows (``G[act]^T S[act]`` resp. ``B[act]``).  Runs are independent: several runs are split
over one thread per core (the kernels release the GIL; a thread pool rather than ``prange``, which
costs a long parfor compilation and whose idle workers spin against BLAS), with BLAS limited to one
thread while several runs share the cores.

``fastmath`` allows reassociation and contraction (summation order differs from numpy's at the
rounding level) but not ``nnan``/``ninf``: the divergence checks need NaN and Inf.  With rho = 0,
SAM and USAM take the GD branch: bitwise equal to GD.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Sequence

import numpy as np
from numba import njit

from theory.plumbing.config import check, check_choice

from .backend_contract import RunSpec, SimulationDiverged, check_compatible, choose_path, flops_per_step
from .structured import outputs_from_projections, stack, structure

__all__ = ["NumbaBackend"]

_FM = {"nsz", "arcp", "contract", "reassoc"}  # no nnan/ninf: divergence checks rely on them
_MODES = {"gd": 0, "sgd": 0, "sam": 1, "usam": 2}


# ---------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, fastmath=_FM, inline="always")
def _sigmoid(t):
    if t >= 0:
        return 1.0 / (1.0 + np.exp(-t))
    e = np.exp(t)
    return e / (1.0 + e)


@njit(cache=True, fastmath=_FM)
def _grad(Z, ex, rptr, y, E, w, msum, S, f, coef):
    """Coordinates ``S`` of grad L at the projections ``Z`` (rows: noise rows, then a_e, a_d).

    ``ex[q]`` is an example whose noise rows are ``Z[rptr[q]:rptr[q + 1]]``; examples of zero
    weight get zero rows.  Writes the outputs ``f[i]`` of the examples with positive weight.
    """
    Kf = Z.shape[0] - 2
    J = Z.shape[1]
    p0 = 0.0
    p1 = 0.0
    p2 = 0.0
    p3 = 0.0
    for j in range(J):
        a = Z[Kf, j]
        b = Z[Kf + 1, j]
        p0 += a * a * a
        p1 += a * a * b
        p2 += a * b * b
        p3 += b * b * b
    A0 = 0.0
    A1 = 0.0
    A2 = 0.0
    A3 = 0.0
    for q in range(ex.shape[0]):
        i = ex[q]
        lo = rptr[q]
        hi = rptr[q + 1]
        wi = w[i]
        if wi == 0:
            for k in range(lo, hi):
                for j in range(J):
                    S[k, j] = 0.0
            continue
        acc = 0.0
        for k in range(lo, hi):
            for j in range(J):
                z = Z[k, j]
                acc += z * z * z
        fi = E[i, 0] * p0 + 3.0 * E[i, 1] * p1 + 3.0 * E[i, 2] * p2 + E[i, 3] * p3 + acc
        f[i] = fi
        yi = y[i]
        c = -(wi / msum) * yi * _sigmoid(-yi * fi)
        coef[i] = 3.0 * c  # stored in the working dtype
        c3 = coef[i]
        for k in range(lo, hi):
            for j in range(J):
                z = Z[k, j]
                S[k, j] = c3 * z * z
        A0 += c * E[i, 0]
        A1 += c * E[i, 1]
        A2 += c * E[i, 2]
        A3 += c * E[i, 3]
    for j in range(J):
        a = Z[Kf, j]
        b = Z[Kf + 1, j]
        S[Kf, j] = 3.0 * (A0 * a * a + 2.0 * A1 * a * b + A2 * b * b)
        S[Kf + 1, j] = 3.0 * (A1 * a * a + 2.0 * A2 * a * b + A3 * b * b)


@njit(cache=True, fastmath=_FM)
def _batch(sched_row, n, ptr, Mf, w, ex, rptr, act):
    """Weights, active examples, their row ranges (compact) and active basis rows of a minibatch.

    Returns (number of active examples, number of active rows incl. the two feature rows).
    """
    for i in range(n):
        w[i] = 0.0
    for q in range(sched_row.shape[0]):
        w[sched_row[q]] += 1.0
    ne = 0
    na = 0
    rptr[0] = 0
    for i in range(n):
        if w[i] > 0:
            ex[ne] = i
            for k in range(ptr[i], ptr[i + 1]):
                act[na] = k
                na += 1
            ne += 1
            rptr[ne] = na
    act[na] = Mf
    act[na + 1] = Mf + 1
    return ne, na + 2


@njit(cache=True, fastmath=_FM)
def _feature_outputs(a, beta):
    out = 0.0
    for j in range(a.shape[0]):
        x = beta * a[j]
        out += x * x * x
    return out


@njit(cache=True)
def _dot_rows(A, X, out, rows):
    """``out = A @ X`` in blocks of ``rows`` rows of A (see :func:`gemm_block_rows`)."""
    M = A.shape[0]
    if rows >= M:
        np.dot(A, X, out)
        return
    for a in range(0, M, rows):
        b = min(a + rows, M)
        np.dot(A[a:b], X, out[a:b])


@njit(cache=True, fastmath=_FM, inline="always")
def _ascent_scale(nrm2, rho, mode, cbuf):
    """SAM's ``rho / ||grad||`` (0 for a zero gradient) or USAM's ``rho``, rounded to the working dtype."""
    if mode == 1:
        cbuf[1] = rho / np.sqrt(nrm2) if nrm2 > 0 else 0.0
    else:
        cbuf[1] = rho
    return cbuf[1]


@njit(cache=True, fastmath=_FM, inline="always")
def _record(Z, be, bd, Fe, Fd, s, r):
    """The feature outputs of step ``s`` of run ``r`` from the last two rows of ``Z`` (a_e, a_d)."""
    Mf = Z.shape[0] - 2
    Fe[s, r] = _feature_outputs(Z[Mf], be)
    Fd[s, r] = _feature_outputs(Z[Mf + 1], bd)


@njit(cache=True, fastmath=_FM, inline="always")
def _gram_full(G, Z, C, ptr, y, E, wfull, lr_, rho, mode, cbuf, be, bd, Fe, Fd, r, rows):
    """Full-batch steps in Gram space (see :func:`_gram_run`)."""
    Mb, J = Z.shape
    n = y.shape[0]
    dt = Z.dtype
    S = np.zeros((Mb, J), dt)
    T = np.empty((Mb, J), dt)
    Zp = np.zeros((Mb, J), dt)
    f = np.empty(n, dt)
    coef = np.empty(n, dt)
    perturb = mode != 0 and rho != 0
    ex = np.arange(n)
    msum = 0.0
    for i in range(n):
        msum += wfull[i]
    for s in range(Fe.shape[0]):
        _grad(Z, ex, ptr, y, E, wfull, msum, S, f, coef)
        _dot_rows(G, S, T, rows)
        if perturb:
            nrm2 = 0.0
            if mode == 1:
                for k in range(Mb):
                    for j in range(J):
                        nrm2 += S[k, j] * T[k, j]
            c = _ascent_scale(nrm2, rho, mode, cbuf)
            for k in range(Mb):
                for j in range(J):
                    Zp[k, j] = Z[k, j] + c * T[k, j]
            _grad(Zp, ex, ptr, y, E, wfull, msum, S, f, coef)
            _dot_rows(G, S, T, rows)
        chk = 0.0
        for k in range(Mb):
            for j in range(J):
                v = Z[k, j] - lr_ * T[k, j]
                Z[k, j] = v
                u = C[k, j] - lr_ * S[k, j]
                C[k, j] = u
                chk += v * 0.0 + u * 0.0
        if chk != chk:
            return s
        _record(Z, be, bd, Fe, Fd, s, r)
    return -1


@njit(cache=True, fastmath=_FM, inline="always")
def _gather(Z, G, act, na, Za, Ga):
    """The active rows of ``Z`` and ``G`` (``act[:na]``) into ``Za``, ``Ga``."""
    J = Z.shape[1]
    Mb = G.shape[1]
    for q in range(na):
        k = act[q]
        for j in range(J):
            Za[q, j] = Z[k, j]
        for l in range(Mb):
            Ga[q, l] = G[k, l]


@njit(cache=True, fastmath=_FM, inline="always")
def _gram_mini(G, Z, C, ptr, y, E, sched, lr_, rho, mode, cbuf, be, bd, Fe, Fd, r):
    """Minibatch steps in Gram space: only the batch's rows of ``S`` are non-zero (see :func:`_gram_run`)."""
    Mb, J = Z.shape
    Mf = Mb - 2
    n = y.shape[0]
    dt = Z.dtype
    T = np.empty((Mb, J), dt)
    f = np.empty(n, dt)
    coef = np.empty(n, dt)
    perturb = mode != 0 and rho != 0
    w = np.zeros(n, dt)
    ex = np.empty(n, np.int64)
    rptr = np.empty(n + 1, np.int64)
    act = np.empty(Mb, np.int64)
    Za = np.empty((Mb, J), dt)
    Sa = np.empty((Mb, J), dt)
    Ga = np.empty((Mb, Mb), dt)
    msum = float(sched.shape[1])
    for s in range(Fe.shape[0]):
        ne, na = _batch(sched[s], n, ptr, Mf, w, ex, rptr, act)
        _gather(Z, G, act, na, Za, Ga)
        _grad(Za[:na], ex[:ne], rptr[: ne + 1], y, E, w, msum, Sa[:na], f, coef)
        np.dot(Ga[:na].T, Sa[:na], T)
        if perturb:
            nrm2 = 0.0
            if mode == 1:
                for q in range(na):
                    k = act[q]
                    for j in range(J):
                        nrm2 += Sa[q, j] * T[k, j]
            c = _ascent_scale(nrm2, rho, mode, cbuf)
            for q in range(na):
                k = act[q]
                for j in range(J):
                    Za[q, j] = Za[q, j] + c * T[k, j]
            _grad(Za[:na], ex[:ne], rptr[: ne + 1], y, E, w, msum, Sa[:na], f, coef)
            np.dot(Ga[:na].T, Sa[:na], T)
        chk = 0.0
        for k in range(Mb):
            for j in range(J):
                v = Z[k, j] - lr_ * T[k, j]
                Z[k, j] = v
                chk += v * 0.0
        for q in range(na):
            k = act[q]
            for j in range(J):
                u = C[k, j] - lr_ * Sa[q, j]
                C[k, j] = u
                chk += u * 0.0
        if chk != chk:
            return s
        _record(Z, be, bd, Fe, Fd, s, r)
    return -1


@njit(cache=True, fastmath=_FM)
def _gram_run(G, Z, C, ptr, y, E, wfull, sched, lr, rho, mode, be, bd, Fe, Fd, r, rows):
    """``Fe.shape[0]`` steps of one run in Gram space; returns -1, or the step that diverged.

    The step is split in helpers inlined here (``inline="always"``: one compiled loop, as fast as
    when it was written out in one function, and the same rounding).
    """
    cbuf = np.empty(2, Z.dtype)
    cbuf[0] = lr
    lr_ = cbuf[0]  # the learning rate in the working dtype
    if sched.shape[1] > 0:
        return _gram_mini(G, Z, C, ptr, y, E, sched, lr_, rho, mode, cbuf, be, bd, Fe, Fd, r)
    return _gram_full(G, Z, C, ptr, y, E, wfull, lr_, rho, mode, cbuf, be, bd, Fe, Fd, r, rows)


@njit(cache=True, fastmath=_FM)
def _project(Wt, v, out):
    """out[j] = sum_k Wt[k, j] v[k]  (a = W v)."""
    d, J = Wt.shape
    for j in range(J):
        out[j] = 0.0
    for k in range(d):
        vk = v[k]
        if vk != 0:
            for j in range(J):
                out[j] += Wt[k, j] * vk


@njit(cache=True, fastmath=_FM)
def _direct_run(B, Wt, ptr, y, E, wfull, sched, lr, rho, mode, be, bd, Fe, Fd, r):
    """``Fe.shape[0]`` steps of one run on explicit weights ``Wt = W^T`` (d, J)."""
    Mb, d = B.shape
    J = Wt.shape[1]
    Mf = Mb - 2
    n = y.shape[0]
    steps = Fe.shape[0]
    mini = sched.shape[1] > 0
    dt = Wt.dtype
    Z = np.empty((Mb, J), dt)
    S = np.zeros((Mb, J), dt)
    gT = np.empty((d, J), dt)
    Wp = np.empty((d, J), dt)
    a = np.empty(J, dt)
    f = np.empty(n, dt)
    coef = np.empty(n, dt)
    cbuf = np.empty(2, dt)
    cbuf[0] = lr
    lr_ = cbuf[0]
    perturb = mode != 0 and rho != 0
    w = np.zeros(n, dt)
    ex = np.arange(n)
    rptr = ptr
    msum = 0.0
    if mini:
        ex = np.empty(n, np.int64)
        rptr = np.empty(n + 1, np.int64)
        msum = float(sched.shape[1])
    else:
        for i in range(n):
            w[i] = wfull[i]
            msum += wfull[i]
    act = np.empty(Mb, np.int64)
    Ba = np.empty((Mb if mini else 0, d), dt)
    ne = n
    na = Mb
    for s in range(steps):
        if mini:
            ne, na = _batch(sched[s], n, ptr, Mf, w, ex, rptr, act)
            for q in range(na):
                k = act[q]
                for l in range(d):
                    Ba[q, l] = B[k, l]
            Bs = Ba[:na]
        else:
            Bs = B
        np.dot(Bs, Wt, Z[:na])
        _grad(Z[:na], ex[:ne], rptr[: ne + 1], y, E, w, msum, S[:na], f, coef)
        np.dot(Bs.T, S[:na], gT)
        if perturb:
            if mode == 1:
                nrm2 = 0.0
                for k in range(d):
                    for j in range(J):
                        nrm2 += gT[k, j] * gT[k, j]
                cbuf[1] = rho / np.sqrt(nrm2) if nrm2 > 0 else 0.0
            else:
                cbuf[1] = rho
            c = cbuf[1]
            for k in range(d):
                for j in range(J):
                    Wp[k, j] = Wt[k, j] + c * gT[k, j]
            np.dot(Bs, Wp, Z[:na])
            _grad(Z[:na], ex[:ne], rptr[: ne + 1], y, E, w, msum, S[:na], f, coef)
            np.dot(Bs.T, S[:na], gT)
        chk = 0.0
        for k in range(d):
            for j in range(J):
                v = Wt[k, j] - lr_ * gT[k, j]
                Wt[k, j] = v
                chk += v * 0.0
        if chk != chk:
            return s
        _project(Wt, B[Mf], a)
        Fe[s, r] = _feature_outputs(a, be)
        _project(Wt, B[Mf + 1], a)
        Fd[s, r] = _feature_outputs(a, bd)
    return -1


@njit(cache=True, nogil=True)
def _gram_advance(runs, G_, Z_, C_, ptr_, y_, E_, w_, sched_, lr_, rho_, mode_, be_, bd_, Fe_, Fd_, status_,
                  rows_):
    for r in runs:
        status_[r] = _gram_run(G_[r], Z_[r], C_[r], ptr_[r], y_[r], E_[r], w_[r], sched_[r], lr_[r], rho_[r],
                               mode_, be_[r], bd_[r], Fe_, Fd_, r, rows_)


@njit(cache=True, nogil=True)
def _direct_advance(runs, B_, Wt_, ptr_, y_, E_, w_, sched_, lr_, rho_, mode_, be_, bd_, Fe_, Fd_, status_,
                    rows_):
    for r in runs:
        status_[r] = _direct_run(B_[r], Wt_[r], ptr_[r], y_[r], E_[r], w_[r], sched_[r], lr_[r], rho_[r],
                                 mode_, be_[r], bd_[r], Fe_, Fd_, r)


# ---------------------------------------------------------------------------------------------


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sims-numba")
    return _POOLS[workers]


_BLAS_LIBS: list | None = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the loaded BLAS libraries (found once, after numba's is loaded)."""
    global _BLAS_LIBS
    if _BLAS_LIBS is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (the BLAS that numba's np.dot calls)
            from threadpoolctl import ThreadpoolController

            _BLAS_LIBS = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # pragma: no cover - threadpoolctl missing or failing: leave BLAS alone
            _BLAS_LIBS = []
    return _BLAS_LIBS


@contextmanager
def _blas_limit(threads: int | None):
    """Limit BLAS to ``threads`` (None: leave as is) for the duration of a call (cheap: no re-scan)."""
    if threads is None:
        yield
        return
    libs = _blas_libraries()
    old = [lib.num_threads for lib in libs]
    for lib in libs:
        lib.set_num_threads(threads)
    try:
        yield
    finally:
        for lib, n in zip(libs, old):
            lib.set_num_threads(n)


#: OpenBLAS (SkylakeX and later) multiplies matrices with at most about 1e6 multiply-adds by a
#: small-matrix kernel without packing, about twice as fast at the Gram path's narrow shapes
#: (e.g. 228 x 228 x 20: 53 us -> 30 us); larger products are cut into up to 8 row blocks below it.
SMALL_GEMM_MNK = 900_000
MAX_ROW_BLOCKS = 8


def gemm_block_rows(M: int, K: int, N: int) -> int:
    """Rows per block for an (M x K) @ (K x N) product (M: one block)."""
    blocks = -(-M * K * N // SMALL_GEMM_MNK)
    if blocks <= 1 or blocks > MAX_ROW_BLOCKS:
        return M
    return -(-M // blocks)


#: Below this many flops per matrix product one BLAS thread is faster than several.
SMALL_PRODUCT_FLOPS = 20_000_000


class NumbaBackend:
    """R runs on the structured form (see the module docstring); ``path`` in auto/gram/direct."""

    def __init__(self, specs: Sequence[RunSpec], *, dtype: str = "float64", device: str = "cpu",
                 path: str = "auto", threads: int | None = None):
        check_compatible(specs)
        check_choice("dtype", dtype, ("float64", "float32"))
        check(device == "cpu", "device", device, "'cpu' for the numba backend")
        check_choice("path", path, ("auto", "gram", "direct"))
        self.specs = list(specs)
        self.n_runs = R = len(self.specs)
        self.iteration = 0
        self.threads = int(threads) if threads is not None else _cpu_count()
        self.dtype = np.dtype(dtype)
        dt = self.dtype
        st = stack([structure(s.train) for s in self.specs])
        self._st = st
        self.Mb = Mb = st.Mp + 2
        self.d = d = st.B.shape[2]
        self.J = self.specs[0].W0.shape[0]
        if path == "auto":
            path = choose_path(Mb, d)
            if path == "gram" and R * Mb * Mb * dt.itemsize > 4 * 2**30:
                path = "direct"
        self.path = path
        self._W0 = np.stack([np.asarray(s.W0, dtype=np.float64) for s in self.specs])  # (R, J, d)
        self._B64 = st.B
        self._B = np.ascontiguousarray(st.B, dtype=dt)
        self._ptr = np.ascontiguousarray(st.ptr)
        self._y = np.ascontiguousarray(st.y, dtype=dt)
        self._E = np.ascontiguousarray(st.E, dtype=dt)
        self._w = np.ascontiguousarray(np.stack([s.multiplicities for s in self.specs]), dtype=dt)
        self._lr = np.array([s.lr for s in self.specs], dtype=dt)
        self._rho = np.array([s.rho for s in self.specs], dtype=dt)
        self._be = np.array([s.beta_e for s in self.specs], dtype=np.float64)
        self._bd = np.array([s.beta_d for s in self.specs], dtype=np.float64)
        self._mode = _MODES[self.specs[0].rule]
        self._minibatch = self.specs[0].schedule is not None
        if self._minibatch:
            T = min(len(s.schedule) for s in self.specs)
            self._sched = np.ascontiguousarray(np.stack([np.asarray(s.schedule)[:T] for s in self.specs]),
                                               dtype=np.int64)
        else:
            self._sched = np.zeros((R, 0, 0), dtype=np.int64)
        self._rows = gemm_block_rows(Mb, Mb, self.J) if path == "gram" else Mb
        if path == "gram":
            self._G = np.ascontiguousarray(np.matmul(st.B, st.B.transpose(0, 2, 1)), dtype=dt)
            self._Z = np.ascontiguousarray(np.matmul(st.B, self._W0.transpose(0, 2, 1)), dtype=dt)
            self._C = np.zeros((R, Mb, self.J), dtype=dt)
        else:
            self._Wt = np.ascontiguousarray(self._W0.transpose(0, 2, 1), dtype=dt)

    # -- the protocol --------------------------------------------------------------------------

    def advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        steps = int(steps)
        check(steps >= 0, "steps", steps, "a non-negative integer")
        R = self.n_runs
        F_e = np.zeros((steps, R))
        F_d = np.zeros((steps, R))
        if steps == 0:
            return F_e, F_d
        t0 = self.iteration
        if self._minibatch:
            check(t0 + steps <= self._sched.shape[1], "steps", t0 + steps,
                  f"at most {self._sched.shape[1]} iterations (the minibatch schedule's length)")
            sched = np.ascontiguousarray(self._sched[:, t0:t0 + steps])
        else:
            sched = np.zeros((R, steps, 0), dtype=np.int64)
        status = np.full(R, -1, dtype=np.int64)
        # Several runs: one thread per core over the runs (the kernels release the GIL), one BLAS
        # thread each.  One run: BLAS threads for large products only.
        workers = min(R, self.threads)
        small = self._product_flops() < SMALL_PRODUCT_FLOPS
        if self.path == "gram":
            fn, args = _gram_advance, (self._G, self._Z, self._C)
        else:
            fn, args = _direct_advance, (self._B, self._Wt)
        args = args + (self._ptr, self._y, self._E, self._w, sched, self._lr, self._rho, self._mode,
                       self._be, self._bd, F_e, F_d, status, self._rows)
        with _blas_limit(1 if (workers > 1 or small) else None):
            if workers <= 1:
                fn(np.arange(R), *args)
            else:
                pool = _pool(workers)
                futures = [pool.submit(fn, np.arange(k, R, workers), *args) for k in range(workers)]
                for fut in futures:
                    fut.result()
        bad = np.flatnonzero(status >= 0)
        if bad.size:
            r = int(bad[np.argmin(status[bad])])  # earliest step; lowest run on ties
            raise SimulationDiverged(r, t0 + int(status[r]) + 1)
        self.iteration += steps
        return F_e, F_d

    def weights(self) -> np.ndarray:
        if self.path == "gram":
            return self._W0 + np.matmul(self._C.astype(np.float64).transpose(0, 2, 1), self._B64)
        return self._Wt.astype(np.float64).transpose(0, 2, 1).copy()

    def train_outputs(self) -> np.ndarray:
        if self.path == "gram":
            Z = self._Z.astype(np.float64)
        else:
            Z = np.matmul(self._B64, self._Wt.astype(np.float64))
        st = self._st
        return np.stack([
            outputs_from_projections(Z[r], int(st.M[r]), st.ptr[r], st.E[r]) for r in range(self.n_runs)
        ])

    # -- extras --------------------------------------------------------------------------------

    def _product_flops(self) -> int:
        return flops_per_step(self.path, self.Mb, self.d, self.J, "gd") // (1 if self.path == "gram" else 2)

    def flops_per_step(self) -> int:
        """Flops of one step's matrix products for all runs (see :func:`flops_per_step`)."""
        return self.n_runs * flops_per_step(self.path, self.Mb, self.d, self.J, self.specs[0].rule)
