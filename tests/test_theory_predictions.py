"""theory/predictions.py: the early-phase recurrence, closed forms, SAM/USAM recurrences — and the
check that the recurrence predicts what full-batch GD on the dense model actually does."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from theory.data import DataConfig, sample
from theory.model import feature_output, init_weights
from theory.plumbing.config import ConfigError
from theory.predictions import (
    closed_form_learning_time,
    coefficient_rate,
    fast_fraction_after_upsampling,
    feature_output_curve,
    learning_time,
    learning_time_ratio,
    recurrence,
    sam_learning_times,
    sam_recurrence,
)
from theory.updates import update

FAST = settings(deadline=None, max_examples=30)

a0s = st.lists(st.floats(-0.05, 0.05), min_size=1, max_size=8).map(np.array)
positive_a0s = st.lists(st.floats(1e-3, 0.05), min_size=1, max_size=8).map(np.array)
lrs = st.floats(0.05, 2.0)
qs = st.floats(0.05, 1.0)
betas = st.floats(0.2, 2.0)


@FAST
@given(a0s, lrs, qs, betas, st.integers(0, 60))
def test_recurrence_matches_hand_iteration(a0, lr, q, beta, T):
    traj = recurrence(a0, lr, q, beta, T)
    assert traj.shape == (T + 1, len(a0))
    assert coefficient_rate(q, beta) * lr == pytest.approx(lr * 1.5 * q * beta**3, rel=1e-15)
    # The iteration with the same c, in plain Python floats: the same IEEE operations, so equal.  (A c
    # that differs by one ulp is amplified near the blow-up, so the formula is checked separately above.)
    c = lr * coefficient_rate(q, beta)
    for j, a in enumerate(a0):
        a = float(a)
        for t in range(T + 1):
            if a > 1e8:
                assert traj[t, j] == math.inf
                break
            assert traj[t, j] == a
            a = a + c * a * a


def test_recurrence_blows_up_to_inf_and_stays():
    traj = recurrence(np.array([0.5, 0.01]), 1.0, 1.0, 1.0, 20)
    assert np.isinf(traj[-1, 0]) and np.all(np.isinf(traj[np.argmax(np.isinf(traj[:, 0])) :, 0]))
    assert np.all(np.diff(traj[:, 1]) > 0)
    assert not np.isnan(traj).any()


@FAST
@given(a0s, lrs, qs, betas, st.floats(0.1, 5.0))
def test_learning_time_is_the_first_crossing_of_the_recurrence(a0, lr, q, beta, theta):
    T = learning_time(a0, lr, q, beta, theta=theta, max_iterations=3000)
    F = feature_output_curve(recurrence(a0, lr, q, beta, 3000), beta)
    hits = np.flatnonzero(F >= theta)
    if T is None:
        assert hits.size == 0
    else:
        assert T == hits[0]
    if np.all(a0 <= 0):
        assert T is None


@FAST
@given(
    st.lists(st.floats(0.01, 0.05), min_size=1, max_size=8).map(np.array),
    st.floats(0.2, 2.0),
    st.floats(0.3, 1.0),
    st.floats(0.5, 2.0),
    st.floats(1.01, 3.0),
    st.sampled_from(["lr", "q", "beta"]),
)
def test_learning_time_is_monotone(a0, lr, q, beta, factor, which):
    """A larger learning rate, feature fraction or feature strength learns the feature no later
    (every a_j(t) is pointwise larger with a larger rate, and F = beta^3 sum_j a_j^3)."""
    base = dict(lr=lr, q=q, beta=beta)
    bigger = dict(base)
    bigger[which] = base[which] * factor
    if which == "q":
        bigger["q"] = min(1.0, bigger["q"])
    T1 = learning_time(a0, theta=1.0, max_iterations=20_000, **base)
    T2 = learning_time(a0, theta=1.0, max_iterations=20_000, **bigger)
    assert T1 is not None and T2 is not None
    assert T2 <= T1


def test_learning_time_monotone_strictly_on_a_clear_case():
    a0 = np.array([0.01, 0.005, -0.01])
    assert learning_time(a0, 1.0, 0.9, 1.0) > learning_time(a0, 2.0, 0.9, 1.0)
    assert learning_time(a0, 1.0, 0.5, 1.0) > learning_time(a0, 1.0, 0.9, 1.0)
    assert learning_time(a0, 1.0, 0.9, 0.5) > learning_time(a0, 1.0, 0.9, 1.0)


@settings(deadline=None, max_examples=25)
@given(st.floats(1e-4, 2e-3), lrs, qs, betas, st.floats(0.2, 3.0))
def test_closed_form_single_neuron(x, lr, q, beta, theta):
    """One neuron, lr c a0 = x small.  The discrete recurrence decreases 1/a by c/(1 + c a) <= c per
    step, so it needs at least the continuous time; it lags by about log(a_theta/a0) steps (the sum of
    c a_t), i.e. a few percent at most here."""
    c = lr * coefficient_rate(q, beta)
    a0 = x / c
    a_theta = theta ** (1 / 3) / beta
    assume(a0 < a_theta / 4)
    T = learning_time(np.array([a0]), lr, q, beta, theta=theta)
    Tc = closed_form_learning_time(a0, lr, q, beta, theta=theta)
    assert Tc == pytest.approx(1 / (c * a0) - 1 / (c * a_theta), rel=1e-12)
    assert T >= math.floor(Tc)
    assert T - Tc <= math.log(a_theta / a0) + 2
    assert abs(T - Tc) <= 0.05 * T


@settings(deadline=None, max_examples=25)
@given(st.integers(5, 40), st.floats(0.002, 0.02), st.floats(0.2, 1.0), st.floats(0.3, 1.0), st.integers(0, 2**32 - 1))
def test_closed_form_close_to_recurrence_for_gaussian_init(J, sigma_0, lr, q, seed):
    """With w_j ~ N(0, sigma_0^2 I) and beta = 1 the leading neuron decides: the closed form on
    a0_max is within 5% of the summed-output recurrence when lr c a0_max <= 0.01."""
    a0 = np.random.default_rng(seed).standard_normal(J) * sigma_0
    c = lr * coefficient_rate(q, 1.0)
    assume(a0.max() > 0 and c * a0.max() <= 0.01)
    T = learning_time(a0, lr, q, 1.0)
    Tc = closed_form_learning_time(a0.max(), lr, q, 1.0)
    assert abs(T - Tc) <= 0.05 * T


def test_closed_form_infinite_without_a_positive_neuron():
    assert closed_form_learning_time(0.0, 1.0, 1.0, 1.0) == math.inf
    assert closed_form_learning_time(-0.1, 1.0, 1.0, 1.0) == math.inf
    assert learning_time(np.array([-0.1, 0.0]), 1.0, 1.0, 1.0, max_iterations=1000) is None


@given(st.floats(0.05, 1.0), st.floats(0.5, 3.0), st.floats(0.05, 0.95), st.floats(1e-3, 0.1), lrs)
@settings(deadline=None, max_examples=30)
def test_learning_time_ratio_is_the_ratio_of_rates(alpha, beta_e, frac, a0, lr):
    """T_d / T_e = c_e / c_d = alpha beta_e^3 / beta_d^3 for the leading 1/(lr c a0) terms."""
    beta_d = frac * beta_e
    ratio = learning_time_ratio(alpha, beta_e, beta_d)
    assert ratio == pytest.approx(alpha * beta_e**3 / beta_d**3, rel=1e-14)
    lead_e = 1 / (lr * coefficient_rate(alpha, beta_e) * a0)
    lead_d = 1 / (lr * coefficient_rate(1.0, beta_d) * a0)
    assert lead_d / lead_e == pytest.approx(ratio, rel=1e-12)


@FAST
@given(a0s, a0s, lrs, qs, betas, st.floats(0.05, 0.99), st.booleans(), st.integers(0, 200))
def test_sam_recurrence_with_rho_zero_is_the_gd_recurrence(a_e, a_d, lr, q, beta_e, frac, normalized, T):
    beta_d = beta_e * frac
    te, td = sam_recurrence(a_e, a_d, lr=lr, rho=0.0, q_e=q, beta_e=beta_e, beta_d=beta_d, iterations=T,
                            normalized=normalized)
    re, rd = recurrence(a_e, lr, q, beta_e, T), recurrence(a_d, lr, 1.0, beta_d, T)
    for got, want in ((te, re), (td, rd)):
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        fin = np.isfinite(want)
        np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=0)
    Te, Td = sam_learning_times(a_e, a_d, lr=lr, rho=0.0, q_e=q, beta_e=beta_e, beta_d=beta_d, iterations=T,
                                normalized=normalized)
    for got, a0, qq, beta in ((Te, a_e, q, beta_e), (Td, a_d, 1.0, beta_d)):
        want = learning_time(a0, lr, qq, beta, max_iterations=T)
        assert got == want


def test_sam_recurrence_never_produces_nan_after_blow_up():
    """Regression: a coefficient that reached inf used to become NaN (0 * inf, inf - inf)."""
    a = np.array([0.5, 0.1, -0.2])
    for rho in (0.0, 0.01):
        for normalized in (True, False):
            te, td = sam_recurrence(a, a, lr=1.0, rho=rho, q_e=1.0, beta_e=1.0, beta_d=0.5, iterations=30,
                                    normalized=normalized)
            assert np.isinf(te[-1, 0]) and not np.isnan(te).any() and not np.isnan(td).any()


# The default regime of SPEC section 2 (d = 200, J = 20, sigma_0 = 0.01, eta = 0.5, alpha = 0.9, beta_d = 0.4).
DEFAULT = dict(d=200, J=20, sigma_0=0.01, lr=0.5, alpha=0.9, beta_e=1.0, beta_d=0.4)


@settings(deadline=None, max_examples=15)
@given(st.integers(0, 2**32 - 1), st.floats(0.005, 0.03))
def test_sam_recurrence_learns_fast_feature_later_than_gd(seed, rho):
    W0 = init_weights(DEFAULT["J"], DEFAULT["d"], DEFAULT["sigma_0"], seed)
    a_e, a_d = W0[:, 0], W0[:, 1]
    assume(a_e.max() > 0)
    kw = dict(lr=DEFAULT["lr"], q_e=DEFAULT["alpha"], beta_e=1.0, beta_d=DEFAULT["beta_d"], iterations=1500)
    T_gd = learning_time(a_e, DEFAULT["lr"], DEFAULT["alpha"], 1.0)
    T_sam, _ = sam_learning_times(a_e, a_d, rho=rho, **kw)
    T_usam, _ = sam_learning_times(a_e, a_d, rho=rho, normalized=False, **kw)
    assert T_gd is not None
    assert T_sam is None or T_sam > T_gd
    assert T_usam is not None and T_usam >= T_gd
    # the SAM shift is about -rho on the leading neuron: much less than rho delays little, rho >~ a0 a lot
    if rho >= a_e.max():
        assert T_sam is None or T_sam > 1.5 * T_gd


@FAST
@given(st.floats(0.01, 1.0), st.floats(1.0, 10.0))
def test_fast_fraction_after_upsampling(alpha, k):
    q = fast_fraction_after_upsampling(alpha, k)
    assert q == pytest.approx(alpha / (alpha + k * (1 - alpha)), rel=1e-15)
    assert 0 < q <= alpha
    assert fast_fraction_after_upsampling(alpha, 1.0) == pytest.approx(alpha, rel=1e-15)
    assert fast_fraction_after_upsampling(1.0, k) == 1.0
    if alpha <= 0.99 and k >= 1.01:
        assert q < alpha


@settings(deadline=None, max_examples=20)
@given(st.floats(0.3, 0.99), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_fast_fraction_is_the_weighted_fraction_of_upsampled_data(alpha, k, seed):
    """q_e is the multiplicity-weighted share of fast examples when the slow-only ones count k times."""
    data = sample(DataConfig(d=4, alpha=alpha), 200, seed)
    emp = data.has_fast.mean()
    assume(0 < emp < 1)
    m = np.where(data.has_fast, 1.0, float(k))
    weighted = float(m @ data.has_fast) / m.sum()
    assert weighted == pytest.approx(fast_fraction_after_upsampling(float(emp), k), rel=1e-12)


def test_hand_values():
    assert fast_fraction_after_upsampling(0.9, 2) == pytest.approx(0.9 / 1.1)
    assert coefficient_rate(1.0, 1.0) == 1.5
    assert learning_time_ratio(0.9, 1.0, 0.5) == pytest.approx(7.2)
    # a0 = 0.5, c = 1.5: 0.5 -> 0.875 -> 2.0234 (>= 1): learned at t = 2
    assert learning_time(np.array([0.5]), 1.0, 1.0, 1.0) == 2


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: learning_time(np.array([0.1]), 0.0, 0.5, 1.0), "lr"),
        (lambda: learning_time(np.array([0.1]), 1.0, 1.5, 1.0), "q"),
        (lambda: learning_time(np.array([0.1]), 1.0, 0.0, 1.0), "q"),
        (lambda: learning_time(np.array([0.1]), 1.0, 0.5, -1.0), "beta"),
        (lambda: learning_time(np.array([0.1]), 1.0, 0.5, 1.0, theta=0.0), "theta"),
        (lambda: recurrence(np.array([0.1]), 1.0, 0.5, 1.0, -1), "iterations"),
        (lambda: fast_fraction_after_upsampling(0.9, 0.5), "k"),
        (lambda: fast_fraction_after_upsampling(0.0, 2), "alpha"),
        (lambda: sam_recurrence(np.array([0.1]), np.array([0.1]), lr=1.0, rho=-1.0, q_e=0.5, beta_e=1.0,
                                beta_d=0.5, iterations=3), "rho"),
    ],
)
def test_invalid_arguments_raise(call, field):
    with pytest.raises(ConfigError) as info:
        call()
    assert info.value.field == field


# ------------------------------------------------------------------------------------------------
# The key check: the recurrence predicts the dense model's GD learning time.


@st.composite
def theorem_regime(draw):
    """A random configuration of the early-phase regime, with data and initialization drawn by theory/.

    Conditions (those under which the recurrence is exact up to the logistic factor and that factor
    stays ~1/2 until the fast feature is learned):
      * noise small relative to the features: sigma_p in [0.02, 0.08], sigma_0 in [0.005, 0.02], so
        noise outputs J P (sigma_0 sigma_p sqrt(d))^3 are negligible;
      * the fast feature is learned first: beta_e = 1 and beta_d <= 0.6, so beta_d^3 <= 0.22 < alpha
        beta_e^3 (alpha >= 0.6), AND, for this initialization, the slow feature's own recurrence
        (q_d = 1, a_0 = W0 v_d) does not reach theta before 1.5 T_e.  The parameter condition alone
        is not enough: T_d / T_e = (alpha beta_e^3 / beta_d^3) (a0_e / a0_d), and a draw with a small
        leading fast coefficient and a large slow one (seen: beta_d = 0.5, lr = 1, alpha = 1,
        sigma_0 = 0.02, predicted T_e = 219) learns the slow feature first.  Then y f grows on every
        example, the logistic factor s(-y f) collapses from 1/2 towards 0 and the fast feature
        stalls (not learned within 1.5 T_e): outside the theorem's regime, see
        ``test_slow_feature_learned_first_breaks_the_prediction``;
      * the predicted time is in 30..400 iterations (lr c a0 small: the early phase is long).
    """
    d = draw(st.integers(50, 200))
    P = draw(st.sampled_from([3, 4]))
    n = draw(st.integers(100, 300))
    J = draw(st.integers(5, 20))
    sigma_0 = draw(st.floats(0.005, 0.02))
    sigma_p = draw(st.floats(0.02, 0.08))
    alpha = draw(st.floats(0.6, 1.0))
    beta_d = draw(st.floats(0.1, 0.6))
    lr = draw(st.floats(0.2, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    cfg = DataConfig(d=d, P=P, alpha=alpha, beta_e=1.0, beta_d=beta_d, sigma_p=sigma_p)
    data = sample(cfg, n, seed)
    W0 = init_weights(J, d, sigma_0, seed + 1)
    q = float(data.has_fast.mean())
    assume(q > 0)
    T = learning_time(W0 @ data.v_e, lr, q, 1.0, max_iterations=1000)
    assume(T is not None and 30 <= T <= 400)
    assume(learning_time(W0 @ data.v_d, lr, 1.0, beta_d, max_iterations=int(1.5 * T)) is None)
    return data, W0, lr, q, T


@settings(deadline=None, max_examples=30)
@given(theorem_regime())
def test_gd_learning_time_of_the_fast_feature_matches_the_recurrence(case):
    """The simulated GD learning time of the fast feature is within 10% of the recurrence's prediction
    (theta = 1: sum_j (beta_e <w_j, v_e>)^3 >= 1) across random configurations of the theorem's regime
    (see ``theorem_regime`` for the conditions)."""
    data, W, lr, q, T_pred = case
    t = 0
    limit = int(1.5 * T_pred) + 5
    while feature_output(W, data.v_e, 1.0) < 1.0 and t < limit:
        W = update(W, data.X, data.y, rule="gd", lr=lr)
        t += 1
    assert feature_output(W, data.v_e, 1.0) >= 1.0, f"not learned within {limit} iterations (predicted {T_pred})"
    assert abs(t - T_pred) <= 0.10 * T_pred, (t, T_pred)


def test_sam_simulation_follows_sam_recurrence_on_default_regime():
    """On the default regime, full-batch SAM learns the fast feature later than GD, at the time the SAM
    recurrence predicts (within 10%), and USAM tracks GD (the approximations of the module docstring)."""
    d, J, lr, rho = 100, DEFAULT["J"], DEFAULT["lr"], 0.015
    data = sample(DataConfig(d=d, alpha=0.9, beta_d=0.4, sigma_p=0.06), 100, 0)
    W0 = init_weights(J, d, DEFAULT["sigma_0"], 100)
    q = float(data.has_fast.mean())
    a_e, a_d = W0 @ data.v_e, W0 @ data.v_d
    T_gd = learning_time(a_e, lr, q, 1.0)
    T_sam, _ = sam_learning_times(a_e, a_d, lr=lr, rho=rho, q_e=q, beta_e=1.0, beta_d=0.4, iterations=2000)
    T_usam, _ = sam_learning_times(a_e, a_d, lr=lr, rho=rho, q_e=q, beta_e=1.0, beta_d=0.4, iterations=2000,
                                   normalized=False)
    assert T_sam > 1.5 * T_gd

    def simulate(rule: str, limit: int) -> int:
        W, t = W0.copy(), 0
        while feature_output(W, data.v_e, 1.0) < 1.0 and t < limit:
            W = update(W, data.X, data.y, rule=rule, lr=lr, rho=rho)
            t += 1
        return t

    for rule, pred in (("gd", T_gd), ("sam", T_sam), ("usam", T_usam)):
        sim = simulate(rule, int(1.5 * pred))
        assert abs(sim - pred) <= 0.10 * pred, (rule, sim, pred)


def test_slow_feature_learned_first_breaks_the_prediction():
    """Outside the regime (the slow feature's recurrence reaches theta first), the logistic factor
    collapses once the slow feature is learned and GD learns the fast feature much later than the
    recurrence predicts — the reason for the regime condition of ``theorem_regime``."""
    data = sample(DataConfig(d=100, P=3, alpha=0.6, beta_e=1.0, beta_d=0.95, sigma_p=0.05), 150, 3)
    W = init_weights(15, 100, 0.015, 4)
    lr = 0.8
    q = float(data.has_fast.mean())
    T_e = learning_time(W @ data.v_e, lr, q, 1.0)
    T_d = learning_time(W @ data.v_d, lr, 1.0, 0.95)
    assert T_d < T_e
    t = 0
    while feature_output(W, data.v_e, 1.0) < 1.0 and t < 2 * T_e:
        W = update(W, data.X, data.y, rule="gd", lr=lr)
        t += 1
    assert t > 1.3 * T_e, (t, T_e, T_d)
