"""Early-phase predictions for the feature coefficients ``a_j = <w_j, v_f>``.

Derivation (GD).  Only feature patches have a component along ``v_f`` (noise is orthogonal to both
features), and the patch ``beta_f y v_f`` contributes ``(beta_f y a_j)^3 = y beta_f^3 a_j^3`` to
``f``.  Hence

    dL/da_j = -(1 / sum m) sum_{i carries f} m_i s(-y_i f_i) 3 beta_f^3 a_j^2,

and while all outputs are small the logistic factor ``s(-y f)`` is 1/2, so

    a_{t+1} = a_t + eta * 1.5 * q_f * beta_f^3 * a_t^2 = a_t + eta c_f a_t^2,      c_f = 1.5 q_f beta_f^3,

with ``q_f`` the multiplicity-weighted fraction of examples carrying feature ``f`` (``q_e = alpha``,
``q_d = 1``).  This is exact up to the logistic factor.  Only neurons with ``a_j(0) > 0`` grow; the
continuous version ``da/dt = eta c a^2`` reaches ``a`` at

    t(a) = 1/(eta c a_0) - 1/(eta c a),

so the learning time is about ``1 / (1.5 eta q_f beta_f^3 a_0)`` with ``a_0 = max_j a_j(0)``, and
``T_d / T_e ~ alpha beta_e^3 / beta_d^3`` for equal initial coefficients.  A feature is *learned* when
its feature output ``F_f = sum_j (beta_f a_j)^3`` reaches ``theta``.

Upsampling the examples without the fast feature by ``k`` gives ``q_e = alpha / (alpha + k (1 - alpha))``
(:func:`fast_fraction_after_upsampling`), and slows the fast feature by ``1/q_e`` relative to k = 1.

SAM and USAM.  With the same approximation (logistic factor 1/2) and, in addition, *neglecting the
noise directions of the gradient in its norm* (they are O(sigma_0^2 sigma_p sqrt(d/N)) early on, far
below the feature terms), the gradient restricted to the feature coefficients is ``g_j^f = -c_f (a_j^f)^2`` and SAM
perturbs each coefficient by

    eps_j^f = rho g_j^f / ||g||,   ||g||^2 = sum_{j,f} (c_f (a_j^f)^2)^2      (SAM)
    eps_j^f = rho g_j^f                                                   (USAM)

then ``a_{t+1} = a_t + eta c_f (a_t + eps_t)^2``.  Early on the fast feature dominates ``||g||``, so the
neuron that leads the fast feature is shifted by about ``-rho`` (its coefficient is effectively
``a - rho``): SAM learns the fast feature later, while the slow feature's share of the normalized
perturbation is small and it grows at nearly GD's pace.  For USAM the shift is
``rho c_f a^2 << a``, so USAM tracks GD in the early phase.  :func:`sam_recurrence` iterates these
coupled recurrences from the actual initialization; it is an approximation (noise gradient and the
logistic factor's decay are ignored), good until the first feature is learned.
"""

from __future__ import annotations

import numpy as np

from .plumbing.config import check_int, check_number

__all__ = [
    "LOGISTIC_FACTOR",
    "coefficient_rate",
    "recurrence",
    "feature_output_curve",
    "learning_time",
    "closed_form_learning_time",
    "learning_time_ratio",
    "fast_fraction_after_upsampling",
    "sam_recurrence",
    "sam_learning_times",
]

LOGISTIC_FACTOR = 0.5
_OVERFLOW = 1e8


def coefficient_rate(q: float, beta: float) -> float:
    """``c = 3 * (1/2) * q * beta^3``: ``dL/da = -c a^2`` in the early phase."""
    return 3.0 * LOGISTIC_FACTOR * q * beta**3


def _validate(lr: float, q: float, beta: float) -> None:
    check_number("lr", lr, low=0.0, low_open=True)
    check_number("q", q, low=0.0, high=1.0, low_open=True)
    check_number("beta", beta, low=0.0, low_open=True)


def recurrence(a0: np.ndarray, lr: float, q: float, beta: float, iterations: int) -> np.ndarray:
    """Iterate ``a_{t+1} = a_t + lr * 1.5 q beta^3 a_t^2`` for every neuron; shape (iterations+1, J).

    Entries that pass 1e8 are set to inf (the recurrence blows up in finite time).
    """
    _validate(lr, q, beta)
    check_int("iterations", iterations, low=0)
    c = lr * coefficient_rate(q, beta)
    a = np.array(a0, dtype=np.float64, copy=True).reshape(-1)
    out = np.empty((iterations + 1, a.size))
    out[0] = a
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(iterations):
            a = a + c * a * a
            a[a > _OVERFLOW] = np.inf
            out[t + 1] = a
    return out


def feature_output_curve(a: np.ndarray, beta: float) -> np.ndarray:
    """``F = sum_j (beta a_j)^3`` along a trajectory ``a`` of shape (T, J)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.sum((beta * np.asarray(a)) ** 3, axis=-1)


def learning_time(
    a0: np.ndarray, lr: float, q: float, beta: float, theta: float = 1.0, max_iterations: int = 10**6
) -> int | None:
    """First t at which the recurrence's feature output ``sum_j (beta a_j)^3`` reaches ``theta``.

    Returns None if it does not within ``max_iterations`` (e.g. no neuron starts positive).
    """
    _validate(lr, q, beta)
    check_number("theta", theta, low=0.0, low_open=True)
    c = lr * coefficient_rate(q, beta)
    a = np.array(a0, dtype=np.float64, copy=True).reshape(-1)
    if np.all(a <= 0):  # a_t stays in [a_0, 0]: F <= 0 < theta forever
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(max_iterations + 1):
            if np.sum((beta * a) ** 3) >= theta:
                return t
            a = a + c * a * a
    return None


def closed_form_learning_time(a0_max: float, lr: float, q: float, beta: float, theta: float = 1.0) -> float:
    """Continuous-time learning time of the leading neuron: ``1/(lr c a_0) - 1/(lr c a_theta)``.

    ``a_theta = theta^(1/3) / beta`` is the coefficient at which that neuron alone gives ``F = theta``;
    ``c = 1.5 q beta^3``.  Infinite when ``a_0 <= 0``.
    """
    _validate(lr, q, beta)
    if a0_max <= 0:
        return float("inf")
    c = lr * coefficient_rate(q, beta)
    a_theta = theta ** (1.0 / 3.0) / beta
    return max(0.0, 1.0 / (c * a0_max) - 1.0 / (c * a_theta))


def learning_time_ratio(alpha: float, beta_e: float, beta_d: float) -> float:
    """``T_d / T_e ~ alpha beta_e^3 / beta_d^3`` (equal initial coefficients, no upsampling)."""
    return alpha * beta_e**3 / beta_d**3


def fast_fraction_after_upsampling(alpha: float, k: float) -> float:
    """``q_e = alpha / (alpha + k (1 - alpha))`` when the examples without the fast feature count k times."""
    check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
    check_number("k", k, low=1.0)
    return alpha / (alpha + k * (1.0 - alpha))


def sam_recurrence(
    a0_e: np.ndarray,
    a0_d: np.ndarray,
    *,
    lr: float,
    rho: float,
    q_e: float,
    beta_e: float,
    beta_d: float,
    iterations: int,
    q_d: float = 1.0,
    normalized: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Coupled early-phase recurrences of both features under SAM (or USAM if not normalized).

    Returns the trajectories of ``a^e`` and ``a^d``, each (iterations+1, J).  With ``rho = 0`` this is
    exactly :func:`recurrence` for each feature.  See the module docstring for the approximations.
    """
    _validate(lr, q_e, beta_e)
    _validate(lr, q_d, beta_d)
    check_number("rho", rho, low=0.0)
    check_int("iterations", iterations, low=0)
    c_e = coefficient_rate(q_e, beta_e)
    c_d = coefficient_rate(q_d, beta_d)
    a_e = np.array(a0_e, dtype=np.float64, copy=True).reshape(-1)
    a_d = np.array(a0_d, dtype=np.float64, copy=True).reshape(-1)
    out_e = np.empty((iterations + 1, a_e.size))
    out_d = np.empty((iterations + 1, a_d.size))
    out_e[0], out_d[0] = a_e, a_d
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(iterations):
            g_e = -c_e * a_e**2
            g_d = -c_d * a_d**2
            if normalized:
                norm = np.sqrt(np.sum(g_e**2) + np.sum(g_d**2))
                scale = rho / norm if norm > 0 and np.isfinite(norm) else 0.0
            else:
                scale = rho
            # A blown-up (inf) coefficient stays inf: ``0 * inf`` or ``inf - inf`` would make it NaN.
            p_e = np.where(np.isinf(a_e), a_e, a_e + scale * g_e)
            p_d = np.where(np.isinf(a_d), a_d, a_d + scale * g_d)
            a_e = a_e + lr * c_e * p_e**2
            a_d = a_d + lr * c_d * p_d**2
            a_e[a_e > _OVERFLOW] = np.inf
            a_d[a_d > _OVERFLOW] = np.inf
            out_e[t + 1], out_d[t + 1] = a_e, a_d
    return out_e, out_d


def sam_learning_times(
    a0_e: np.ndarray,
    a0_d: np.ndarray,
    *,
    lr: float,
    rho: float,
    q_e: float,
    beta_e: float,
    beta_d: float,
    iterations: int,
    theta: float = 1.0,
    q_d: float = 1.0,
    normalized: bool = True,
) -> tuple[int | None, int | None]:
    """First iterations at which :func:`sam_recurrence`'s feature outputs reach ``theta`` (None: not reached)."""
    traj_e, traj_d = sam_recurrence(
        a0_e, a0_d, lr=lr, rho=rho, q_e=q_e, q_d=q_d, beta_e=beta_e, beta_d=beta_d,
        iterations=iterations, normalized=normalized,
    )

    def first(traj: np.ndarray, beta: float) -> int | None:
        hit = np.nonzero(feature_output_curve(traj, beta) >= theta)[0]
        return int(hit[0]) if hit.size else None

    return first(traj_e, beta_e), first(traj_d, beta_d)
