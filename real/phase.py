"""One training phase (a seeded model, its optimizer, schedule, augmentation and index list) and a run's
process settings.  A USEFUL run has two phases built the same way: ``separate`` (the original list, until
the split) and ``main`` (a fresh model from the same seed on the upsampled list); a plain run, ``main``.

Each epoch's permutation, augmentation, MixUp and global torch RNG are reseeded from ``(seed, epoch[,
rank])`` (:func:`epoch_seed`), so an epoch is a function of the state at its start: resuming after any
epoch replays exactly the same computation, and no RNG state needs saving.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from . import distributed as D
from .augment import Augmenter
from .config import TrainConfig
from .data import TrainData
from .learning_stats import LearningStats
from .models import build_model
from .optim import build_optimizer
from .rundir import state_digest
from .schedules import build_schedule

__all__ = ["Phase", "Numerics", "build_phase", "init_model", "epoch_seed", "steps_per_epoch", "process_settings",
           "resolve_numerics"]


def init_model(cfg: TrainConfig, data: TrainData) -> torch.nn.Module:
    """The model's initialization for ``cfg.seed`` (on the CPU): the same call gives the same weights,
    which is how the main phase of a USEFUL run restarts "from scratch, same seed"."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, in_channels=data.in_channels, num_classes=data.num_classes,
                           image_size=data.image_size)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch's randomness (epoch counted from 0 within its phase).  It does not depend on
    the phase: with k = 1 the main phase's first epochs repeat the pre-split ones exactly."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def steps_per_epoch(list_length: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations per epoch: each rank takes ``list_length // world_size`` entries in batches of
    ``batch_size // world_size``; a final batch of one example is dropped (BatchNorm needs two)."""
    shard, per_rank = list_length // world_size, batch_size // world_size
    return shard // per_rank + (1 if shard % per_rank > 1 else 0)


@dataclass(frozen=True)
class Numerics:
    """``--precision`` and ``--memory-format`` resolved once per run (:func:`resolve_numerics`): ``auto``
    is bf16 autocast and channels_last on CUDA, float32 and contiguous elsewhere."""
    device_type: str
    bf16: bool
    layout: torch.memory_format

    def autocast(self):  # the context of the forward passes
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


def resolve_numerics(cfg: TrainConfig, device: torch.device) -> Numerics:
    cuda = device.type == "cuda"
    channels_last = cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and cuda)
    return Numerics(device_type=device.type, bf16=cfg.precision == "bf16" or (cfg.precision == "auto" and cuda),
                    layout=torch.channels_last if channels_last else torch.contiguous_format)


@contextlib.contextmanager
def process_settings(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """``--deterministic``: fixed kernels, one CPU thread (results independent of the core count); on CUDA,
    kernels without a deterministic version (adaptive pooling's backward) warn instead of failing.
    Otherwise cuDNN autotuning and TF32 matmuls on CUDA.  Restored afterwards (many trainings per process)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    matmul = torch.get_float32_matmul_precision()
    try:
        if cfg.deterministic:
            if device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
                torch.use_deterministic_algorithms(True, warn_only=True)
            else:
                torch.set_num_threads(1)
                torch.use_deterministic_algorithms(True)
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        torch.set_float32_matmul_precision(matmul)


@dataclass
class Phase:
    """What one phase trains, on which index list, for how many steps per epoch."""
    name: str
    raw_model: torch.nn.Module  # the module whose state is saved
    model: torch.nn.Module  # what is called (DDP- and/or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    augmenter: Augmenter
    index_list: torch.Tensor  # (L,) int64 on the device: entries of the training set, with copies
    copies: torch.Tensor | None  # (L,) bool: entry is an extra copy that gets --copy-augment; else None
    weights: torch.Tensor | None  # (N,) per-example loss weights (--upweight), else None
    steps: int  # iterations of a full epoch
    init_digest: str
    numerics: Numerics  # precision and memory layout
    epoch: int = 0  # completed epochs
    observers: list[LearningStats] = field(default_factory=list)  # per-batch statistics (no numerics)

    def state_dict(self) -> dict:
        return {"phase": self.name, "epoch": self.epoch, "model": self.raw_model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "augmenter": self.augmenter.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.raw_model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.augmenter.load_state_dict(state["augmenter"])
        self.epoch = int(state["epoch"])


def build_phase(name: str, cfg: TrainConfig, data: TrainData, info: D.DistInfo, *,
                multiplicities: np.ndarray | None = None, numerics: Numerics | None = None) -> Phase:
    """A fresh model, optimizer and schedule over ``arange(N)``, or ``repeat(arange(N), multiplicities)`` in
    USEFUL's main phase (with ``--upweight``: ``arange(N)``, multiplicities as loss weights); ``cfg`` is trusted."""
    device = info.device
    numerics = numerics or resolve_numerics(cfg, device)
    raw = init_model(cfg, data)
    digest = state_digest(raw.state_dict())
    raw = raw.to(device=device, memory_format=numerics.layout)
    model = torch.compile(D.wrap_ddp(raw, info)) if cfg.compile else D.wrap_ddp(raw, info)
    optimizer = build_optimizer(cfg.optimizer, raw.named_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, rho=cfg.rho,
                                asam_variant=cfg.asam_variant)
    n, weights, copies = data.n_train, None, None
    if multiplicities is None or cfg.upweight:
        index_list = np.arange(n)
        if multiplicities is not None:
            weights = torch.as_tensor(multiplicities, dtype=torch.float32, device=device)
    else:
        index_list = np.repeat(np.arange(n), multiplicities)  # an example's copies are adjacent here
        if cfg.copy_augment != "none":  # every entry but the first of its example is an extra copy
            copies = torch.as_tensor(np.r_[False, index_list[1:] == index_list[:-1]], device=device)
    steps = steps_per_epoch(len(index_list), cfg.batch_size, info.world_size)
    scheduler = build_schedule(optimizer, name=cfg.schedule, epochs=cfg.epochs, steps_per_epoch=steps,
                               warmup_epochs=cfg.warmup_epochs, milestones=cfg.milestones, gamma=cfg.gamma)
    augmenter = Augmenter(mean=data.mean, std=data.std, augment=cfg.augment, trivial_augment=cfg.trivial_augment,
                          copy_augment=cfg.copy_augment, seed=cfg.seed, device=device)
    return Phase(name=name, raw_model=raw, model=model, optimizer=optimizer, scheduler=scheduler,
                 augmenter=augmenter, index_list=torch.as_tensor(index_list, dtype=torch.int64, device=device),
                 copies=copies, weights=weights, steps=steps, init_digest=digest, numerics=numerics)
