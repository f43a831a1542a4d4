"""USEFUL's upsampled training list for any PyTorch loop: a ``Sampler`` and the epoch order it shares
with the trainer.

After the split (:func:`real.useful.partition_outputs`), USEFUL retrains on the list
``repeat(arange(n), multiplicities)``: an upsampled example appears ``k`` times per epoch, the others
once.  :class:`UpsampleSampler` yields that list, in a new seeded order each epoch, for a plain
``DataLoader(dataset, batch_size=..., sampler=UpsampleSampler(partition.multiplicities))``.

It is DDP-aware the way ``torch.utils.data.DistributedSampler`` is: ``num_replicas`` and ``rank``
(read from ``torch.distributed`` when it is initialized, else one process), ``set_epoch(epoch)`` before
each epoch's loader is iterated (without it every epoch repeats epoch 0's order), every rank draws the
same permutation of the list and takes every ``num_replicas``-th entry from its ``rank``, so the
shards are disjoint and of equal length ``len(sampler)``:

* ``drop_last=False`` (the default, as DistributedSampler): the permutation is extended by its own
  first entries up to a multiple of ``num_replicas``, so a few entries are seen twice in that epoch;
* ``drop_last=True``: the permutation is cut to a multiple of ``num_replicas``, so up to
  ``num_replicas - 1`` entries are not seen in that epoch (the trainer's rule).

With one process the two agree (nothing to pad or drop).  Batching, and dropping a last incomplete
batch, is the DataLoader's ``batch_size`` / ``drop_last``, not the sampler's.

The epoch's order is :func:`epoch_shard`, the function the trainer's ``train_epoch`` draws its own
order from: with ``drop_last=True``, the same ``seed`` and the same epoch, a plain loop visits the
examples in the order ``useful-train`` does.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from theory.plumbing.config import check, check_int

from .phase import epoch_seed

__all__ = ["UpsampleSampler", "epoch_shard"]


def epoch_shard(length: int, *, seed: int, epoch: int, rank: int = 0, num_replicas: int = 1, shuffle: bool = True,
                drop_last: bool = True) -> torch.Tensor:
    """Positions ``0 .. length - 1`` that process ``rank`` of ``num_replicas`` visits in ``epoch``
    (a CPU int64 tensor): a permutation seeded by :func:`~real.phase.epoch_seed` ``(seed, epoch)``
    (the identity without ``shuffle``), cut (``drop_last``) or extended by its first entries to a
    multiple of ``num_replicas``, then every ``num_replicas``-th entry from ``rank``."""
    if shuffle:
        order = torch.randperm(length, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    else:
        order = torch.arange(length)
    if drop_last:
        order = order[: (length // num_replicas) * num_replicas]
    else:
        total = math.ceil(length / num_replicas) * num_replicas
        order = order.repeat(math.ceil(total / length))[:total] if length else order
    return order[rank::num_replicas]


class UpsampleSampler(Sampler[int]):
    """Indices of ``repeat(arange(n), multiplicities)`` in a seeded order per epoch, sharded over
    processes (see the module's docstring for the DDP and ``drop_last`` semantics).

    Parameters
    ----------
    multiplicities : (n,) non-negative integers: how often each example of the data set appears in an
        epoch (``Partition.multiplicities``: k for the upsampled examples, 1 for the rest).
    num_replicas, rank : the process group's size and this process's rank; by default
        ``torch.distributed``'s when it is initialized, else 1 and 0.
    shuffle : a new permutation each epoch (else the list in order).
    seed : the seed of the permutations; the same on every rank.
    drop_last : cut the list to a multiple of ``num_replicas`` instead of padding it.

    Every rank must be given the same ``multiplicities`` (compute the split on rank 0 and broadcast
    it, as the trainer does).
    """

    def __init__(self, multiplicities, *, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        if isinstance(multiplicities, torch.Tensor):
            multiplicities = multiplicities.detach().cpu().numpy()
        m = np.asarray(multiplicities)
        check(m.ndim == 1 and m.size > 0, "multiplicities", m.shape, "a non-empty 1-d array")
        check(np.issubdtype(m.dtype, np.integer) and bool(np.all(m >= 0)) and int(m.sum()) > 0, "multiplicities",
              m.dtype, "non-negative integers, not all 0")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        check_int("num_replicas", num_replicas, low=1)
        check_int("rank", rank, low=0, high=num_replicas - 1)
        check_int("seed", seed, low=0, high=2**63 - 1)
        check(isinstance(shuffle, bool), "shuffle", shuffle, "true or false")
        check(isinstance(drop_last, bool), "drop_last", drop_last, "true or false")
        self.index_list = torch.from_numpy(np.repeat(np.arange(len(m), dtype=np.int64), m.astype(np.int64)))
        self.num_replicas, self.rank, self.shuffle, self.seed, self.drop_last = num_replicas, rank, shuffle, seed, drop_last
        self.epoch = 0
        length = len(self.index_list)
        self.num_samples = length // num_replicas if drop_last else math.ceil(length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields (call it before every epoch)."""
        check_int("epoch", epoch, low=0)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        positions = epoch_shard(len(self.index_list), seed=self.seed, epoch=self.epoch, rank=self.rank,
                                num_replicas=self.num_replicas, shuffle=self.shuffle, drop_last=self.drop_last)
        return iter(self.index_list[positions].tolist())

    def __len__(self) -> int:
        return self.num_samples
