"""theory/updates.py: GD, SGD, SAM and USAM steps, the minibatch schedule, the reference loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.data import DataConfig, sample
from theory.model import gradient, init_weights
from theory.plumbing.config import ConfigError
from theory.updates import batch_counts, minibatch_schedule, perturbation, train, update

FAST = settings(deadline=None, max_examples=30)


@st.composite
def problems(draw, integer_multiplicities: bool = False):
    """Data from the paper's distribution and an initialization large enough to give O(1) outputs."""
    d = draw(st.integers(3, 12))
    P = draw(st.integers(3, 4))
    n = draw(st.integers(2, 12))
    J = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    cfg = DataConfig(d=d, P=P, alpha=draw(st.floats(0.1, 1.0)), sigma_p=draw(st.floats(0.05, 1.0)))
    data = sample(cfg, n, seed)
    W = init_weights(J, d, draw(st.floats(0.05, 1.0)), seed + 1)
    kind = draw(st.sampled_from(["none", "random"]))
    m = None
    if kind == "random":
        values = [0, 1, 2, 3] if integer_multiplicities else [0.0, 0.5, 1.0, 2.0, 2.5]
        m = np.array(draw(st.lists(st.sampled_from(values), min_size=n, max_size=n)), dtype=np.float64)
        if m.sum() == 0:
            m[0] = 1.0
    return W, data.X, data.y, m


@FAST
@given(problems(), st.floats(0.01, 2.0))
def test_sam_and_usam_with_rho_zero_are_gd_exactly(problem, lr):
    W, X, y, m = problem
    gd = update(W, X, y, m, rule="gd", lr=lr)
    np.testing.assert_array_equal(update(W, X, y, m, rule="sam", lr=lr, rho=0.0), gd)
    np.testing.assert_array_equal(update(W, X, y, m, rule="usam", lr=lr, rho=0.0), gd)
    np.testing.assert_array_equal(update(W, X, y, m, rule="sgd", lr=lr), gd)
    np.testing.assert_array_equal(gd, W - lr * gradient(W, X, y, m))


@FAST
@given(problems(), st.floats(1e-4, 1.0), st.floats(0.01, 2.0))
def test_sam_perturbation_and_step(problem, rho, lr):
    """SAM: eps = rho g/||g||_F (norm rho, direction g); USAM: eps = rho g; step uses grad at W + eps."""
    W, X, y, m = problem
    g = gradient(W, X, y, m)
    eps = perturbation(W, X, y, m, rho)
    gnorm = np.linalg.norm(g)
    if gnorm > 0:
        assert np.linalg.norm(eps) == pytest.approx(rho, rel=1e-12)
        # parallel to g, same orientation: <eps, g> = ||eps|| ||g||
        assert float(np.sum(eps * g)) == pytest.approx(rho * gnorm, rel=1e-10)
    np.testing.assert_array_equal(perturbation(W, X, y, m, rho, normalized=False), rho * g)
    np.testing.assert_array_equal(update(W, X, y, m, rule="sam", lr=lr, rho=rho), W - lr * gradient(W + eps, X, y, m))
    np.testing.assert_array_equal(
        update(W, X, y, m, rule="usam", lr=lr, rho=rho), W - lr * gradient(W + rho * g, X, y, m)
    )
    if gnorm > 0 and rho > 1e-3:
        assert not np.array_equal(update(W, X, y, m, rule="sam", lr=lr, rho=rho), update(W, X, y, m, rule="gd", lr=lr))


def test_sam_with_zero_gradient_does_not_move():
    """W = 0 is a critical point (the cube has zero derivative at 0): eps = 0, no NaN."""
    data = sample(DataConfig(d=5), 8, 0)
    W = np.zeros((3, 5))
    eps = perturbation(W, data.X, data.y, None, 0.1)
    np.testing.assert_array_equal(eps, np.zeros_like(W))
    np.testing.assert_array_equal(update(W, data.X, data.y, rule="sam", lr=1.0, rho=0.1), W)


@st.composite
def schedules(draw):
    n = draw(st.integers(1, 12))
    m = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.int64)
    if m.sum() == 0:
        m[draw(st.integers(0, n - 1))] = 1
    batch_size = draw(st.integers(1, int(m.sum())))
    iterations = draw(st.integers(0, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    as_float = draw(st.booleans())
    return (m.astype(np.float64) if as_float else m), batch_size, iterations, seed


@settings(deadline=None, max_examples=60)
@given(schedules())
def test_minibatch_schedule_is_epochs_of_permutations(args):
    m, batch_size, iterations, seed = args
    sched = minibatch_schedule(m, batch_size, iterations, seed)
    assert sched.shape == (iterations, batch_size)
    n = len(m)
    base = np.sort(np.repeat(np.arange(n), np.asarray(m, dtype=np.int64)))
    N = len(base)
    stream = sched.reshape(-1)
    assert stream.size == 0 or (stream.min() >= 0 and stream.max() < n)
    full_epochs = len(stream) // N
    for e in range(full_epochs):  # every complete epoch is a permutation of repeat(arange(n), m)
        np.testing.assert_array_equal(np.sort(stream[e * N : (e + 1) * N]), base)
    rest = stream[full_epochs * N :]  # a started epoch: no example more often than its multiplicity
    assert np.all(np.bincount(rest, minlength=n) <= np.asarray(m))
    for batch in sched:
        counts = batch_counts(batch, n)
        assert counts.dtype == np.float64 and counts.shape == (n,)
        assert counts.sum() == batch_size
        np.testing.assert_array_equal(counts, np.bincount(batch, minlength=n))
    np.testing.assert_array_equal(sched, minibatch_schedule(m, batch_size, iterations, seed))
    np.testing.assert_array_equal(sched, minibatch_schedule(m, batch_size, iterations, np.random.default_rng(seed)))


def test_minibatch_schedule_differs_across_seeds():
    m = np.ones(50, dtype=np.int64)
    assert not np.array_equal(minibatch_schedule(m, 10, 5, 0), minibatch_schedule(m, 10, 5, 1))


@pytest.mark.parametrize(
    "m, batch_size, iterations, field",
    [
        (np.array([1.0, 1.5]), 1, 1, "multiplicities"),
        (np.array([1, -1, 2]), 1, 1, "multiplicities"),
        (np.array([0, 0]), 1, 1, "multiplicities"),
        (np.array([1, 2]), 4, 1, "batch_size"),
        (np.array([1, 2]), 0, 1, "batch_size"),
        (np.array([1, 2]), 1, -1, "iterations"),
    ],
)
def test_minibatch_schedule_rejects(m, batch_size, iterations, field):
    with pytest.raises(ConfigError) as info:
        minibatch_schedule(m, batch_size, iterations, 0)
    assert info.value.field == field


@settings(deadline=None, max_examples=20)
@given(problems(), st.sampled_from(["gd", "sam", "usam"]), st.integers(0, 6), st.floats(0.0, 0.5))
def test_full_batch_train_is_the_loop_of_updates(problem, rule, iterations, rho):
    W0, X, y, m = problem
    lr = 0.1
    seen = []
    W = train(W0, X, y, rule=rule, lr=lr, iterations=iterations, rho=rho, multiplicities=m,
              callback=lambda t, Wt: seen.append((t, Wt.copy())))
    V = W0.copy()
    for t in range(iterations):
        V = update(V, X, y, m, rule=rule, lr=lr, rho=rho)
        assert seen[t][0] == t + 1
        np.testing.assert_array_equal(seen[t][1], V)
    np.testing.assert_array_equal(W, V)
    assert len(seen) == iterations


@settings(deadline=None, max_examples=20)
@given(problems(integer_multiplicities=True), st.sampled_from(["sgd", "sam", "usam"]), st.integers(0, 8), st.data())
def test_minibatch_train_is_the_loop_of_weighted_updates(problem, rule, iterations, data):
    W0, X, y, m = problem
    mm = np.ones(len(y)) if m is None else m
    batch_size = data.draw(st.integers(1, int(mm.sum())))
    seed = data.draw(st.integers(0, 1000))
    lr, rho = 0.1, 0.05
    W = train(W0, X, y, rule=rule, lr=lr, iterations=iterations, rho=rho, multiplicities=m,
              batch_size=batch_size, seed=seed)
    sched = minibatch_schedule(mm, batch_size, iterations, seed)
    V = W0.copy()
    step = "gd" if rule == "sgd" else rule
    for t in range(iterations):
        V = update(V, X, y, batch_counts(sched[t], len(y)), rule=step, lr=lr, rho=rho)
    np.testing.assert_array_equal(W, V)


@settings(deadline=None, max_examples=15)
@given(problems(integer_multiplicities=True), st.integers(1, 5))
def test_sgd_with_the_whole_list_as_batch_is_gd(problem, iterations):
    """A batch of size sum(m) holds every example exactly m_i times: SGD = GD with multiplicities m."""
    W0, X, y, m = problem
    mm = np.ones(len(y)) if m is None else m
    sgd = train(W0, X, y, rule="sgd", lr=0.1, iterations=iterations, multiplicities=m, batch_size=int(mm.sum()))
    gd = train(W0, X, y, rule="gd", lr=0.1, iterations=iterations, multiplicities=m)
    np.testing.assert_allclose(sgd, gd, rtol=1e-13, atol=1e-15)


def test_train_does_not_modify_w0_and_is_deterministic():
    data = sample(DataConfig(d=6), 20, 0)
    W0 = init_weights(3, 6, 0.3, 1)
    keep = W0.copy()
    a = train(W0, data.X, data.y, rule="sgd", lr=0.2, iterations=7, batch_size=4, seed=3)
    b = train(W0, data.X, data.y, rule="sgd", lr=0.2, iterations=7, batch_size=4, seed=3)
    c = train(W0, data.X, data.y, rule="sgd", lr=0.2, iterations=7, batch_size=4, seed=4)
    np.testing.assert_array_equal(W0, keep)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(rule="adam", lr=0.1), "rule"),
        (dict(rule="gd", lr=0.0), "lr"),
        (dict(rule="gd", lr=float("nan")), "lr"),
        (dict(rule="sam", lr=0.1, rho=-0.1), "rho"),
        (dict(rule="sam", lr=0.1, rho=float("inf")), "rho"),
    ],
)
def test_update_rejects(kwargs, field):
    data = sample(DataConfig(d=4), 4, 0)
    with pytest.raises(ConfigError) as info:
        update(np.zeros((2, 4)), data.X, data.y, **kwargs)
    assert info.value.field == field


def test_sgd_train_needs_a_batch_size():
    data = sample(DataConfig(d=4), 4, 0)
    with pytest.raises(ConfigError) as info:
        train(np.zeros((2, 4)), data.X, data.y, rule="sgd", lr=0.1, iterations=1)
    assert info.value.field == "batch_size"
