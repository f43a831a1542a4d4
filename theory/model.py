"""The cubic two-layer CNN, its logistic loss and exact gradient (float64 reference).

    f(x; W) = sum_{j=1..J} sum_{p=1..P} sigma(<w_j, x^(p)>),   sigma(z) = z^3,   W in R^{J x d}

    L(W) = sum_i m_i l(y_i f(x_i; W)) / sum_i m_i,   l(z) = log(1 + exp(-z))

with example multiplicities ``m_i >= 0`` (1 normally, k for an upsampled example, the minibatch
counts for SGD).  The gradient is

    dL/dw_j = -(1 / sum m) sum_i m_i y_i s(-y_i f_i) sum_p 3 <w_j, x_i^(p)>^2 x_i^(p),

``s`` the logistic sigmoid.  Everything here is plain numpy on dense arrays: it is the definition
the fast simulator in sims/ is tested against.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .plumbing.config import check, check_int, check_number

__all__ = [
    "init_weights",
    "outputs",
    "per_example_loss",
    "loss",
    "gradient",
    "loss_and_gradient",
    "feature_alignment",
    "feature_output",
    "check_multiplicities",
]


def init_weights(J: int, d: int, sigma_0: float, seed: int | np.random.Generator) -> np.ndarray:
    """``w_j ~ N(0, sigma_0^2 I)``, shape (J, d), float64."""
    check_int("J", J, low=1)
    check_int("d", d, low=1)
    check_number("sigma_0", sigma_0, low=0.0, low_open=True)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return rng.standard_normal((J, d)) * sigma_0


def outputs(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``f(x_i; W)`` for every example: X (n, P, d) -> (n,)."""
    Z = X @ W.T  # (n, P, J): <w_j, x_i^(p)>
    return (Z**3).sum(axis=(1, 2))


def per_example_loss(W: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``log(1 + exp(-y_i f_i))``, computed stably."""
    return np.logaddexp(0.0, -y * outputs(W, X))


def check_multiplicities(m: np.ndarray | None, n: int) -> np.ndarray:
    """Default ``m = 1``; otherwise shape (n,), finite, non-negative, positive sum."""
    if m is None:
        return np.ones(n)
    m = np.asarray(m, dtype=np.float64)
    check(m.shape == (n,), "multiplicities", m.shape, f"shape ({n},)")
    check(bool(np.all(np.isfinite(m)) and np.all(m >= 0)), "multiplicities", "negative or non-finite entries", "finite values >= 0")
    check(float(m.sum()) > 0, "multiplicities", float(m.sum()), "a positive sum")
    return m


def loss(W: np.ndarray, X: np.ndarray, y: np.ndarray, m: np.ndarray | None = None) -> float:
    """Multiplicity-weighted mean logistic loss."""
    m = check_multiplicities(m, len(y))
    return float(m @ per_example_loss(W, X, y) / m.sum())


def loss_and_gradient(
    W: np.ndarray, X: np.ndarray, y: np.ndarray, m: np.ndarray | None = None
) -> tuple[float, np.ndarray]:
    """The loss and ``dL/dW`` (shape (J, d)) in one pass."""
    m = check_multiplicities(m, len(y))
    Z = X @ W.T  # (n, P, J)
    f = (Z**3).sum(axis=(1, 2))
    value = float(m @ np.logaddexp(0.0, -y * f) / m.sum())
    # dl/df_i = -y_i s(-y_i f_i); weight by m_i / sum m.
    coef = -(m / m.sum()) * y * expit(-y * f)  # (n,)
    # dL/dw_j = sum_i coef_i sum_p 3 Z_ipj^2 x_ip
    G = np.einsum("npj,npd->jd", 3.0 * Z**2 * coef[:, None, None], X)
    return value, G


def gradient(W: np.ndarray, X: np.ndarray, y: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """``dL/dW``, shape (J, d)."""
    return loss_and_gradient(W, X, y, m)[1]


def feature_alignment(W: np.ndarray, v: np.ndarray) -> float:
    """``max_j <w_j, v>``: the paper's alignment of the network with feature ``v``."""
    return float(np.max(W @ v))


def feature_output(W: np.ndarray, v: np.ndarray, beta: float) -> float:
    """``F = sum_j sigma(beta <w_j, v>)``: the network's output on the feature patch alone (y = 1)."""
    return float(np.sum((beta * (W @ v)) ** 3))
