"""The training loop: ``train(cfg)`` runs one configuration end to end and returns its summary.

Airbench / nanoGPT style: the data live on the device as uint8 tensors, each epoch is a seeded
permutation of an index list, batches are gathered and augmented on the device.  A USEFUL run trains
the pre-split phase until USEFUL says split (real/useful.py), splits, and trains the main phase from
the same initialization on the upsampled list; a plain run has only the main phase.  Both phases
checkpoint after every epoch (real/rundir.py), so a run killed at any point resumes bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed as D
from . import useful
from .augment import mixup, normalize
from .config import TrainConfig, default_out
from .data import TrainData, load_training_data
from .group_accuracy import GROUP_NAMES, GroupAccuracy
from .learning_stats import LearningStats, learning_report
from .optim import sam_step
from .phase import Numerics, Phase, build_phase, epoch_seed, process_settings, resolve_numerics
from .plots import curves_png
from .rundir import Run, open_run
from .sampler import epoch_shard

__all__ = ["train", "pre_split_phase", "run_epoch", "train_epoch", "evaluate", "Diverged"]

log = logging.getLogger("real.train")

NONFINITE_CHECK_EVERY = 50  # iterations between host syncs of the non-finite-loss flag on CUDA


class Diverged(RuntimeError):
    """The training loss (or the weights) became non-finite."""

    def __init__(self, phase: str, epoch: int, iteration: int, what: str = "loss"):
        super().__init__(f"training diverged: non-finite {what} in {phase} epoch {epoch}, "
                         f"iteration {iteration} of the epoch")


def train(cfg: TrainConfig) -> dict:
    """Run ``cfg`` (fresh, or resumed with ``cfg.resume``) and return summary.json's content.  Bad input
    raises :class:`~theory.plumbing.config.ConfigError` before anything is written; a run that diverges
    returns a summary with status ``"diverged"`` and keeps its last good checkpoint."""
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=default_out(cfg))
    with D.session(cfg.device) as info, process_settings(cfg, info.device):
        data = load_training_data(cfg, info.device)
        useful.check_feasible(cfg, data.n_train, info.world_size)
        with open_run(cfg, info, data.n_train) as run:  # lock; fresh, resume or done; config.json
            if run.done:
                return run.summary()
            numerics = resolve_numerics(cfg, info.device)  # precision and memory layout, once
            try:
                if run.state.phase == "separate":  # USEFUL: train briefly on the original data, then split
                    pre_split_phase(cfg, data, info, run, numerics)
                main = start_phase("main", cfg, data, info, run, numerics, multiplicities=run.state.multiplicities)
                if main.epoch == 0 and run.state.separated_at is not None:
                    run.save(main)  # the split is never redone
                while main.epoch < cfg.epochs:
                    run_epoch(main, cfg, data, info, run)
                status, message = "completed", ""
            except Diverged as err:
                log.error("%s; the last good checkpoint is kept in %s", err, run.path)
                status, message = "diverged", str(err)
            return finish(cfg, data, info, run, status=status, message=message)


def pre_split_phase(cfg: TrainConfig, data: TrainData, info: D.DistInfo, run: Run, numerics: Numerics) -> None:
    """USEFUL's pre-split phase: epochs on the original list until :func:`real.useful.split_point`
    decides (and, for a split inside an epoch, the first steps of the next one, not checkpointed);
    then the split, recorded in partition.npz and the run's state."""
    state = run.state
    ph = start_phase("separate", cfg, data, info, run, numerics)
    while (at := useful.split_point(cfg, state.metrics, ph.steps, data.num_classes)) is None or ph.epoch < at.epochs:
        run_epoch(ph, cfg, data, info, run)
    if at.steps:
        run_epoch(ph, cfg, data, info, run, steps=at.steps, save=False)
    state.partition, arrays = useful.split(ph.raw_model, cfg, data, info, at=at, memory_format=numerics.layout)
    run.write_partition(arrays)
    state.separated_at, state.phase = at.as_dict(), "main"


def start_phase(name: str, cfg: TrainConfig, data: TrainData, info: D.DistInfo, run: Run, numerics: Numerics,
                **kw) -> Phase:
    """A fresh phase (recorded by its initialization's digest), restored from the checkpoint if the
    run is resumed in it, with its per-example learning statistics (which change no numerics)."""
    ph = build_phase(name, cfg, data, info, numerics=numerics, **kw)
    run.state.init_digest[name] = ph.init_digest
    run.restore(ph)
    ph.observers.append(run.state.learning.setdefault(name, LearningStats(data.n_train, device=info.device)))
    if data.easy is not None:  # training accuracy with / without the planted feature, per window of iterations
        ph.observers.append(run.state.groups.setdefault(name, GroupAccuracy(
            data.easy.has_easy_train, window=cfg.group_window, device=info.device)))
    return ph


def run_epoch(ph: Phase, cfg: TrainConfig, data: TrainData, info: D.DistInfo, run: Run, *,
              steps: int | None = None, save: bool = True) -> None:
    """One epoch of ``ph`` (its first ``steps`` iterations if given): train, evaluate, record a row of
    metrics, checkpoint (unless ``save`` is false)."""
    state = run.state
    start = time.perf_counter()
    stats = train_epoch(ph, cfg, data, info, steps=steps)
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    train_time = time.perf_counter() - start
    ph.epoch += 1
    for obs in ph.observers:  # one host transfer of 2 n int32 (summed over ranks)
        obs.end_epoch(ph.epoch, all_reduce=D.all_reduce_sum if info.distributed else None)
    test_loss, test_acc, by_group = evaluate(ph.raw_model, cfg, data, info, ph.numerics)
    row = {"phase": ph.name, "epoch": ph.epoch, "steps": stats["steps"], "train_loss": stats["train_loss"],
           "train_acc": stats["train_acc"], "test_loss": test_loss, "test_acc": test_acc, **by_group,
           "lr": stats["lr"],  # the learning rate of the epoch's last iteration
           "seconds": time.perf_counter() - start, "images_per_second": stats["images"] / max(train_time, 1e-9)}
    state.metrics.append(row)
    run.log_epoch(row)  # TensorBoard (--tensorboard): before the checkpoint, so a resume can purge it
    state.train_seconds += train_time
    state.train_images += stats["images"]
    log.info("%s epoch %d/%s  train loss %.4f acc %.4f  test loss %.4f acc %.4f  lr %.4g  %.1fs", ph.name,
             ph.epoch, cfg.epochs if ph.name == "main" else "?", row["train_loss"], row["train_acc"], test_loss,
             test_acc, row["lr"], row["seconds"])
    if save:
        run.save(ph)


def finish(cfg: TrainConfig, data: TrainData, info: D.DistInfo, run: Run, *, status: str, message: str) -> dict:
    """Write the learning statistics, the summary and the curves; return the summary."""
    state = run.state
    main_rows = [m for m in state.metrics if m["phase"] == "main"]
    final = main_rows[-1] if main_rows else {}
    best = max(main_rows, key=lambda m: m["test_acc"]) if main_rows else {}
    part = state.partition
    n_up = int(part.upsample.sum()) if part is not None else 0
    summary = {
        "status": status, "message": message, "dataset": cfg.dataset, "model": cfg.model,
        "optimizer": cfg.optimizer, "useful": cfg.useful, "partition": cfg.partition if cfg.useful else None,
        "upweight": cfg.upweight, "seed": cfg.seed,
        "final_test_acc": final.get("test_acc"), "final_test_loss": final.get("test_loss"),
        "final_train_acc": final.get("train_acc"), "final_train_loss": final.get("train_loss"),
        "best_test_acc": best.get("test_acc"), "best_epoch": best.get("epoch"),
        **{f"final_{key}": final[key] for key in final if key.startswith("test_acc_")},  # per group
        "epochs": len(main_rows), "epochs_planned": cfg.epochs,
        "epochs_before_split": sum(1 for m in state.metrics if m["phase"] == "separate"),
        "separated_at": state.separated_at, "n_train": data.n_train, "n_upsampled": n_up,
        "train_list_length": int(part.multiplicities.sum()) if part is not None and not cfg.upweight else data.n_train,
        "label_noise_flipped": int(data.flipped.sum()) if data.flipped is not None else 0,
        "wall_seconds": state.wall_seconds(), "train_seconds": state.train_seconds,
        "images_per_second": state.train_images / state.train_seconds if state.train_seconds > 0 else None,
        "world_size": info.world_size, "device": str(info.device), "init_digest": state.init_digest,
        "torch_version": torch.__version__,
    }
    learning = learning_report(state.learning, None if part is None else part.upsample,
                               method=getattr(part, "method", ""), k=getattr(part, "k", 1),
                               separated_at=state.separated_at) if state.learning else None
    run.finish(summary, learning=learning, curves_png=curves_png(state.metrics, title=f"{cfg.run_name} ({status})"),
               easy_feature=None if data.easy is None else data.easy.arrays())
    if status == "completed":
        log.info("done: final test acc %.4f (best %.4f at epoch %s), %.0f images/s, %.1f s; files in %s",
                 summary["final_test_acc"], summary["best_test_acc"], summary["best_epoch"],
                 summary["images_per_second"] or 0.0, summary["wall_seconds"], run.path)
    return summary


def train_epoch(ph: Phase, cfg: TrainConfig, data: TrainData, info: D.DistInfo, *, steps: int | None = None) -> dict:
    """One epoch of ``ph`` (or its first ``steps`` iterations); returns the train loss and accuracy
    (summed over ranks), the images seen, the steps taken and the last learning rate."""
    device, rank, world = info.device, info.rank, info.world_size
    # One seeded permutation of the list, one shard per rank (the order UpsampleSampler gives a plain loop).
    perm = epoch_shard(len(ph.index_list), seed=cfg.seed, epoch=ph.epoch, rank=rank, num_replicas=world).to(device)
    shard = ph.index_list[perm]
    copies = None if ph.copies is None else ph.copies[perm]
    per_rank, n_steps = cfg.batch_size // world, ph.steps if steps is None else steps
    seed = epoch_seed(cfg.seed, ph.epoch, rank + 1)
    ph.augmenter.generator.manual_seed(seed)
    mix_gen = torch.Generator(device=device).manual_seed(seed + 1) if cfg.mixup_alpha > 0 else None
    torch.manual_seed(seed + 2)  # anything drawing from the global RNG (dropout)
    loss_sum, correct = torch.zeros(2, dtype=torch.float64, device=device)  # summed in place
    seen = 0
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)
    ph.model.train()

    def loss_fn(logits: torch.Tensor, t: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        per_example = F.cross_entropy(logits.float(), t, label_smoothing=cfg.label_smoothing, reduction="none")
        if w is None:
            return per_example.mean()
        # --upweight-normalization weights: sum(w l) / sum(w), the expectation of upsampling with copies
        # (on the scale of the mean loss); batch: mean(w l), larger with more upsampled examples in the batch.
        return (per_example * w).sum() / (w.sum() if cfg.upweight_normalization == "weights" else per_example.numel())

    with tqdm(total=n_steps, desc=f"{ph.name} {ph.epoch + 1}", leave=False,
              disable=not (info.is_main and sys.stderr.isatty())) as bar:
        for step in range(n_steps):
            batch = slice(step * per_rank, (step + 1) * per_rank)
            idx = shard[batch]
            x = ph.augmenter(data.train_x[idx], None if copies is None else copies[batch])
            y = data.train_y[idx]
            target = y
            if cfg.mixup_alpha > 0:
                x, target = mixup(x, y, alpha=cfg.mixup_alpha, num_classes=data.num_classes, generator=mix_gen)
            w = None if ph.weights is None else ph.weights[idx]
            lr = ph.optimizer.param_groups[0]["lr"]
            with ph.numerics.autocast():
                loss, logits = sam_step(ph.model, ph.optimizer, partial(loss_fn, w=w),
                                        x.contiguous(memory_format=ph.numerics.layout), target)
            ph.scheduler.step()
            pred = logits.argmax(1)
            hard = target.argmax(1) if target.ndim == 2 else target
            loss_sum += loss.double() * len(idx)
            correct += (pred == hard).sum()
            seen += len(idx)
            for obs in ph.observers:  # per-example correctness on the example's own (training) label
                obs.update(idx, pred == y, ph.epoch + 1)
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step, first_bad)
            if device.type != "cuda" or (step + 1) % NONFINITE_CHECK_EVERY == 0 or step + 1 == n_steps:
                bad_step = int(D.all_reduce_max(first_bad.clone()).item())  # one host sync
                if bad_step >= 0:
                    raise Diverged(ph.name, ph.epoch + 1, bad_step + 1)
            bar.update()
    # A finite last loss can still leave non-finite weights or BatchNorm statistics: never save those.
    state = ph.raw_model.state_dict().values()
    finite = torch.stack([torch.isfinite(t).all() for t in state if t.is_floating_point()]).all()
    if int(D.all_reduce_max((~finite).to(torch.int64)).item()):
        raise Diverged(ph.name, ph.epoch + 1, n_steps, what="weights")
    totals = torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64, device=device)])
    loss_total, correct_total, images = D.all_reduce_sum(totals).tolist()
    return {"train_loss": loss_total / images, "train_acc": correct_total / images, "images": images,
            "steps": n_steps, "lr": lr}


@torch.no_grad()
def evaluate(model: torch.nn.Module, cfg: TrainConfig, data: TrainData, info: D.DistInfo, numerics: Numerics
             ) -> tuple[float, float, dict]:
    """Test loss and accuracy of ``model`` (un-augmented; each rank evaluates its shard, sums
    all-reduced), and with a planted feature the accuracy of each group, ``{"test_acc_without_easy":
    .., "test_acc_with_easy": ..}`` (None if empty).  ``model`` is the unwrapped module: DDP's forward
    would broadcast buffers, a collective the ranks' unequal shards would call unequally often."""
    was_training = model.training
    model.eval()
    x_all, y_all = data.test_x[info.rank :: info.world_size], data.test_y[info.rank :: info.world_size]
    groups = None if data.test_has_easy is None else data.test_has_easy[info.rank :: info.world_size].long()
    sums = torch.zeros(7, dtype=torch.float64, device=info.device)  # loss, correct, n, then per group: correct, n
    for start in range(0, x_all.shape[0], cfg.eval_batch_size):
        x = normalize(x_all[start : start + cfg.eval_batch_size], data.mean, data.std)
        y = y_all[start : start + cfg.eval_batch_size]
        with numerics.autocast():
            logits = model(x.contiguous(memory_format=numerics.layout)).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        hit = logits.argmax(1) == y
        sums[1] += hit.sum()
        sums[2] += len(y)
        if groups is not None:
            g = groups[start : start + cfg.eval_batch_size]
            sums[3:].index_add_(0, 2 * g, hit.double()).index_add_(0, 2 * g + 1, torch.ones_like(g, dtype=sums.dtype))
    model.train(was_training)
    loss, correct, n, *per_group = D.all_reduce_sum(sums).tolist()
    hits, counts = per_group[0::2], per_group[1::2]
    by_group = {} if groups is None else {f"test_acc_{name}": hits[i] / counts[i] if counts[i] else None
                                          for i, name in enumerate(GROUP_NAMES)}
    return loss / n, correct / n, by_group
