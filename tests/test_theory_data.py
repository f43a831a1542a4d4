"""theory/data.py: the sampler of Definition 3.1 (features, noise, has_fast, noise_mask)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.data import DataConfig, check_features, default_features, sample
from theory.plumbing.config import ConfigError

FAST = settings(deadline=None, max_examples=25)


@st.composite
def configs(draw, d_max: int = 30):
    d = draw(st.integers(3, d_max))
    P = draw(st.integers(3, 6))
    alpha = draw(st.floats(0.01, 1.0))
    beta_e = draw(st.floats(0.1, 3.0))
    beta_d = draw(st.floats(0.01, 0.99)) * beta_e
    sigma_p = draw(st.floats(0.001, 2.0))
    return DataConfig(d=d, P=P, alpha=alpha, beta_e=beta_e, beta_d=beta_d, sigma_p=sigma_p)


def random_features(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two random orthonormal vectors (QR of a Gaussian matrix)."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, 2)))
    return Q[:, 0].copy(), Q[:, 1].copy()


@FAST
@given(configs(), st.integers(1, 60), st.integers(0, 2**32 - 1), st.booleans())
def test_structure_of_every_example(cfg, n, seed, custom_features):
    """Patch 1 is beta_d y v_d, patch 2 is beta_e y v_e exactly where has_fast, noise is orthogonal."""
    if custom_features:
        v_e, v_d = random_features(cfg.d, seed)
        data = sample(cfg, n, seed, v_e=v_e, v_d=v_d)
        np.testing.assert_array_equal(data.v_e, v_e)
        np.testing.assert_array_equal(data.v_d, v_d)
    else:
        data = sample(cfg, n, seed)
        v_e, v_d = default_features(cfg.d)
        np.testing.assert_array_equal(data.v_e, v_e)
        np.testing.assert_array_equal(data.v_d, v_d)
    X, y = data.X, data.y
    assert X.shape == (n, cfg.P, cfg.d) and X.dtype == np.float64
    assert y.shape == (n,) and set(np.unique(y)) <= {-1.0, 1.0}
    assert data.has_fast.shape == (n,) and data.has_fast.dtype == bool
    assert data.n == n
    # patch 1: the slow feature, every example, exactly
    np.testing.assert_array_equal(X[:, 0, :], cfg.beta_d * y[:, None] * v_d)
    # patch 2: the fast feature exactly where has_fast
    hf = data.has_fast
    np.testing.assert_array_equal(X[hf, 1, :], cfg.beta_e * y[hf, None] * v_e)
    # noise_mask: patch 1 never, patch 2 iff not has_fast, patches 3.. always
    mask = data.noise_mask
    assert mask.shape == (n, cfg.P) and mask.dtype == bool
    assert not mask[:, 0].any()
    np.testing.assert_array_equal(mask[:, 1], ~hf)
    assert mask[:, 2:].all()
    # noise patches are orthogonal to both features
    noise = X[mask]  # (number of noise patches, d)
    scale = max(1.0, cfg.sigma_p * np.sqrt(cfg.d))
    assert np.all(np.abs(noise @ v_e) <= 1e-12 * scale)
    assert np.all(np.abs(noise @ v_d) <= 1e-12 * scale)
    # ... and they are really noise (not zero, not a feature)
    assert np.all(np.linalg.norm(noise, axis=1) > 0)


@FAST
@given(st.floats(0.05, 1.0), st.integers(0, 2**32 - 1))
def test_has_fast_fraction_and_label_balance(alpha, seed):
    """Binomial fractions within 5 standard deviations (n = 4000)."""
    n = 4000
    data = sample(DataConfig(d=3, P=3, alpha=alpha), n, seed)
    frac = data.has_fast.mean()
    assert abs(frac - alpha) <= 5 * np.sqrt(alpha * (1 - alpha) / n) + 1e-12
    assert abs(np.mean(data.y == 1.0) - 0.5) <= 5 * 0.5 / np.sqrt(n)
    if alpha == 1.0:
        assert data.has_fast.all()


def test_alpha_one_means_every_example_has_the_fast_feature():
    data = sample(DataConfig(d=5, alpha=1.0), 500, 1)
    assert data.has_fast.all()
    assert data.noise_mask[:, 1].sum() == 0


@FAST
@given(st.integers(3, 40), st.floats(0.01, 3.0), st.integers(0, 2**32 - 1), st.booleans())
def test_noise_norms_and_covariance(d, sigma_p, seed, custom_features):
    """E ||xi||^2 = sigma_p^2 (d - 2): the noise lives in the (d-2)-dim complement of the features."""
    cfg = DataConfig(d=d, P=4, alpha=0.5, sigma_p=sigma_p)
    kwargs = dict(zip(("v_e", "v_d"), random_features(d, seed))) if custom_features else {}
    data = sample(cfg, 500, seed, **kwargs)
    noise = data.X[data.noise_mask]
    M = noise.shape[0]
    ratio = np.mean(np.sum(noise**2, axis=1)) / (sigma_p**2 * (d - 2))
    # ||xi||^2 / sigma_p^2 ~ chi^2_{d-2}: the mean of M of them, divided by d-2, has sd sqrt(2/((d-2) M)).
    assert abs(ratio - 1.0) <= 6 * np.sqrt(2.0 / ((d - 2) * M))
    # every direction orthogonal to the features carries variance sigma_p^2 (here: a random one)
    rng = np.random.default_rng(seed + 1)
    u = rng.standard_normal(d)
    u -= (u @ data.v_e) * data.v_e + (u @ data.v_d) * data.v_d
    u /= np.linalg.norm(u)
    var = np.mean((noise @ u) ** 2) / sigma_p**2
    assert abs(var - 1.0) <= 6 * np.sqrt(2.0 / M)


@FAST
@given(configs(d_max=10), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_deterministic_per_seed(cfg, n, seed):
    a = sample(cfg, n, seed)
    b = sample(cfg, n, seed)
    c = sample(cfg, n, np.random.default_rng(seed))
    for other in (b, c):
        for name in ("X", "y", "has_fast", "noise_mask", "v_e", "v_d"):
            np.testing.assert_array_equal(getattr(a, name), getattr(other, name))
    d = sample(cfg, n, seed + 1)
    assert not np.array_equal(a.X, d.X)


def test_default_features():
    v_e, v_d = default_features(4)
    np.testing.assert_array_equal(v_e, [1, 0, 0, 0])
    np.testing.assert_array_equal(v_d, [0, 1, 0, 0])


def test_check_features_accepts_orthonormal():
    v_e, v_d = random_features(6, 0)
    a, b = check_features(list(v_e), list(v_d), 6)
    assert a.dtype == np.float64 and b.dtype == np.float64
    np.testing.assert_array_equal(a, v_e)


@pytest.mark.parametrize(
    "v_e, v_d, field",
    [
        (np.array([1.0, 0, 0, 0]), np.array([0, 1.0, 0]), "v_d"),  # wrong shape
        (np.array([1.0, 0, 0, 0, 0]), np.array([0, 1.0, 0, 0]), "v_e"),
        (np.array([2.0, 0, 0, 0]), np.array([0, 1.0, 0, 0]), "v_e"),  # not unit
        (np.array([1.0, 0, 0, 0]), np.array([0, 0.5, 0, 0]), "v_d"),
        (np.array([1.0, 0, 0, 0]), np.array([np.sqrt(0.5), np.sqrt(0.5), 0, 0]), "v_d"),  # not orthogonal
        (np.array([1.0, 0, 0, 0]), None, "v_e"),  # only one given
        (None, np.array([0, 1.0, 0, 0]), "v_e"),
    ],
)
def test_bad_features_raise_naming_them(v_e, v_d, field):
    with pytest.raises(ConfigError) as info:
        sample(DataConfig(d=4), 5, 0, v_e=v_e, v_d=v_d)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize("n", [0, -3, 2.0, True, "10", None])
def test_bad_n_raises(n):
    with pytest.raises(ConfigError) as info:
        sample(DataConfig(d=4), n, 0)
    assert info.value.field == "n"
