"""USEFUL in a plain PyTorch loop: real.useful.loader_outputs / partition_outputs and
real.sampler.UpsampleSampler.  The example of docs/training.md is run as written, on a generated data
set, and its partition is the trainer's on the same model; the sampler's shards are those of
DistributedSampler's contract and, with drop_last, the trainer's order.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from real.augment import normalize
from real.config import PARTITIONS
from theory.useful import JTT_UPWEIGHT
from real.datasets import load_dataset
from real.models import build_model
from real.phase import epoch_seed
from real.sampler import UpsampleSampler, epoch_shard
from real.useful import (
    compute_outputs,
    loader_outputs,
    make_partition,
    partition_outputs,
)
from theory.plumbing.config import ConfigError

DOC = REPO / "docs" / "training.md"


def doc_example() -> str:
    """The python block of docs/training.md's section "USEFUL in your own training loop"."""
    text = DOC.read_text()
    section = text.split("## USEFUL in your own training loop", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_documented_plain_loop_gives_the_trainers_partition():
    code = doc_example()
    assert len(code.strip().splitlines()) <= 25
    data = load_dataset("synthetic", seed=0, synthetic_train=160, synthetic_test=8)
    plain_set = TensorDataset(normalize(data.train_x, data.mean, data.std), data.train_y)
    models = []

    def make_model():
        torch.manual_seed(0)
        models.append(build_model("cnn-small", in_channels=data.in_channels, num_classes=data.num_classes,
                                  image_size=data.image_size))
        return models[-1]

    torch.manual_seed(1)  # the example's shuffled loader draws from the global generator
    ns = {"make_model": make_model, "train_set": plain_set, "plain_set": plain_set, "separate_epochs": 2, "epochs": 1}
    exec(compile(code, str(DOC), "exec"), ns)
    assert len(models) == 2
    # The trainer's outputs (its uint8 format, normalized on the fly) of the model the example split with.
    logits, losses = compute_outputs(ns["model"], data.train_x, data.train_y, mean=data.mean, std=data.std)
    labels = data.train_y.numpy()
    assert np.array_equal(ns["labels"], labels)
    np.testing.assert_allclose(ns["logits"], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ns["losses"], losses, rtol=1e-5, atol=1e-6)
    trainer = make_partition("useful", logits, labels, losses, k=2, seed=0)
    part = ns["part"]
    assert np.array_equal(part.upsample, trainer.upsample) and part.method == "useful"
    assert 0 < part.upsample.sum() < len(labels)  # a real split, not all or nothing
    # The retraining saw the upsampled list: upsampled examples twice, the others once.
    seen = Counter(list(ns["sampler"]))
    assert [seen[i] for i in range(len(labels))] == part.multiplicities.tolist()


# ----------------------------------------------------------------------------------------------
# partition_outputs and loader_outputs.


@pytest.mark.parametrize("method", PARTITIONS)
def test_partition_outputs_is_make_partition(method):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=200)
    logits = rng.normal(size=(200, 4)) + 3 * np.eye(4)[labels] * rng.integers(0, 2, size=(200, 1))
    losses = -(logits - np.log(np.exp(logits).sum(1, keepdims=True)))[np.arange(200), labels]
    ours = partition_outputs(torch.as_tensor(logits), torch.as_tensor(labels), torch.as_tensor(losses), k=3, seed=5,
                             method=method, quantile=0.7)
    ref = make_partition(method, logits, labels, losses, k=3, seed=5, quantile=0.7)
    assert np.array_equal(ours.upsample, ref.upsample) and np.array_equal(ours.multiplicities, ref.multiplicities)
    assert ours.method == method and set(ours.multiplicities.tolist()) <= ({1, JTT_UPWEIGHT} if method == "jtt" else {1, 3})
    with pytest.raises(ConfigError, match="method"):
        partition_outputs(logits, labels, losses, method="clusters")


def test_loader_outputs_eval_mode_order_and_refusals():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3))
    x, y = torch.randn(50, 5), torch.randint(0, 3, (50,))
    model.train()
    logits, labels, losses = loader_outputs(model, DataLoader(TensorDataset(x, y), batch_size=16))
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        ref = model(x).double()
    np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-6, atol=1e-6)  # eval mode: running stats, no dropout
    np.testing.assert_allclose(losses, torch.nn.functional.cross_entropy(ref, y, reduction="none").numpy(), rtol=1e-6)
    assert np.array_equal(labels, y.numpy()) and logits.dtype == losses.dtype == np.float64
    with pytest.raises(ConfigError, match="shuffle"):
        loader_outputs(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
    with pytest.raises(ConfigError, match="batch"):
        loader_outputs(model, [])


# ----------------------------------------------------------------------------------------------
# The sampler.


def epoch_sequence(m, replicas, seed, epoch, drop_last, shuffle=True) -> tuple[list[int], list[list[int]]]:
    """The epoch's list as the ranks see it, re-interleaved (entry i of rank r is entry i*R + r)."""
    shards = []
    for rank in range(replicas):
        s = UpsampleSampler(m, num_replicas=replicas, rank=rank, seed=seed, drop_last=drop_last, shuffle=shuffle)
        s.set_epoch(epoch)
        shards.append(list(s))
        assert len(shards[-1]) == len(s)
    return [shards[r][i] for i in range(len(shards[0])) for r in range(replicas)], shards


@settings(max_examples=60, deadline=None)
@given(m=st.lists(st.integers(0, 3), min_size=1, max_size=30).filter(lambda m: sum(m) > 0),
       replicas=st.integers(1, 5), seed=st.integers(0, 2**31 - 1), epoch=st.integers(0, 10**6),
       drop_last=st.booleans(), shuffle=st.booleans())
def test_sampler_shards_follow_distributed_sampler(m, replicas, seed, epoch, drop_last, shuffle):
    full = np.repeat(np.arange(len(m)), m).tolist()
    length = len(full)
    seq, shards = epoch_sequence(m, replicas, seed, epoch, drop_last, shuffle)
    per_rank = length // replicas if drop_last else math.ceil(length / replicas)
    assert all(len(s) == per_rank for s in shards)  # equal shard lengths
    head = seq[: min(length, len(seq))]
    if drop_last:  # a prefix of a permutation of the list: fewer than R entries left out
        assert not Counter(seq) - Counter(full) and length - len(seq) < replicas
    else:  # a permutation of the list, then its own first entries up to a multiple of R
        assert Counter(head) == Counter(full) and len(seq) - length < replicas
        assert seq[length:] == (seq[:length] * replicas)[: len(seq) - length]
    if not shuffle:
        assert head == full[: len(head)]
    # The trainer's rule (its train_epoch before the order moved to real.sampler), with drop_last.
    if drop_last and shuffle:
        perm = torch.randperm(length, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
        order = torch.as_tensor(full)[perm]
        for rank in range(replicas):
            assert shards[rank] == order[rank : (length // replicas) * replicas : replicas].tolist()
            assert epoch_shard(length, seed=seed, epoch=epoch, rank=rank, num_replicas=replicas).tolist() == \
                perm[rank : (length // replicas) * replicas : replicas].tolist()


def test_sampler_is_seeded_per_epoch_and_feeds_a_dataloader():
    m = np.array([2, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1])
    s = UpsampleSampler(m, seed=7)
    first = list(s)
    assert list(s) == first == list(UpsampleSampler(m, seed=7))  # no set_epoch: the same epoch again
    s.set_epoch(1)
    second = list(s)
    assert second != first and Counter(second) == Counter(first)
    assert list(UpsampleSampler(m, seed=8)) != first
    batches = DataLoader(TensorDataset(torch.arange(len(m))), batch_size=7, sampler=s)
    assert torch.cat([b[0] for b in batches]).tolist() == second
    assert len(s) == len(first) == m.sum()


def test_sampler_reads_the_process_group(monkeypatch):
    m = np.ones(10, dtype=np.int64)
    assert (UpsampleSampler(m).num_replicas, UpsampleSampler(m).rank) == (1, 0)  # no process group
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 3)
    s = UpsampleSampler(m, seed=2)
    assert (s.num_replicas, s.rank, len(s)) == (4, 3, 3)
    assert list(s) == list(UpsampleSampler(m, seed=2, num_replicas=4, rank=3))


@pytest.mark.parametrize("kwargs, field", [
    (dict(multiplicities=[1, -1]), "multiplicities"),
    (dict(multiplicities=[0, 0]), "multiplicities"),
    (dict(multiplicities=[1.5, 1.0]), "multiplicities"),
    (dict(multiplicities=[[1, 2]]), "multiplicities"),
    (dict(multiplicities=[1, 2], num_replicas=2, rank=2), "rank"),
    (dict(multiplicities=[1, 2], num_replicas=0), "num_replicas"),
    (dict(multiplicities=[1, 2], seed=-1), "seed"),
])
def test_sampler_refuses_bad_input(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        UpsampleSampler(kwargs.pop("multiplicities"), **kwargs)
