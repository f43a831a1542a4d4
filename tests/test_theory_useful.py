"""theory/useful.py: USEFUL's split-and-upsample rule and the baseline partitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theory.data import DataConfig, sample
from theory.model import init_weights, outputs, per_example_loss
from theory.plumbing.config import ConfigError
from theory.updates import train
from theory.useful import (
    JTT_UPWEIGHT,
    PARTITIONS,
    SPLIT_ON,
    PartitionOptions,
    build_partition,
    jtt_partition,
    loss_quantile_partition,
    misclassified_partition,
    multiplicities_from_mask,
    random_partition,
    split_features,
    two_means,
    useful_partition,
)

FAST = settings(deadline=None, max_examples=30)


@st.composite
def planted(draw):
    """Per class, two well-separated clusters of outputs; the 'hard' one has the higher losses.

    Returns outputs ((n,) for labels {-1, +1}, or (n, C) for labels 0..C-1), labels, losses, and the
    planted hard mask.  Cluster centres are >= 10 apart, spreads <= 0.1.
    """
    two_d = draw(st.booleans())
    if two_d:
        C = draw(st.integers(2, 4))
        classes = list(range(C))
        dim = C
    else:
        classes = [-1, 1]
        dim = 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    outs, labels, losses, hard = [], [], [], []
    for c in classes:
        n_easy = draw(st.integers(1, 12))
        n_hard = draw(st.integers(1, 12))
        hard_centre = rng.standard_normal(dim) * 3
        direction = rng.standard_normal(dim)
        direction /= np.linalg.norm(direction)
        easy_centre = hard_centre + direction * draw(st.floats(10.0, 50.0))
        spread = draw(st.floats(0.0, 0.1))
        for centre, count, is_hard in ((hard_centre, n_hard, True), (easy_centre, n_easy, False)):
            pts = centre + spread * rng.uniform(-1, 1, size=(count, dim)) / np.sqrt(dim)
            outs.append(pts)
            labels += [c] * count
            # losses: the hard cluster's are all above the easy cluster's
            losses.append(rng.uniform(1.0, 2.0, count) if is_hard else rng.uniform(0.0, 0.9, count))
            hard += [is_hard] * count
    out = np.concatenate(outs)
    if not two_d:
        out = out[:, 0]
    perm = rng.permutation(len(labels))
    return out[perm], np.array(labels)[perm], np.concatenate(losses)[perm], np.array(hard)[perm]


@FAST
@given(planted(), st.integers(1, 4), st.integers(0, 1000))
def test_recovers_planted_clusters_exactly(case, k, seed):
    out, labels, losses, hard = case
    part = useful_partition(out, labels, losses, k=k, seed=seed)
    np.testing.assert_array_equal(part.upsample, hard)
    assert part.method == "useful" and part.k == k
    assert part.multiplicities.dtype == np.int64
    np.testing.assert_array_equal(part.multiplicities, np.where(hard, k, 1))
    assert part.multiplicities.sum() == len(labels) + (k - 1) * hard.sum()
    np.testing.assert_array_equal(part.indices, np.flatnonzero(hard))
    assert len(part.upsampled_index_list()) == part.multiplicities.sum()
    assert [s.label for s in part.classes] == sorted(set(labels.tolist()))
    for s in part.classes:
        assert s.chosen in (0, 1) and s.reason == ""
        assert s.sizes[s.chosen] == int(np.sum(hard & (labels == s.label)))


@st.composite
def arbitrary(draw):
    """Arbitrary outputs (with ties), labels and losses: no planted structure."""
    n = draw(st.integers(1, 40))
    C = draw(st.integers(1, 4))
    labels = np.array(draw(st.lists(st.integers(0, C - 1), min_size=n, max_size=n)))
    two_d = draw(st.booleans())
    values = st.one_of(st.sampled_from([0.0, 1.0, -2.5]), st.floats(-10, 10, allow_nan=False))
    shape = (n, C) if two_d else (n,)
    out = np.array(draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))).reshape(shape)
    losses = np.array(draw(st.lists(st.floats(0, 5), min_size=n, max_size=n)))
    return out, labels, losses


@FAST
@given(arbitrary(), st.integers(1, 3), st.integers(0, 100), st.randoms(use_true_random=False))
def test_invariant_to_permuting_examples(case, k, seed, rnd):
    out, labels, losses = case
    n = len(labels)
    perm = np.array(rnd.sample(range(n), n))
    a = useful_partition(out, labels, losses, k=k, seed=seed)
    b = useful_partition(out[perm], labels[perm], losses[perm], k=k, seed=seed)
    np.testing.assert_array_equal(b.upsample, a.upsample[perm])
    np.testing.assert_array_equal(b.multiplicities, a.multiplicities[perm])
    for sa, sb in zip(a.classes, b.classes):
        assert (sa.label, sa.size, sa.sizes, sa.chosen, sa.reason) == (sb.label, sb.size, sb.sizes, sb.chosen, sb.reason)
        np.testing.assert_allclose(sa.mean_losses, sb.mean_losses, rtol=1e-12)


@FAST
@given(arbitrary(), st.integers(1, 3), st.integers(0, 100))
def test_partition_invariants(case, k, seed):
    """Deterministic per seed; multiplicities in {1, k} summing to n + (k-1)|cluster|; the chosen cluster
    has the higher mean loss (ties: the smaller one) and the diagnostics describe the actual split."""
    out, labels, losses = case
    part = useful_partition(out, labels, losses, k=k, seed=seed)
    again = useful_partition(out, labels, losses, k=k, seed=seed)
    np.testing.assert_array_equal(part.upsample, again.upsample)
    assert repr(part.classes) == repr(again.classes)
    n = len(labels)
    assert set(np.unique(part.multiplicities)) <= {1, k}
    assert part.multiplicities.sum() == n + (k - 1) * part.upsample.sum()
    assert len(part.classes) == len(np.unique(labels))
    pts = out if out.ndim == 2 else out[:, None]
    for s in part.classes:
        in_class = labels == s.label
        chosen = part.upsample & in_class
        assert s.size == in_class.sum()
        if s.chosen == -1:
            assert not chosen.any() and s.reason
            if s.size < 2:
                assert "fewer than 2" in s.reason
            elif np.all(pts[in_class] == pts[in_class][0]):
                assert "identical" in s.reason
            continue
        other = in_class & ~part.upsample
        assert chosen.any() and other.any()
        assert sum(s.sizes) == s.size and s.sizes[s.chosen] == chosen.sum()
        assert s.mean_losses[s.chosen] == pytest.approx(losses[chosen].mean(), rel=1e-12, abs=1e-15)
        assert s.mean_losses[1 - s.chosen] == pytest.approx(losses[other].mean(), rel=1e-12, abs=1e-15)
        assert s.mean_losses[s.chosen] >= s.mean_losses[1 - s.chosen]
        if s.mean_losses[0] == s.mean_losses[1]:
            assert s.sizes[s.chosen] <= s.sizes[1 - s.chosen]
        # a 2-means fixed point: every point is at least as close to its own cluster's mean
        c1, c2 = pts[chosen].mean(axis=0), pts[other].mean(axis=0)
        d1 = np.sum((pts - c1) ** 2, axis=1)
        d2 = np.sum((pts - c2) ** 2, axis=1)
        tol = 1e-9 * (1 + np.sum(c1**2) + np.sum(c2**2))
        assert np.all(d1[chosen] <= d2[chosen] + tol) and np.all(d2[other] <= d1[other] + tol)


def test_two_means_finds_two_groups():
    """Regression: the first two-cluster run was never accepted (inf - 1e-12 * inf is NaN), so every
    class used to come back as 'one cluster' and USEFUL upsampled nothing."""
    pts = np.r_[np.zeros(5), np.full(4, 3.0)][:, None]
    lab = two_means(pts, 0)
    assert len(np.unique(lab)) == 2
    assert len(set(lab[:5])) == 1 and len(set(lab[5:])) == 1 and lab[0] != lab[5]
    np.testing.assert_array_equal(two_means(np.ones((6, 1)), 0), np.zeros(6))


def test_degenerate_classes_upsample_nothing_and_say_why():
    out = np.array([5.0, 1.0, 1.0, 1.0, -3.0, 4.0, -2.0])
    labels = np.array([0, 1, 1, 1, 2, 2, 2])
    losses = np.array([1.0, 0.2, 0.9, 0.5, 2.0, 0.1, 1.9])
    part = useful_partition(out, labels, losses)
    by_label = {s.label: s for s in part.classes}
    assert by_label[0].chosen == -1 and "fewer than 2" in by_label[0].reason
    assert by_label[1].chosen == -1 and "identical" in by_label[1].reason
    assert by_label[2].chosen in (0, 1) and by_label[2].reason == ""
    np.testing.assert_array_equal(part.upsample, [False, False, False, False, True, False, True])
    assert part.multiplicities.sum() == 7 + 2


def test_equal_mean_losses_choose_the_smaller_cluster():
    """(0.5 is exact in binary, so both cluster means are exactly 0.5.)"""
    out = np.array([0.0, 0.1, 0.2, 9.0, 9.1])
    part = useful_partition(out, np.ones(5), np.full(5, 0.5), k=3)
    np.testing.assert_array_equal(part.upsample, [False, False, False, True, True])
    part = useful_partition(-out, np.ones(5), np.full(5, 0.5), k=3)
    np.testing.assert_array_equal(part.upsample, [False, False, False, True, True])


def test_two_dimensional_outputs_identical_rows():
    out = np.tile([[1.0, 2.0]], (4, 1))
    part = useful_partition(out, np.array([3, 3, 3, 3]), np.arange(4.0))
    assert not part.upsample.any() and "identical" in part.classes[0].reason


def test_finds_the_examples_without_the_fast_feature_early_in_training():
    """Claim 2 on a small default-like regime: after 120 GD iterations, 2-means on the outputs of each
    class separates the examples without the fast feature exactly, and they have the higher loss."""
    data = sample(DataConfig(d=100, alpha=0.9, beta_d=0.4, sigma_p=0.06), 100, 0)
    W = train(init_weights(10, 100, 0.01, 7), data.X, data.y, rule="gd", lr=0.5, iterations=120)
    part = useful_partition(outputs(W, data.X), data.y, per_example_loss(W, data.X, data.y), k=2, seed=0)
    np.testing.assert_array_equal(part.upsample, ~data.has_fast)
    assert part.multiplicities.sum() == 100 + (~data.has_fast).sum()


@FAST
@given(st.lists(st.integers(0, 3), min_size=1, max_size=40), st.data(), st.integers(1, 3), st.integers(0, 100))
def test_random_partition_keeps_per_class_counts(labels, data, k, seed):
    labels = np.array(labels)
    like = np.array(data.draw(st.lists(st.booleans(), min_size=len(labels), max_size=len(labels))))
    part = random_partition(labels, like, k=k, seed=seed)
    for c in np.unique(labels):
        assert part.upsample[labels == c].sum() == like[labels == c].sum()
    np.testing.assert_array_equal(part.upsample, random_partition(labels, like, k=k, seed=seed).upsample)
    np.testing.assert_array_equal(part.multiplicities, multiplicities_from_mask(part.upsample, k))
    assert part.method == "random"


def test_random_partition_is_random():
    labels = np.zeros(100, dtype=int)
    like = np.arange(100) < 30
    a = random_partition(labels, like, seed=0).upsample
    b = random_partition(labels, like, seed=1).upsample
    assert a.sum() == b.sum() == 30 and not np.array_equal(a, b)


def test_quantile_partition_hand_example():
    labels = np.array([0, 0, 0, 0, 1, 1])
    losses = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 1.0])
    part = loss_quantile_partition(labels, losses, quantile=0.5, k=3)
    np.testing.assert_array_equal(part.upsample, [False, False, True, True, True, False])
    np.testing.assert_array_equal(part.multiplicities, [1, 1, 3, 3, 3, 1])
    part = loss_quantile_partition(labels, losses, quantile=0.0)
    np.testing.assert_array_equal(part.upsample, [False, True, True, True, True, False])
    assert part.method == "quantile"


def test_misclassified_partition_hand_examples():
    part = misclassified_partition(np.array([1.0, -2.0, 0.0, 3.0]), np.array([1, 1, 1, -1]))
    np.testing.assert_array_equal(part.upsample, [False, True, True, True])
    out = np.array([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]])
    part = misclassified_partition(out, np.array([1, 1, 2, 2]), k=4)
    np.testing.assert_array_equal(part.upsample, [False, True, False, True])
    np.testing.assert_array_equal(part.multiplicities, [1, 4, 1, 4])
    assert part.method == "misclassified"


def test_multiplicities_from_mask():
    np.testing.assert_array_equal(multiplicities_from_mask([True, False, True], 3), [3, 1, 3])
    assert multiplicities_from_mask([True], 2).dtype == np.int64


OUT, LAB, LOSS = np.array([0.0, 1.0, 5.0]), np.array([1, 1, 1]), np.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: useful_partition(OUT[:2], LAB, LOSS), "outputs"),
        (lambda: useful_partition(np.zeros((3, 2, 2)), LAB, LOSS), "outputs"),
        (lambda: useful_partition(np.array([0.0, np.nan, 1.0]), LAB, LOSS), "outputs"),
        (lambda: useful_partition(np.array([0.0, np.inf, 1.0]), LAB, LOSS), "outputs"),
        (lambda: useful_partition(OUT, LAB, LOSS[:2]), "losses"),
        (lambda: useful_partition(OUT, LAB, np.array([0.1, np.nan, 0.3])), "losses"),
        (lambda: useful_partition(OUT, LAB, LOSS, k=0), "k"),
        (lambda: useful_partition(OUT, LAB, LOSS, k=1.5), "k"),
        (lambda: useful_partition(OUT, LAB, LOSS, n_init=0), "n_init"),
        (lambda: useful_partition(np.zeros(0), np.zeros(0), np.zeros(0)), "labels"),
        (lambda: useful_partition(OUT, LAB[:, None], LOSS), "labels"),
        (lambda: random_partition(LAB, np.array([True, False]), k=2), "like"),
        (lambda: random_partition(LAB, np.array([True, False, True]), k=0), "k"),
        (lambda: loss_quantile_partition(LAB, LOSS, quantile=1.0), "quantile"),
        (lambda: loss_quantile_partition(LAB, LOSS[:1]), "losses"),
        (lambda: misclassified_partition(OUT, np.array([0, 1, 1])), "labels"),
        (lambda: misclassified_partition(OUT[:2], LAB), "outputs"),
        (lambda: misclassified_partition(np.array([1.0, np.nan, 0.0]), LAB), "outputs"),
        (lambda: multiplicities_from_mask(np.array([True]), 0), "k"),
    ],
)
def test_invalid_inputs_raise_naming_the_field(call, field):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, ConfigError)
    assert info.value.field == field and field in str(info.value)


# ----------------------------------------------------------------------------------------------
# EIIL and class-balanced upsampling.


def _eiil_penalty(w, g):
    q = 1 / (1 + np.exp(-w))
    g1, g0 = (q * g).sum() / len(g), ((1 - q) * g).sum() / len(g)
    return 0.5 * (g1**2 + g0**2)


def test_eiil_scale_gradient_matches_finite_differences():
    from theory.useful import _ce_scale_gradients

    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(7, 4)), rng.integers(0, 4, 7)

    def ce(s):
        a = s * z
        return np.log(np.exp(a).sum(1)) - a[np.arange(7), y]

    h = 1e-6
    np.testing.assert_allclose(_ce_scale_gradients(z, y), (ce(1 + h) - ce(1 - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    f, yb = rng.normal(size=7), rng.choice([-1, 1], 7)
    fd = (np.log1p(np.exp(-(1 + h) * yb * f)) - np.log1p(np.exp(-(1 - h) * yb * f))) / (2 * h)
    np.testing.assert_allclose(_ce_scale_gradients(f, yb), fd, rtol=1e-6, atol=1e-8)


def test_eiil_increases_the_penalty_and_finds_the_planted_environments():
    """Examples the reference model fits well (an easy feature) and those it does not form EIIL's two
    environments, and the inferred assignment has a larger IRM penalty than the random start."""
    from theory.useful import _ce_scale_gradients, eiil_environments, eiil_partition

    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 3, n)
    easy = rng.random(n) < 0.7
    z = rng.normal(size=(n, 3))
    z[np.arange(n), y] += np.where(easy, 6.0, 0.0)
    env = eiil_environments(z, y, steps=3000, seed=2)
    agree = max(np.mean(env == easy), np.mean(env == ~easy))
    assert agree > 0.85
    g = _ce_scale_gradients(z, y)
    start = np.random.default_rng(2).standard_normal(n)
    assert _eiil_penalty(np.where(env, 20.0, -20.0), g) > _eiil_penalty(start, g)
    losses = np.log(np.exp(z).sum(1)) - z[np.arange(n), y]
    part = eiil_partition(z, y, losses, k=3, seed=2, steps=3000)
    assert part.method == "eiil" and set(np.unique(part.multiplicities)) <= {1, 3}
    # It upsamples hard examples only (precision 1 here) and most of them (recall 0.63 here: the
    # hard examples the model happens to fit well stay with the easy ones).
    assert np.mean(~easy[part.upsample]) > 0.95 and np.mean(part.upsample[~easy]) > 0.5
    for c in part.classes:  # per class, the upsampled environment has the higher mean loss
        if c.chosen >= 0:
            assert c.mean_losses[c.chosen] >= c.mean_losses[1 - c.chosen]


@given(st.lists(st.integers(0, 4), min_size=1, max_size=200))
def test_class_balanced_multiplicities_balance_the_classes(labels):
    from theory.useful import class_balanced_partition

    y = np.array(labels)
    part = class_balanced_partition(y)
    counts = np.bincount(y)
    present = counts > 0
    per_class = np.bincount(y, weights=part.multiplicities)[present]
    for c in np.flatnonzero(present):  # one multiplicity per class: round(n_max / n_c), at least 1
        m = part.multiplicities[y == c]
        assert np.all(m == m[0]) and m[0] == max(1, round(counts.max() / counts[c]))
    # each class's weighted count is within a factor of 1.5 of the largest class's
    assert per_class.max() <= counts.max() * 1.5 + 1 and per_class.min() >= counts.max() / 1.5 - 1
    assert np.array_equal(part.upsample, part.multiplicities > 1) and part.k == part.multiplicities.max()


def test_eiil_uses_the_labels_as_logit_columns_when_a_class_is_absent():
    """A label is its logit's column: with class 1 absent from the labels, class 2's gradient must use
    column 2 (a ranking of the present classes used column 1 instead)."""
    from theory.useful import _ce_scale_gradients

    z = np.array([[0.0, 1.0, 5.0], [0.0, 1.0, 5.0]])
    y = np.array([2, 0])
    p = np.exp(z[0]) / np.exp(z[0]).sum()
    want = np.array([(p * z[0]).sum() - 5.0, (p * z[0]).sum() - 0.0])
    np.testing.assert_allclose(_ce_scale_gradients(z, y), want, rtol=1e-12)
    with pytest.raises(ConfigError):
        _ce_scale_gradients(z, np.array([3, 0]))  # no logit column 3


# ----------------------------------------------------------------------------------------------
# What 2-means clusters (split_on), JTT, the registry.


def planted_three_ways(seed: int = 0, per: int = 6):
    """One class (label 0) of 3-class logits built from three planted binary factors, each seen by
    one choice of split_on only: a shift of all three logits by 20 (softmax and loss are
    shift-invariant), which wrong class gets +5 (the softmax sees it, the loss does not), and a
    true-class margin of 0 or 3 (the loss; the largest loss difference).  Returns logits, labels,
    losses and the (n, 3) bool factors (shifted, wrong class 2, margin 3)."""
    rng = np.random.default_rng(seed)
    rows, factors = [], []
    for shift in (0.0, 20.0):
        for wrong in (1, 2):
            for margin in (0.0, 3.0):
                for _ in range(per):
                    z = np.full(3, shift)
                    z[0] += margin
                    z[wrong] += 5.0
                    rows.append(z + 0.05 * rng.standard_normal(3))
                    factors.append((shift > 0, wrong == 2, margin > 0))
    logits = np.array(rows)
    top = logits.max(axis=1)
    losses = top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[:, 0]
    return logits, np.zeros(len(rows), dtype=np.int64), losses, np.array(factors)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_on_clusters_what_it_names(seed):
    """On the planted set the three choices give three different splits, each along its own factor;
    the loss split upsamples the low-margin (high-loss) half."""
    logits, labels, losses, factors = planted_three_ways(seed)
    masks = {}
    for column, on in enumerate(SPLIT_ON):
        part = useful_partition(logits, labels, losses, k=2, seed=seed, split_on=on)
        masks[on] = part.upsample
        along = [np.array_equal(part.upsample, factors[:, j]) or np.array_equal(part.upsample, ~factors[:, j])
                 for j in range(3)]
        assert along == [j == column for j in range(3)], (on, along)
        # whatever was clustered, the chosen cluster is the one with the higher mean loss
        assert losses[part.upsample].mean() >= losses[~part.upsample].mean()
    np.testing.assert_array_equal(masks["loss"], ~factors[:, 2])
    assert len({m.tobytes() for m in masks.values()}) == 3


@FAST
@given(arbitrary(), st.integers(1, 3), st.integers(0, 100))
def test_loss_split_is_a_threshold_on_the_losses(case, k, seed):
    """2-means on the 1-d losses: in every class that was split, each upsampled loss is above each
    kept one (a 1-d 2-means cluster is an interval)."""
    out, labels, losses = case
    part = useful_partition(out, labels, losses, k=k, seed=seed, split_on="loss")
    for s in part.classes:
        cls = labels == s.label
        up, rest = losses[cls & part.upsample], losses[cls & ~part.upsample]
        if s.chosen == -1:
            assert up.size == 0
            continue
        assert up.min() >= rest.max()


def test_split_features_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 4)) * 30  # large: the softmax must not overflow
    losses = rng.random(7)
    np.testing.assert_array_equal(split_features(logits, losses, "logits"), logits)
    soft = split_features(logits, losses, "softmax")
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(soft, ref / ref.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(split_features(logits, losses, "loss"), losses[:, None])
    f = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])  # binary outputs: the probability of +1
    np.testing.assert_allclose(split_features(f, None, "softmax")[:, 0], [0.0, 1 / (1 + np.e), 0.5,
                                                                          1 / (1 + np.exp(-2.0)), 1.0], atol=1e-15)
    with pytest.raises(ConfigError, match="split_on"):
        split_features(logits, losses, "probabilities")
    with pytest.raises(ConfigError, match="losses"):
        split_features(logits, None, "loss")


@FAST
@given(arbitrary(), st.integers(2, 60))
def test_jtt_error_set_is_the_misclassified_set_with_multiplicity_lambda_up(case, upweight):
    out, labels, _ = case
    if out.ndim == 1:
        labels = np.where(labels % 2 == 0, -1, 1)
    jtt = jtt_partition(out, labels, upweight=upweight)
    mis = misclassified_partition(out, labels, k=2)
    np.testing.assert_array_equal(jtt.upsample, mis.upsample)
    np.testing.assert_array_equal(jtt.multiplicities, np.where(mis.upsample, upweight, 1))
    assert jtt.method == "jtt" and jtt.k == upweight
    assert jtt.multiplicities.sum() == len(labels) + (upweight - 1) * mis.upsample.sum()


def test_partition_registry():
    """The registry's keys are the accepted names (in the configuration's order), each builds with
    the one signature, and the options act: quantile, split_on, jtt_upweight."""
    assert tuple(PARTITIONS) == ("useful", "random", "quantile", "misclassified", "jtt", "eiil", "class-balanced")
    logits, labels, losses, _ = planted_three_ways(0)
    labels = labels.copy()
    labels[::5] = 1  # a second, smaller class: class-balanced acts
    for name in PARTITIONS:
        part = build_partition(name, logits, labels, losses, k=3, seed=0)
        assert part.method == name and part.upsample.shape == labels.shape
    jtt = build_partition("jtt", logits, labels, losses, k=3, seed=0)
    mis = build_partition("misclassified", logits, labels, losses, k=3, seed=0)
    assert mis.upsample.any()
    np.testing.assert_array_equal(jtt.upsample, mis.upsample)
    assert set(jtt.multiplicities[jtt.upsample]) == {JTT_UPWEIGHT} and set(mis.multiplicities[mis.upsample]) == {3}
    jtt50 = build_partition("jtt", logits, labels, losses, k=3, seed=0, options=PartitionOptions(jtt_upweight=50))
    assert set(jtt50.multiplicities[jtt50.upsample]) == {50}
    q = [build_partition("quantile", logits, labels, losses, k=2, seed=0, options=PartitionOptions(quantile=v))
         for v in (0.2, 0.8)]
    assert q[0].upsample.sum() > q[1].upsample.sum()
    by_on = {on: build_partition("useful", logits, labels, losses, k=2, seed=0, options=PartitionOptions(split_on=on))
             for on in SPLIT_ON}
    assert len({p.upsample.tobytes() for p in by_on.values()}) == 3
    rand = build_partition("random", logits, labels, losses, k=2, seed=0, options=PartitionOptions(split_on="loss"))
    np.testing.assert_array_equal(np.bincount(labels[rand.upsample]), np.bincount(labels[by_on["loss"].upsample]))
    with pytest.raises(ConfigError, match="method"):
        build_partition("clusters", logits, labels, losses, k=2, seed=0)


@pytest.mark.parametrize("kwargs, field", [({"quantile": 1.0}, "quantile"), ({"split_on": "probs"}, "split_on"),
                                           ({"jtt_upweight": 1}, "jtt_upweight"),
                                           ({"jtt_upweight": 2.5}, "jtt_upweight")])
def test_partition_options_refuse_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        PartitionOptions(**kwargs)
