"""Sharpness of a trained network: top Hessian eigenvalues, trace and L1 norm of a run's checkpoint
(``useful-train sharpness RUN_DIR``).

The objective is the example-weighted mean loss over fixed batches ``B_1..B_m`` of ``n_b`` examples,
``L(theta) = sum_b n_b L_b(theta) / sum_b n_b`` with ``L_b`` the batch-mean ``loss_fn``, in eval mode
(weight decay's ``weight_decay * I`` not included).  ``H v`` is exact, by double backward
(``H v = grad <grad L, v>``); the top eigenvalues are Lanczos on that operator (``eigsh``,
``which="LA"``), the trace is Hutchinson's ``E[v^T H v]``, ``v`` Rademacher.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from theory.plumbing.atomic import atomic_write_json
from theory.plumbing.config import ConfigError, check, check_choice, check_int, check_number

from .augment import normalize
from .data import load_training_data
from .distributed import resolve_device
from .phase import init_model
from .rundir import SHARPNESS, checkpoint_path, load_checkpoint, load_run_config

__all__ = ["hessian_vector_product", "top_hessian_eigenvalues", "hessian_trace", "l1_norm", "fixed_batches",
           "load_run_model", "sharpness_report"]

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _params(model: nn.Module) -> tuple[list[torch.Tensor], int]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params, sum(p.numel() for p in params)


@contextlib.contextmanager
def _evaluating(model: nn.Module, eval_mode: bool = True):
    """Eval mode (if asked) and the math attention kernel (the fused ones have no double backward)."""
    was_training = model.training
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - torch 2.2
        kernel = contextlib.nullcontext()
    if eval_mode:
        model.eval()
    try:
        with kernel:
            yield
    finally:
        model.train(was_training)


def _hvp(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
         params: list[torch.Tensor]) -> torch.Tensor:
    """``H v = sum_b n_b H_b v / sum_b n_b``, with ``H_b v = grad <grad L_b, v>``, one batch at a time."""
    v = vector.to(params[0]).reshape(-1)
    sizes = [p.numel() for p in params]
    if v.numel() != sum(sizes):
        raise ValueError(f"vector has {v.numel()} entries, the model {sum(sizes)} parameters")
    vs = [u.view_as(p) for u, p in zip(torch.split(v, sizes), params)]
    total, n_total = torch.zeros_like(v), 0
    for x, y in batches:
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True, materialize_grads=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs))
            if dot.requires_grad:  # else the gradient does not depend on theta: H_b = 0
                hv = torch.autograd.grad(dot, params, materialize_grads=True)
                total += y.shape[0] * torch.cat([h.reshape(-1) for h in hv])
        n_total += y.shape[0]
    if n_total == 0:
        raise ValueError("no batches")
    return total / n_total


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
                           *, eval_mode: bool = True) -> torch.Tensor:
    """Exact flat ``H v`` of the mean loss over ``batches``, theta the trainable parameters in order;
    ``vector`` and the result are in their dtype and device."""
    with _evaluating(model, eval_mode):
        return _hvp(model, loss_fn, batches, vector, _params(model)[0])


def _top_eigs(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int, tol: float,
              seed: int) -> tuple[np.ndarray, int]:
    """The ``k`` largest eigenvalues, decreasing, and the number of ``H v`` that Lanczos used."""
    check_int("k", k, low=1)
    params, p = _params(model)
    if k >= p:
        raise ValueError(f"k = {k} eigenvalues need more than k parameters (the model has {p})")
    count = 0

    def matvec(x: np.ndarray) -> np.ndarray:  # float64 on the host, the parameters' dtype on the device
        nonlocal count
        count += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return _hvp(model, loss_fn, batches, v, params).cpu().to(torch.float64).numpy()

    v0 = np.random.default_rng(seed).standard_normal(p)
    values = eigsh(LinearOperator((p, p), matvec=matvec, dtype=np.float64), k=k, which="LA", tol=tol, v0=v0,
                   return_eigenvectors=False)
    return np.sort(np.asarray(values, dtype=np.float64))[::-1], count


def top_hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1, *,
                            tol: float = 1e-3, seed: int = 0, eval_mode: bool = True) -> np.ndarray:
    """The ``k`` largest (algebraic) Hessian eigenvalues, decreasing: ARPACK's Lanczos with relative
    accuracy ``tol``, start vector ``N(0, I)`` from ``seed``."""
    with _evaluating(model, eval_mode):
        return _top_eigs(model, loss_fn, batches, k, tol, seed)[0]


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, samples: int = 100, seed: int = 0,
                  eval_mode: bool = True) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr H`` over ``samples`` Rademacher vectors, and its standard error (NaN
    for one sample; the variance per sample is ``2 sum_{i != j} H_ij^2``)."""
    check_int("samples", samples, low=1)
    params, p = _params(model)
    gen = torch.Generator().manual_seed(int(seed))
    z = np.empty(samples, dtype=np.float64)
    with _evaluating(model, eval_mode):
        for s in range(samples):
            v = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(torch.float64)
            z[s] = float(torch.dot(_hvp(model, loss_fn, batches, v, params).to(torch.float64).cpu(), v))
    return float(z.mean()), float(z.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan


def l1_norm(model: nn.Module) -> float:
    """``sum_j |theta_j|`` over the model's parameters (not its buffers), accumulated in float64."""
    return sum(float(p.detach().abs().sum(dtype=torch.float64)) for p in model.parameters())


def load_run_model(path: str | Path, *, data_dir: str | None = None, device: str | torch.device = "cpu"):
    """``(model, data, cfg, info)`` of a run directory (or its checkpoint file): the checkpoint's model and
    the training data as the trainer loads them; ``info``: run_dir, checkpoint, phase, epoch."""
    ckpt_path = checkpoint_path(path)
    data_dirs = {} if data_dir is None else {"data_dir": data_dir}
    cfg = load_run_config(ckpt_path.parent, out=None, resume=False, overwrite=False, compile=False, **data_dirs)
    ckpt = load_checkpoint(ckpt_path)
    data = load_training_data(cfg, torch.device("cpu"))
    model = init_model(cfg, data)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as err:
        detail = (str(err).strip() or type(err).__name__).splitlines()[0][:200]
        message = f"RUN_DIR: {ckpt_path} does not hold this run's model ({detail})"
        raise ConfigError("RUN_DIR", message=message) from None
    info = {"run_dir": str(ckpt_path.parent), "checkpoint": str(ckpt_path), "phase": ckpt.get("phase"),
            "epoch": ckpt.get("epoch")}
    return model.to(torch.device(device)), data, cfg, info


def fixed_batches(x_uint8: torch.Tensor, y: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                  batches: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> list[Batch]:
    """The first ``batches`` batches of ``batch_size`` of a seeded permutation of the un-augmented
    examples, normalized and on ``device`` (the last one short if N is too small)."""
    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be positive, got {batches} and {batch_size}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(int(x_uint8.shape[0]))[: batches * batch_size])
    return [(normalize(x_uint8[idx], mean, std, dtype=dtype).to(device), y[idx].to(device))
            for idx in torch.split(order, batch_size)]


def sharpness_report(path: str | Path, *, batches: int = 10, batch_size: int = 128, k: int = 1,
                     trace_samples: int = 50, seed: int = 0, device: str = "cpu", tol: float = 1e-3,
                     dtype: str = "float32", data_dir: str | None = None) -> dict[str, Any]:
    """Sharpness of a run's checkpoint on :func:`fixed_batches` of its training set, with the (un-smoothed)
    mean cross-entropy, as plain JSON data (``trace`` None when ``trace_samples = 0``)."""
    start = time.perf_counter()
    check_choice("dtype", dtype, ("float32", "float64"))
    dev, torch_dtype = resolve_device(device), getattr(torch, dtype)
    model, data, _, info = load_run_model(path, data_dir=data_dir, device="cpu")
    model = model.to(device=dev, dtype=torch_dtype)
    fixed = fixed_batches(data.train_x, data.train_y, mean=data.dataset.mean, std=data.dataset.std, batches=batches,
                          batch_size=batch_size, seed=seed, device=dev, dtype=torch_dtype)
    examples = sum(int(y.shape[0]) for _, y in fixed)
    with _evaluating(model):
        with torch.no_grad():
            outputs = [(model(x), y) for x, y in fixed]
        eigs, hvps = _top_eigs(model, F.cross_entropy, fixed, k, tol, seed)
    trace = stderr = None
    if trace_samples > 0:
        trace, stderr = hessian_trace(model, F.cross_entropy, fixed, samples=trace_samples, seed=seed)
    return {"top_eigenvalues": [float(v) for v in eigs], "trace": trace, "trace_stderr": stderr,
            "l1_norm": l1_norm(model),
            "loss": sum(float(F.cross_entropy(logits, y, reduction="sum")) for logits, y in outputs) / examples,
            "accuracy": sum(float((logits.argmax(1) == y).sum()) for logits, y in outputs) / examples,
            "batches": len(fixed), "batch_size": batch_size, "examples": examples,
            "parameters": _params(model)[1], "hvp_count": hvps,
            "k": k, "tol": tol, "trace_samples": trace_samples, "seed": seed,
            "phase": info["phase"], "epoch": info["epoch"], "run_dir": info["run_dir"],
            "dtype": dtype, "device": str(dev), "seconds": time.perf_counter() - start}


_COUNTS = (("--batches", 10, 1, "fixed batches of the training set"), ("--batch-size", 128, 1, "examples per batch"),
           ("--k", 1, 1, "number of top Hessian eigenvalues"),
           ("--trace-samples", 50, 0, "Hutchinson samples for the trace (0 skips the trace)"))


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of useful-train run")
    for flag, default, _, what in _COUNTS:
        parser.add_argument(flag, type=int, default=default, help=f"{what} (default {default})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and of the random vectors")
    parser.add_argument("--tol", type=float, default=1e-3, help="Lanczos relative tolerance (default 1e-3)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="default float32")
    parser.add_argument("--data-dir", default=None, help="override the data directory of the run's configuration")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="file name of the report inside each RUN_DIR (default sharpness.json), or a path "
                             "when a single RUN_DIR is given")


def _targets(runs: list[str], out: str | None) -> list[Path]:
    """Where each report goes, checked before any work: a computed report must never be lost."""
    if out is not None:
        check(len(runs) == 1 or Path(out).name == out, "--out", out,
              "a file name (placed inside each RUN_DIR) when several RUN_DIRs are given")
    targets = []
    for run in runs:
        run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
        target = Path(out) if out is not None and len(runs) == 1 else run_dir / (out or SHARPNESS)
        if target.is_dir():
            raise ConfigError("--out", message=f"--out: {target} is a directory; give a file name")
        if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            raise ConfigError("--out", message=f"--out: cannot write {target} ({target.parent} is not a writable "
                                               "directory)")
        targets.append(target)
    return targets


def command(args) -> int:
    for flag, _, low, _ in _COUNTS:
        check_int(flag, getattr(args, flag[2:].replace("-", "_")), low=low)
    check_number("--tol", args.tol, low=0.0, high=1.0, low_open=True)  # NaN would make ARPACK loop forever
    for run, target in zip(args.runs, _targets(args.runs, args.out)):
        try:
            r = sharpness_report(run, batches=args.batches, batch_size=args.batch_size, k=args.k,
                                 trace_samples=args.trace_samples, seed=args.seed, device=args.device,
                                 tol=args.tol, dtype=args.dtype, data_dir=args.data_dir)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {run}: {err}") from None
        atomic_write_json(target, r)
        trace = "n/a" if r["trace"] is None else f"{r['trace']:.4g}" + (
            f" ± {r['trace_stderr']:.2g}" if math.isfinite(r["trace_stderr"]) else "")
        print(f"{r['run_dir']}: top eigenvalue(s) {', '.join(f'{v:.4g}' for v in r['top_eigenvalues'])}; "
              f"trace {trace}; L1 norm {r['l1_norm']:.6g}; loss {r['loss']:.4f}, acc {r['accuracy']:.4f} on "
              f"{r['examples']} examples ({r['phase']} epoch {r['epoch']}); {r['seconds']:.1f} s -> {target}")
    return 0
