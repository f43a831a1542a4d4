"""Training throughput of real/ (images/s) against a plain DataLoader reference loop.

What is measured, per (optimizer, batch size) case, on CIFAR-shaped generated data (``--n`` uint8
images 3x32x32, 10 classes, uniform random pixels and labels made on the device, with a CPU copy for
the reference loop; throughput does not depend on the pixel values):

* **real/**: :func:`real.train.train_epoch` itself, on a :class:`real.phase.Phase` built by
  :func:`real.phase.build_phase` from a :class:`real.config.TrainConfig` (data as uint8 tensors on
  the device, batches gathered and augmented there by :class:`real.augment.Augmenter`,
  :func:`real.optim.sam_step`, bf16 autocast + channels_last on CUDA).  With ``--steps S`` the
  phase's index list is cut to ``S`` batches after ``--warmup`` batches of warm-up, and the
  epoch time is extrapolated as ``steps_per_epoch(n) * time_per_step`` (the output says so).
* **data preparation** of real/'s path, timed separately: the same batch gather
  (``train_x[idx]``), ``Augmenter`` call and channels_last conversion as ``train_epoch``, for the
  same number of batches, with ``torch.cuda.synchronize`` on CUDA; its share of the step time is
  ``prep_time / train_epoch_time``.
* **reference**: a plain loop written here: ``torch.utils.data.DataLoader`` over a ``Dataset`` that
  augments each sample on the CPU with torch ops (zero padding 4 + random 32x32 crop, horizontal flip
  with probability 1/2, ``/255`` and per-channel normalization), float32, NCHW, no compilation, no
  autocast; the same model (``real.models.build_model``), optimizer (``real.optim.build_optimizer``)
  and loss; SAM as ``first_step`` / second forward-backward / ``second_step`` with BatchNorm running
  statistics frozen on the second pass (as real/ does).  ``--workers`` DataLoader workers
  (auto: 0 on CPU, ``min(8, cpus)`` on CUDA), ``pin_memory`` on CUDA.
* **peak GPU memory** of each path (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; null on CPU).
* **host syncs** (CUDA only): the host-synchronizing CUDA calls of a 4-step ``train_epoch`` call and
  where they happen (``torch.cuda.set_sync_debug_mode("warn")``); null on CPU.
* **USEFUL split**: :func:`real.useful.split` as real/train.py calls it (the outputs on all ``n``
  un-augmented training images, USEFUL's per-class 2-means with k = 2, partition.npz's arrays), once
  per batch size after the SGD case's timing (it does not depend on the optimizer); reported
  relative to each case's epoch time and to a 200-epoch budget.

GPU targets (issue 10, superseding issue 5's 15,000 images/s and split < 1 % of an epoch), on one
H100/H200 (:func:`check_targets`): ResNet18 SGD with bf16 at batch 512 >= 20,000 images/s; SAM >= 0.45
of SGD's rate at the same batch size; real/ >= 3x the reference with SGD at batch 128 (the paper's);
the split < 0.1 % of a 200-epoch budget of SGD epochs at the smallest batch size measured (the
paper's 128).  On a CPU, or with another model, the targets are not meaningful and ``targets_met``
says they were not measured.

bench/gpu.py imports this module's pieces (:func:`make_data`, :func:`bench_config`, :func:`real_case`,
:func:`reference_case`, :func:`split_time`, :func:`case_row`, :func:`check_targets`); this command
line stays the way to measure one configuration by hand (``--compile`` too).

Timing noise: ``--repeats R`` times each path R times and keeps the fastest; the 1-minute load
average is recorded (a shared CPU machine can vary 2-3x between runs).

The last printed line is one JSON object (see SPEC.md section 5).  ``--smoke``: n = 512,
``cnn-small``, batch 64, 2 steps: a few seconds, for CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from real import distributed as D
from real.config import TrainConfig
from real.data import TrainData
from real.datasets import Dataset
from real.learning_stats import LearningStats
from real.models import build_model
from real.optim import SAM, build_optimizer, disable_running_stats, enable_running_stats
from real.phase import Phase, build_phase, resolve_numerics
from real.train import train_epoch
from real.useful import (
    SplitPoint,
    compute_outputs,
    make_partition,
    partition_arrays,
    split,
)

# CIFAR-10's channel statistics (the generated pixels are uniform; these only set the normalization).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
TARGET_MODEL = "resnet18"
TARGET_GPUS = ("H100", "H200")
TARGET_RATIO = 3.0  # real/ over the reference, SGD, batch TARGET_RATIO_BATCH
TARGET_RATIO_BATCH = 128
TARGET_SGD_IMG_S = 20_000.0  # SGD with bf16 at batch TARGET_SGD_BATCH
TARGET_SGD_BATCH = 512
TARGET_SAM_OVER_SGD = 0.45
TARGET_SPLIT_OVER_BUDGET = 0.001  # of BUDGET_EPOCHS SGD epochs
BUDGET_EPOCHS = 200


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(n: int, n_test: int, device: torch.device, seed: int = 0) -> TrainData:
    """CIFAR-shaped uint8 data (random pixels and labels) made on ``device``, as real/'s TrainData;
    its ``dataset`` holds CPU copies (what the reference loop's Dataset reads)."""
    g = torch.Generator(device=device).manual_seed(seed)

    def draw(high: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randint(0, high, shape, dtype=dtype, generator=g, device=device)

    train_x, train_y = draw(256, (n, 3, 32, 32), torch.uint8), draw(NUM_CLASSES, (n,), torch.int64)
    test_x, test_y = draw(256, (n_test, 3, 32, 32), torch.uint8), draw(NUM_CLASSES, (n_test,), torch.int64)
    ds = Dataset(name="synthetic", train_x=train_x.cpu(), train_y=train_y.cpu(), test_x=test_x.cpu(),
                 test_y=test_y.cpu(), num_classes=NUM_CLASSES, mean=CIFAR_MEAN, std=CIFAR_STD)
    return TrainData(dataset=ds, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def bench_config(model: str, optimizer: str, batch_size: int, n: int, device: str, *, bf16: bool,
                 channels_last: bool, compile: bool = False) -> TrainConfig:
    """The trainer configuration of one case: one epoch of the synthetic-shaped data, seed 0,
    precision and memory format explicit (as a run's ``--precision`` / ``--memory-format``)."""
    return TrainConfig(dataset="synthetic", model=model, optimizer=optimizer, batch_size=batch_size, epochs=1,
                       synthetic_train=n, synthetic_test=256, device=device, seed=0, compile=compile,
                       precision="bf16" if bf16 else "float32",
                       memory_format="channels_last" if channels_last else "contiguous")


# -- real/'s path -------------------------------------------------------------------------------


def real_case(cfg: TrainConfig, data: TrainData, info: D.DistInfo, *, steps: int | None, warmup: int,
              repeats: int = 1) -> tuple[dict, Phase]:
    """real/'s train_epoch; bf16 and channels_last are the configuration's ``precision`` and
    ``memory_format``, exactly as in a run."""
    device = info.device
    ph = build_phase("bench", cfg, data, info)
    ph.observers.append(LearningStats(data.n_train, device=device))  # as a run's phase has (real/train.py)
    full_steps = ph.steps
    full_list = ph.index_list
    per = cfg.batch_size

    def run(nsteps: int) -> float:
        ph.index_list = full_list[: nsteps * per]
        ph.steps = nsteps
        sync(device)
        t = time.perf_counter()
        train_epoch(ph, cfg, data, info)  # ends with a host sync (the totals' .tolist())
        sync(device)
        return time.perf_counter() - t

    if warmup:
        run(min(warmup, full_steps))
        rem = len(full_list) % per
        if steps is None and rem > 1:  # the epoch's last, smaller batch: autotune its shape too
            ph.index_list, ph.steps = full_list[:rem], 1
            train_epoch(ph, cfg, data, info)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    measured = full_steps if steps is None else min(steps, full_steps)
    elapsed = min(run(measured) for _ in range(repeats))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    syncs = sync_sites(run, device, min(4, full_steps))
    ph.index_list, ph.steps = full_list, full_steps

    # Data preparation alone: what train_epoch does before sam_step, for the same batches.
    order = full_list[torch.randperm(len(full_list), generator=torch.Generator().manual_seed(1)).to(device)]
    ph.augmenter(data.train_x[order[:per]])  # untimed warm-up batch
    sync(device)
    t = time.perf_counter()
    for step in range(measured):
        idx = order[step * per : (step + 1) * per]
        x = ph.augmenter(data.train_x[idx]).contiguous(memory_format=resolve_numerics(cfg, device).layout)
        y = data.train_y[idx]
    sync(device)
    prep = time.perf_counter() - t
    del x, y
    images = min(measured * per, len(full_list))  # a full epoch ends with a smaller batch
    epoch_s = elapsed / measured * full_steps
    return {
        "img_s": images / elapsed,
        "step_ms": elapsed / measured * 1e3,
        "steps_measured": measured,
        "steps_per_epoch": full_steps,
        "epoch_s": epoch_s,
        "epoch_s_extrapolated": measured != full_steps,
        "data_prep_ms_per_step": prep / measured * 1e3,
        "data_prep_share": prep / elapsed,
        "peak_mem_bytes": peak,
        "host_syncs": syncs,
    }, ph


def sync_sites(run, device: torch.device, nsteps: int) -> dict | None:
    """On CUDA: the host-synchronizing CUDA calls of a ``nsteps``-step train_epoch call, as found by
    ``torch.cuda.set_sync_debug_mode("warn")`` (count and call sites; this script's own
    ``torch.cuda.synchronize`` calls left out).  None on CPU."""
    if device.type != "cuda":
        return None
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(nsteps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message) and os.path.abspath(w.filename) != os.path.abspath(__file__):
            key = f"{os.path.relpath(w.filename)}:{w.lineno}"
            sites[key] = sites.get(key, 0) + 1
    return {"steps": nsteps, "count": sum(sites.values()), "sites": sites}


def split_time(ph: Phase, data: TrainData, info: D.DistInfo, cfg: TrainConfig, *, warm: bool = True) -> dict:
    """:func:`real.useful.split` exactly as real/train.py calls it (the outputs on the un-augmented
    training set, the partition, partition.npz's arrays), timed; then the outputs alone, for the
    breakdown.  ``warm``: one untimed batch at the evaluation batch size first (in a run, evaluate()
    has run at that size after every epoch, so cuDNN has tuned it when the split comes)."""
    layout = resolve_numerics(cfg, info.device).layout
    if warm:
        k = cfg.eval_batch_size
        compute_outputs(ph.raw_model, data.train_x[:k], data.train_y[:k], mean=data.mean, std=data.std,
                        batch_size=k, memory_format=layout)
    sync(info.device)
    t = time.perf_counter()
    partition, _ = split(ph.raw_model, cfg, data, info, at=SplitPoint(1), memory_format=layout)
    split_s = time.perf_counter() - t
    # The breakdown, timed again part by part: the outputs, then the partition and its arrays.
    t = time.perf_counter()
    logits, losses = compute_outputs(ph.raw_model, data.train_x, data.train_y, mean=data.mean, std=data.std,
                                     batch_size=cfg.eval_batch_size, memory_format=layout)
    t_out = time.perf_counter() - t
    labels = data.train_y.cpu().numpy()
    t = time.perf_counter()
    part = make_partition(cfg.partition, logits, labels, losses, k=cfg.upsample_factor, seed=cfg.seed)
    partition_arrays(part, labels, losses, logits=logits, num_classes=data.num_classes, separated_at=SplitPoint(1),
                     upweight=False)
    t_part = time.perf_counter() - t
    return {"split_s": split_s, "compute_outputs_s": t_out, "partition_s": t_part,
            "upsampled": int(np.asarray(partition.upsample).sum()), "n": data.n_train}


# -- the reference loop -------------------------------------------------------------------------


class CropFlipDataset(torch.utils.data.Dataset):
    """Per-sample CPU augmentation with torch ops: pad 4, random crop, random flip, normalize."""

    def __init__(self, x_uint8: torch.Tensor, y: torch.Tensor, mean, std, padding: int = 4):
        self.x, self.y, self.padding = x_uint8, y, padding
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int):
        img = self.x[i].float().div_(255.0)
        _, h, w = img.shape
        p = self.padding
        img = F.pad(img, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
        img = img[:, dy : dy + h, dx : dx + w]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        return (img - self.mean) / self.std, self.y[i]


def reference_case(cfg: TrainConfig, data: TrainData, device: torch.device, *, steps: int | None,
                   warmup: int, workers: int, repeats: int = 1) -> dict:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, in_channels=3, num_classes=NUM_CLASSES, image_size=32).to(device)
    opt = build_optimizer(cfg.optimizer, model.named_parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, rho=cfg.rho, asam_variant=cfg.asam_variant)
    ds = CropFlipDataset(data.dataset.train_x, data.dataset.train_y, data.dataset.mean, data.dataset.std)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    full_steps = len(loader)
    warm = min(warmup, full_steps - 1)  # warm-up batches come from the same pass over the loader
    measured = full_steps - warm if steps is None else min(steps, full_steps - warm)
    model.train()

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if isinstance(opt, SAM):
            opt.first_step(zero_grad=True)
            disable_running_stats(model)
            F.cross_entropy(model(x), y).backward()
            enable_running_stats(model)
            opt.second_step(zero_grad=True)
        else:
            opt.step()
        return loss.detach()

    times = []
    for _ in range(repeats):
        it = iter(loader)  # a fresh pass (workers persist), warm-up batches not timed
        for _ in range(warm):
            step(*next(it))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        t = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for _ in range(measured):
            loss_sum += step(*next(it))
        float(loss_sum)
        sync(device)
        times.append(time.perf_counter() - t)
        del it
    elapsed = min(times)
    # The reference's data loading alone (per-sample CPU augmentation + collation + copy to device).
    it = iter(loader)
    sync(device)
    t = time.perf_counter()
    for _ in range(measured):
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    sync(device)
    load = time.perf_counter() - t
    del it
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    del loader
    return {"img_s": measured * cfg.batch_size / elapsed, "step_ms": elapsed / measured * 1e3,
            "steps_measured": measured, "epoch_s": elapsed / measured * full_steps,
            "workers": workers, "peak_mem_bytes": peak,
            "data_ms_per_step": load / measured * 1e3, "data_share": load / elapsed}


# -- summary and targets -------------------------------------------------------------------------


def case_row(case: dict) -> dict:
    """One measured case as the flat row of the JSON summary."""
    real, ref = case["real"], case["reference"]
    return {"optimizer": case["optimizer"], "batch_size": case["batch_size"],
            "real_img_s": real["img_s"],
            "reference_img_s": None if ref is None else ref["img_s"],
            "ratio": case["ratio"],
            "data_prep_share": real["data_prep_share"],
            "data_prep_ms_per_step_real": real["data_prep_ms_per_step"],
            "data_ms_per_step_reference": None if ref is None else ref["data_ms_per_step"],
            "real_step_ms": real["step_ms"],
            "real_epoch_s": real["epoch_s"],
            "real_epoch_s_extrapolated": real["epoch_s_extrapolated"],
            "split_over_epoch": case.get("split_over_epoch"),
            "split_over_budget": case.get("split_over_budget"),
            "peak_mem_bytes_real": real["peak_mem_bytes"],
            "host_syncs_real": real["host_syncs"],
            "peak_mem_bytes_reference": None if ref is None else ref["peak_mem_bytes"]}


def target_figures(rows: list[dict], split_s: float | None) -> dict:
    """The figures the targets are about, from :func:`case_row` rows (None where not measured)."""
    def find(opt: str, bs: int) -> dict | None:
        return next((r for r in rows if r["optimizer"] == opt and r["batch_size"] == bs), None)

    sgd_big, ratio_row = find("sgd", TARGET_SGD_BATCH), find("sgd", TARGET_RATIO_BATCH)
    sam_over_sgd = {str(r["batch_size"]): r["real_img_s"] / find("sgd", r["batch_size"])["real_img_s"]
                    for r in rows if r["optimizer"] == "sam" and find("sgd", r["batch_size"])}
    sgd_rows = [r for r in rows if r["optimizer"] == "sgd"]
    budget_row = min(sgd_rows, key=lambda r: r["batch_size"]) if sgd_rows else None
    return {
        "sgd_img_s_at_target_batch": None if sgd_big is None else sgd_big["real_img_s"],
        "sam_over_sgd": sam_over_sgd,
        "min_sam_over_sgd": min(sam_over_sgd.values()) if sam_over_sgd else None,
        "sgd_ratio_at_target_batch": None if ratio_row is None else ratio_row["ratio"],
        "split_over_budget": None if (budget_row is None or split_s is None)
        else split_s / (BUDGET_EPOCHS * budget_row["real_epoch_s"]),
        "split_budget": None if budget_row is None else
        f"{BUDGET_EPOCHS} SGD epochs at batch {budget_row['batch_size']}",
    }


# key of target_figures -> (comparison, value, what it says)
TARGETS = {
    "sgd_img_s_at_target_batch": (">=", TARGET_SGD_IMG_S,
                                  f"{TARGET_MODEL} SGD bf16 batch {TARGET_SGD_BATCH} >= {TARGET_SGD_IMG_S:,.0f} img/s"),
    "min_sam_over_sgd": (">=", TARGET_SAM_OVER_SGD, f"SAM >= {TARGET_SAM_OVER_SGD} of SGD's img/s at each batch size"),
    "sgd_ratio_at_target_batch": (">=", TARGET_RATIO,
                                  f"real/ >= {TARGET_RATIO:g}x the reference loop, SGD batch {TARGET_RATIO_BATCH}"),
    "split_over_budget": ("<", TARGET_SPLIT_OVER_BUDGET,
                          f"USEFUL split < {100 * TARGET_SPLIT_OVER_BUDGET:g} % of a {BUDGET_EPOCHS}-epoch SGD budget"),
}


def targets_not_applicable(*, device_type: str, smoke: bool, model: str, bf16: bool) -> str | None:
    """Why the GPU targets say nothing about this run (None when they apply)."""
    if device_type != "cuda":
        return "the targets are for a GPU (H100/H200); this run is on the CPU"
    if smoke:
        return "the targets are for full sizes; this run is a smoke run"
    if model != TARGET_MODEL or not bf16:
        return f"the targets are for {TARGET_MODEL} with bf16; this run is {model}, bf16={bf16}"
    return None


def check_targets(figures: dict, targets: dict, *, device_name: str, not_applicable: str | None) -> dict | str:
    """Each target of ``targets`` (key -> (comparison, value, text)): True/False on an H100/H200; on
    another GPU a string with the figure; ``"not measured: <why>"`` when the targets do not apply."""
    if not_applicable:
        return f"not measured: {not_applicable}"
    on_target_gpu = any(g in device_name for g in TARGET_GPUS)
    met: dict[str, Any] = {}
    for key, (op, target, _) in targets.items():
        value = figures.get(key)
        if value is None:
            met[key] = "not measured in this run"
        elif not on_target_gpu:
            met[key] = f"not an H100/H200 ({device_name}): {value:.4g}"
        else:
            met[key] = bool(value < target) if op == "<" else bool(value >= target)
    return met


# -- main ---------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--n", type=int, default=50_000, help="training images (default 50000)")
    parser.add_argument("--batch-sizes", default="128,512", help="comma-separated (default 128,512)")
    parser.add_argument("--optimizers", default="sgd,sam", help="comma-separated (default sgd,sam)")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--steps", type=int, default=None,
                        help="time this many steps after warm-up and extrapolate the epoch (default: full epochs)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2; 1 with --smoke)")
    parser.add_argument("--workers", type=int, default=None, help="reference DataLoader workers (default: 0 on CPU, min(8, cpus) on CUDA)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each path this many times and keep the fastest (steadier on a busy machine)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    parser.add_argument("--no-split", action="store_true", help="skip the USEFUL split timing")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="real/'s model and batches in channels_last (default: on for CUDA, as real/)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="real/'s bf16 autocast (default: on for CUDA, as real/)")
    parser.add_argument("--compile", action="store_true",
                        help="real/'s model under torch.compile (--compile of a run); warm-up includes compiling")
    parser.add_argument("--smoke", action="store_true", help="n=512, cnn-small, batch 64, 2 steps: seconds, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.model, args.steps = 512, "cnn-small", args.steps or 2
        if args.batch_sizes == parser.get_default("batch_sizes"):
            args.batch_sizes = "64"
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 2)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]

    info = D.setup(args.device)  # a world of one (no torchrun)
    device = info.device
    cuda = device.type == "cuda"
    channels_last = cuda if args.channels_last is None else args.channels_last
    bf16 = cuda if args.bf16 is None else args.bf16
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if cuda else 0)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    data = make_data(args.n, 256, device)
    dev_name = torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine())
    print(f"device {dev_name} ({device}), torch {torch.__version__}, n={args.n}, model {args.model}, "
          f"channels_last={channels_last}, bf16={bf16}, compile={args.compile}, "
          f"steps={args.steps or 'full epochs'}", flush=True)

    cases: list[dict[str, Any]] = []
    splits: dict[int, dict] = {}
    for bs in batch_sizes:
        for opt in optimizers:
            cfg = bench_config(args.model, opt, bs, args.n, args.device, bf16=bf16, channels_last=channels_last,
                               compile=args.compile)
            real, ph = real_case(cfg, data, info, steps=args.steps, warmup=warmup, repeats=args.repeats)
            if not args.no_split and bs not in splits:
                splits[bs] = split_time(ph, data, info, cfg)
            del ph
            ref = None if args.no_reference else reference_case(cfg, data, device, steps=args.steps, warmup=warmup,
                                                                 workers=workers, repeats=args.repeats)
            case = {"optimizer": opt, "batch_size": bs, "real": real, "reference": ref,
                    "ratio": None if ref is None else real["img_s"] / ref["img_s"]}
            if bs in splits:
                case["split_over_epoch"] = splits[bs]["split_s"] / real["epoch_s"]
                case["split_over_budget"] = case["split_over_epoch"] / BUDGET_EPOCHS
            cases.append(case)
            print(f"{opt:4s} b={bs:4d}  real {real['img_s']:9.1f} img/s  "
                  + (f"reference {ref['img_s']:9.1f} img/s  x{case['ratio']:5.2f}  " if ref else "")
                  + f"data prep {100 * real['data_prep_share']:5.1f}% of step ({real['data_prep_ms_per_step']:.1f} ms"
                  + (f"; reference loader {ref['data_ms_per_step']:.1f} ms" if ref else "") + ")  "
                  + (f"split/epoch {case['split_over_epoch']:.4f}  " if "split_over_epoch" in case else "")
                  + (f"peak {real['peak_mem_bytes'] / 2**30:.2f} GiB" if real["peak_mem_bytes"] else ""), flush=True)
            if cuda:
                torch.cuda.empty_cache()

    rows = [case_row(c) for c in cases]
    split_s = splits[min(splits)]["split_s"] if splits else None
    figures = target_figures(rows, split_s)
    summary: dict[str, Any] = {
        "bench": "train_throughput",
        "smoke": args.smoke,
        "device": dev_name,
        "device_type": device.type,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1min": os.getloadavg()[0],
        "n": args.n,
        "model": args.model,
        "channels_last": channels_last,
        "bf16": bf16,
        "compile": args.compile,
        "steps": args.steps,
        "warmup": warmup,
        "repeats": args.repeats,
        "epoch_time": "extrapolated from --steps steps" if args.steps else "full epochs measured",
        "reference": None if args.no_reference else {
            "loader": "DataLoader, per-sample CPU crop(pad 4)+flip+normalize", "workers": workers,
            "dtype": "float32", "layout": "NCHW", "autocast": False, "compile": False},
        "cases": rows,
        "split": {str(k): v for k, v in splits.items()},
        "max_split_over_epoch": max((c["split_over_epoch"] for c in cases if "split_over_epoch" in c), default=None),
        "peak_mem_bytes": max((c["real"]["peak_mem_bytes"] for c in cases if c["real"]["peak_mem_bytes"]), default=None),
        "figures": figures,
        "targets": {key: {"value": value, "what": text} for key, (_, value, text) in TARGETS.items()},
        "targets_met": check_targets(figures, TARGETS, device_name=dev_name, not_applicable=targets_not_applicable(
            device_type=device.type, smoke=args.smoke, model=args.model, bf16=bf16)),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
