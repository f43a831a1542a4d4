"""Multi-process training with ``torchrun`` (DistributedDataParallel).

``torchrun --nproc_per_node N -m real run ...`` starts N processes; :func:`setup` reads ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` and joins the process group (``nccl`` on CUDA, one GPU per process;
``gloo`` on CPU).  A plain ``useful-train run`` is a world of one and never touches ``torch.distributed``.

Every rank holds the whole data set and takes its shard ``perm[rank::world]`` of the same seeded
permutation (``--batch-size`` is the global batch); DDP all-reduces the gradients (both passes of SAM);
metrics are sums all-reduced over ranks; rank 0 computes the USEFUL split (its mask broadcast), writes
every file, holds the run lock, and broadcasts the decisions it takes alone so that all ranks act alike.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from theory.plumbing.config import ConfigError

__all__ = ["DistInfo", "setup", "session", "resolve_device", "all_reduce_sum", "all_reduce_max",
           "broadcast_array", "broadcast_object", "wrap_ddp", "DEVICES"]

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
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", message="--device: got 'cuda', but CUDA is not available on this machine")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def setup(preference: str = "auto") -> DistInfo:
    """Join the process group if started by ``torchrun`` (``WORLD_SIZE > 1``); else a world of one."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(preference, local_rank)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world,
                                **({"device_id": device} if cuda else {}))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


@contextlib.contextmanager
def session(preference: str = "auto"):
    """:func:`setup`, then leave the process group (if any) however the block ends."""
    try:
        yield setup(preference)
    finally:
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
    """Maximum over ranks, in place (identity in a world of one)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_array(array: np.ndarray | None, *, shape: tuple[int, ...], dtype: np.dtype,
                    device: torch.device) -> np.ndarray:
    """Rank 0's ``array`` on every rank (the others pass None; ``shape`` and ``dtype`` known to all)."""
    if not _active():
        assert array is not None
        return np.asarray(array, dtype=dtype)
    local = array if dist.get_rank() == 0 else np.empty(shape, dtype=dtype)
    t = torch.from_numpy(np.array(local, dtype=dtype)).to(device)
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
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
