"""Training throughput of real/ (images/s) against a plain DataLoader reference loop.

What is measured, per (optimizer, batch size) case, on CIFAR-shaped generated data (``--n`` uint8
images 3x32x32, 10 classes, uniform random pixels and labels; throughput does not depend on the
pixel values):

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
* **USEFUL split**: :func:`real.useful.compute_outputs` on the un-augmented training set (all ``n``
  images, as real/train.py calls it) + :func:`theory.useful.useful_partition` (k = 2), once per
  batch size after the SGD case's timing (it does not depend on the optimizer); reported relative
  to each case's epoch time.

GPU targets (issue 5 item 4): SGD >= 3x the reference and >= 15,000 images/s on an H100; the split
< 1 % of an epoch (checked against the shortest epoch measured, the most demanding case).  On a CPU
the targets are not meaningful and ``targets_met`` says they were not measured.

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
from real.phase import Phase, build_phase, memory_format
from real.train import train_epoch
from real.models import build_model
from real.optim import SAM, build_optimizer, disable_running_stats, enable_running_stats
from real.useful import compute_outputs
from theory.useful import useful_partition

# CIFAR-10's channel statistics (the generated pixels are uniform; these only set the normalization).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
TARGET_RATIO = 3.0
TARGET_SGD_IMG_S = 15_000.0
TARGET_SPLIT_FRACTION = 0.01


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(n: int, n_test: int, device: torch.device, seed: int = 0) -> TrainData:
    """CIFAR-shaped uint8 data (random pixels and labels) as real/'s TrainData on ``device``."""
    g = torch.Generator().manual_seed(seed)
    train_x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    train_y = torch.randint(0, NUM_CLASSES, (n,), dtype=torch.int64, generator=g)
    test_x = torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g)
    test_y = torch.randint(0, NUM_CLASSES, (n_test,), dtype=torch.int64, generator=g)
    ds = Dataset(name="synthetic", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                 num_classes=NUM_CLASSES, mean=CIFAR_MEAN, std=CIFAR_STD)
    return TrainData(dataset=ds, train_x=train_x.to(device), train_y=train_y.to(device),
                       test_x=test_x.to(device), test_y=test_y.to(device))


# -- real/'s path -------------------------------------------------------------------------------


def real_case(cfg: TrainConfig, data: TrainData, info: D.DistInfo, *, steps: int | None, warmup: int,
              repeats: int = 1) -> tuple[dict, Phase]:
    """real/'s train_epoch; bf16 and channels_last are the configuration's ``precision`` and
    ``memory_format``, exactly as in a run."""
    device = info.device
    ph = build_phase("bench", cfg, data, info)
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
        x = ph.augmenter(data.train_x[idx]).contiguous(memory_format=memory_format(cfg, device))
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


def split_time(ph: Phase, data: TrainData, info: D.DistInfo, cfg: TrainConfig) -> dict:
    """compute_outputs on the un-augmented training set + useful_partition, as real/train.py."""
    sync(info.device)
    t = time.perf_counter()
    logits, losses = compute_outputs(ph.raw_model, data.train_x, data.train_y, mean=data.mean, std=data.std,
                                     batch_size=cfg.eval_batch_size, memory_format=memory_format(cfg, info.device))
    t_out = time.perf_counter() - t
    labels = data.train_y.cpu().numpy()
    t2 = time.perf_counter()
    part = useful_partition(logits, labels, losses, k=2, seed=cfg.seed)
    t_part = time.perf_counter() - t2
    return {"split_s": t_out + t_part, "compute_outputs_s": t_out, "useful_partition_s": t_part,
            "upsampled": int(np.asarray(part.upsample).sum())}


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
    opt = build_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov, weight_decay=cfg.weight_decay, rho=cfg.rho)
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
          f"channels_last={channels_last}, bf16={bf16}, steps={args.steps or 'full epochs'}", flush=True)

    cases: list[dict[str, Any]] = []
    splits: dict[int, dict] = {}
    for bs in batch_sizes:
        for opt in optimizers:
            cfg = TrainConfig(dataset="synthetic", model=args.model, optimizer=opt, batch_size=bs, epochs=1,
                              synthetic_train=args.n, synthetic_test=256, device=args.device, seed=0,
                              precision="bf16" if bf16 else "float32",
                              memory_format="channels_last" if channels_last else "contiguous")
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
            cases.append(case)
            print(f"{opt:4s} b={bs:4d}  real {real['img_s']:9.1f} img/s  "
                  + (f"reference {ref['img_s']:9.1f} img/s  x{case['ratio']:5.2f}  " if ref else "")
                  + f"data prep {100 * real['data_prep_share']:5.1f}% of step ({real['data_prep_ms_per_step']:.1f} ms"
                  + (f"; reference loader {ref['data_ms_per_step']:.1f} ms" if ref else "") + ")  "
                  + (f"split/epoch {case['split_over_epoch']:.4f}  " if "split_over_epoch" in case else "")
                  + (f"peak {real['peak_mem_bytes'] / 2**30:.2f} GiB" if real["peak_mem_bytes"] else ""), flush=True)
            if cuda:
                torch.cuda.empty_cache()

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
        "steps": args.steps,
        "warmup": warmup,
        "repeats": args.repeats,
        "epoch_time": "extrapolated from --steps steps" if args.steps else "full epochs measured",
        "reference": None if args.no_reference else {
            "loader": "DataLoader, per-sample CPU crop(pad 4)+flip+normalize", "workers": workers,
            "dtype": "float32", "layout": "NCHW", "autocast": False, "compile": False},
        "cases": [{"optimizer": c["optimizer"], "batch_size": c["batch_size"],
                   "real_img_s": c["real"]["img_s"],
                   "reference_img_s": None if c["reference"] is None else c["reference"]["img_s"],
                   "ratio": c["ratio"],
                   "data_prep_share": c["real"]["data_prep_share"],
                   "data_prep_ms_per_step_real": c["real"]["data_prep_ms_per_step"],
                   "data_ms_per_step_reference": None if c["reference"] is None else c["reference"]["data_ms_per_step"],
                   "real_step_ms": c["real"]["step_ms"],
                   "real_epoch_s": c["real"]["epoch_s"],
                   "split_over_epoch": c.get("split_over_epoch"),
                   "peak_mem_bytes_real": c["real"]["peak_mem_bytes"],
                   "host_syncs_real": c["real"]["host_syncs"],
                   "peak_mem_bytes_reference": None if c["reference"] is None else c["reference"]["peak_mem_bytes"]}
                  for c in cases],
        "split": {str(k): v for k, v in splits.items()},
        "max_split_over_epoch": max((c["split_over_epoch"] for c in cases if "split_over_epoch" in c), default=None),
        "peak_mem_bytes": max((c["real"]["peak_mem_bytes"] for c in cases if c["real"]["peak_mem_bytes"]), default=None),
        "targets": {"sgd_ratio": TARGET_RATIO, "sgd_img_s_h100": TARGET_SGD_IMG_S,
                    "split_over_epoch": TARGET_SPLIT_FRACTION},
    }
    sgd = [c for c in cases if c["optimizer"] == "sgd"]
    if cuda and not args.smoke:
        met: dict[str, Any] = {}
        if sgd and not args.no_reference:
            met["sgd_ratio"] = bool(min(c["ratio"] for c in sgd) >= TARGET_RATIO)
        if sgd:
            best = max(c["real"]["img_s"] for c in sgd)
            met["sgd_img_s"] = bool(best >= TARGET_SGD_IMG_S) if "H100" in dev_name else (
                f"not an H100 ({dev_name}): best SGD {best:.0f} img/s")
        if summary["max_split_over_epoch"] is not None:
            met["split_over_epoch"] = bool(summary["max_split_over_epoch"] < TARGET_SPLIT_FRACTION)
        summary["targets_met"] = met
    else:
        summary["targets_met"] = ("not measured: the targets are for a GPU (H100), this run is on "
                                  f"{'CUDA in smoke mode' if cuda else 'the CPU'}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
