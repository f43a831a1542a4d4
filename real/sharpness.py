"""Sharpness of a trained network: Hessian eigenvalues, trace and L1 norm of a run's checkpoint
(``useful-train sharpness RUN_DIR``).

For a fixed set of batches ``B_1..B_m`` with ``n_b`` examples each, the objective is the
example-weighted mean cross-entropy

    L(theta) = sum_b n_b L_b(theta) / sum_b n_b,    L_b = loss_fn(model(x_b; theta), y_b)  (batch mean)

(model in eval mode: batch norm uses its running statistics, dropout is off; weight decay is not
included, it would add ``weight_decay * I``).  :func:`hessian_vector_product` computes ``H v`` exactly
by double backward (Pearlmutter's trick): ``H v = grad_theta <grad_theta L, v>``.
:func:`top_hessian_eigenvalues` runs Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``) on that
operator; :func:`hessian_trace` is Hutchinson's estimator ``tr H = E_v[v^T H v]`` with Rademacher
``v``.  :func:`sharpness_report` does all of it for a run directory.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "hessian_vector_product",
    "top_hessian_eigenvalues",
    "hessian_trace",
    "l1_norm",
    "fixed_batches",
    "load_run_model",
    "sharpness_report",
]

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _params(model: nn.Module) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return params


@contextlib.contextmanager
def _evaluating(model: nn.Module, eval_mode: bool):
    """Eval mode (if asked) and the math attention kernel (the fused ones have no double backward);
    the model's mode is restored afterwards."""
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            kernel = sdpa_kernel(SDPBackend.MATH)
        except ImportError:  # pragma: no cover - old torch
            kernel = contextlib.nullcontext()
        with kernel:
            yield
    finally:
        model.train(was_training)


def _hvp(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
         params: list[torch.Tensor]) -> torch.Tensor:
    """``H v`` of ``L = sum_b n_b L_b / sum_b n_b``, one batch at a time: ``H_b v = grad <grad L_b, v>``."""
    first = params[0]
    v = vector.to(device=first.device, dtype=first.dtype).reshape(-1)
    sizes = [p.numel() for p in params]
    if v.numel() != sum(sizes):
        raise ValueError(f"vector has {v.numel()} entries, the model {sum(sizes)} parameters")
    vs = [chunk.view_as(p) for chunk, p in zip(torch.split(v, sizes), params)]
    total = torch.zeros_like(v)
    n_total = 0
    for x, y in batches:
        n_b = int(y.shape[0])
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum((g * u).sum() for g, u in zip(grads, vs) if g is not None and g.requires_grad)
            if isinstance(dot, torch.Tensor) and dot.requires_grad:
                hv = torch.autograd.grad(dot, params, allow_unused=True)
            else:  # the gradient does not depend on the parameters: H = 0
                hv = [None] * len(params)
        flat = torch.cat([(torch.zeros_like(p) if h is None else h).reshape(-1) for h, p in zip(hv, params)])
        total += n_b * flat.detach()
        n_total += n_b
    if n_total == 0:
        raise ValueError("no batches")
    return total / n_total


def hessian_vector_product(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], vector: torch.Tensor,
                           *, eval_mode: bool = True) -> torch.Tensor:
    """Exact ``H v`` of the mean loss over fixed batches, by double backward.

    ``L(theta) = sum_b n_b loss_fn(model(x_b), y_b) / sum_b n_b`` and
    ``H v = grad_theta < grad_theta L, v >`` (Pearlmutter, 1994), accumulated batch by batch.

    Parameters
    ----------
    model : the network; its trainable parameters, in ``model.parameters()`` order, form theta.
    loss_fn : ``loss_fn(logits, y)`` -> scalar mean loss of a batch.
    batches : a sequence of ``(x, y)`` on the model's device (iterated once per call).
    vector : flat (p,) vector (any dtype/device; converted to the parameters').
    eval_mode : evaluate in eval mode (batch norm's running statistics); the mode is restored.

    Returns
    -------
    torch.Tensor
        Flat (p,) ``H v`` in the parameters' dtype and device.
    """
    params = _params(model)
    with _evaluating(model, eval_mode):
        return _hvp(model, loss_fn, batches, vector, params)


def _hvp_operator(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch]):
    from scipy.sparse.linalg import LinearOperator

    params = _params(model)
    p = sum(q.numel() for q in params)
    counter = {"hvp": 0}

    def matvec(x: np.ndarray) -> np.ndarray:
        counter["hvp"] += 1
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return _hvp(model, loss_fn, batches, v, params).detach().cpu().to(torch.float64).numpy()

    return LinearOperator((p, p), matvec=matvec, dtype=np.float64), p, counter


def _top_eigs(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int, tol: float, seed: int,
              eval_mode: bool) -> tuple[np.ndarray, int]:
    from scipy.sparse.linalg import eigsh

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    with _evaluating(model, eval_mode):
        op, p, counter = _hvp_operator(model, loss_fn, batches)
        if k >= p:
            raise ValueError(f"k = {k} eigenvalues need more than k parameters (the model has {p})")
        v0 = np.random.default_rng(seed).standard_normal(p)
        values = eigsh(op, k=k, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(np.asarray(values, dtype=np.float64))[::-1], counter["hvp"]


def top_hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], k: int = 1, *,
                            tol: float = 1e-3, seed: int = 0, eval_mode: bool = True) -> np.ndarray:
    """The ``k`` largest (algebraic) Hessian eigenvalues of the mean loss over ``batches``.

    Implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh``, ``which="LA"``) on a
    ``LinearOperator`` whose matvec is :func:`hessian_vector_product` (float64 on the host, the
    parameters' dtype on the device); ``tol`` is ARPACK's relative accuracy, the start vector is
    ``N(0, I)`` from ``seed``.  Returns the eigenvalues in decreasing order.
    """
    values, _ = _top_eigs(model, loss_fn, batches, k, tol, seed, eval_mode)
    return values


def hessian_trace(model: nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *, samples: int = 100, seed: int = 0,
                  eval_mode: bool = True) -> tuple[float, float]:
    """Hutchinson's estimate of ``tr H`` and its standard error.

    ``tr H = E[v^T H v]`` for Rademacher ``v`` (entries +-1 with probability 1/2); with ``S``
    samples ``z_s = v_s^T H v_s`` the estimate is ``mean(z)`` and its standard error
    ``std(z, ddof=1) / sqrt(S)`` (NaN for ``S = 1``).  Its variance per sample is
    ``2 sum_{i != j} H_ij^2``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    params = _params(model)
    p = sum(q.numel() for q in params)
    gen = torch.Generator().manual_seed(int(seed))
    z = np.empty(samples, dtype=np.float64)
    with _evaluating(model, eval_mode):
        for s in range(samples):
            v = (torch.randint(0, 2, (p,), generator=gen) * 2 - 1).to(torch.float64)
            hv = _hvp(model, loss_fn, batches, v, params)
            z[s] = float(torch.dot(hv.to(torch.float64).cpu(), v))
    stderr = float(z.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    return float(z.mean()), stderr


def l1_norm(model: nn.Module) -> float:
    """``sum_j |theta_j|`` over all of the model's parameters (buffers such as batch-norm running
    statistics excluded), accumulated in float64."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            total += float(p.detach().abs().sum(dtype=torch.float64))
    return total


# ----------------------------------------------------------------------------------------------
# A run directory's checkpoint.


def _strip_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove ``torch.compile``'s ``_orig_mod.`` and DDP's ``module.`` prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("_orig_mod.", "module."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_run_model(path: str | Path, *, data_dir: str | None = None, device: str | torch.device = "cpu"):
    """The model of a run directory's checkpoint, and its training data as the trainer loads it
    (same labels, label noise included).

    ``path`` is a run directory (or its checkpoint file); its config.json and checkpoint.pt are read
    through real/rundir.py (a foreign or crafted file is refused, never executed).  ``data_dir``
    overrides the stored one (a run made on another machine).  Returns ``(model, data, cfg, info)``
    with ``info = {"run_dir", "checkpoint", "phase", "epoch"}``.
    """
    from theory.plumbing.config import ConfigError

    from .data import load_training_data
    from .phase import init_model
    from .rundir import checkpoint_path, load_checkpoint, load_run_config

    ckpt_path = checkpoint_path(path)
    run_dir = ckpt_path.parent
    overrides = {"out": None, "resume": False, "overwrite": False, "compile": False}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    cfg = load_run_config(run_dir, **overrides)
    ckpt = load_checkpoint(ckpt_path)
    data = load_training_data(cfg, torch.device("cpu"))
    model = init_model(cfg, data)
    try:
        model.load_state_dict(_strip_prefixes(ckpt["model"]))
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError("RUN_DIR", message=f"RUN_DIR: {ckpt_path} does not hold this run's model ({first[:200]})") from None
    model.to(torch.device(device))
    info = {"run_dir": str(run_dir), "checkpoint": str(ckpt_path), "phase": ckpt.get("phase"), "epoch": ckpt.get("epoch")}
    return model, data, cfg, info


def fixed_batches(x_uint8: torch.Tensor, y: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                  batches: int, batch_size: int, seed: int = 0, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> list[Batch]:
    """The first ``batches`` batches of ``batch_size`` of a seeded permutation of the (un-augmented)
    examples, normalized (:func:`real.augment.normalize`) and moved to ``device``.  The permutation
    is ``numpy.random.default_rng(seed).permutation(N)``; the last batch may be short if ``N`` is
    smaller than ``batches * batch_size``."""
    from .augment import normalize

    if batches < 1 or batch_size < 1:
        raise ValueError(f"batches and batch_size must be positive, got {batches} and {batch_size}")
    n = int(x_uint8.shape[0])
    order = np.random.default_rng(seed).permutation(n)[: batches * batch_size]
    out = []
    for start in range(0, len(order), batch_size):
        idx = torch.as_tensor(order[start : start + batch_size], dtype=torch.int64)
        xb = normalize(x_uint8[idx], mean, std, dtype=dtype).to(device)
        out.append((xb, y[idx].to(device)))
    return out


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def sharpness_report(path: str | Path, *, batches: int = 10, batch_size: int = 128, k: int = 1,
                     trace_samples: int = 50, seed: int = 0, device: str = "cpu", tol: float = 1e-3,
                     dtype: str = "float32", data_dir: str | None = None) -> dict[str, Any]:
    """Sharpness of a run directory's checkpoint (or of a checkpoint file).

    The model (:func:`load_run_model`, eval mode) is evaluated on a fixed sample of the
    un-augmented training set (:func:`fixed_batches`: the first ``batches`` batches of
    ``batch_size`` of the permutation seeded by ``seed``), with the (un-smoothed) mean cross-entropy.

    Returns
    -------
    dict
        ``top_eigenvalues`` (k largest, decreasing), ``trace`` and ``trace_stderr`` (Hutchinson with
        ``trace_samples`` Rademacher vectors; omitted as None when ``trace_samples = 0``),
        ``l1_norm``, ``loss`` and ``accuracy`` on the sample, ``batches``, ``examples``,
        ``parameters``, ``hvp_count`` (matrix-vector products used by Lanczos), ``phase`` and
        ``epoch`` of the checkpoint, ``run_dir``, ``dtype``, ``device``, ``seconds``.
    """
    from .distributed import resolve_device

    start = time.perf_counter()
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        raise ValueError(f"dtype must be one of {', '.join(dtypes)}, got {dtype!r}")
    dev = resolve_device(device)
    model, data, cfg, info = load_run_model(path, data_dir=data_dir, device="cpu")
    model = model.to(device=dev, dtype=dtypes[dtype])
    ds = data.dataset
    fixed = fixed_batches(data.train_x, data.train_y, mean=ds.mean, std=ds.std, batches=batches,
                          batch_size=batch_size, seed=seed, device=dev, dtype=dtypes[dtype])
    examples = sum(int(b[1].shape[0]) for b in fixed)
    with _evaluating(model, True), torch.no_grad():
        loss_sum = correct = 0.0
        for x, y in fixed:
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
    eigs, hvps = _top_eigs(model, _cross_entropy, fixed, k, tol, seed, True)
    trace = stderr = None
    if trace_samples > 0:
        trace, stderr = hessian_trace(model, _cross_entropy, fixed, samples=trace_samples, seed=seed)
    return {
        "top_eigenvalues": [float(v) for v in eigs],
        "trace": trace,
        "trace_stderr": stderr,
        "l1_norm": l1_norm(model),
        "loss": loss_sum / examples,
        "accuracy": correct / examples,
        "batches": len(fixed),
        "batch_size": batch_size,
        "examples": examples,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "hvp_count": hvps,
        "k": k,
        "tol": tol,
        "trace_samples": trace_samples,
        "seed": seed,
        "phase": info["phase"],
        "epoch": info["epoch"],
        "run_dir": info["run_dir"],
        "dtype": dtype,
        "device": str(dev),
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------------------------
# CLI: useful-train sharpness RUN_DIR...


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories of useful-train run")
    parser.add_argument("--batches", type=int, default=10, help="fixed batches of the training set (default 10)")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per batch (default 128)")
    parser.add_argument("--k", type=int, default=1, help="number of top Hessian eigenvalues (default 1)")
    parser.add_argument("--trace-samples", type=int, default=50,
                        help="Hutchinson samples for the trace (default 50; 0 skips the trace)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and of the random vectors")
    parser.add_argument("--tol", type=float, default=1e-3, help="Lanczos relative tolerance (default 1e-3)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="default cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="default float32")
    parser.add_argument("--data-dir", default=None, help="override the data directory stored in the run's configuration")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="file name of the report inside each RUN_DIR (default sharpness.json), or a path "
                             "when a single RUN_DIR is given")


def command(args) -> int:
    from theory.plumbing.atomic import atomic_write_json
    from theory.plumbing.config import ConfigError, check, check_int, check_number

    from .rundir import SHARPNESS

    for name, value, low in (("--batches", args.batches, 1), ("--batch-size", args.batch_size, 1),
                             ("--k", args.k, 1), ("--trace-samples", args.trace_samples, 0)):
        check_int(name, value, low=low)
    check_number("--tol", args.tol, low=0.0, high=1.0, low_open=True)  # NaN would make ARPACK loop forever
    if args.out is not None:
        check(len(args.runs) == 1 or Path(args.out).name == args.out, "--out", args.out,
              "a file name (placed inside each RUN_DIR) when several RUN_DIRs are given")
    # Where each report goes, checked before any work: a computed report must never be lost.
    targets = []
    for run in args.runs:
        run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
        target = run_dir / (args.out or SHARPNESS) if args.out is None or len(args.runs) > 1 else Path(args.out)
        if target.is_dir():
            raise ConfigError("--out", message=f"--out: {target} is a directory; give a file name")
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError("--out", message=f"--out: cannot write {target} ({folder} is not a writable directory)")
        targets.append(target)
    for run, target in zip(args.runs, targets):
        try:
            report = sharpness_report(run, batches=args.batches, batch_size=args.batch_size, k=args.k,
                                      trace_samples=args.trace_samples, seed=args.seed, device=args.device,
                                      tol=args.tol, dtype=args.dtype, data_dir=args.data_dir)
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError("RUN_DIR", message=f"RUN_DIR: {run}: {err}") from None
        atomic_write_json(target, report)
        eigs = ", ".join(f"{v:.4g}" for v in report["top_eigenvalues"])
        trace = "n/a" if report["trace"] is None else (
            f"{report['trace']:.4g} ± {report['trace_stderr']:.2g}"
            if report["trace_stderr"] is not None and math.isfinite(report["trace_stderr"])
            else f"{report['trace']:.4g}")
        print(f"{report['run_dir']}: top eigenvalue(s) {eigs}; trace {trace}; L1 norm {report['l1_norm']:.6g}; "
              f"loss {report['loss']:.4f}, acc {report['accuracy']:.4f} on {report['examples']} examples "
              f"({report['phase']} epoch {report['epoch']}); {report['seconds']:.1f} s -> {target}")
    return 0
