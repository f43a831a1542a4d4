"""The structured form of a training sample that the fast backends compute with.

Definition 3.1 makes most patches one-dimensional: patch 1 is ``beta_d y v_d``, patch 2 is
``beta_e y v_e`` when ``has_fast``, and only the remaining *noise* patches need d-dimensional work.
This module splits a :class:`theory.data.PatchData` exactly (no approximation beyond rounding):

* every patch ``x`` is projected on ``span(v_e, v_d)``: ``x = c_e v_e + c_d v_d + r``
  (least squares, exact for the default basis features);
* a patch with ``r = 0`` (relative tolerance ``1e-12``) is a *feature patch*, represented by its two
  coefficients only.  Its contribution to the model is ``sum_j (c_e a_ej + c_d a_dj)^3`` with
  ``a_e = W v_e``, ``a_d = W v_d``, which expands into four power sums of ``(a_e, a_d)``; so an
  example's feature patches reduce to four moments ``E_i = sum_p (c_e^3, c_e^2 c_d, c_e c_d^2, c_d^3)``;
* every other patch is a *noise row*, kept as the full patch vector (not only its residual), so the
  model is exact even when a noise patch has a component along the features.

The basis ``B`` stacks the ``M`` noise rows (grouped by example, ``ptr`` in CSR style), then
``v_e`` and ``v_d`` as its last two rows.  Every gradient lies in the row space of ``B``:

    grad L(W) = S^T B,   S (M + 2, J):  S[k] = 3 c_owner(k) Z[k]^2 for a noise row k,
                                        S[M] = g_e, S[M + 1] = g_d   (feature-patch gradients)

with ``Z = B W^T`` (whose last two rows are ``a_e`` and ``a_d``) and ``c_i = -(m_i / sum m) y_i
s(-y_i f_i)``.  This needs no orthogonality between noise, ``v_e`` and ``v_d``: the Gram matrix
``G = B B^T`` carries every cross term, so ``Z <- Z - eta G S`` is the exact image of
``W <- W - eta S^T B``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from theory.data import PatchData

__all__ = ["StructuredData", "Stacked", "structure", "stack", "outputs_from_projections"]

#: Residual (relative to the patch norm) below which a patch counts as lying in span(v_e, v_d).
FEATURE_TOL = 1e-12


@dataclass(frozen=True)
class StructuredData:
    """One training sample in structured form (float64).

    Attributes
    ----------
    n, d : examples and patch dimension.
    y : (n,) labels.
    B : (M + 2, d) noise rows grouped by example, then ``v_e``, ``v_d``.
    ptr : (n + 1,) int64: the noise rows of example i are ``B[ptr[i]:ptr[i + 1]]``.
    E : (n, 4) moments of the feature patches of each example:
        ``sum_p c_e^3, sum_p c_e^2 c_d, sum_p c_e c_d^2, sum_p c_d^3``.
    v_e, v_d : (d,) features.
    """

    n: int
    d: int
    y: np.ndarray
    B: np.ndarray
    ptr: np.ndarray
    E: np.ndarray
    v_e: np.ndarray
    v_d: np.ndarray

    @property
    def M(self) -> int:
        """Number of noise rows."""
        return int(self.B.shape[0] - 2)

    def outputs(self, Z: np.ndarray) -> np.ndarray:
        """``f_i`` from ``Z = B W^T`` (shape (M + 2, J)): the model's outputs on the sample."""
        return outputs_from_projections(Z, self.M, self.ptr, self.E)


def outputs_from_projections(Z: np.ndarray, M: int, ptr: np.ndarray, E: np.ndarray) -> np.ndarray:
    """``f_i = E_i . (sum a_e^3, 3 sum a_e^2 a_d, 3 sum a_e a_d^2, sum a_d^3) + sum_{k of i} sum_j Z_kj^3``.

    ``Z`` is (Mp + 2, J) with rows ``Mp``, ``Mp + 1`` holding ``a_e``, ``a_d`` (``Mp >= M``; rows
    between ``M`` and ``Mp`` are padding and ignored).
    """
    Z = np.asarray(Z, dtype=np.float64)
    a, b = Z[-2], Z[-1]
    powers = np.array([np.sum(a * a * a), 3.0 * np.sum(a * a * b), 3.0 * np.sum(a * b * b), np.sum(b * b * b)])
    n = len(ptr) - 1
    noise = Z[:M]
    row_sums = np.einsum("kj,kj,kj->k", noise, noise, noise)  # sum_j Z_kj^3 (x**3 would go through pow())
    owner = np.repeat(np.arange(n), np.diff(ptr))
    return E @ powers + np.bincount(owner, weights=row_sums, minlength=n)


def structure(data: PatchData) -> StructuredData:
    """Split ``data`` into feature moments and noise rows (see the module docstring)."""
    X = np.asarray(data.X, dtype=np.float64)
    n, P, d = X.shape
    v_e = np.asarray(data.v_e, dtype=np.float64)
    v_d = np.asarray(data.v_d, dtype=np.float64)
    V = np.stack([v_e, v_d])  # (2, d)
    flat = X.reshape(n * P, d)
    VV = V @ V.T
    proj = flat @ V.T  # (nP, 2)
    coeff = proj if np.array_equal(VV, np.eye(2)) else np.linalg.solve(VV, proj.T).T
    resid = flat - coeff @ V
    rnorm = np.linalg.norm(resid, axis=1)
    xnorm = np.linalg.norm(flat, axis=1)
    is_feature = rnorm <= FEATURE_TOL * xnorm  # includes all-zero patches (contribute nothing)
    is_feature = is_feature.reshape(n, P)

    ce = np.where(is_feature, coeff[:, 0].reshape(n, P), 0.0)
    cd = np.where(is_feature, coeff[:, 1].reshape(n, P), 0.0)
    E = np.stack([(ce**3).sum(1), (ce**2 * cd).sum(1), (ce * cd**2).sum(1), (cd**3).sum(1)], axis=1)

    noise = ~is_feature  # row-major order groups the rows by example
    counts = noise.sum(axis=1)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    B = np.concatenate([X[noise], V], axis=0)
    return StructuredData(
        n=n, d=d, y=np.asarray(data.y, dtype=np.float64).copy(), B=np.ascontiguousarray(B), ptr=ptr,
        E=np.ascontiguousarray(E), v_e=v_e, v_d=v_d,
    )


@dataclass(frozen=True)
class Stacked:
    """R structured samples padded to a common number of noise rows ``Mp`` (zero rows).

    ``B`` is (R, Mp + 2, d) with the feature rows at ``Mp`` and ``Mp + 1`` in every run; padding
    rows are zero, belong to no example, and stay exactly zero in every product.
    """

    Mp: int
    B: np.ndarray  # (R, Mp + 2, d)
    ptr: np.ndarray  # (R, n + 1)
    E: np.ndarray  # (R, n, 4)
    y: np.ndarray  # (R, n)
    M: np.ndarray  # (R,) real noise rows per run


def stack(items: Sequence[StructuredData]) -> Stacked:
    """Pad and stack the samples of several runs (same n and d) to the largest number of noise rows."""
    R = len(items)
    d = items[0].d
    Mp = max(s.M for s in items)
    B = np.zeros((R, Mp + 2, d))
    for r, s in enumerate(items):
        B[r, : s.M] = s.B[: s.M]
        B[r, Mp:] = s.B[s.M:]
    return Stacked(
        Mp=Mp,
        B=B,
        ptr=np.stack([s.ptr for s in items]),
        E=np.stack([s.E for s in items]),
        y=np.stack([s.y for s in items]),
        M=np.array([s.M for s in items], dtype=np.int64),
    )
