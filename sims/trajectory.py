"""A simulator run's recorded quantities, saved as ``NAME.npz`` (arrays) + ``NAME.json`` (metadata).

Both files carry the run format marker (:data:`sims.files.RUN_FORMAT`); the ``.json`` also holds
the run's identity, ``config_hash`` (:func:`sims.config.config_hash` of its configuration), and is
written last, so a run whose ``.json`` exists is complete.

Recorded every ``record_every`` iterations (and at iteration 0 and the last one), SPEC section 2:

- ``align_fast`` / ``align_slow``: ``max_j <w_j, v_e>`` and ``max_j <w_j, v_d>`` (the alignment curves);
- ``out_fast`` / ``out_slow``: feature outputs ``F = sum_j (beta <w_j, v>)^3``;
- ``noise_memorization``: ``max_{j, i, p noise} |<w_j, xi_{i,p}>|`` over the training noise patches;
- ``train_loss`` (the multiplicity-weighted objective), ``train_acc`` (over the examples);
- ``test_acc``, ``test_acc_fast`` (test examples with the fast feature), ``test_acc_slow`` (without).

``fast_learned_at`` / ``slow_learned_at`` are exact: the first iteration (checked after every step)
at which the feature output reaches ``theta``; None if never.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from theory.plumbing.atomic import atomic_save_npz, atomic_write_json

from .config import config_hash
from .files import RUN_FORMAT, StateFileError, read_json_object

__all__ = ["Trajectory", "SERIES"]

SERIES = (
    "iterations",
    "align_fast",
    "align_slow",
    "out_fast",
    "out_slow",
    "noise_memorization",
    "train_loss",
    "train_acc",
    "test_acc",
    "test_acc_fast",
    "test_acc_slow",
)


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``STEM.npz`` and ``STEM.json`` for ``STEM``, ``STEM.npz`` or ``STEM.json`` (dots in STEM are kept)."""
    path = Path(path)
    name = path.name
    for suffix in (".npz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return path.with_name(name + ".npz"), path.with_name(name + ".json")


@dataclass
class Trajectory:
    """Plain data of one run: series of shape (K,), final state, metadata."""

    config: dict[str, Any]
    series: dict[str, np.ndarray]
    fast_learned_at: int | None
    slow_learned_at: int | None
    final_weights: np.ndarray
    final_train_outputs: np.ndarray
    multiplicities: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> np.ndarray:
        series = self.__dict__.get("series", {})
        if name in series:
            return series[name]
        raise AttributeError(name)

    def at(self, name: str, iteration: int) -> float:
        """The recorded value of ``name`` at the last record at or before ``iteration``."""
        its = self.series["iterations"]
        k = int(np.searchsorted(its, iteration, side="right") - 1)
        return float(self.series[name][max(k, 0)])

    def metadata(self) -> dict[str, Any]:
        """The ``.json`` content: format marker, identity, configuration, learned iterations, extras."""
        return {
            "format": RUN_FORMAT,
            "config_hash": config_hash(self.config),
            "config": self.config,
            "fast_learned_at": self.fast_learned_at,
            "slow_learned_at": self.slow_learned_at,
            "extra": self.extra,
        }

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``path.npz`` and then ``path.json``, each atomically; returns both paths."""
        npz, meta = _paths(path)
        atomic_save_npz(
            npz,
            format=np.array(RUN_FORMAT),
            final_weights=self.final_weights,
            final_train_outputs=self.final_train_outputs,
            multiplicities=self.multiplicities,
            **{f"series_{k}": v for k, v in self.series.items()},
        )
        atomic_write_json(meta, self.metadata())
        return npz, meta

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        """Read a run written by :meth:`save`; a file of another shape or format is a
        :class:`sims.files.StateFileError` naming it."""
        npz, meta_path = _paths(path)
        meta = read_json_object(meta_path, RUN_FORMAT, what="a simulator run")
        for key, kind in (("config", dict), ("extra", dict)):
            if not isinstance(meta.get(key, {}), kind):
                raise StateFileError(meta_path, f'has a "{key}" that is not a JSON object')
        for key in ("fast_learned_at", "slow_learned_at"):
            value = meta.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise StateFileError(meta_path, f'has a "{key}" that is neither an integer nor null')
        try:
            with np.load(npz, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (ValueError, EOFError, zipfile.BadZipFile):
            raise StateFileError(npz, "is not an .npz file written by useful-sim") from None
        if "config" not in meta:
            raise StateFileError(meta_path, 'has no "config"')
        missing = {"final_weights", "final_train_outputs", "multiplicities"} - set(arrays)
        if missing:
            raise StateFileError(npz, f"lacks the arrays {', '.join(sorted(missing))}")
        series = {k[len("series_"):]: v for k, v in arrays.items() if k.startswith("series_")}
        return cls(
            config=meta["config"],
            series=series,
            fast_learned_at=meta.get("fast_learned_at"),
            slow_learned_at=meta.get("slow_learned_at"),
            final_weights=arrays["final_weights"],
            final_train_outputs=arrays["final_train_outputs"],
            multiplicities=arrays["multiplicities"],
            extra=meta.get("extra", {}),
        )
