"""The torch backend: the structured simulator, all R runs as one batched computation (CPU or CUDA).

The same math (see :mod:`sims.structured`): Gram space ``Z <- Z - eta G S`` (``torch.bmm`` over
runs) when ``Mb < 2 d``, else explicit ``W^T`` with ``Z = B W^T`` and ``g^T = B^T S``.  Runs are
padded to a common number of noise rows with zero rows (exactly inert), so one batched product
serves all runs.  No autograd: the gradient is explicit.  CPU or CUDA, float32 or float64.

No host synchronization inside the step loop: feature outputs and per-step finiteness flags go to
device buffers that are read once per :meth:`TorchBackend.advance` call.  float32 products run in
full float32: TF32 (which another part of a program may have switched on, e.g. the trainer's
``torch.set_float32_matmul_precision("high")``) is switched off while stepping and restored after.
Running out of device memory raises ``MemoryError`` (one line on the command line, exit 1).  SAM/USAM runs with
``rho = 0`` get ``c = 0``: ``Z + 0 T`` is ``Z`` bit for bit, so they equal GD bitwise.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch

from theory.plumbing.config import check, check_choice

from .backend_contract import RunSpec, SimulationDiverged, check_compatible, choose_path, flops_per_step
from .structured import outputs_from_projections, stack, structure

__all__ = ["TorchBackend"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

#: States (R * Mb * J elements) below this size step on one CPU thread.
SMALL_STATE = 1 << 22


@contextlib.contextmanager
def _device_errors() -> Iterator[None]:
    """torch's out-of-memory error (a RuntimeError) as ``MemoryError``."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        raise MemoryError(f"the torch backend ran out of device memory ({str(err).splitlines()[0]})") from None


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """float32 matrix products in full precision (no TF32) for the duration; the setting is restored."""
    old = torch.get_float32_matmul_precision()
    if old != "highest":
        torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        if old != "highest":
            torch.set_float32_matmul_precision(old)


class TorchBackend:
    """R runs as one batched computation; ``path`` in auto/gram/direct."""

    def __init__(self, specs: Sequence[RunSpec], *, dtype: str = "float64", device: str = "cpu",
                 path: str = "auto", threads: int | None = None):
        with _device_errors():
            self._setup(specs, dtype, device, path, threads)

    def _setup(self, specs: Sequence[RunSpec], dtype: str, device: str, path: str, threads: int | None) -> None:
        check_compatible(specs)
        check_choice("dtype", dtype, tuple(_DTYPES))
        check(device == "cpu" or str(device).startswith("cuda"), "device", device, "'cpu' or 'cuda[:N]'")
        check(not str(device).startswith("cuda") or torch.cuda.is_available(), "device", device,
              "an available CUDA device")
        check_choice("path", path, ("auto", "gram", "direct"))
        self.specs = list(specs)
        self.n_runs = R = len(self.specs)
        self.iteration = 0
        self.dtype = _DTYPES[dtype]
        self.device = torch.device(device)
        dev, dt = self.device, self.dtype

        def t(x, dtype=dt):
            return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=dev)

        st = stack([structure(s.train) for s in self.specs])
        self._st = st
        self.Mf = Mf = st.Mp
        self.Mb = Mb = Mf + 2
        self.d = d = st.B.shape[2]
        self.J = self.specs[0].W0.shape[0]
        self.n = n = st.y.shape[1]
        if path == "auto":
            path = choose_path(Mb, d)
            item = torch.empty((), dtype=dt).element_size()
            if path == "gram" and R * Mb * Mb * item > 4 * 2**30:
                path = "direct"
        self.path = path
        self._W0 = np.stack([np.asarray(s.W0, dtype=np.float64) for s in self.specs])  # (R, J, d)
        owner = np.zeros((R, Mf), dtype=np.int64)  # padding rows: owner 0, but their Z is exactly 0
        for r in range(R):
            M = int(st.M[r])
            owner[r, :M] = np.repeat(np.arange(n), np.diff(st.ptr[r]))
        self._owner = t(owner, torch.int64)
        self._y = t(st.y)
        self._E = t(st.E)
        self._w = t(np.stack([s.multiplicities for s in self.specs]))
        self._lr = t([s.lr for s in self.specs]).view(R, 1, 1)
        self._scale = self._lr.view(R, 1) / self._w.sum(1, keepdim=True)  # eta / sum m
        self._rho = t([s.rho for s in self.specs])
        self._be = t([s.beta_e for s in self.specs]).view(R, 1)
        self._bd = t([s.beta_d for s in self.specs]).view(R, 1)
        self._rule = self.specs[0].rule
        self._perturb = self._rule in ("sam", "usam") and bool(np.any([s.rho != 0 for s in self.specs]))
        self._minibatch = self.specs[0].schedule is not None
        if self._minibatch:
            T = min(len(s.schedule) for s in self.specs)
            self._sched = t(np.stack([np.asarray(s.schedule)[:T] for s in self.specs]), torch.int64)  # (R, T, b)
        B64 = st.B
        if path == "gram":
            self._G = t(np.matmul(B64, B64.transpose(0, 2, 1)))
            self._Z = t(np.matmul(B64, self._W0.transpose(0, 2, 1)))
            self._C = torch.zeros((R, Mb, self.J), dtype=dt, device=dev)
        else:
            self._B = t(B64)
            self._Bt = self._B.transpose(1, 2)
            self._V = self._B[:, Mf:]  # (R, 2, d): v_e, v_d
            self._Wt = t(self._W0.transpose(0, 2, 1))
        # CPU threads while stepping: small batched states run faster on one thread (torch's
        # intra-op threads cost more in synchronization than they save); None: torch's setting.
        if threads is None and dev.type == "cpu" and R * Mb * self.J < SMALL_STATE:
            threads = 1
        self.threads = threads

    # -- the math ------------------------------------------------------------------------------

    def _grad(self, Z: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``scale * S`` (R, Mb, J): S the coordinates of grad L at projections Z (rows: noise, then
        a_e, a_d); ``scale`` (R, 1) is ``eta / sum m`` (the step folded into the coefficients)."""
        Mf = self.Mf
        a, b = Z[:, Mf], Z[:, Mf + 1]  # (R, J)
        aa, bb = a * a, b * b
        powers = torch.stack([(aa * a).sum(1), 3.0 * (aa * b).sum(1), 3.0 * (a * bb).sum(1), (bb * b).sum(1)], 1)
        Zn = Z[:, :Mf]
        Z2 = Zn * Zn
        rows = (Z2 * Zn).sum(2)  # (R, Mf)
        f = (self._E * powers.unsqueeze(1)).sum(2).scatter_add_(1, self._owner, rows)  # (R, n)
        # -eta c_i with c_i = -(m_i / sum m) y_i s(-y_i f_i)
        c = (scale * w) * self._y * torch.sigmoid(-self._y * f)  # (R, n)
        S = torch.empty_like(Z)
        torch.mul(Z2, (3.0 * c).gather(1, self._owner).unsqueeze(2), out=S[:, :Mf])
        A = (c.unsqueeze(2) * self._E).sum(1)  # (R, 4)
        A0, A1, A2, A3 = (A[:, k : k + 1] for k in range(4))
        ab2 = 2.0 * a * b
        S[:, Mf] = 3.0 * (A0 * aa + A1 * ab2 + A2 * bb)
        S[:, Mf + 1] = 3.0 * (A1 * aa + A2 * ab2 + A3 * bb)
        return S

    def _shift(self, U: torch.Tensor, TU: torch.Tensor) -> torch.Tensor:
        """SAM/USAM's perturbation factor for a direction given as ``U = -eta S``, ``TU`` its image
        (``G U`` or ``B^T U``): returns ``k`` (R, 1, 1) with ``eps = rho g / ||g|| = k * image``."""
        lr = self._lr
        if self._rule == "usam":
            return -(self._rho.view(-1, 1, 1) / lr)
        nrm2 = (U * TU).sum((1, 2)).view(-1, 1, 1)  # eta^2 ||g||^2
        safe = torch.where(nrm2 > 0, nrm2, torch.ones_like(nrm2))
        rho = self._rho.view(-1, 1, 1)
        # eps = rho g / ||g|| = -(rho / (eta ||g||)) * image, and eta ||g|| = sqrt(nrm2)
        return torch.where(nrm2 > 0, -rho / torch.sqrt(safe), torch.zeros_like(nrm2))

    def _step_gram(self, w, scale) -> torch.Tensor:
        G, Z = self._G, self._Z
        U = self._grad(Z, w, scale)  # -eta S
        if self._perturb:
            TU = torch.bmm(G, U)
            U = self._grad(torch.addcmul(Z, self._shift(U, TU), TU), w, scale)
        Z.baddbmm_(G, U)
        self._C.add_(U)
        return torch.linalg.vector_norm(Z, ord=float("inf"), dim=(1, 2))

    def _step_direct(self, w, scale) -> torch.Tensor:
        B, Bt, Wt = self._B, self._Bt, self._Wt
        U = self._grad(torch.bmm(B, Wt), w, scale)
        if self._perturb:
            gU = torch.bmm(Bt, U)
            U = self._grad(torch.bmm(B, torch.addcmul(Wt, self._shift(gU, gU), gU)), w, scale)
        Wt.baddbmm_(Bt, U)
        return torch.linalg.vector_norm(Wt, ord=float("inf"), dim=(1, 2))

    def _features(self) -> torch.Tensor:
        """(R, 2, J): a_e, a_d at the current weights."""
        if self.path == "gram":
            return self._Z[:, self.Mf:]
        return torch.bmm(self._V, self._Wt)

    # -- the protocol --------------------------------------------------------------------------

    def advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        with _device_errors(), _full_float32():
            return self._advance(steps)

    @torch.no_grad()
    def _advance(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        steps = int(steps)
        check(steps >= 0, "steps", steps, "a non-negative integer")
        R, dev = self.n_runs, self.device
        if steps == 0:
            return np.zeros((0, R)), np.zeros((0, R))
        t0 = self.iteration
        if self._minibatch:
            check(t0 + steps <= self._sched.shape[1], "steps", t0 + steps,
                  f"at most {self._sched.shape[1]} iterations (the minibatch schedule's length)")
            b = self._sched.shape[2]
            scale = self._lr.view(R, 1) / float(b)
            ones = torch.ones((R, b), dtype=self.dtype, device=dev)
        F = torch.empty((steps, 2, R), dtype=self.dtype, device=dev)
        norms = torch.empty((steps, R), dtype=self.dtype, device=dev)  # inf-norm of the state: NaN/Inf propagate
        step = self._step_gram if self.path == "gram" else self._step_direct
        beta = torch.stack([self._be, self._bd], 1)  # (R, 2, 1)
        restore = None
        if self.threads is not None and dev.type == "cpu" and torch.get_num_threads() != self.threads:
            restore = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        try:
            for s in range(steps):
                if self._minibatch:
                    w = torch.zeros((R, self.n), dtype=self.dtype, device=dev).scatter_add_(
                        1, self._sched[:, t0 + s], ones)
                else:
                    w, scale = self._w, self._scale
                norms[s] = step(w, scale)
                F[s] = ((beta * self._features()) ** 3).sum(2).T
        finally:
            if restore is not None:
                torch.set_num_threads(restore)
        bad_np = ~np.isfinite(norms.cpu().numpy())
        if bad_np.any():
            s_idx, r_idx = np.nonzero(bad_np)  # row-major: earliest step first, then lowest run
            raise SimulationDiverged(int(r_idx[0]), t0 + int(s_idx[0]) + 1)
        F_np = F.to(torch.float64).cpu().numpy()
        self.iteration += steps
        return F_np[:, 0].copy(), F_np[:, 1].copy()

    def weights(self) -> np.ndarray:
        if self.path == "gram":
            C = self._C.to(torch.float64).cpu().numpy()
            return self._W0 + np.matmul(C.transpose(0, 2, 1), self._st.B)
        return self._Wt.to(torch.float64).cpu().numpy().transpose(0, 2, 1).copy()

    def train_outputs(self) -> np.ndarray:
        if self.path == "gram":
            Z = self._Z.to(torch.float64).cpu().numpy()
        else:
            Z = np.matmul(self._st.B, self._Wt.to(torch.float64).cpu().numpy())
        st = self._st
        return np.stack([outputs_from_projections(Z[r], int(st.M[r]), st.ptr[r], st.E[r])
                         for r in range(self.n_runs)])

    def flops_per_step(self) -> int:
        """Flops of one step's matrix products for all runs (full products, also for minibatches)."""
        return self.n_runs * flops_per_step(self.path, self.Mb, self.d, self.J, self._rule)
