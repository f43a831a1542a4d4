"""The baselines and variants of issue 20 in the trainer: what USEFUL's 2-means clusters (--split-on),
the outputs partition.npz keeps for a picture of the split, JTT's multiplicity, ASAM's two variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from real.config import TrainConfig
from real.rundir import read_partition
from real.train import train
from real.useful import SplitPoint, make_partition, partition_arrays
from theory.plumbing.config import ConfigError
from theory.useful import split_features

TINY = dict(dataset="synthetic", model="cnn-small", synthetic_train=128, synthetic_test=64, batch_size=32,
            epochs=1, useful=True, separate_epoch=1)


def tiny(tmp_path: Path, **overrides) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / "run"), **overrides})


def three_class_outputs(seed: int = 0, n: int = 90):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n // 3)
    logits = rng.normal(size=(n, 3)) * 2 + 2 * np.eye(3)[labels] * rng.integers(0, 2, size=(n, 1))
    top = logits.max(axis=1)
    losses = top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[np.arange(n), labels]
    return logits, labels, losses


# ----------------------------------------------------------------------------------------------
# --split-on and partition.npz's outputs.


@pytest.mark.parametrize("split_on", ["logits", "softmax", "loss"])
def test_partition_arrays_keep_the_outputs_at_the_split(split_on):
    logits, labels, losses = three_class_outputs()
    part = make_partition("useful", logits, labels, losses, k=2, seed=0, split_on=split_on)
    arrays = partition_arrays(part, labels, losses, logits=logits, num_classes=3, separated_at=SplitPoint(1),
                              upweight=False, split_on=split_on)
    assert arrays["logits"].dtype == np.float32 and arrays["split_features"].dtype == np.float32
    np.testing.assert_array_equal(arrays["logits"], logits.astype(np.float32))
    width = 1 if split_on == "loss" else 3
    assert arrays["split_features"].shape == (len(labels), width) and str(arrays["split_on"]) == split_on
    np.testing.assert_allclose(arrays["split_features"], split_features(logits, losses, split_on), rtol=1e-6)
    # the features are what was clustered: re-clustering them per class gives the same partition
    again = make_partition("useful", arrays["split_features"].astype(np.float64), labels, losses, k=2, seed=0,
                           split_on="logits")
    if split_on != "logits":  # (float32 rounding aside, the logits case is the same computation)
        np.testing.assert_array_equal(again.upsample, part.upsample)


def test_split_on_changes_the_partition():
    logits, labels, losses = three_class_outputs(1)
    masks = [make_partition(m, logits, labels, losses, k=2, seed=0, split_on=on).upsample
             for m in ("useful",) for on in ("logits", "softmax", "loss")]
    assert len({m.tobytes() for m in masks}) == 3
    # random draws per class as many as USEFUL's split on the same features
    for on in ("softmax", "loss"):
        useful = make_partition("useful", logits, labels, losses, k=2, seed=0, split_on=on)
        rand = make_partition("random", logits, labels, losses, k=2, seed=0, split_on=on)
        np.testing.assert_array_equal(np.bincount(labels[rand.upsample], minlength=3),
                                      np.bincount(labels[useful.upsample], minlength=3))


def test_the_trainer_splits_on_what_split_on_names(tmp_path):
    cfg = tiny(tmp_path, split_on="loss")
    summary = train(cfg)
    assert summary["status"] == "completed"
    part = read_partition(tmp_path / "run")
    assert str(part["split_on"]) == "loss" and part["split_features"].shape == (cfg.synthetic_train, 1)
    assert part["logits"].shape == (cfg.synthetic_train, 10) and part["logits"].dtype == np.float32
    np.testing.assert_allclose(part["split_features"][:, 0], part["losses"], rtol=1e-6)
    # the partition the run used is the loss split of the outputs it stored
    losses = part["losses"].astype(np.float64)
    ys = _train_labels(cfg)
    ref = make_partition("useful", part["logits"].astype(np.float64), ys, losses, k=2, seed=cfg.seed, split_on="loss")
    np.testing.assert_array_equal(ref.upsample, part["upsample"])


def _train_labels(cfg: TrainConfig) -> np.ndarray:
    from real.datasets import load_dataset

    return np.asarray(load_dataset(cfg.dataset, synthetic_train=cfg.synthetic_train,
                                   synthetic_test=cfg.synthetic_test, seed=cfg.seed).train_y.numpy())


# ----------------------------------------------------------------------------------------------
# ASAM as each of its authors defines it.

import torch  # noqa: E402
from torch import nn  # noqa: E402

from real.optim import ASAM_ETA, SAM, asam_groups, build_optimizer, sam_step  # noqa: E402


def tiny_conv_net(seed: int) -> nn.Module:
    """Convolution and linear weights with biases, and a BatchNorm (weight and bias), in float64."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, bias=True), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, 4, bias=True)).double().train()


def reference_asam(model: nn.Module, x, y, *, variant: str, steps: int, lr: float, rho: float, momentum: float,
                   weight_decay: float) -> dict[str, np.ndarray]:
    """ASAM written from its authors' definitions, parameter by parameter in float64 numpy (torch only
    for the model's gradient): kwon (SamsungLabs/ASAM asam.py) t = |w| + eta where 'weight' is in the
    name, else 1; davda54 (davda54/sam, adaptive) t = |w|; e = rho t^2 g / ||t g|| over all
    parameters; the gradient at w + e, then SGD with weight decay and momentum from w."""
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    buf: dict[str, np.ndarray] = {}

    def grad_at(values):
        params = {n: torch.tensor(v, requires_grad=True) for n, v in values.items()}
        loss = nn.functional.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        return {n: g.numpy() for n, g in zip(names, grads)}

    for _ in range(steps):
        g = grad_at(w)
        if variant == "kwon":
            t = {n: np.abs(w[n]) + ASAM_ETA if "weight" in n else np.ones_like(w[n]) for n in names}
        else:
            t = {n: np.abs(w[n]) for n in names}
        norm = np.sqrt(sum(np.sum((t[n] * g[n]) ** 2) for n in names))
        perturbed = {n: w[n] + rho * t[n] ** 2 * g[n] / norm for n in names}
        g2 = grad_at(perturbed)
        for n in names:
            d = g2[n] + weight_decay * w[n]
            buf[n] = d if n not in buf else momentum * buf[n] + d
            w[n] = w[n] - lr * buf[n]
    return w


def batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 2, 6, 6, generator=gen, dtype=torch.float64), torch.randint(0, 4, (16,), generator=gen)


def run_asam(variant: str, seed: int, steps: int, **hyper) -> dict[str, np.ndarray]:
    model = tiny_conv_net(seed)
    x, y = batch(seed)
    opt = build_optimizer("asam", model.named_parameters(), asam_variant=variant, **hyper)
    for _ in range(steps):
        sam_step(model, opt, nn.functional.cross_entropy, x, y)
    return {n: p.detach().numpy() for n, p in model.named_parameters()}


def flat(w: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in w.values()])


HYPER = dict(lr=0.05, rho=0.5, momentum=0.9, weight_decay=5e-4)


@pytest.mark.parametrize("variant", ["kwon", "davda54"])
@pytest.mark.parametrize("seed", [0, 1])
def test_asam_matches_its_authors_definition(variant, seed):
    for steps in (1, 3):
        ours = run_asam(variant, seed, steps, **HYPER)
        x, y = batch(seed)
        ref = reference_asam(tiny_conv_net(seed), x, y, variant=variant, steps=steps, **HYPER)
        assert list(ours) == list(ref)
        start = flat({n: p.detach().numpy() for n, p in tiny_conv_net(seed).named_parameters()})
        moved = np.linalg.norm(flat(ref) - start)
        assert moved > 1e-3  # a real step
        assert np.linalg.norm(flat(ours) - flat(ref)) <= 1e-12 * np.linalg.norm(flat(ref)), (variant, steps)


def test_asam_variants_differ_and_kwon_leaves_biases_unscaled():
    model = tiny_conv_net(0)
    groups = asam_groups(model.named_parameters(), "kwon")
    named = dict(model.named_parameters())
    weights = {id(p) for n, p in named.items() if "weight" in n}
    assert {id(p) for p in groups[0]["params"]} == weights and groups[0]["eta"] == ASAM_ETA and groups[0]["adaptive"]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in named.items() if "weight" not in n}
    assert not groups[1]["adaptive"] and len(weights) == 3  # conv, BatchNorm and linear weights
    (only,) = asam_groups(model.named_parameters(), "davda54")
    assert only["adaptive"] and only["eta"] == 0.0 and len(only["params"]) == len(named)
    start = flat({n: p.detach().numpy() for n, p in tiny_conv_net(0).named_parameters()})
    kwon, davda = flat(run_asam("kwon", 0, 5, **HYPER)), flat(run_asam("davda54", 0, 5, **HYPER))
    relative = np.linalg.norm(kwon - davda) / np.linalg.norm(kwon - start)
    assert relative > 0.05, relative  # measured 0.17 of the displacement after 5 steps (seed 0)


def test_asam_needs_the_parameter_names():
    model = tiny_conv_net(0)
    with pytest.raises(ConfigError, match="named_parameters"):
        build_optimizer("asam", model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="asam_variant"):
        build_optimizer("asam", model.named_parameters(), lr=0.1, asam_variant="foret")
    assert isinstance(build_optimizer("sam", model.named_parameters(), lr=0.1), SAM)


# ----------------------------------------------------------------------------------------------
# The trainer: the flags act.


def test_the_trainer_uses_the_asam_variant(tmp_path):
    """--asam-variant reaches the optimizer (real/phase.py passes the named parameters and the variant)."""
    finals = {}
    for variant in ("kwon", "davda54"):
        cfg = TrainConfig(**{**TINY, "useful": False, "separate_epoch": "auto", "optimizer": "asam", "rho": 0.5,
                             "asam_variant": variant, "out": str(tmp_path / variant)})
        summary = train(cfg)
        assert summary["status"] == "completed"
        finals[variant] = (summary["final_test_acc"], read_metrics_loss(tmp_path / variant))
    assert finals["kwon"] != finals["davda54"]


def read_metrics_loss(path: Path) -> float:
    from real.rundir import read_metrics

    return read_metrics(path)[-1]["train_loss"]


def test_the_trainer_gives_jtt_its_upweight(tmp_path):
    cfg = tiny(tmp_path, partition="jtt", jtt_upweight=7)
    summary = train(cfg)
    part = read_partition(tmp_path / "run")
    assert summary["status"] == "completed" and part["method"] == "jtt" and int(part["k"]) == 7
    np.testing.assert_array_equal(part["upsample"], part["logits"].argmax(1) != _train_labels(cfg))
    np.testing.assert_array_equal(part["multiplicities"], np.where(part["upsample"], 7, 1))
    assert summary["train_list_length"] == cfg.synthetic_train + 6 * int(part["upsample"].sum())


def test_a_run_stored_before_the_new_fields_resumes_as_what_it_computed():
    """ASAM was davda54's mode and JTT's multiplicity was --upsample-factor before asam_variant and
    jtt_upweight existed: a stored configuration without them compares equal to that computation,
    not to today's defaults (which would resume it as another optimizer or partition)."""
    from real.config import TrainConfig, computed_config, legacy_fields
    from real.rundir import config_differences

    old_asam = {k: v for k, v in computed_config(TrainConfig(optimizer="asam", asam_variant="davda54")).items()
                if k != "asam_variant"}
    assert legacy_fields(old_asam)["asam_variant"] == "davda54"
    assert config_differences(old_asam, TrainConfig(optimizer="asam", asam_variant="davda54")) == []
    assert [d[0] for d in config_differences(old_asam, TrainConfig(optimizer="asam"))] == ["asam_variant"]
    old_sgd = {k: v for k, v in computed_config(TrainConfig()).items() if k != "asam_variant"}
    assert config_differences(old_sgd, TrainConfig()) == []  # only ASAM runs had another meaning
    old_jtt = {k: v for k, v in computed_config(TrainConfig(useful=True, partition="jtt")).items()
               if k != "jtt_upweight"}
    old_jtt["upsample_factor"] = 6
    assert config_differences(old_jtt, TrainConfig(useful=True, partition="jtt", jtt_upweight=6)) == []
