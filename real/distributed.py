"""Multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m real run ...`` starts N processes; each finds ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment and :func:`setup` joins the process group
(``nccl`` on CUDA, one GPU per process; ``gloo`` on CPU).  A plain ``useful-train run`` is a world of
one and never touches ``torch.distributed``.

The trainer's division of labour:

* every rank holds the whole data set and draws the *same* seeded permutation of the (upsampled)
  index list each epoch, then takes its shard ``perm[rank::world]`` (so an epoch visits each entry
  of the list once, over all ranks); ``--batch-size`` is the global batch, split evenly;
* DDP all-reduces the gradients (both passes of SAM);
* metrics are sums all-reduced over ranks (:func:`all_reduce_sum`);
* the USEFUL split is computed on rank 0 and its mask broadcast (:func:`broadcast_array`);
* only rank 0 writes files (and holds the run lock); decisions rank 0 takes alone (refusing a run
  directory, resuming) are broadcast (:func:`broadcast_object`) so that all ranks act alike.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "setup",
    "session",
    "cleanup",
    "resolve_device",
    "all_reduce_sum",
    "all_reduce_max",
    "broadcast_array",
    "broadcast_object",
    "wrap_ddp",
    "DEVICES",
]

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its device, whether it writes files."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cuda``: requires CUDA (a ConfigError on ``--device``)."""
    from theory.plumbing.config import ConfigError

    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", message="--device: got 'cuda', but CUDA is not available on this machine")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def setup(preference: str = "auto") -> DistInfo:
    """Join the process group if started by ``torchrun`` (``WORLD_SIZE > 1``); else a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


@contextlib.contextmanager
def session(preference: str = "auto"):
    """:func:`setup`, then :func:`cleanup` when the block ends (however it ends)."""
    info = setup(preference)
    try:
        yield info
    finally:
        cleanup()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (identity in a world of one)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_array(array: np.ndarray | None, *, shape: tuple[int, ...], dtype: np.dtype, device: torch.device) -> np.ndarray:
    """Rank 0's ``array`` on every rank (others pass None); ``shape``/``dtype`` known to all."""
    if not _active():
        assert array is not None
        return np.asarray(array, dtype=dtype)
    if dist.get_rank() == 0:
        t = torch.as_tensor(np.asarray(array, dtype=dtype)).to(device)
    else:
        t = torch.empty(shape, dtype=torch.from_numpy(np.zeros(0, dtype=dtype)).dtype, device=device)
    dist.broadcast(t, src=0)
    return t.cpu().numpy()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when distributed, else ``model`` itself."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    if info.device.type == "cuda":
        return DDP(model, device_ids=[info.device.index], output_device=info.device.index)
    return DDP(model)
