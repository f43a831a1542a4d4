"""real/optim.py and real/schedules.py: SAM against the numpy reference, ASAM, BatchNorm, schedules."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from real.optim import (
    SAM,
    build_optimizer,
    disable_running_stats,
    enable_running_stats,
    sam_step,
)
from real.schedules import build_schedule
from theory.data import DataConfig, sample
from theory.model import init_weights
from theory.plumbing.config import ConfigError
from theory.updates import update


class CubicCNN(nn.Module):
    """theory/model.py's network: f(x) = sum_j sum_p <w_j, x_p>^3, W (J, d) float64.

    W's rows are held as two parameters (rows [:J//2] and [J//2:]) so that SAM's norm must be taken
    over all parameters jointly to match the reference.
    """

    def __init__(self, W: np.ndarray):
        super().__init__()
        k = W.shape[0] // 2
        self.A = nn.Parameter(torch.tensor(W[:k], dtype=torch.float64))
        self.B = nn.Parameter(torch.tensor(W[k:], dtype=torch.float64))

    @property
    def W(self) -> torch.Tensor:
        return torch.cat([self.A, self.B])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return ((X @ self.W.T) ** 3).sum(dim=(1, 2))


def logistic(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.softplus(-y * f).mean()


def _problem(seed: int, n: int, J: int, d: int, P: int, sigma_0: float):
    data = sample(DataConfig(d=d, P=P, alpha=0.7, beta_e=1.0, beta_d=0.5, sigma_p=0.5), n, seed)
    return init_weights(J, d, sigma_0, seed + 1), data.X, data.y


def _one_step(W, X, y, opt_name, lr, rho):
    model = CubicCNN(W)
    opt = build_optimizer(opt_name, model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0, rho=rho)
    sam_step(model, opt, logistic, torch.tensor(X), torch.tensor(y))
    return model.W.detach().numpy()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 12),
    J=st.integers(1, 5),
    d=st.integers(3, 8),
    P=st.integers(3, 4),
    sigma_0=st.floats(0.1, 1.0),
    lr=st.floats(0.01, 1.0),
    rho=st.floats(1e-4, 0.1),
)
def test_sam_step_matches_theory(seed, n, J, d, P, sigma_0, lr, rho):
    W, X, y = _problem(seed, n, J, d, P, sigma_0)
    expected = update(W, X, y, rule="sam", lr=lr, rho=rho)
    np.testing.assert_allclose(_one_step(W, X, y, "sam", lr, rho), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sgd_matches_theory_and_sam_rho0_is_sgd(seed):
    W, X, y = _problem(seed, 8, 4, 6, 3, 0.5)
    sgd = _one_step(W, X, y, "sgd", 0.3, 0.05)
    np.testing.assert_allclose(sgd, update(W, X, y, rule="gd", lr=0.3), atol=1e-10)
    np.testing.assert_allclose(_one_step(W, X, y, "sam", 0.3, 0.0), sgd, atol=1e-12)


def test_asam_perturbation_by_hand():
    # L = a.w1 + b.w2 (linear): g = (a, b); T = |w|; e = rho T^2 g / ||T g||.
    w1 = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    w2 = nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
    a, b, rho = torch.tensor([3.0, 1.0], dtype=torch.float64), torch.tensor([-4.0], dtype=torch.float64), 0.1
    opt = SAM([w1, w2], torch.optim.SGD, rho=rho, adaptive=True, lr=0.1)
    ((a * w1).sum() + (b * w2).sum()).backward()
    opt.first_step()
    # T g = (1*3, 2*1, 0.5*(-4)) = (3, 2, -2), ||T g|| = sqrt(17); T^2 g = (3, 4, -1).
    scale = rho / math.sqrt(17.0)
    np.testing.assert_allclose(w1.detach().numpy(), [1.0 + 3 * scale, -2.0 + 4 * scale], atol=1e-14)
    np.testing.assert_allclose(w2.detach().numpy(), [0.5 - 1 * scale], atol=1e-14)
    opt.second_step()  # linear loss: same gradient at w + e; plain SGD step from the restored w
    np.testing.assert_allclose(w1.detach().numpy(), [1.0 - 0.3, -2.0 - 0.1], atol=1e-14)
    np.testing.assert_allclose(w2.detach().numpy(), [0.5 + 0.4], atol=1e-14)


def test_zero_gradient_gives_no_nan():
    w = nn.Parameter(torch.ones(3))
    for name, variant in (("sam", "kwon"), ("asam", "kwon"), ("asam", "davda54")):
        opt = build_optimizer(name, [("weight", w)], lr=0.1, rho=0.05, weight_decay=0.0, asam_variant=variant)
        sam_step(nn.Identity(), opt, lambda out, t: (0.0 * out).sum() + w.sum() * 0.0, torch.zeros(2), None)
        assert torch.equal(w.detach(), torch.ones(3))


def test_batchnorm_stats_unchanged_by_second_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3)).train()
    x, t = torch.randn(16, 5), torch.randint(0, 3, (16,))
    reference = copy.deepcopy(model)
    reference(x)  # one train-mode forward: the expected running statistics
    opt = build_optimizer("sam", model.parameters(), lr=0.1, rho=0.5)
    sam_step(model, opt, nn.functional.cross_entropy, x, t)
    bn, ref = model[1], reference[1]
    assert not torch.equal(ref.running_mean, torch.zeros(4))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(ref, name)), name
    assert bn.momentum == 0.1 and not hasattr(bn, "_sam_backup")
    disable_running_stats(model)
    assert bn.momentum == 0.0
    enable_running_stats(model)
    assert bn.momentum == 0.1


def test_sam_state_dict_roundtrip_and_scheduler():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = build_optimizer("sam", model.parameters(), lr=0.1, momentum=0.9, rho=0.05)
    sched = build_schedule(opt, name="cosine", epochs=2, steps_per_epoch=5)
    x, t = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        sam_step(model, opt, nn.functional.cross_entropy, x, t)
        sched.step()
    sd = opt.state_dict()
    assert any("momentum_buffer" in s for s in sd["state"].values())
    opt2 = build_optimizer("sam", model.parameters(), lr=0.1, momentum=0.9, rho=0.05)
    opt2.load_state_dict(sd)
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.param_groups[0]["rho"] == 0.05 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_build_optimizer_and_its_one_validator():
    """The builder trusts the configuration; the configuration is the one validator of its values."""
    from real.config import TrainConfig
    from real.optim import OPTIMIZERS

    w = [("weight", nn.Parameter(torch.ones(1))), ("bias", nn.Parameter(torch.ones(1)))]
    assert type(build_optimizer("sgd", w, lr=0.1)) is torch.optim.SGD
    kwon = build_optimizer("asam", w, lr=0.1).param_groups  # the default variant: Kwon et al.'s
    assert [(g["adaptive"], g["eta"], len(g["params"])) for g in kwon] == [(True, 0.01, 1), (False, 0.0, 1)]
    davda = build_optimizer("asam", w, lr=0.1, asam_variant="davda54").param_groups
    assert [(g["adaptive"], g["eta"], len(g["params"])) for g in davda] == [(True, 0.0, 2)]
    assert isinstance(OPTIMIZERS, dict) and list(OPTIMIZERS) == ["sgd", "sam", "asam"]
    for name in OPTIMIZERS:  # every name the configuration accepts builds
        assert build_optimizer(name, w, lr=0.1) is not None
        assert TrainConfig(dataset="synthetic", optimizer=name).optimizer == name
    for bad in (dict(optimizer="adam"), dict(rho=-1.0), dict(momentum=1.0), dict(lr=1e308), dict(gamma=1.5),
                dict(milestones=(2, 2), epochs=3)):
        with pytest.raises(ConfigError):
            TrainConfig(dataset="synthetic", **bad)
    assert TrainConfig(dataset="synthetic", optimizer="sam", rho=0.0).rho == 0.0  # SAM at rho 0: GD twice


# ---------------------------------------------------------------------------------------------- schedules


def _lrs(name, steps, **kw):
    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    sched = build_schedule(opt, name=name, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_values():
    assert _lrs("constant", 5, epochs=1, steps_per_epoch=5) == [1.0] * 5
    cos = _lrs("cosine", 10, epochs=2, steps_per_epoch=5)
    np.testing.assert_allclose(cos, [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    warm = _lrs("cosine", 10, epochs=2, steps_per_epoch=5, warmup_epochs=0.4)  # w = 2 steps
    np.testing.assert_allclose(warm[:3], [0.5, 1.0, 1.0])
    np.testing.assert_allclose(warm[9], 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    ms = _lrs("multistep", 12, epochs=4, steps_per_epoch=3, milestones=(1, 3), gamma=0.1)
    np.testing.assert_allclose(ms, [1.0] * 3 + [0.1] * 6 + [0.01] * 3)


def test_schedule_state_dict_resume():
    def make():
        opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.4)
        return opt, build_schedule(opt, name="multistep", epochs=6, steps_per_epoch=4, warmup_epochs=1, milestones=(2, 4))

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    saved = (opt.state_dict(), sched.state_dict())
    tail = []
    for _ in range(10):
        opt.step()
        sched.step()
        tail.append(opt.param_groups[0]["lr"])
    opt2, sched2 = make()
    opt2.load_state_dict(saved[0])
    sched2.load_state_dict(saved[1])
    resumed = []
    for _ in range(10):
        opt2.step()
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == tail


def test_schedule_names_are_the_configurations():
    from real.config import TrainConfig
    from real.schedules import SCHEDULES

    opt = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1.0)
    for name in SCHEDULES:
        assert TrainConfig(dataset="synthetic", schedule=name).schedule == name
        build_schedule(opt, name=name, epochs=3, steps_per_epoch=1, milestones=(1, 2))
    for bad in (dict(schedule="linear"), dict(schedule="multistep", epochs=3, milestones=(2, 1))):
        with pytest.raises(ConfigError):
            TrainConfig(dataset="synthetic", **bad)
