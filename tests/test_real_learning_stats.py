"""real/learning_stats.py: per-example learning statistics against hand-written histories."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from real.learning_stats import (
    LearningStats,
    cluster_table,
    learning_stats_from_history,
)

# ----------------------------------------------------------------------------------------------
# Learning statistics.

# Rows are epochs 1..6, columns examples a..f.
#   a: learned at 1, never forgotten                -> forget 0, first 1, from 1
#   b: learned at 2, forgotten at 4, relearned at 5 -> forget 1, first 2, from 5
#   c: never learned                                -> forget 0, first -1, from -1
#   d: learned at 1, forgotten at the end (6)       -> forget 1, first 1, from -1
#   e: 1,0,1,0,1,1                                  -> forget 2, first 1, from 5
#   f: learned only at the last epoch               -> forget 0, first 6, from 6
HISTORY = np.array(
    [
        # a  b  c  d  e  f
        [1, 0, 0, 1, 1, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [1, 0, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 0],
        [1, 1, 0, 0, 1, 1],
    ],
    dtype=bool,
)
EXPECTED = {
    "forgetting_count": [0, 1, 0, 1, 2, 0],
    "first_learned_epoch": [1, 2, -1, 1, 1, 6],
    "learned_from_epoch": [1, 5, -1, -1, 5, 6],
}


def test_learning_stats_from_hand_written_history():
    out = learning_stats_from_history(HISTORY)
    for key, want in EXPECTED.items():
        np.testing.assert_array_equal(out[key], want, err_msg=key)
        assert out[key].dtype == np.int64


def test_learning_stats_epoch_labels_and_edge_cases():
    labels = [3, 5, 7, 9, 11, 13]  # e.g. every other epoch recorded
    out = learning_stats_from_history(HISTORY, labels)
    lab = dict(zip(range(1, 7), labels))
    np.testing.assert_array_equal(out["first_learned_epoch"], [lab.get(e, -1) for e in EXPECTED["first_learned_epoch"]])
    np.testing.assert_array_equal(out["learned_from_epoch"], [lab.get(e, -1) for e in EXPECTED["learned_from_epoch"]])
    empty = learning_stats_from_history(np.zeros((0, 4), dtype=bool))
    np.testing.assert_array_equal(empty["first_learned_epoch"], [-1] * 4)
    np.testing.assert_array_equal(empty["forgetting_count"], [0] * 4)
    with pytest.raises(ValueError):
        learning_stats_from_history(HISTORY, [1, 2, 3])
    with pytest.raises(ValueError):
        learning_stats_from_history(HISTORY, [1, 2, 2, 3, 4, 5])
    with pytest.raises(ValueError):
        learning_stats_from_history(np.zeros(3, dtype=bool))


def _feed_history(stats: LearningStats, history: np.ndarray, rng: np.random.Generator, *, copies: np.ndarray,
                  batch_size: int = 3) -> None:
    """Present every example ``copies[i]`` times per epoch, in shuffled batches (so duplicated
    indices share batches), always with the bit of ``history`` for that epoch."""
    n = history.shape[1]
    for t, row in enumerate(history, start=1):
        order = rng.permutation(np.repeat(np.arange(n), copies))
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            stats.update(torch.as_tensor(idx), torch.as_tensor(row[idx]), t)
        stats.end_epoch(t)


@pytest.mark.parametrize("keep_history", [True, False])
def test_learning_stats_incremental_with_duplicated_indices(keep_history):
    rng = np.random.default_rng(0)
    copies = np.array([1, 2, 1, 2, 3, 1])  # upsampled examples appear several times per epoch
    stats = LearningStats(HISTORY.shape[1], keep_history=keep_history)
    _feed_history(stats, HISTORY, rng, copies=copies, batch_size=4)  # copies share batches
    res = stats.result()
    for key, want in EXPECTED.items():
        np.testing.assert_array_equal(res[key], want, err_msg=key)
    np.testing.assert_array_equal(res["presentations"], copies * HISTORY.shape[0])
    np.testing.assert_array_equal(res["epochs"], np.arange(1, 7))
    if keep_history:
        np.testing.assert_array_equal(res["history"], HISTORY)
    else:
        assert "history" not in res


def test_learning_stats_duplicates_in_one_batch_rules():
    # Example 0 is presented twice in the same batch, once right and once wrong.
    for rule, bit in (("all", False), ("any", True), ("majority", False)):
        stats = LearningStats(2, rule=rule)
        stats.update(np.array([0, 0, 1]), np.array([True, False, True]), 1)
        stats.end_epoch(1)
        np.testing.assert_array_equal(stats.history[0], [bit, True], err_msg=rule)
    stats = LearningStats(1, rule="majority")
    stats.update(np.array([0, 0, 0]), np.array([True, False, True]), 1)
    stats.end_epoch(1)
    assert stats.history[0, 0]


def test_learning_stats_unseen_examples_keep_their_state_and_resume():
    stats = LearningStats(3)
    stats.update(torch.tensor([0, 1, 2]), torch.tensor([True, True, False]), 1)
    stats.end_epoch(1)
    stats.update(torch.tensor([1]), torch.tensor([False]), 2)  # 0 and 2 not presented
    stats.end_epoch(2)
    np.testing.assert_array_equal(stats.history, [[1, 1, 0], [1, 0, 0]])
    # Resume through the state dict, in the middle of an epoch.
    stats.update(torch.tensor([2]), torch.tensor([True]), 3)
    state = stats.state_dict()
    again = LearningStats(3)
    again.load_state_dict(state)
    for s in (stats, again):
        s.update(torch.tensor([0, 1]), torch.tensor([False, True]), 3)
        s.end_epoch(3)
    a, b = stats.result(), again.result()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    np.testing.assert_array_equal(a["forgetting_count"], [1, 1, 0])
    with pytest.raises(ValueError):
        again.update(torch.tensor([0]), torch.tensor([True]), 3)  # epoch 3 is committed
    with pytest.raises(ValueError):
        LearningStats(4).load_state_dict(state)


def test_learning_stats_epoch_discipline():
    stats = LearningStats(2)
    stats.update(np.array([0]), np.array([True]), 1)
    with pytest.raises(ValueError):
        stats.update(np.array([1]), np.array([True]), 2)  # epoch 1 still open
    with pytest.raises(ValueError):
        stats.end_epoch(2)
    stats.end_epoch(1)
    stats.update(np.array([1, 0]), np.array([True, False]), 2)
    stats.end_epoch(2)
    stats.update(np.array([0]), np.array([True]), 3)  # example 1 not presented: keeps its bit
    stats.end_epoch(3)
    np.testing.assert_array_equal(stats.history, [[1, 0], [0, 1], [1, 1]])
    stats.end_epoch(4)  # an epoch without updates keeps every bit
    np.testing.assert_array_equal(stats.history[-1], [1, 1])


def test_learning_stats_all_reduce_hook():
    stats = LearningStats(2)
    stats.update(np.array([0, 1]), np.array([True, True]), 1)
    # A fake "other rank" that presented example 1 once more, wrongly.
    stats.end_epoch(1, all_reduce=lambda t: t + torch.tensor([[0, 1], [0, 0]], dtype=t.dtype))
    np.testing.assert_array_equal(stats.history[0], [True, False])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_learning_stats_running_form_equals_pure_function(epochs, n, seed):
    rng = np.random.default_rng(seed)
    history = rng.random((epochs, n)) < 0.6
    copies = rng.integers(1, 3, size=n)
    a = LearningStats(n, keep_history=False)
    _feed_history(a, history, rng, copies=copies, batch_size=int(rng.integers(1, 5)))
    got = a.result()
    want = learning_stats_from_history(history)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_cluster_table_contents():
    stats = learning_stats_from_history(HISTORY)
    stats["presentations"] = np.array([6, 12, 6, 12, 6, 6])
    mask = np.array([False, True, True, True, False, False])  # b, c, d upsampled
    table = cluster_table(stats, mask)
    lines = table.splitlines()
    assert lines[0] == "| statistic | upsampled | rest | all |"
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in lines[2:]}
    assert rows["examples"] == ["3", "3", "6"]
    assert rows["mean forgetting count"] == ["0.67", "0.67", "0.67"]  # (1+0+1)/3, (0+2+0)/3
    assert rows["never learned fraction"] == ["0.333", "0.000", "0.167"]
    assert rows["mean first-learned epoch"] == ["1.50", "2.67", "2.20"]  # (2+1)/2, (1+1+6)/3
    assert rows["mean learned-from epoch"] == ["5.00", "4.00", "4.25"]  # b:5 | a:1, e:5, f:6
    assert rows["unforgettable fraction"] == ["0.000", "0.667", "0.333"]  # a, f
    assert rows["correct at the end fraction"] == ["0.333", "1.000", "0.667"]
    assert rows["mean presentations"] == ["10.0", "6.0", "8.0"]
    # An empty cluster reads n/a, not an error.
    empty = cluster_table(stats, np.zeros(6, dtype=bool))
    assert "n/a" in empty
    with pytest.raises(ValueError):
        cluster_table(stats, np.zeros(5, dtype=bool))


