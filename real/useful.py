"""USEFUL's policy in the full-scale trainer: when to split, the split, what the partition file holds.

The split rule (per-class 2-means on what ``--split-on`` names, the higher-loss cluster upsampled by
k) and the baselines are :mod:`theory.useful`'s; here are :func:`split_point`, :func:`split` (on rank
0, broadcast), :func:`partition_arrays` (partition.npz), and the same split for any PyTorch loop,
:func:`loader_outputs` then :func:`partition_outputs` (docs/training.md, "USEFUL in your own training loop").

The automatic rule: with ``e_0 = 1 - 1/C`` (chance) and ``e_t`` the running training error of epoch ``t``
(metrics.jsonl), the reference speed is ``r = (e_0 - e_w) / w``; the separating epoch is the first
``t > w`` with ``e_{t-1} - e_t < fraction * r``, else ``cap``; if ``r <= 0`` the rule waits for the cap.
Defaults (chosen, not from the paper): ``w = 1``, ``fraction = 0.1``, ``cap = ceil(0.1 * epochs)`` (the
paper separates at 5-10 % of the budget; a budget of 10 epochs or fewer separates after epoch 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from theory.plumbing.config import ConfigError, check, check_allocation, check_choice, check_int, check_number
from theory.useful import JTT_UPWEIGHT, PARTITIONS, Partition, PartitionOptions, build_partition, split_features

from . import distributed as D
from .augment import normalize
from .config import TrainConfig
from .data import TrainData
from .phase import steps_per_epoch

__all__ = ["AUTO_WARMUP", "AUTO_FRACTION", "AUTO_CAP_FRACTION", "auto_cap", "auto_separate_epoch", "SplitPoint",
           "split_point", "check_feasible", "compute_outputs", "loader_outputs", "make_partition",
           "partition_outputs", "partition_arrays", "split"]

log = logging.getLogger("real.useful")

AUTO_WARMUP = 1
AUTO_FRACTION = 0.1
AUTO_CAP_FRACTION = 0.1


def auto_cap(epochs: int, *, cap_fraction: float = AUTO_CAP_FRACTION) -> int:
    """The automatic rule's cap, ``ceil(cap_fraction * epochs)``, at least 1 and at most ``epochs``."""
    check_int("epochs", epochs, low=1)
    return min(epochs, max(1, math.ceil(cap_fraction * epochs)))


def auto_separate_epoch(errors: Sequence[float], *, initial_error: float, cap: int, warmup: int = AUTO_WARMUP,
                        fraction: float = AUTO_FRACTION) -> int | None:
    """The separating epoch by the automatic rule (module docstring) from the training errors of epochs
    1..t so far, or None (train another); a pure function, called after every pre-split epoch and resume."""
    check_int("cap", cap, low=1)
    check_int("warmup", warmup, low=1)
    check_number("fraction", fraction, low=0.0)
    check_number("initial_error", initial_error)
    e = [float(v) for v in errors]
    check(all(math.isfinite(v) for v in e), "errors", errors, "finite training errors")
    if len(e) > warmup:
        reference = (initial_error - e[warmup - 1]) / warmup
        if reference > 0:
            for t in range(warmup + 1, min(len(e), cap) + 1):  # t is 1-based
                if e[t - 2] - e[t - 1] < fraction * reference:
                    return t
    return cap if len(e) >= cap else None


@dataclass(frozen=True)
class SplitPoint:
    """The end of the pre-split phase: ``epochs`` full epochs, then ``steps`` more iterations."""

    epochs: int
    steps: int = 0

    def as_dict(self) -> dict:
        return {"epoch": self.epochs, "steps": self.steps}


def split_point(cfg: TrainConfig, metrics: Sequence[dict], steps_per_epoch: int, num_classes: int) -> SplitPoint | None:
    """Where the pre-split phase ends (``--separate-iteration``, ``--separate-epoch`` N or ``auto``), from
    what is known so far; None means "train another epoch"."""
    if cfg.separate_iteration is not None:
        return SplitPoint(*divmod(cfg.separate_iteration, steps_per_epoch))
    if cfg.separate_epoch != "auto":
        return SplitPoint(int(cfg.separate_epoch))
    errors = [1.0 - m["train_acc"] for m in metrics if m["phase"] == "separate" and m["steps"] == steps_per_epoch]
    epoch = auto_separate_epoch(errors, initial_error=1.0 - 1.0 / num_classes, cap=auto_cap(cfg.epochs))
    return None if epoch is None else SplitPoint(epoch)


def check_feasible(cfg: TrainConfig, n_train: int, world_size: int) -> None:
    """Checked once the data set's size is known, before anything is written: a batch per epoch, the
    separating iteration inside the schedule, room for the upsampled index list (every example upsampled)."""
    check(cfg.batch_size % world_size == 0, "--batch-size", cfg.batch_size,
          f"a multiple of the number of processes ({world_size})")
    steps = steps_per_epoch(n_train, cfg.batch_size, world_size)
    if steps < 1:
        raise ConfigError("--batch-size", message=f"--batch-size: {n_train} training examples over {world_size} "
                                                  "process(es) give no batch of at least 2 examples")
    if cfg.useful and cfg.separate_iteration is not None:
        check(cfg.separate_iteration <= cfg.epochs * steps, "--separate-iteration", cfg.separate_iteration,
              f"at most the {cfg.epochs * steps} iterations of --epochs {cfg.epochs}")
    if cfg.useful and not cfg.upweight:
        jtt = cfg.partition == "jtt"
        flag, k = ("--jtt-upweight", cfg.jtt_upweight) if jtt else ("--upsample-factor", cfg.upsample_factor)
        check_allocation(flag, 3 * 8 * n_train * k, f"the upsampled index list ({n_train} examples, k = {k})")


@torch.no_grad()
def _eval_outputs(model: nn.Module, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's outputs: logits, per-example cross-entropy losses (float64 of float32, no autocast)
    and labels of ``model`` in eval mode (restored after) over ``(x, y)`` batches."""
    was_training = model.training
    model.eval()
    logits_all, losses_all, labels_all = [], [], []
    try:
        for x, y in batches:
            logits = model(x).float()
            losses_all.append(F.cross_entropy(logits, y, reduction="none").double().cpu())
            logits_all.append(logits.double().cpu())
            labels_all.append(y.cpu())
    finally:
        model.train(was_training)
    check(len(logits_all) > 0, "loader", "no batches", "at least one batch")
    return torch.cat(logits_all).numpy(), torch.cat(losses_all).numpy(), torch.cat(labels_all).numpy()


def compute_outputs(model: nn.Module, x_uint8: torch.Tensor, labels: torch.Tensor, *, mean: Sequence[float],
                    std: Sequence[float], batch_size: int = 1024,
                    memory_format: torch.memory_format = torch.contiguous_format) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) and losses (N,) of :func:`_eval_outputs` on the un-augmented, normalized images."""
    batches = ((normalize(x_uint8[start : start + batch_size], mean, std).contiguous(memory_format=memory_format),
                labels[start : start + batch_size]) for start in range(0, x_uint8.shape[0], batch_size))
    return _eval_outputs(model, batches)[:2]


def loader_outputs(model: nn.Module, loader: Iterable, *, device: torch.device | str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (N, C), labels (N,) and losses (N,) (:func:`partition_outputs`'s arguments) over a plain
    ``DataLoader`` of ``(inputs, labels, ...)`` batches of the **un-augmented** training set in its order
    (row i is example i; a random sampler is refused), moved to ``device`` (default: the model's)."""
    sampler = getattr(loader, "sampler", None)
    check(not isinstance(sampler, torch.utils.data.RandomSampler), "loader", "shuffle=True",
          "a loader in the data set's order (shuffle=False): row i of the outputs must be example i")
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    batches = ((batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)) for batch in loader)
    logits, losses, labels = _eval_outputs(model, batches)
    return logits, labels, losses


def partition_outputs(logits, labels, losses, *, k: int = 2, seed: int = 0, method: str = "useful",
                      quantile: float = 0.5, split_on: str = "logits", jtt_upweight: int = JTT_UPWEIGHT) -> Partition:
    """:func:`make_partition` from numpy arrays or tensors, e.g. :func:`loader_outputs`'s; its
    ``multiplicities`` go to :class:`real.sampler.UpsampleSampler`."""
    check_choice("method", method, PARTITIONS)
    logits, labels, losses = (a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
                              for a in (logits, labels, losses))
    return make_partition(method, logits, labels, losses, k=k, seed=seed, quantile=quantile, split_on=split_on,
                          jtt_upweight=jtt_upweight)


def make_partition(method: str, logits: np.ndarray, labels: np.ndarray, losses: np.ndarray, *, k: int, seed: int,
                   quantile: float = 0.5, split_on: str = "logits", jtt_upweight: int = JTT_UPWEIGHT) -> Partition:
    """The partition ``method`` (a key of :data:`theory.useful.PARTITIONS`, where each is described)
    from the outputs at the separating epoch; ``jtt`` has multiplicity ``jtt_upweight``, not ``k``."""
    options = PartitionOptions(quantile=quantile, split_on=split_on, jtt_upweight=jtt_upweight)
    return build_partition(method, logits, np.asarray(labels), losses, k=k, seed=seed, options=options)


def partition_arrays(partition: Partition, labels: np.ndarray, losses: np.ndarray, *, logits: np.ndarray,
                     num_classes: int, separated_at: SplitPoint, upweight: bool, split_on: str = "logits",
                     copy_augment: str = "none", flipped: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What partition.npz holds (docs/training.md, "What a run writes"): the partition, where the split
    came, per class the sizes, mean losses (NaN when empty) and USEFUL's 2-means diagnostics
    (``chosen_cluster`` -1: no cluster), and the outputs at the split for a picture of it (the paper's
    Figure 3): ``losses``, ``logits`` and ``split_features`` (what the 2-means clusters), float32."""
    labels, logits, losses = np.asarray(labels), np.asarray(logits), np.asarray(losses, dtype=np.float64)
    check(logits.ndim == 2 and logits.shape[0] == len(labels), "logits", logits.shape, f"({len(labels)}, C)")
    mask = np.asarray(partition.upsample, dtype=bool)

    def class_means(m: np.ndarray) -> np.ndarray:  # per class c, the mean loss over m & (labels == c); NaN if empty
        return np.array([losses[m & (labels == c)].mean() if np.any(m & (labels == c)) else np.nan
                         for c in range(num_classes)], dtype=np.float64)

    cluster_sizes = np.zeros((num_classes, 2), dtype=np.int64)
    cluster_losses = np.full((num_classes, 2), np.nan)
    chosen = np.full(num_classes, -1, dtype=np.int64)
    for split in partition.classes:
        c = int(split.label)
        cluster_sizes[c], cluster_losses[c], chosen[c] = split.sizes, split.mean_losses, split.chosen
    arrays = {
        "indices": partition.indices.astype(np.int64),
        "upsample": mask,
        "multiplicities": np.asarray(partition.multiplicities, dtype=np.int64),
        "k": np.int64(partition.k),
        "method": np.array(partition.method),
        "upweight": np.bool_(upweight),
        "copy_augment": np.array(copy_augment),
        "separate_epoch": np.int64(separated_at.epochs),
        "separate_steps": np.int64(separated_at.steps),
        "num_classes": np.int64(num_classes),
        "class_sizes": np.bincount(labels, minlength=num_classes).astype(np.int64),
        "upsampled_per_class": np.bincount(labels[mask], minlength=num_classes).astype(np.int64),
        "mean_loss_upsampled": class_means(mask),
        "mean_loss_rest": class_means(~mask),
        "cluster_sizes": cluster_sizes,
        "cluster_mean_losses": cluster_losses,
        "chosen_cluster": chosen,
        "losses": losses.astype(np.float32),
        "logits": logits.astype(np.float32),
        "split_features": split_features(logits, losses, split_on).astype(np.float32),
        "split_on": np.array(split_on),
    }
    if flipped is not None:
        arrays["label_noise_flipped"] = np.asarray(flipped, dtype=bool)
    return arrays


def split(model: nn.Module, cfg: TrainConfig, data: TrainData, info: D.DistInfo, *, at: SplitPoint,
          memory_format: torch.memory_format) -> tuple[Partition, dict[str, np.ndarray] | None]:
    """The partition of the training set by ``--partition`` from ``model``'s outputs, computed on
    rank 0 and broadcast; returns it with partition.npz's arrays (None on other ranks)."""
    n, k = data.n_train, cfg.upsample_factor
    partition = arrays = multiplicities = None
    if info.is_main:
        logits, losses = compute_outputs(model, data.train_x, data.train_y, mean=data.mean, std=data.std,
                                         batch_size=cfg.eval_batch_size, memory_format=memory_format)
        labels = data.train_y.cpu().numpy()
        partition = make_partition(cfg.partition, logits, labels, losses, k=k, seed=cfg.seed, quantile=cfg.quantile,
                                   split_on=cfg.split_on, jtt_upweight=cfg.jtt_upweight)
        multiplicities = partition.multiplicities
        arrays = partition_arrays(partition, labels, losses, logits=logits, num_classes=data.num_classes,
                                  separated_at=at, upweight=cfg.upweight, split_on=cfg.split_on,
                                  copy_augment=cfg.copy_augment, flipped=data.flipped)
        log.info("split after %d epoch(s) and %d step(s) (%s, k=%d): %d of %d examples upsampled%s", at.epochs,
                 at.steps, cfg.partition, partition.k, int(partition.upsample.sum()), n,
                 " (as loss weights)" if cfg.upweight else "")
    multiplicities = D.broadcast_array(multiplicities, shape=(n,), dtype=np.int64, device=info.device)
    if partition is None:  # the other ranks: the same k as rank 0's partition
        k = {"jtt": cfg.jtt_upweight, "class-balanced": int(multiplicities.max())}.get(cfg.partition, k)
        partition = Partition.from_multiplicities(multiplicities, k=k, method=cfg.partition)
    return partition, arrays
