"""The simulator's configuration: one frozen, validated dataclass (flags are its field names).

The default is the documented configuration of docs/theory.md: d = 200, P = 3, alpha = 0.9,
beta_e = 1, beta_d = 0.4, sigma_p = 0.06, J = 20, sigma_0 = 0.01, N = 200, full-batch GD with
eta = 0.5, SAM's rho = 0.015, 3000 iterations, USEFUL's separation at iteration 120 with k = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

import numpy as np

from theory.plumbing.config import check, check_choice, check_int, check_number
from theory.data import DataConfig
from theory.updates import RULES

__all__ = ["SimConfig", "BACKENDS", "DTYPES"]

BACKENDS = ("numba", "torch", "reference")
DTYPES = ("float64", "float32")


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
    """

    d: int = 200
    P: int = 3
    alpha: float = 0.9
    beta_e: float = 1.0
    beta_d: float = 0.4
    sigma_p: float = 0.06
    J: int = 20
    sigma_0: float = 0.01
    optimizer: Literal["gd", "sgd", "sam", "usam"] = "gd"
    lr: float = 0.5
    rho: float = 0.015
    iterations: int = 3000
    batch_size: Optional[int] = None
    n_train: int = 200
    n_test: int = 1000
    record_every: int = 10
    theta: float = 1.0
    useful: bool = False
    separate_at: int = 120
    upsample_factor: int = 2
    fresh_init: bool = False
    seed: int = 0
    dtype: Literal["float64", "float32"] = "float64"
    backend: Literal["numba", "torch", "reference"] = "numba"
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.data_config()  # validates d, P, alpha, beta_e, beta_d, sigma_p
        check_int("J", self.J, low=1)
        check_number("sigma_0", self.sigma_0, low=0.0, low_open=True)
        check_choice("optimizer", self.optimizer, RULES)
        check_number("lr", self.lr, low=0.0, low_open=True)
        check_number("rho", self.rho, low=0.0)
        check_int("iterations", self.iterations, low=1)
        check_int("n_train", self.n_train, low=2)
        check_int("n_test", self.n_test, low=1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, low=1, high=self.n_train)
        check(
            self.optimizer != "sgd" or self.batch_size is not None,
            "batch_size", self.batch_size, "an integer in [1, n_train] when optimizer is 'sgd'",
        )
        check_int("record_every", self.record_every, low=1)
        check_number("theta", self.theta, low=0.0, low_open=True)
        check_int("separate_at", self.separate_at, low=1, high=self.iterations if self.useful else None)
        check_int("upsample_factor", self.upsample_factor, low=1)
        check_int("seed", self.seed, low=0)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("backend", self.backend, BACKENDS)
        check(
            self.device == "cpu" or (self.backend == "torch" and self.device.startswith("cuda")),
            "device", self.device, "'cpu', or 'cuda[:N]' with backend 'torch'",
        )

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
