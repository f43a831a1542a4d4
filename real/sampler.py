"""USEFUL's upsampled training list for any PyTorch loop: ``DataLoader(dataset, batch_size=...,
sampler=UpsampleSampler(multiplicities))`` visits ``repeat(arange(n), multiplicities)`` once per epoch.

As ``torch.utils.data.DistributedSampler``: ``num_replicas`` and ``rank`` default to the process group's;
call ``set_epoch(epoch)`` before each epoch; every rank draws the same permutation and takes every
``num_replicas``-th entry, so the shards are disjoint.  ``drop_last=False`` pads the permutation with its
own first entries to a multiple of ``num_replicas``, ``True`` cuts it (the trainer's rule).  The order is
:func:`epoch_shard`, the trainer's own: with ``drop_last=True`` and the same ``seed``, a plain loop visits
the examples in the order ``useful-train`` does.
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
    """The positions ``0 .. length - 1`` that process ``rank`` visits in ``epoch`` (CPU int64): a permutation
    seeded by ``epoch_seed(seed, epoch)`` (the identity without ``shuffle``), cut or padded to a multiple
    of ``num_replicas``, then every ``num_replicas``-th entry from ``rank``."""
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    order = torch.randperm(length, generator=generator) if shuffle else torch.arange(length)
    if drop_last:
        order = order[: length // num_replicas * num_replicas]
    elif length:
        total = math.ceil(length / num_replicas) * num_replicas
        order = order.repeat(math.ceil(total / length))[:total]
    return order[rank::num_replicas]


class UpsampleSampler(Sampler[int]):
    """The indices of ``repeat(arange(n), multiplicities)`` in a seeded order per epoch, sharded over
    processes.  ``multiplicities``: (n,) non-negative integers, not all 0 (``Partition.multiplicities``),
    the same on every rank (compute the split on rank 0 and broadcast it, as the trainer does)."""

    def __init__(self, multiplicities, *, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False):
        m = multiplicities.detach().cpu().numpy() if torch.is_tensor(multiplicities) else np.asarray(multiplicities)
        check(m.ndim == 1 and m.size > 0, "multiplicities", m.shape, "a non-empty 1-d array")
        check(np.issubdtype(m.dtype, np.integer) and bool(np.all(m >= 0)) and int(m.sum()) > 0, "multiplicities",
              m.dtype, "non-negative integers, not all 0")
        group = torch.distributed.is_available() and torch.distributed.is_initialized()
        num_replicas = (torch.distributed.get_world_size() if group else 1) if num_replicas is None else num_replicas
        rank = (torch.distributed.get_rank() if group else 0) if rank is None else rank
        check_int("num_replicas", num_replicas, low=1)
        check_int("rank", rank, low=0, high=num_replicas - 1)
        check_int("seed", seed, low=0, high=2**63 - 1)
        check(isinstance(shuffle, bool), "shuffle", shuffle, "true or false")
        check(isinstance(drop_last, bool), "drop_last", drop_last, "true or false")
        self.index_list = torch.from_numpy(np.repeat(np.arange(len(m), dtype=np.int64), m.astype(np.int64)))
        self.num_replicas, self.rank, self.shuffle = num_replicas, rank, shuffle
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration yields (call it before every epoch)."""
        check_int("epoch", epoch, low=0)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        positions = epoch_shard(len(self.index_list), seed=self.seed, epoch=self.epoch, rank=self.rank,
                                num_replicas=self.num_replicas, shuffle=self.shuffle, drop_last=self.drop_last)
        return iter(self.index_list[positions].tolist())

    def __len__(self) -> int:
        length = len(self.index_list)
        return length // self.num_replicas if self.drop_last else math.ceil(length / self.num_replicas)
