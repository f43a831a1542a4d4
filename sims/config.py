"""The simulator's configuration: one frozen, validated dataclass (flags are its field names), its identity and size.

The default is the documented configuration of docs/theory.md: d = 200, P = 3, alpha = 0.9,
beta_e = 1, beta_d = 0.4, sigma_p = 0.06, J = 20, sigma_0 = 0.01, N = 200, full-batch GD with
eta = 0.5, SAM's rho = 0.015, 3000 iterations, USEFUL's separation at iteration 120 with k = 2.

Besides validation, this module owns

* the configuration's identity, :func:`config_hash`: the SHA-256 of its canonical JSON (sorted keys,
  every number in its field's type, so ``1`` and ``1.0`` are the same ``beta_d``).  A sweep run is
  identified by it; :func:`describe_difference` says in flags what separates two configurations;
* the memory a run needs, :func:`check_memory`: estimated from the sizes before anything is
  allocated, and refused (``ConfigError`` naming the flag that drives it) above what the machine has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Literal, Mapping, Optional

import numpy as np

from theory.data import DataConfig
from theory.plumbing.config import (
    canonical_numbers,
    check,
    check_allocation,
    check_choice,
    check_int,
    check_within,
    config_digest,
    doc,
)
from theory.updates import RULES

from .backends import BACKENDS

__all__ = ["SimConfig", "BACKENDS", "DTYPES", "config_hash", "describe_difference", "memory_need", "check_memory",
           "flag"]

DTYPES = ("float64", "float32")


def flag(field: str) -> str:
    """The command-line flag of a configuration field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class SimConfig:
    """One simulator run.

    Data (Definition 3.1): ``d, P, alpha, beta_e, beta_d, sigma_p``; network: ``J`` filters with
    ``w_j ~ N(0, sigma_0^2 I)``; training: ``optimizer`` in gd/sgd/sam/usam with ``lr``, ``rho``
    (SAM/USAM), ``iterations``, ``batch_size`` (SGD, or minibatch SAM/USAM; None = full batch);
    ``n_train`` / ``n_test`` examples; quantities recorded every ``record_every`` iterations; a
    feature counts as learned when its feature output reaches ``theta``.  USEFUL (``useful``):
    train to ``separate_at``, split, upsample by ``upsample_factor``, retrain (from the same
    initialization unless ``fresh_init``).  ``seed`` determines data, initialization and minibatches.

    ``separate_at`` must lie in ``[1, iterations]`` whenever USEFUL is run (``useful``; ``reproduce``
    checks its base configuration as a USEFUL one).  Numbers are stored in their field's type
    (``beta_d=1`` becomes ``1.0``), so equal configurations compare and hash equal.  Each field's
    one-line :func:`~theory.plumbing.config.doc` (what it is, its range) is its flag's ``--help``.
    """

    d: int = doc(200, "d: dimension of a patch (d in Definition 3.1), an integer >= 3")
    P: int = doc(3, "P: patches per example (P in Definition 3.1), an integer >= 3")
    alpha: float = doc(0.9, "alpha: probability that an example carries the fast feature (alpha in Definition 3.1), "
                            "in (0, 1]")
    beta_e: float = doc(1.0, "beta_e: strength of the fast-learnable feature v_e (beta_e in Definition 3.1), "
                             "> beta_d")
    beta_d: float = doc(0.4, "beta_d: strength of the slow-learnable feature v_d (beta_d in Definition 3.1), "
                             "in (0, beta_e)")
    sigma_p: float = doc(0.06, "sigma_p: std of the noise patches (sigma_p in Definition 3.1), > 0")
    J: int = doc(20, "J: number of filters w_j of the two-layer cubic CNN f(x; W) = sum_j sum_p <w_j, x^(p)>^3",
                 "[1, inf)")
    sigma_0: float = doc(0.01, "sigma_0: std of the initial weights, w_j ~ N(0, sigma_0^2 I)", "(0, inf)")
    optimizer: Literal["gd", "sgd", "sam", "usam"] = doc(
        "gd", "training rule: full-batch GD, minibatch SGD (needs --batch-size), SAM, or USAM (SAM without "
              "normalizing the ascent step)")
    lr: float = doc(0.5, "eta: learning rate (step size of every update)", "(0, inf)")
    rho: float = doc(0.015, "rho: radius of SAM's ascent step (USAM: its factor); 0 makes SAM and USAM GD; "
                            "unused by gd and sgd", "[0, inf)")
    iterations: int = doc(3000, "training iterations (updates)", "[1, inf)")
    batch_size: Optional[int] = doc(None, "minibatch size, an integer in [1, n_train]: required by sgd, "
                                          "minibatch SAM/USAM when given; none: full batch")
    n_train: int = doc(200, "N: number of training examples", "[2, inf)")
    n_test: int = doc(1000, "number of test examples the accuracies are measured on", "[1, inf)")
    record_every: int = doc(10, "record the trajectory (feature outputs, alignments, accuracies) every this many "
                                "iterations", "[1, inf)")
    theta: float = doc(1.0, "theta: a feature counts as learned once its feature output sum_j (beta <w_j, v>)^3 "
                            "reaches theta", "(0, inf)")
    useful: bool = doc(False, "run USEFUL: train to --separate-at, split each class's outputs by 2-means, "
                              "upsample the high-loss cluster by --upsample-factor, retrain")
    separate_at: int = doc(120, "USEFUL's separating iteration t (where the outputs are clustered), an integer in "
                                "[1, iterations]")
    upsample_factor: int = doc(2, "k: USEFUL's upsampling factor (multiplicity of the high-loss cluster)",
                               "[1, inf)")
    fresh_init: bool = doc(False, "USEFUL retrains from a new initialization instead of the same one")
    seed: int = doc(0, "seed of the training and test data, the initialization and the minibatches", "[0, inf)")
    dtype: Literal["float64", "float32"] = doc("float64", "floating-point precision of the simulation")
    backend: Literal["numba", "torch", "reference"] = doc(
        "numba", "simulator: numba (CPU, fastest there), torch (CPU or CUDA), reference (theory's dense numpy "
                 "update, slow)")
    device: str = doc("cpu", "where to simulate: cpu, or cuda[:N] with --backend torch")

    def __post_init__(self) -> None:
        self.data_config()  # validates d, P, alpha, beta_e, beta_d, sigma_p
        check_within(self, flag=lambda name: name)  # J, sigma_0, lr, rho, iterations, n_train, ... (their doc)
        check_choice("optimizer", self.optimizer, RULES)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, low=1, high=self.n_train)
        check(
            self.optimizer != "sgd" or self.batch_size is not None,
            "batch_size", self.batch_size, "an integer in [1, n_train] when optimizer is 'sgd'",
        )
        check(isinstance(self.useful, (bool, np.bool_)), "useful", self.useful, "true or false")
        check(isinstance(self.fresh_init, (bool, np.bool_)), "fresh_init", self.fresh_init, "true or false")
        check_int("separate_at", self.separate_at, low=1, high=self.iterations if self.useful else None)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("backend", self.backend, BACKENDS)
        check(
            isinstance(self.device, str) and (
                self.device == "cpu" or (self.backend == "torch" and self.device.startswith("cuda"))),
            "device", self.device, "'cpu', or 'cuda[:N]' with backend 'torch'",
        )
        canonical_numbers(self)  # 1 and 1.0 (or a numpy scalar) are the same value of a float field

    def data_config(self) -> DataConfig:
        return DataConfig(
            d=self.d, P=self.P, alpha=self.alpha, beta_e=self.beta_e, beta_d=self.beta_d, sigma_p=self.sigma_p
        )

    def with_(self, **changes) -> "SimConfig":
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    def seeds(self) -> dict[str, np.random.SeedSequence]:
        """Independent seed streams for train data, test data, initialization and minibatches."""
        train, test, init, batches = np.random.SeedSequence(self.seed).spawn(4)
        return {"train": train, "test": test, "init": init, "batches": batches}


# ----------------------------------------------------------------------------------------------
# Identity.


def config_hash(config: SimConfig | Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the configuration's canonical JSON: a run's identity.

    A mapping (e.g. the ``config`` of a saved run) is taken as it is; a :class:`SimConfig` through
    ``asdict`` (its numbers are already canonical).
    """
    return config_digest(dataclasses.asdict(config) if isinstance(config, SimConfig) else config)


def _show(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def describe_difference(current: Mapping[str, Any], stored: Mapping[str, Any], *, limit: int = 3) -> str:
    """``--lr is 0.3, the folder's runs have 0.5; ...``: the fields where ``stored`` differs (at most ``limit``)."""
    order = [f.name for f in dataclasses.fields(SimConfig)]
    keys = order + sorted((set(current) | set(stored)) - set(order))
    parts = []
    for key in keys:
        if key in current and key in stored and current[key] == stored[key] and type(current[key]) is type(stored[key]):
            continue
        if key not in current and key not in stored:
            continue
        mine = _show(current[key]) if key in current else "not a field"
        theirs = _show(stored[key]) if key in stored else "no such field"
        parts.append(f"{flag(key)} is {mine}, the folder's runs have {theirs}")
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more if parts else "no field differs"


# ----------------------------------------------------------------------------------------------
# Memory.

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SimConfig)}
_F64 = 8


def memory_need(cfg: SimConfig, runs: int = 1) -> tuple[int, list[tuple[str, int, tuple[str, ...]]]]:
    """Estimated peak bytes of simulating ``runs`` runs of ``cfg`` together (one backend), and its terms.

    Terms are ``(what, bytes, fields that drive it)``; computed in Python integers (nothing is
    allocated).  The estimate counts the copies the driver keeps (dense patches, structured rows,
    the stacked batch, recorded weights and outputs, the per-record evaluation products); it is
    meant to catch sizes that cannot fit, not to budget memory to the byte.
    """
    n, nt, P, d, J = cfg.n_train, cfg.n_test, cfg.P, cfg.d, cfg.J
    K = cfg.iterations // cfg.record_every + 2  # records kept per run
    rows = n * (P - 1) + 2  # basis rows (an upper bound: patch 1 is always a feature; plus v_e, v_d)
    per_run = [
        ("the training patches (3 copies of n_train x P x d)", 3 * n * P * d * _F64, ("n_train", "P", "d")),
        ("the test patches (2 copies of n_test x P x d)", 2 * nt * P * d * _F64, ("n_test", "P", "d")),
        ("the recorded weights (2 copies of records x J x d)", 2 * K * J * d * _F64,
         ("iterations", "record_every", "J", "d")),
        ("the recorded training outputs (2 copies of records x n_train)", 2 * K * n * _F64,
         ("iterations", "record_every", "n_train")),
        ("the backend's state (rows x J, and rows x rows or rows x d)",
         (2 * min(rows * rows, rows * d) + 4 * rows * J + 4 * J * d) * _F64, ("n_train", "P", "d", "J")),
    ]
    if cfg.batch_size is not None:
        per_run.append(("the minibatch schedule (3 copies of iterations x batch_size)",
                        3 * cfg.iterations * cfg.batch_size * _F64, ("iterations", "batch_size")))
    transient = [
        ("evaluating the test set at every record (n_test x P x records x J)", (nt * (P - 1) + 2) * K * J * _F64,
         ("n_test", "P", "iterations", "record_every", "J")),
        ("noise memorization at every record (2 copies of n_train x P x records x J)",
         2 * n * (P - 1) * K * J * _F64, ("n_train", "P", "iterations", "record_every", "J")),
    ]
    terms = [(what, runs * b, fields + (("runs",) if runs > 1 else ())) for what, b, fields in per_run] + transient
    return sum(b for _, b, _ in terms), terms


def _ratio(cfg: SimConfig, field: str, runs: int) -> float:
    if field == "runs":
        return float(runs)
    if field == "record_every":  # fewer iterations between records: more records
        return _DEFAULTS["record_every"] / cfg.record_every
    value = getattr(cfg, field)
    default = _DEFAULTS[field] if _DEFAULTS[field] is not None else _DEFAULTS["n_train"]
    return value / default


def check_memory(cfg: SimConfig, runs: int = 1, *, runs_flag: str | None = None, limit: int | None = None) -> None:
    """Refuse (``ConfigError``, one line) a configuration whose estimated memory exceeds what is available.

    The error names the flag that drives the largest term most (the field furthest above its default;
    ``runs_flag``, e.g. ``--chunk`` or ``--seeds``, when the number of runs simulated together does),
    the estimate and the largest term.  ``limit`` defaults to the memory available now.
    """
    total, terms = memory_need(cfg, runs)
    what, _, fields = max(terms, key=lambda t: t[1])
    candidates = [f for f in fields if f != "runs" or runs_flag is not None]
    field = max(candidates, key=lambda f: _ratio(cfg, f, runs))
    name = runs_flag if field == "runs" else flag(field)
    where = f"{runs} runs simulated together, above all {what}" if runs > 1 else f"a run, above all {what}"
    check_allocation(name, total, where, limit=limit)
