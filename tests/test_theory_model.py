"""theory/model.py: the cubic two-layer CNN, its logistic loss with multiplicities, and the gradient."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.model import (
    check_multiplicities,
    feature_alignment,
    feature_output,
    gradient,
    init_weights,
    loss,
    loss_and_gradient,
    outputs,
    per_example_loss,
)
from theory.plumbing.config import ConfigError

FAST = settings(deadline=None, max_examples=40)


@st.composite
def problems(draw, integer_multiplicities: bool = False):
    """A random small problem: W (J, d), X (n, P, d), y in {-1, +1}^n, multiplicities m (or None).

    Multiplicities include zeros and (unless ``integer_multiplicities``) non-integers; at least one is
    positive.  W is scaled so that the outputs are O(1) .. O(10): the logistic loss is neither linear
    nor saturated, so the gradient is a real test of every factor.
    """
    d = draw(st.integers(2, 7))
    P = draw(st.integers(3, 5))
    J = draw(st.integers(1, 4))
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.floats(0.2, 1.0))
    W = rng.standard_normal((J, d)) * scale / np.sqrt(d)
    X = rng.standard_normal((n, P, d))
    y = rng.choice(np.array([-1.0, 1.0]), size=n)
    kind = draw(st.sampled_from(["none", "ones", "random"]))
    if kind == "none":
        m = None
    elif kind == "ones":
        m = np.ones(n)
    else:
        values = [0, 1, 2, 3] if integer_multiplicities else [0.0, 0.5, 1.0, 2.0, 3.7]
        m = np.array(draw(st.lists(st.sampled_from(values), min_size=n, max_size=n)), dtype=np.float64)
        if m.sum() == 0:
            m[draw(st.integers(0, n - 1))] = draw(st.sampled_from([1.0, 2.0] if integer_multiplicities else [0.5, 2.0]))
    return W, X, y, m


def _finite_difference(W, X, y, m, h=1e-5):
    G = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += h
        Wm[idx] -= h
        G[idx] = (loss(Wp, X, y, m) - loss(Wm, X, y, m)) / (2 * h)
    return G


@FAST
@given(problems())
def test_gradient_matches_central_finite_differences(problem):
    W, X, y, m = problem
    value, G = loss_and_gradient(W, X, y, m)
    G_fd = _finite_difference(W, X, y, m)
    scale = np.linalg.norm(G)
    # The floor only matters for an example that the network already fits to ~1e-9 loss (saturated).
    assert np.linalg.norm(G - G_fd) <= 1e-6 * scale + 1e-10, (np.linalg.norm(G - G_fd), scale)
    assert value == pytest.approx(loss(W, X, y, m), rel=1e-14, abs=0)
    np.testing.assert_array_equal(gradient(W, X, y, m), G)


def test_gradient_check_is_sensitive():
    """The finite-difference comparison catches a gradient that is off by a small factor."""
    rng = np.random.default_rng(3)
    W = rng.standard_normal((3, 4)) * 0.4
    X = rng.standard_normal((5, 3, 4))
    y = rng.choice([-1.0, 1.0], size=5)
    G = gradient(W, X, y)
    G_fd = _finite_difference(W, X, y, None)
    assert np.linalg.norm(G - G_fd) <= 1e-6 * np.linalg.norm(G)
    assert np.linalg.norm(1.001 * G - G_fd) > 1e-6 * np.linalg.norm(G)


@FAST
@given(problems())
def test_negating_inputs_and_labels_together_leaves_loss_and_gradient_unchanged(problem):
    """sigma(z) = z^3 is odd, so f(-x) = -f(x) and y f is unchanged by (X, y) -> (-X, -y)."""
    W, X, y, m = problem
    # (equal up to rounding: BLAS may sum the products of -X in a different order)
    terms = float(np.sum(np.abs(X @ W.T) ** 3))
    np.testing.assert_allclose(outputs(W, -X), -outputs(W, X), rtol=1e-12, atol=1e-14 * terms)
    v1, G1 = loss_and_gradient(W, X, y, m)
    v2, G2 = loss_and_gradient(W, -X, -y, m)
    assert v2 == pytest.approx(v1, rel=1e-12, abs=1e-300)
    np.testing.assert_allclose(G2, G1, rtol=1e-12, atol=1e-12 * np.abs(G1).max())


@FAST
@given(problems())
def test_flipping_labels_alone_changes_loss_by_the_mean_margin(problem):
    """softplus(-z) - softplus(z) = -z, so L(y) - L(-y) = -sum m y f / sum m (non-zero in general)."""
    W, X, y, m = problem
    mm = np.ones(len(y)) if m is None else m
    f = outputs(W, X)
    expected = -float(mm @ (y * f)) / mm.sum()
    diff = loss(W, X, y, m) - loss(W, X, -y, m)
    assert diff == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if abs(expected) > 1e-6:
        assert loss(W, X, y, m) != loss(W, X, -y, m)


@FAST
@given(problems(integer_multiplicities=True))
def test_integer_multiplicity_equals_copies(problem):
    """Multiplicity k on an example is k copies of it (0: dropped), for the loss and the gradient."""
    W, X, y, m = problem
    if m is None:
        m = np.ones(len(y))
    reps = m.astype(np.int64)
    Xr, yr = np.repeat(X, reps, axis=0), np.repeat(y, reps)
    v1, G1 = loss_and_gradient(W, X, y, m)
    v2, G2 = loss_and_gradient(W, Xr, yr)
    assert v1 == pytest.approx(v2, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(G1, G2, rtol=1e-12, atol=1e-15 * max(1.0, np.abs(G2).max()))


@FAST
@given(problems(), st.floats(0.01, 100.0))
def test_multiplicities_are_scale_invariant(problem, c):
    W, X, y, m = problem
    if m is None:
        m = np.ones(len(y))
    v1, G1 = loss_and_gradient(W, X, y, m)
    v2, G2 = loss_and_gradient(W, X, y, c * m)
    assert v2 == pytest.approx(v1, rel=1e-12)
    np.testing.assert_allclose(G2, G1, rtol=1e-10, atol=1e-14 * max(1.0, np.abs(G1).max()))


def _naive(W, X, y, m):
    n, P, d = X.shape
    J = W.shape[0]
    f = np.zeros(n)
    for i in range(n):
        for j in range(J):
            for p in range(P):
                f[i] += sum(W[j, k] * X[i, p, k] for k in range(d)) ** 3
    ell = np.log1p(np.exp(-y * f))
    L = float(np.sum(m * ell) / np.sum(m))
    G = np.zeros_like(W)
    for i in range(n):
        dldf = -y[i] / (1.0 + np.exp(y[i] * f[i])) * m[i] / np.sum(m)
        for j in range(J):
            for p in range(P):
                z = sum(W[j, k] * X[i, p, k] for k in range(d))
                G[j] += dldf * 3.0 * z * z * X[i, p]
    return f, ell, L, G


@settings(deadline=None, max_examples=15)
@given(problems())
def test_matches_naive_triple_loop(problem):
    W, X, y, m = problem
    mm = np.ones(len(y)) if m is None else m
    f, ell, L, G = _naive(W, X, y, mm)
    np.testing.assert_allclose(outputs(W, X), f, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(per_example_loss(W, X, y), ell, rtol=1e-10, atol=1e-14)
    assert loss(W, X, y, m) == pytest.approx(L, rel=1e-10)
    np.testing.assert_allclose(gradient(W, X, y, m), G, rtol=1e-9, atol=1e-14)


def test_hand_example():
    """One neuron, one example: f = sum_p <w, x_p>^3 by hand."""
    W = np.array([[1.0, 2.0]])
    X = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # <w, x_p> = 1, 2, 3
    assert outputs(W, X)[0] == 1 + 8 + 27
    y = np.array([-1.0])
    assert loss(W, X, y) == pytest.approx(np.log1p(np.exp(36.0)), rel=1e-14)
    # dL/dw = -y s(-y f) sum_p 3 z_p^2 x_p with s(36) ~ 1
    s = 1.0 / (1.0 + np.exp(-36.0))
    expected = s * (3 * 1 * np.array([1.0, 0.0]) + 3 * 4 * np.array([0.0, 1.0]) + 3 * 9 * np.array([1.0, 1.0]))
    np.testing.assert_allclose(gradient(W, X, y)[0], expected, rtol=1e-14)


@FAST
@given(problems(), st.floats(1e2, 1e3))
def test_large_outputs_are_stable(problem, blowup):
    """Outputs of order 1e6 .. 1e12: no overflow, loss ~ mean relu(-y f), gradient finite."""
    W, X, y, m = problem
    W = W * blowup
    mm = np.ones(len(y)) if m is None else m
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        f = outputs(W, X)
        ell = per_example_loss(W, X, y)
        value, G = loss_and_gradient(W, X, y, m)
    assert np.all(np.isfinite(ell)) and np.isfinite(value) and np.all(np.isfinite(G))
    assert np.all(ell >= 0)
    np.testing.assert_allclose(ell, np.maximum(-y * f, 0.0) + np.log1p(np.exp(-np.abs(f))), rtol=1e-12, atol=1e-300)
    relu = float(mm @ np.maximum(-y * f, 0.0) / mm.sum())
    assert value == pytest.approx(relu, rel=1e-9, abs=np.log(2) + 1e-12)


def test_extreme_margins():
    W = np.array([[1.0]])
    X = np.array([[[1e3], [0.0], [0.0]], [[-1e3], [0.0], [0.0]]])  # f = +-1e9
    y = np.array([1.0, 1.0])
    ell = per_example_loss(W, X, y)
    assert ell[0] == 0.0 or ell[0] < 1e-300
    assert ell[1] == pytest.approx(1e9, rel=1e-15)
    value, G = loss_and_gradient(W, X, y)
    assert np.isfinite(value) and np.all(np.isfinite(G))


def test_init_weights():
    W = init_weights(400, 50, 0.02, 5)
    assert W.shape == (400, 50) and W.dtype == np.float64
    np.testing.assert_array_equal(W, init_weights(400, 50, 0.02, 5))
    np.testing.assert_array_equal(W, init_weights(400, 50, 0.02, np.random.default_rng(5)))
    assert not np.array_equal(W, init_weights(400, 50, 0.02, 6))
    # 20000 draws: the sample std is within 5 sigma of sigma_0 (relative sd of s is 1/sqrt(2N)).
    assert abs(W.std() / 0.02 - 1.0) < 5 / np.sqrt(2 * W.size)
    assert abs(W.mean()) < 5 * 0.02 / np.sqrt(W.size)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(J=0, d=3, sigma_0=0.1), "J"),
        (dict(J=2.0, d=3, sigma_0=0.1), "J"),
        (dict(J=2, d=0, sigma_0=0.1), "d"),
        (dict(J=2, d=3, sigma_0=0.0), "sigma_0"),
        (dict(J=2, d=3, sigma_0=float("nan")), "sigma_0"),
    ],
)
def test_init_weights_rejects(kwargs, field):
    with pytest.raises(ConfigError) as info:
        init_weights(seed=0, **kwargs)
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(
    "m", [np.array([1.0, -1.0, 1.0]), np.array([1.0, np.nan, 1.0]), np.array([1.0, np.inf, 1.0]), np.zeros(3), np.ones(2), np.ones((3, 1))]
)
def test_bad_multiplicities_raise(m):
    with pytest.raises(ConfigError) as info:
        check_multiplicities(m, 3)
    assert info.value.field == "multiplicities"
    W, X, y = np.ones((1, 3)), np.ones((3, 3, 3)), np.ones(3)
    with pytest.raises(ValueError, match="multiplicities"):
        loss(W, X, y, m)


def test_feature_alignment_and_output():
    v = np.array([1.0, 0.0, 0.0])
    W = np.array([[0.5, 1.0, 0.0], [-2.0, 0.0, 3.0], [0.25, 0.0, 0.0]])
    assert feature_alignment(W, v) == 0.5
    assert feature_output(W, v, 2.0) == pytest.approx(1.0 - 64.0 + 0.125)
