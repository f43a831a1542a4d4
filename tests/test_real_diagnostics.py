"""real/diagnostics.py: learning statistics against hand-written histories, sharpness against a
brute-force Hessian of a tiny float64 network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

from real.diagnostics import (
    LearningStats,
    cluster_table,
    fixed_batches,
    hessian_trace,
    hessian_vector_product,
    l1_norm,
    learning_stats_from_history,
    sharpness_report,
    top_hessian_eigenvalues,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny double-backward graphs are dominated by thread hand-offs on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def test_learning_stats_epoch_discipline_and_add_epoch():
    stats = LearningStats(2)
    stats.update(np.array([0]), np.array([True]), 1)
    with pytest.raises(ValueError):
        stats.update(np.array([1]), np.array([True]), 2)  # epoch 1 still open
    with pytest.raises(ValueError):
        stats.end_epoch(2)
    stats.end_epoch(1)
    stats.add_epoch(np.array([False, True]), 2)
    stats.add_epoch(np.array([True, False]), 3, presented=np.array([True, False]))
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


# ----------------------------------------------------------------------------------------------
# Sharpness against a brute-force Hessian.


def _tiny_problem(batch_norm: bool = False):
    torch.manual_seed(0)
    layers = [nn.Linear(2, 4)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(4))
    layers += [nn.Tanh(), nn.Linear(4, 3)]
    model = nn.Sequential(*layers).double()
    if batch_norm:  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            for _ in range(5):
                model(torch.randn(16, 2, dtype=torch.float64) * 2 + 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64) * 1.5
    y = torch.randint(0, 3, (10,), generator=gen)
    batches = [(x[:6], y[:6]), (x[6:], y[6:])]  # unequal sizes: the mean is example-weighted
    return model, batches, x, y


def _brute_force_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    was = model.training
    model.eval()

    def loss(theta):
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    h = torch.autograd.functional.hessian(loss, theta0)
    model.train(was)
    return h.numpy()


def _ce(logits, y):
    return F.cross_entropy(logits, y)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_hvp_equals_hessian_times_vector(batch_norm):
    model, batches, x, y = _tiny_problem(batch_norm)
    h = _brute_force_hessian(model, x, y)
    assert np.allclose(h, h.T, atol=1e-12)
    model.train()
    rng = np.random.default_rng(3)
    for _ in range(3):
        v = rng.standard_normal(h.shape[0])
        got = hessian_vector_product(model, _ce, batches, torch.from_numpy(v)).numpy()
        np.testing.assert_allclose(got, h @ v, rtol=1e-9, atol=1e-12)
    assert model.training  # the mode is restored


def test_top_eigenvalues_match_eigvalsh():
    model, batches, x, y = _tiny_problem()
    exact = np.linalg.eigvalsh(_brute_force_hessian(model, x, y))[::-1]
    top1 = top_hessian_eigenvalues(model, _ce, batches, k=1, tol=1e-10)
    assert top1.shape == (1,)
    assert abs(top1[0] - exact[0]) <= 1e-4 * abs(exact[0])
    top3 = top_hessian_eigenvalues(model, _ce, batches, k=3, tol=1e-10, seed=5)
    np.testing.assert_allclose(top3, exact[:3], rtol=1e-4)
    assert np.all(np.diff(top3) <= 0)
    with pytest.raises(ValueError):
        top_hessian_eigenvalues(model, _ce, batches, k=sum(p.numel() for p in model.parameters()))


def test_hutchinson_trace_close_to_exact():
    model, batches, x, y = _tiny_problem()
    h = _brute_force_hessian(model, x, y)
    exact = float(np.trace(h))
    samples = 400
    mean, stderr = hessian_trace(model, _ce, batches, samples=samples, seed=0)
    assert abs(mean - exact) <= 4 * stderr
    # The standard error is that of Rademacher probes: var(v^T H v) = 2 sum_{i != j} H_ij^2.
    off = h - np.diag(np.diag(h))
    theory = np.sqrt(2 * np.sum(off**2) / samples)
    assert 0.5 * theory < stderr < 2 * theory
    again = hessian_trace(model, _ce, batches, samples=samples, seed=0)
    assert again == (mean, stderr)  # seeded


def test_l1_norm_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -0.25]]))
        model[0].bias.copy_(torch.tensor([-3.0, 0.0]))
        model[1].weight.copy_(torch.tensor([1.0, -1.0]))
        model[1].bias.copy_(torch.tensor([0.125, 0.0]))
        model[1].running_mean.fill_(100.0)  # buffers do not count
    assert l1_norm(model) == pytest.approx(1 + 2 + 0.5 + 0.25 + 3 + 1 + 1 + 0.125)


def test_fixed_batches_are_seeded_and_normalized():
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(10)
    a = fixed_batches(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, batches=3, batch_size=4, seed=7)
    b = fixed_batches(x, y, mean=(0.5,) * 3, std=(0.25,) * 3, batches=3, batch_size=4, seed=7)
    assert [len(t[1]) for t in a] == [4, 4, 2]
    order = np.random.default_rng(7).permutation(10)
    np.testing.assert_array_equal(torch.cat([t[1] for t in a]).numpy(), order)
    torch.testing.assert_close(a[0][0], (x[order[:4]].float() / 255 - 0.5) / 0.25)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def _fake_run_dir(tmp_path, *, prefix: str = "", bare: bool = False):
    from real.checkpoint import atomic_torch_save, atomic_write_json
    from real.config import TrainConfig, config_to_dict
    from real.datasets import load_dataset
    from real.train import init_model

    cfg = TrainConfig(dataset="synthetic", model="cnn-small", synthetic_train=48, synthetic_test=8, epochs=1,
                      out=str(tmp_path), device="cpu", seed=3)
    ds = load_dataset("synthetic", seed=3, synthetic_train=48, synthetic_test=8)
    model = init_model(cfg, ds)
    with torch.no_grad():  # not the initialization: the report must load these weights
        for p in model.parameters():
            p.mul_(1.1)
        model.features[1].running_var.fill_(2.0)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    atomic_write_json(tmp_path / "config.json", config_to_dict(cfg))
    atomic_torch_save(state if bare else {"model": state, "phase": "main", "epoch": 1, "config": config_to_dict(cfg)},
                      tmp_path / "checkpoint.pt")
    return model, ds


def test_sharpness_report_on_a_run_directory(tmp_path):
    model, ds = _fake_run_dir(tmp_path)
    report = sharpness_report(tmp_path, batches=2, batch_size=4, k=1, trace_samples=3, seed=1)
    json.dumps(report)  # plain JSON data
    assert report["examples"] == 8 and report["batches"] == 2
    assert report["phase"] == "main" and report["epoch"] == 1
    assert report["l1_norm"] == pytest.approx(l1_norm(model), rel=1e-6)
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(report["top_eigenvalues"]) == 1 and np.isfinite(report["top_eigenvalues"][0])
    assert report["top_eigenvalues"][0] > 0 and report["hvp_count"] > 0
    assert np.isfinite(report["trace"]) and report["trace_stderr"] >= 0
    # The loaded weights and buffers, in eval mode, on the seeded fixed batches.
    fixed = fixed_batches(ds.train_x, ds.train_y, mean=ds.mean, std=ds.std, batches=2, batch_size=4, seed=1)
    model.eval()
    with torch.no_grad():
        loss = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in fixed) / 8
    assert report["loss"] == pytest.approx(loss, rel=1e-5)


def test_sharpness_report_bare_state_dict_with_prefix_and_missing_files(tmp_path):
    from theory.plumbing.config import ConfigError

    model, _ = _fake_run_dir(tmp_path, prefix="_orig_mod.", bare=True)
    report = sharpness_report(tmp_path / "checkpoint.pt", batches=1, batch_size=4, k=1, trace_samples=0)
    assert report["trace"] is None and report["phase"] is None
    assert report["l1_norm"] == pytest.approx(l1_norm(model), rel=1e-6)
    with pytest.raises(ConfigError, match="checkpoint.pt"):
        sharpness_report(tmp_path / "nowhere")


def test_sharpness_cli_on_a_tiny_real_run(tmp_path, capsys):
    """``useful-train sharpness`` on a run the trainer wrote (synthetic, cnn-small, 1 epoch)."""
    from real.cli import main
    from real.config import TrainConfig
    from real.train import train

    run = tmp_path / "run"
    summary = train(TrainConfig(dataset="synthetic", model="cnn-small", synthetic_train=64, synthetic_test=16,
                                batch_size=32, epochs=1, out=str(run), device="cpu"))
    assert summary["status"] == "completed"
    rc = main(["sharpness", str(run), "--batches", "2", "--batch-size", "8", "--trace-samples", "3", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    report = json.loads((run / "sharpness.json").read_text())
    assert report["examples"] == 16 and report["k"] == 1 and report["epoch"] == 1 and report["phase"] == "main"
    assert "top eigenvalue(s)" in out and "trace" in out and "L1 norm" in out and "sharpness.json" in out
    assert f"{report['l1_norm']:.6g}" in out and np.isfinite(report["trace"])
    assert not list(run.glob(".*.tmp"))
    # --out with one run is a path; a bad count is one line with exit status 2.
    rc = main(["sharpness", str(run), "--batches", "1", "--batch-size", "4", "--trace-samples", "0", "--k", "2",
               "--dtype", "float64", "--out", str(tmp_path / "s.json")])
    assert rc == 0 and len(json.loads((tmp_path / "s.json").read_text())["top_eigenvalues"]) == 2
    capsys.readouterr()
    rc = main(["sharpness", str(run), "--batches", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--batches" in err and len(err.strip().splitlines()) == 1
