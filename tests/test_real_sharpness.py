"""real/sharpness.py: Hessian-vector products, eigenvalues and trace against a brute-force Hessian of a
tiny float64 network; the report on a run directory; crafted checkpoints refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from real.sharpness import (
    fixed_batches,
    hessian_trace,
    hessian_vector_product,
    l1_norm,
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


def _fake_run_dir(tmp_path):
    """A run directory as the trainer writes it (config.json with our marker, a checkpoint of ours)
    holding weights that are not the initialization."""
    from real.config import TrainConfig
    from real.datasets import load_dataset
    from real.phase import init_model
    from real.rundir import FORMAT
    from theory.plumbing.atomic import atomic_write_json
    from theory.plumbing.config import to_jsonable

    cfg = TrainConfig(dataset="synthetic", model="cnn-small", synthetic_train=48, synthetic_test=8, epochs=1,
                      out=str(tmp_path), device="cpu", seed=3)
    ds = load_dataset("synthetic", seed=3, synthetic_train=48, synthetic_test=8)
    model = init_model(cfg, ds)
    with torch.no_grad():  # not the initialization: the report must load these weights
        for p in model.parameters():
            p.mul_(1.1)
        model.features[1].running_var.fill_(2.0)
    atomic_write_json(tmp_path / "config.json", {"format": FORMAT, **to_jsonable(cfg)})
    torch.save({"format": FORMAT, "model": model.state_dict(), "phase": "main", "epoch": 1, "config": to_jsonable(cfg)},
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


class _Payload:
    """Unpickling this runs a command: it must never happen when a checkpoint is read."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["crafted", "bare", "empty", "truncated", "foreign-format"])
def test_checkpoints_not_ours_are_refused_and_run_no_code(tmp_path, kind):
    """A checkpoint is read with weights_only=True: a crafted pickle runs nothing, and anything that
    is not our checkpoint is one line naming the file (never a traceback)."""
    from theory.plumbing.config import ConfigError

    _fake_run_dir(tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    marker = tmp_path / "pwned"
    if kind == "crafted":
        torch.save({"format": "useful-sb/run/1", "model": _Payload(marker)}, ckpt)
    elif kind == "bare":
        torch.save(nn.Linear(2, 2).state_dict(), ckpt)
    elif kind == "empty":
        ckpt.write_bytes(b"")
    elif kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    else:
        torch.save({"format": "someone-else/1", "model": {}}, ckpt)
    with pytest.raises(ConfigError, match="checkpoint.pt"):
        sharpness_report(tmp_path, batches=1, batch_size=4, k=1, trace_samples=0)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="nowhere"):
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
    # A tolerance that is not a number in (0, 1] is refused at once (NaN made ARPACK loop forever).
    for tol in ("nan", "inf", "0", "-1"):
        assert main(["sharpness", str(run), "--tol", tol]) == 2
        assert "--tol" in capsys.readouterr().err
    # Where the report goes is checked before any work: a folder as --out, or an unwritable one.
    (tmp_path / "folder").mkdir()
    assert main(["sharpness", str(run), "--out", str(tmp_path / "folder")]) == 2
    assert main(["sharpness", str(run), "--out", str(tmp_path / "missing" / "s.json")]) == 2
    assert "--out" in capsys.readouterr().err
