"""The patch data distribution of the paper's Definition 3.1.

Each example ``x = (x^(1), ..., x^(P))`` has ``P >= 3`` patches of dimension ``d`` and a label
``y`` uniform in ``{-1, +1}``:

* patch 1 is the slow-learnable feature ``beta_d * y * v_d`` (every example);
* patch 2 is the fast-learnable feature ``beta_e * y * v_e`` with probability ``alpha``
  (``has_fast = True``), else a noise patch;
* every other patch is noise ``xi ~ N(0, sigma_p^2 (I - v_e v_e^T - v_d v_d^T))``.

``v_e`` and ``v_d`` are orthonormal; by default the first two standard basis vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .plumbing.config import check, check_int, check_number

__all__ = ["DataConfig", "PatchData", "sample", "default_features", "check_features"]


@dataclass(frozen=True)
class DataConfig:
    """Parameters of the data distribution (Definition 3.1).

    Parameters
    ----------
    d : patch dimension (>= 3, so that noise has a direction orthogonal to both features).
    P : patches per example (>= 3).
    alpha : probability that an example carries the fast feature, in (0, 1].
    beta_e, beta_d : feature strengths, ``beta_e > beta_d > 0``.
    sigma_p : noise scale, > 0.
    """

    d: int = 200
    P: int = 3
    alpha: float = 0.9
    beta_e: float = 1.0
    beta_d: float = 0.4
    sigma_p: float = 0.06

    def __post_init__(self) -> None:
        check_int("d", self.d, low=3)
        check_int("P", self.P, low=3)
        check_number("alpha", self.alpha, low=0.0, high=1.0, low_open=True)
        check_number("beta_e", self.beta_e, low=0.0, low_open=True)
        check_number("beta_d", self.beta_d, low=0.0, low_open=True)
        check(self.beta_d < self.beta_e, "beta_d", self.beta_d, f"a number smaller than beta_e = {self.beta_e:g} (beta_e > beta_d > 0)")
        check_number("sigma_p", self.sigma_p, low=0.0, low_open=True)


@dataclass(frozen=True)
class PatchData:
    """A sample from the distribution.

    Attributes
    ----------
    X : (n, P, d) float64 patches.
    y : (n,) float64 labels in {-1, +1}.
    has_fast : (n,) bool, whether patch 2 is the fast feature.
    noise_mask : (n, P) bool, which patches are noise (patches 3.. always, patch 2 when not has_fast).
    v_e, v_d : (d,) the feature directions used.
    """

    X: np.ndarray
    y: np.ndarray
    has_fast: np.ndarray
    noise_mask: np.ndarray
    v_e: np.ndarray
    v_d: np.ndarray

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def default_features(d: int) -> tuple[np.ndarray, np.ndarray]:
    """The default orthonormal features: ``v_e = e_1``, ``v_d = e_2``."""
    v_e = np.zeros(d)
    v_d = np.zeros(d)
    v_e[0] = 1.0
    v_d[1] = 1.0
    return v_e, v_d


def check_features(v_e: np.ndarray, v_d: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate user features: shape (d,), unit norm and orthogonal (within 1e-10)."""
    v_e = np.asarray(v_e, dtype=np.float64)
    v_d = np.asarray(v_d, dtype=np.float64)
    check(v_e.shape == (d,), "v_e", v_e.shape, f"shape ({d},)")
    check(v_d.shape == (d,), "v_d", v_d.shape, f"shape ({d},)")
    check(abs(np.linalg.norm(v_e) - 1.0) < 1e-10, "v_e", float(np.linalg.norm(v_e)), "a unit vector")
    check(abs(np.linalg.norm(v_d) - 1.0) < 1e-10, "v_d", float(np.linalg.norm(v_d)), "a unit vector")
    check(abs(float(v_e @ v_d)) < 1e-10, "v_d", float(v_e @ v_d), "a vector orthogonal to v_e")
    return v_e, v_d


def sample(
    config: DataConfig,
    n: int,
    seed: int | np.random.Generator,
    v_e: np.ndarray | None = None,
    v_d: np.ndarray | None = None,
) -> PatchData:
    """Draw ``n`` i.i.d. examples (vectorized, float64).

    The noise is ``xi = g - (g.v_e) v_e - (g.v_d) v_d`` with ``g ~ N(0, sigma_p^2 I)``, i.e. a draw
    from ``N(0, sigma_p^2 (I - v_e v_e^T - v_d v_d^T))``.
    """
    check_int("n", n, low=1)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    d, P = config.d, config.P
    if v_e is None and v_d is None:
        v_e, v_d = default_features(d)
    else:
        check(v_e is not None and v_d is not None, "v_e", None, "both v_e and v_d, or neither")
        v_e, v_d = check_features(v_e, v_d, d)

    y = rng.choice(np.array([-1.0, 1.0]), size=n)
    has_fast = rng.random(n) < config.alpha
    g = rng.standard_normal((n, P, d)) * config.sigma_p
    g -= (g @ v_e)[..., None] * v_e
    g -= (g @ v_d)[..., None] * v_d

    X = g
    X[:, 0, :] = config.beta_d * y[:, None] * v_d
    X[has_fast, 1, :] = config.beta_e * y[has_fast, None] * v_e
    noise_mask = np.ones((n, P), dtype=bool)
    noise_mask[:, 0] = False
    noise_mask[:, 1] = ~has_fast
    return PatchData(X=X, y=y, has_fast=has_fast, noise_mask=noise_mask, v_e=v_e, v_d=v_d)
