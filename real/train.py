"""The training loop (airbench / nanoGPT style: the data live on the device as uint8 tensors, each
epoch is a seeded permutation of an index list, batches are gathered and augmented on the device).

:func:`train` runs one configuration end to end and returns its summary.  A USEFUL run has two
phases, both resumable from ``checkpoint.pt``:

1. ``separate``: train from scratch for the separating epoch's number of epochs (on the first
   epochs of the full schedule), compute logits and losses on the un-augmented training set, split
   (``--partition``), write partition.npz;
2. ``main``: a fresh model and optimizer from the same seed, trained for ``--epochs`` epochs on the
   upsampled index list (or with loss weights k, ``--upweight``).

A run without ``--useful`` has only the ``main`` phase.  The run directory's files are described in
docs/training.md; all are written atomically by rank 0.

Randomness: the model's initialization is ``torch.manual_seed(seed)`` then ``build_model``; each
epoch's permutation, augmentation, MixUp and global torch RNG are reseeded from
``(seed, epoch[, rank])``, so an epoch is a function of the state at its start and of these
seeds: resuming after any epoch replays exactly the same computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from theory.plumbing.config import ConfigError
from theory.useful import Partition

from . import distributed as D
from .augment import Augmenter, mixup, normalize, symmetric_label_noise
from .checkpoint import (
    RUN_FILES,
    RunLock,
    RunLockError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    load_checkpoint,
    state_digest,
    write_jsonl,
)
from .config import RUN_CONTROL_FIELDS, TrainConfig, config_to_dict, default_out
from .datasets import Dataset, load_dataset
from .diagnostics import LearningStats, cluster_table
from .models import build_model
from .optim import build_optimizer, sam_step
from .schedules import build_schedule
from .useful import (
    auto_cap,
    auto_separate_epoch,
    compute_outputs,
    make_partition,
    partition_arrays,
    partition_from_mask,
    write_partition,
)

__all__ = ["train", "init_model", "load_training_data", "TrainData", "Diverged", "steps_per_epoch", "epoch_seed"]

log = logging.getLogger("real.train")

CHECKPOINT_VERSION = 1
NONFINITE_CHECK_EVERY = 50  # iterations between host syncs of the non-finite-loss flag on CUDA


class Diverged(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, phase: str, epoch: int, iteration: int, what: str = "loss"):
        self.phase, self.epoch, self.iteration = phase, epoch, iteration
        super().__init__(
            f"training diverged: non-finite {what} in {phase} epoch {epoch}, iteration {iteration} of the epoch"
        )


# ----------------------------------------------------------------------------------------------
# Setup helpers.


@dataclass
class TrainData:
    """The data set on the device: uint8 images, int64 labels (training labels possibly noisy)."""

    dataset: Dataset
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    flipped: np.ndarray | None = None  # label-noise mask (None without noise)

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])


def load_training_data(cfg: TrainConfig, device: torch.device) -> TrainData:
    """Load the data set (a :class:`~real.datasets.DatasetError` if missing), add label noise, move
    it to ``device`` once."""
    ds = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        seed=cfg.seed,
        synthetic_train=cfg.synthetic_train,
        synthetic_test=cfg.synthetic_test,
        long_tail_ratio=cfg.long_tail_ratio,
    )
    train_y, flipped = ds.train_y, None
    if cfg.label_noise > 0:
        noisy, flipped = symmetric_label_noise(
            ds.train_y.numpy(), rate=cfg.label_noise, num_classes=ds.num_classes, seed=cfg.seed
        )
        train_y = torch.from_numpy(np.ascontiguousarray(noisy, dtype=np.int64))
    return TrainData(
        dataset=ds,
        train_x=ds.train_x.to(device),
        train_y=train_y.to(device),
        test_x=ds.test_x.to(device),
        test_y=ds.test_y.to(device),
        flipped=flipped,
    )


def init_model(cfg: TrainConfig, ds: Dataset) -> torch.nn.Module:
    """The model's initialization for ``cfg.seed`` (on the CPU): the same call gives the same weights,
    which is how the main phase of a USEFUL run restarts "from scratch, same seed"."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_model(cfg.model, in_channels=ds.in_channels, num_classes=ds.num_classes, image_size=ds.image_size)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """Seed of one epoch's randomness (epoch counted from 0 within its phase).  It does not depend on
    the phase: USEFUL's main phase restarts with the same seeds as the pre-split phase, so with
    k = 1 its first epochs repeat the pre-split ones exactly (a test checks the restart this way)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def steps_per_epoch(list_length: int, batch_size: int, world_size: int = 1) -> int:
    """Iterations per epoch: each rank takes ``list_length // world_size`` entries in batches of
    ``batch_size // world_size``; a final batch of one example is dropped (BatchNorm needs two)."""
    shard = list_length // world_size
    per_rank = batch_size // world_size
    return shard // per_rank + (1 if shard % per_rank > 1 else 0)


def configure_determinism(cfg: TrainConfig, device: torch.device) -> None:
    """Deterministic mode: fixed kernels (``torch.use_deterministic_algorithms``), cuDNN
    deterministic, one CPU thread (results then do not depend on the core count).  On CUDA some
    kernels (e.g. adaptive average pooling's backward) have no deterministic version: they warn
    instead of failing, so CUDA runs are reproducible only up to those.  Otherwise: cuDNN autotuning
    and TF32 matmuls on CUDA."""
    if cfg.deterministic:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.set_num_threads(1)
            torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def _rng_states(device: torch.device) -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


# ----------------------------------------------------------------------------------------------
# One phase's model, optimizer and schedule.


@dataclass
class Phase:
    """The state of one phase: what is trained, on which index list, for how many epochs."""

    name: str
    raw_model: torch.nn.Module  # the module whose state is saved
    model: torch.nn.Module  # what is called (DDP- and/or compile-wrapped)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    augmenter: Augmenter
    index_list: torch.Tensor  # (L,) int64 on the device: entries of the training set, with copies
    weights: torch.Tensor | None  # (N,) per-example loss weights (--upweight), else None
    steps: int
    init_digest: str
    epoch: int = 0  # completed epochs
    stats: LearningStats | None = None  # per-example learning statistics of this phase


def build_phase(
    name: str,
    cfg: TrainConfig,
    data: TrainData,
    info: D.DistInfo,
    *,
    multiplicities: np.ndarray | None = None,
) -> Phase:
    """A fresh model (``init_model``), optimizer and schedule for ``cfg.epochs`` epochs over the
    index list (``arange(N)``, or ``repeat(arange(N), multiplicities)`` for USEFUL's main phase;
    with ``--upweight`` the list stays ``arange(N)`` and the multiplicities become loss weights)."""
    device = info.device
    raw = init_model(cfg, data.dataset)
    digest = state_digest(raw.state_dict())
    raw = raw.to(device)
    if device.type == "cuda":
        raw = raw.to(memory_format=torch.channels_last)
    model = D.wrap_ddp(raw, info)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(
        cfg.optimizer,
        raw.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        rho=cfg.rho,
    )
    n = data.n_train
    weights = None
    if multiplicities is None:
        index_list = np.arange(n)
    elif cfg.upweight:
        index_list = np.arange(n)
        weights = torch.as_tensor(multiplicities, dtype=torch.float32, device=device)
    else:
        index_list = np.repeat(np.arange(n), multiplicities)
    steps = steps_per_epoch(len(index_list), cfg.batch_size, info.world_size)
    if steps < 1:
        raise ConfigError("--batch-size", message=f"--batch-size: {len(index_list)} training examples over "
                          f"{info.world_size} process(es) give no batch of at least 2 examples")
    scheduler = build_schedule(
        optimizer,
        name=cfg.schedule,
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        warmup_epochs=cfg.warmup_epochs,
        milestones=cfg.milestones,
        gamma=cfg.gamma,
    )
    augmenter = Augmenter(
        mean=data.dataset.mean,
        std=data.dataset.std,
        crop_flip=cfg.augment == "crop-flip",
        trivial_augment=cfg.trivial_augment,
        seed=cfg.seed,
        device=device,
    )
    return Phase(
        name=name,
        raw_model=raw,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        augmenter=augmenter,
        index_list=torch.as_tensor(index_list, dtype=torch.int64, device=device),
        weights=weights,
        steps=steps,
        init_digest=digest,
    )


# ----------------------------------------------------------------------------------------------
# The loop.


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_epoch(ph: Phase, cfg: TrainConfig, data: TrainData, info: D.DistInfo) -> dict[str, float]:
    """One epoch of ``ph``; returns the train loss/accuracy (all ranks) and images seen."""
    device, rank, world = info.device, info.rank, info.world_size
    seed = epoch_seed(cfg.seed, ph.epoch)
    order = ph.index_list[torch.randperm(len(ph.index_list), generator=torch.Generator().manual_seed(seed)).to(device)]
    shard = order[rank : (len(order) // world) * world : world]  # same permutation, one shard per rank
    per_rank = cfg.batch_size // world
    local_seed = epoch_seed(cfg.seed, ph.epoch, rank + 1)
    ph.augmenter.generator.manual_seed(local_seed)
    mix_gen = torch.Generator(device=device).manual_seed(local_seed + 1) if cfg.mixup_alpha > 0 else None
    torch.manual_seed(local_seed + 2)  # anything drawing from the global RNG (dropout)
    num_classes = data.dataset.num_classes
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    seen = 0
    ph.model.train()
    bar = tqdm(total=ph.steps, desc=f"{ph.name} {ph.epoch + 1}", leave=False, disable=not (info.is_main and sys.stderr.isatty()))
    for step in range(ph.steps):
        idx = shard[step * per_rank : (step + 1) * per_rank]
        x = ph.augmenter(data.train_x[idx])
        y = data.train_y[idx]
        target = y
        if cfg.mixup_alpha > 0:
            x, target = mixup(x, y, alpha=cfg.mixup_alpha, num_classes=num_classes, generator=mix_gen)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        w = None if ph.weights is None else ph.weights[idx]

        def loss_fn(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            per_example = F.cross_entropy(logits.float(), t, label_smoothing=cfg.label_smoothing, reduction="none")
            return per_example.mean() if w is None else (per_example * w).sum() / w.sum()

        lr_used = ph.optimizer.param_groups[0]["lr"]
        with _autocast(device):
            loss, logits = sam_step(ph.model, ph.optimizer, loss_fn, x, target)
        ph.scheduler.step()
        hard = target.argmax(1) if target.ndim == 2 else target
        loss_sum += loss.double() * len(idx)
        correct += (logits.argmax(1) == hard).sum()
        if ph.stats is not None:  # per-example correctness on the example's own (training) label
            ph.stats.update(idx, logits.detach().argmax(1) == y, ph.epoch + 1)
        seen += len(idx)
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
        if device.type != "cuda" or (step + 1) % NONFINITE_CHECK_EVERY == 0 or step + 1 == ph.steps:
            bad_step = int(D.all_reduce_max(first_bad.clone()).item())  # one host sync
            if bad_step >= 0:
                bar.close()
                raise Diverged(ph.name, ph.epoch + 1, bad_step + 1)
        bar.update()
    bar.close()
    # A finite last loss can still leave non-finite weights or BatchNorm statistics: never save those.
    finite = torch.stack([torch.isfinite(t).all() for t in ph.raw_model.state_dict().values() if t.is_floating_point()]).all()
    if int(D.all_reduce_max((~finite).to(torch.int64)).item()):
        raise Diverged(ph.name, ph.epoch + 1, ph.steps, what="weights")
    totals = D.all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)]))
    loss_total, correct_total, n = totals.tolist()
    return {"train_loss": loss_total / n, "train_acc": correct_total / n, "images": n, "lr": lr_used}


@torch.no_grad()
def evaluate(model: torch.nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, ds: Dataset, cfg: TrainConfig,
             info: D.DistInfo) -> tuple[float, float]:
    """Test loss and accuracy (each rank evaluates its shard; sums all-reduced).  ``model`` is the
    unwrapped module: DDP's forward would broadcast buffers, a collective the ranks' unequal shards
    would call unequally often."""
    was_training = model.training
    model.eval()
    x_all, y_all = x_all[info.rank :: info.world_size], y_all[info.rank :: info.world_size]
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)
    for start in range(0, x_all.shape[0], cfg.eval_batch_size):
        x = normalize(x_all[start : start + cfg.eval_batch_size], ds.mean, ds.std)
        y = y_all[start : start + cfg.eval_batch_size]
        if info.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(info.device):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (logits.argmax(1) == y).sum()
        sums[2] += len(y)
    model.train(was_training)
    loss, correct, n = D.all_reduce_sum(sums).tolist()
    return loss / n, correct / n


# ----------------------------------------------------------------------------------------------
# The run directory.


# Files written at the end of a run besides checkpoint.RUN_FILES (removed by --overwrite too).
EXTRA_RUN_FILES = ("learning_stats.npz", "clusters.md")


class RunDir:
    """Paths of a run directory and the writers rank 0 uses."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.summary = self.path / "summary.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.partition = self.path / "partition.npz"
        self.curves = self.path / "curves.png"
        self.learning_stats = self.path / "learning_stats.npz"
        self.clusters = self.path / "clusters.md"

    def read_summary(self) -> dict | None:
        import json

        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None

    def has_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_FILES)

    def clear(self) -> None:
        for name in RUN_FILES + EXTRA_RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()


def _prepare_run_dir(cfg: TrainConfig, rd: RunDir) -> tuple[str, str | None]:
    """Rank 0: decide what to do with the run directory (lock already held).

    Returns ``("fresh" | "resume" | "done", error_message_or_None)``.
    """
    for name in RUN_FILES + EXTRA_RUN_FILES:  # temporary files of writes interrupted by a kill
        for tmp in rd.path.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    summary = rd.read_summary()
    if cfg.overwrite:
        rd.clear()
        return "fresh", None
    if summary is not None and summary.get("status") == "completed":
        if cfg.resume:
            return "done", None
        return "fresh", (f"--out: {rd.path} holds a completed run (summary.json status 'completed'); "
                         "pass --overwrite to replace it")
    if rd.has_run():
        if not cfg.resume:
            what = "a diverged run" if summary is not None and summary.get("status") == "diverged" else "an unfinished run"
            return "fresh", f"--out: {rd.path} holds {what}; pass --resume to continue it or --overwrite to start over"
        if not rd.checkpoint.exists():
            rd.clear()  # died before its first checkpoint: nothing to resume, start again
            return "fresh", None
        return "resume", None
    return "fresh", None


def _checkpoint_payload(cfg: TrainConfig, ph: Phase, state: "RunState", device: torch.device) -> dict:
    return {
        "version": CHECKPOINT_VERSION,
        "config": config_to_dict(cfg),
        "phase": ph.name,
        "epoch": ph.epoch,
        "model": ph.raw_model.state_dict(),
        "optimizer": ph.optimizer.state_dict(),
        "scheduler": ph.scheduler.state_dict(),
        "augmenter": ph.augmenter.state_dict(),
        "rng": _rng_states(device),
        "metrics": state.metrics,
        "partition": state.partition_state(),
        "separate_epoch": state.separate_epoch,
        "init_digest": state.init_digest,
        "learning_stats": {name: stats.state_dict() for name, stats in state.learning.items()},
        "totals": {"train_seconds": state.train_seconds, "train_images": state.train_images,
                   "wall_seconds": state.wall_seconds()},
    }


@dataclass
class RunState:
    """What carries over between epochs and phases (and is saved in the checkpoint)."""

    metrics: list[dict] = field(default_factory=list)
    partition: Partition | None = None
    separate_epoch: int | None = None
    init_digest: dict[str, str] = field(default_factory=dict)
    train_seconds: float = 0.0
    train_images: float = 0.0
    wall_before: float = 0.0  # wall seconds of earlier sessions (before a resume)
    learning: dict[str, LearningStats] = field(default_factory=dict)  # per phase name
    session_start: float = field(default_factory=time.perf_counter)

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.session_start

    def partition_state(self) -> dict | None:
        if self.partition is None:
            return None
        return {"upsample": self.partition.upsample, "k": self.partition.k, "method": self.partition.method}


def _save_epoch(cfg: TrainConfig, rd: RunDir, ph: Phase, state: RunState, info: D.DistInfo) -> None:
    """Checkpoint first, then metrics.jsonl (which may lag the checkpoint, never lead it)."""
    if info.is_main:
        atomic_torch_save(_checkpoint_payload(cfg, ph, state, info.device), rd.checkpoint)
        write_jsonl(rd.metrics, state.metrics)


def _run_epochs(ph: Phase, cfg: TrainConfig, data: TrainData, info: D.DistInfo, state: RunState, rd: RunDir,
                until) -> None:
    """Train ``ph`` epoch by epoch until ``until(ph.epoch)`` holds; log, record, checkpoint each."""
    while not until(ph.epoch):
        start = time.perf_counter()
        stats = train_epoch(ph, cfg, data, info)
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        train_time = time.perf_counter() - start
        ph.epoch += 1
        if ph.stats is not None:  # one host transfer of 2 n int32 (summed over ranks)
            ph.stats.end_epoch(ph.epoch, all_reduce=D.all_reduce_sum if info.world_size > 1 else None)
        test_loss, test_acc = evaluate(ph.raw_model, data.test_x, data.test_y, data.dataset, cfg, info)
        row = {
            "phase": ph.name,
            "epoch": ph.epoch,
            "train_loss": stats["train_loss"],
            "train_acc": stats["train_acc"],
            "test_loss": test_loss,
            "test_acc": test_acc,
            "lr": stats["lr"],  # the learning rate of the epoch's last iteration
            "seconds": time.perf_counter() - start,
            "images_per_second": stats["images"] / max(train_time, 1e-9),
        }
        state.metrics.append(row)
        state.train_seconds += train_time
        state.train_images += stats["images"]
        if info.is_main:
            total = cfg.epochs if ph.name == "main" else (state.separate_epoch or "?")
            log.info("%s epoch %d/%s  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  %.1fs",
                     ph.name, ph.epoch, total, row["train_loss"], row["train_acc"], test_loss, test_acc,
                     row["lr"], row["seconds"])
        _save_epoch(cfg, rd, ph, state, info)


def _restore(ph: Phase, ckpt: dict, device: torch.device) -> None:
    ph.raw_model.load_state_dict(ckpt["model"])
    ph.optimizer.load_state_dict(ckpt["optimizer"])
    ph.scheduler.load_state_dict(ckpt["scheduler"])
    ph.augmenter.load_state_dict(ckpt["augmenter"])
    _set_rng_states(ckpt["rng"], device)
    ph.epoch = int(ckpt["epoch"])


def _decide_separate_epoch(cfg: TrainConfig, state: RunState, num_classes: int) -> int | None:
    if cfg.separate_epoch != "auto":
        done = sum(1 for m in state.metrics if m["phase"] == "separate")
        return int(cfg.separate_epoch) if done >= int(cfg.separate_epoch) else None
    errors = [1.0 - m["train_acc"] for m in state.metrics if m["phase"] == "separate"]
    return auto_separate_epoch(errors, initial_error=1.0 - 1.0 / num_classes, cap=auto_cap(cfg.epochs))


def _split(cfg: TrainConfig, ph: Phase, data: TrainData, info: D.DistInfo, state: RunState, rd: RunDir) -> Partition:
    """Outputs on the un-augmented training set, the partition (rank 0, mask broadcast), partition.npz."""
    n, k = data.n_train, cfg.upsample_factor
    mask = None
    if info.is_main:
        logits, losses = compute_outputs(
            ph.raw_model, data.train_x, data.train_y, mean=data.dataset.mean, std=data.dataset.std,
            batch_size=cfg.eval_batch_size, channels_last=info.device.type == "cuda",
        )
        labels = data.train_y.cpu().numpy()
        partition = make_partition(cfg.partition, logits, labels, losses, k=k, seed=cfg.seed, quantile=cfg.quantile)
        mask = partition.upsample
        arrays = partition_arrays(partition, labels, losses, num_classes=data.dataset.num_classes,
                                  separate_epoch=int(state.separate_epoch), upweight=cfg.upweight, flipped=data.flipped)
        write_partition(rd.partition, arrays)
        log.info("split at epoch %d (%s, k=%d): %d of %d examples upsampled%s", state.separate_epoch, cfg.partition,
                 k, int(mask.sum()), n, " (as loss weights)" if cfg.upweight else "")
    mask = D.broadcast_array(mask, shape=(n,), dtype=np.bool_, device=info.device)
    if info.is_main:
        return partition
    return partition_from_mask(mask, k=k, method=cfg.partition)


# ----------------------------------------------------------------------------------------------
# Entry point.


def train(cfg: TrainConfig) -> dict:
    """Run ``cfg`` (fresh, or resumed with ``cfg.resume``) and return summary.json's content.

    Raises :class:`~theory.plumbing.config.ConfigError` for a refused run directory and
    :class:`~real.datasets.DatasetError` for missing data (before anything is written).  A run that
    diverges returns a summary with status ``"diverged"``.
    """
    info = D.setup(cfg.device)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        return _train(cfg, info)
    finally:
        torch.set_num_threads(threads)  # leave the process as it was (tests run many trainings)
        torch.use_deterministic_algorithms(deterministic)
        D.cleanup()


def _train(cfg: TrainConfig, info: D.DistInfo) -> dict:
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=default_out(cfg))
    if cfg.batch_size % info.world_size:
        raise ConfigError("--batch-size", cfg.batch_size, f"a multiple of the number of processes ({info.world_size})")
    configure_determinism(cfg, info.device)
    data = load_training_data(cfg, info.device)  # DatasetError before anything is written
    rd = RunDir(cfg.out)
    lock = RunLock(rd.path)
    decision, error = "fresh", None
    if info.is_main:
        try:
            lock.acquire()
        except RunLockError as err:
            error = f"--out: {err}"
        if error is None:
            decision, error = _prepare_run_dir(cfg, rd)
    decision, error = D.broadcast_object((decision, error))
    try:
        if error is not None:
            raise ConfigError("--out", message=error)
        if decision == "done":
            log.info("%s is already completed; nothing to resume", rd.path)
            return rd.read_summary()
        ckpt = load_checkpoint(rd.checkpoint) if decision == "resume" else None
        if ckpt is not None:
            diff = stored_config_differences(ckpt["config"], cfg)
            if diff:
                raise ConfigError(diff[0][0], message=(
                    f"--resume: the configuration differs from the run in {rd.path}: "
                    + ", ".join(f"--{name.replace('_', '-')} is {now!r}, was {then!r}" for name, then, now in diff)))
        if info.is_main:
            atomic_write_json(rd.config, config_to_dict(cfg))
        return _train_phases(cfg, info, data, rd, ckpt)
    finally:
        if info.is_main:
            lock.release()


def stored_config_differences(stored: dict, cfg: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, stored value, current value)`` for each field, other than the run-control ones
    (:data:`~real.config.RUN_CONTROL_FIELDS`), where a stored config.json differs from ``cfg``."""
    current = config_to_dict(cfg)
    return [
        (name, stored.get(name), current[name])
        for name in current
        if name not in RUN_CONTROL_FIELDS and stored.get(name) != current[name]
    ]


def _attach_stats(ph: Phase, state: RunState, data: TrainData, info: D.DistInfo) -> None:
    """Give ``ph`` its :class:`~real.diagnostics.LearningStats` (restored from the checkpoint when
    resuming, else new).  They only count on the device: no RNG is drawn, no numerics change."""
    if ph.name not in state.learning:
        state.learning[ph.name] = LearningStats(data.n_train, device=info.device)
    ph.stats = state.learning[ph.name]


def write_learning_stats(rd: RunDir, state: RunState) -> None:
    """``learning_stats.npz`` (the main phase's ``forgetting_count``, ``first_learned_epoch``,
    ``learned_from_epoch``, ``presentations``, ``epochs``, ``history``; the pre-split phase's with the
    prefix ``separate_``; ``upsample`` when there is a partition) and, with a partition,
    ``clusters.md`` (:func:`~real.diagnostics.cluster_table` of the upsampled cluster against the rest)."""
    import io

    from .checkpoint import atomic_write_text

    if not state.learning:
        return
    arrays: dict[str, np.ndarray] = {}
    results = {name: stats.result() for name, stats in state.learning.items()}
    for name, result in results.items():
        prefix = "" if name == "main" else f"{name}_"
        for key, value in result.items():
            arrays[prefix + key] = np.asarray(value)
    mask = None
    if state.partition is not None:
        mask = np.asarray(state.partition.upsample, dtype=bool)
        arrays["upsample"] = mask
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(rd.learning_stats, buffer.getvalue())
    if mask is None:
        return
    text = ["# Learning statistics of the upsampled cluster and the rest", "",
            f"Partition: {state.partition.method}, k = {state.partition.k}, {int(mask.sum())} of {mask.size} "
            f"examples upsampled at epoch {state.separate_epoch}.  An example counts as correct in an epoch "
            "when its minibatch prediction on its (augmented) training input was right at every presentation "
            "of the epoch; forgetting = correct in one epoch, wrong in the next (see real/diagnostics.py).", ""]
    titles = {"main": "Main phase (trained on the upsampled data)",
              "separate": "Pre-split phase (the epochs before the split, original data)"}
    for name in ("main", "separate"):
        if name in results and len(results[name]["epochs"]):
            epochs = results[name]["epochs"]
            text += [f"## {titles[name]}: epochs {int(epochs[0])}-{int(epochs[-1])}", "",
                     cluster_table(results[name], mask), ""]
    atomic_write_text(rd.clusters, "\n".join(text))


def _train_phases(cfg: TrainConfig, info: D.DistInfo, data: TrainData, rd: RunDir, ckpt: dict | None) -> dict:
    state = RunState()
    if ckpt is not None:
        state.metrics = list(ckpt["metrics"])
        state.separate_epoch = ckpt["separate_epoch"]
        state.init_digest = dict(ckpt["init_digest"])
        state.train_seconds = ckpt["totals"]["train_seconds"]
        state.train_images = ckpt["totals"]["train_images"]
        state.wall_before = ckpt["totals"]["wall_seconds"]
        for name, stats_state in (ckpt.get("learning_stats") or {}).items():
            stats = LearningStats(data.n_train, device=info.device)
            stats.load_state_dict(stats_state)
            state.learning[name] = stats
        if ckpt["partition"] is not None:
            p = ckpt["partition"]
            state.partition = partition_from_mask(p["upsample"], k=int(p["k"]), method=p["method"])
        if info.is_main:
            write_jsonl(rd.metrics, state.metrics)  # drop any line written after the checkpoint
            log.info("resuming %s: %s phase after epoch %d", rd.path, ckpt["phase"], ckpt["epoch"])
    phase_name = ckpt["phase"] if ckpt is not None else ("separate" if cfg.useful else "main")
    try:
        if phase_name == "separate":
            ph = build_phase("separate", cfg, data, info)
            state.init_digest["separate"] = ph.init_digest
            _attach_stats(ph, state, data, info)
            if ckpt is not None:
                _restore(ph, ckpt, info.device)
            num_classes = data.dataset.num_classes

            def separated(_epoch: int) -> bool:
                state.separate_epoch = _decide_separate_epoch(cfg, state, num_classes)
                return state.separate_epoch is not None

            _run_epochs(ph, cfg, data, info, state, rd, separated)
            state.partition = _split(cfg, ph, data, info, state, rd)
            del ph
            ckpt = None  # the main phase starts from scratch
            phase_name = "main"
            main = build_phase("main", cfg, data, info, multiplicities=state.partition.multiplicities)
            state.init_digest["main"] = main.init_digest
            _attach_stats(main, state, data, info)
            _save_epoch(cfg, rd, main, state, info)  # a checkpoint at main epoch 0: the split is never redone
        else:
            mult = state.partition.multiplicities if state.partition is not None else None
            main = build_phase("main", cfg, data, info, multiplicities=mult)
            state.init_digest["main"] = main.init_digest
            _attach_stats(main, state, data, info)
            if ckpt is not None:
                _restore(main, ckpt, info.device)
        _run_epochs(main, cfg, data, info, state, rd, lambda epoch: epoch >= cfg.epochs)
    except Diverged as err:
        log.error("%s; the last good checkpoint is kept in %s", err, rd.checkpoint)
        return _finish(cfg, info, data, rd, state, status="diverged", message=str(err))
    return _finish(cfg, info, data, rd, state, status="completed")


def _finish(cfg: TrainConfig, info: D.DistInfo, data: TrainData, rd: RunDir, state: RunState, *, status: str,
            message: str = "") -> dict:
    main_rows = [m for m in state.metrics if m["phase"] == "main"]
    final = main_rows[-1] if main_rows else {}
    best = max(main_rows, key=lambda m: m["test_acc"]) if main_rows else {}
    n_up = int(state.partition.upsample.sum()) if state.partition is not None else 0
    summary = {
        "status": status,
        "message": message,
        "dataset": cfg.dataset,
        "model": cfg.model,
        "optimizer": cfg.optimizer,
        "useful": cfg.useful,
        "partition": cfg.partition if cfg.useful else None,
        "upweight": cfg.upweight,
        "seed": cfg.seed,
        "final_test_acc": final.get("test_acc"),
        "final_test_loss": final.get("test_loss"),
        "final_train_acc": final.get("train_acc"),
        "final_train_loss": final.get("train_loss"),
        "best_test_acc": best.get("test_acc"),
        "best_epoch": best.get("epoch"),
        "epochs": len(main_rows),
        "epochs_planned": cfg.epochs,
        "epochs_before_split": sum(1 for m in state.metrics if m["phase"] == "separate"),
        "separate_epoch": state.separate_epoch,
        "n_train": data.n_train,
        "n_upsampled": n_up,
        "train_list_length": data.n_train + (cfg.upsample_factor - 1) * n_up if (cfg.useful and not cfg.upweight) else data.n_train,
        "label_noise_flipped": int(data.flipped.sum()) if data.flipped is not None else 0,
        "wall_seconds": state.wall_seconds(),
        "train_seconds": state.train_seconds,
        "images_per_second": state.train_images / state.train_seconds if state.train_seconds > 0 else None,
        "world_size": info.world_size,
        "device": str(info.device),
        "init_digest": state.init_digest,
        "torch_version": torch.__version__,
    }
    if info.is_main:
        try:
            write_learning_stats(rd, state)
        except Exception as err:  # diagnostics must not lose the run
            log.warning("could not write %s: %s", rd.learning_stats, err)
        write_jsonl(rd.metrics, state.metrics)
        atomic_write_json(rd.summary, summary)
        try:
            plot_curves(state.metrics, rd.curves, title=f"{cfg.run_name} ({status})")
        except Exception as err:  # a plotting failure must not lose the run
            log.warning("could not draw %s: %s", rd.curves, err)
        if status == "completed":
            log.info("done: final test acc %.4f (best %.4f at epoch %s), %.0f images/s, %.1f s; files in %s",
                     summary["final_test_acc"], summary["best_test_acc"], summary["best_epoch"],
                     summary["images_per_second"] or 0.0, summary["wall_seconds"], rd.path)
    return summary


def plot_curves(metrics: list[dict], path: str | Path, *, title: str = "") -> None:
    """Loss and accuracy per epoch (train and test; the pre-split phase dashed), atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for phase, style in (("separate", "--"), ("main", "-")):
        rows = [m for m in metrics if m["phase"] == phase]
        if not rows:
            continue
        ep = [m["epoch"] for m in rows]
        tag = "" if phase == "main" else " (pre-split)"
        for ax, key in ((axes[0], "loss"), (axes[1], "acc")):
            ax.plot(ep, [m[f"train_{key}"] for m in rows], style, marker="o", ms=3, color="C0", label=f"train{tag}")
            ax.plot(ep, [m[f"test_{key}"] for m in rows], style, marker="o", ms=3, color="C1", label=f"test{tag}")
    for ax, name in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
